"""API keys on the router (pure): who needs one, and OpenAI's 401 shape."""

from __future__ import annotations

import pytest
from baton_worker.router.auth import parse_keys, refusal

KEYS = ("sk-one", "sk-two")


@pytest.mark.parametrize(
    ("keys", "path", "header", "code"),
    [
        ((), "/v1/completions", None, None),  # no keys: no authentication
        (KEYS, "/v1/completions", "Bearer sk-one", None),
        (KEYS, "/v1/chat/completions", "bearer sk-two", None),
        (KEYS, "/v1/models", None, "missing_api_key"),
        (KEYS, "/tokenize", "Basic c2stb25l", "missing_api_key"),
        (KEYS, "/v1/completions", "Bearer ", "missing_api_key"),
        (KEYS, "/v1/completions", "Bearer sk-three", "invalid_api_key"),
        (KEYS, "/v1/completions", "Bearer sk-on", "invalid_api_key"),
        (KEYS, "/health", None, None),  # probes and scrapers stay open
        (KEYS, "/livez", None, None),
        (KEYS, "/metrics", None, None),
    ],
)
def test_refusal(keys, path, header, code) -> None:  # type: ignore[no-untyped-def]
    err = refusal(keys, path, header)
    if code is None:
        assert err is None
        return
    assert err is not None and err.status == 401 and err.code == code
    body = err.body()["error"]
    assert body["type"] == "invalid_request_error" and body["param"] is None
    # The key a client sent is never echoed back.
    assert "sk-" not in body["message"]


def test_keys_are_read_from_commas_and_lines() -> None:
    assert parse_keys("sk-a, sk-b\nsk-c\n\n") == ("sk-a", "sk-b", "sk-c")
    assert parse_keys("") == ()
