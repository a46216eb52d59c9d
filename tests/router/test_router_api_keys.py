"""`baton up --api-key`: the router answers OpenAI's 401 without the key, serves with it, keeps
/health and /metrics open, and never writes the key to its output or its command line."""

from __future__ import annotations

import httpx
import openai
import pytest
from router_stack import MODEL

pytestmark = pytest.mark.timeout(300)
KEY = "sk-baton-test-0123456789"


@pytest.fixture(scope="module")
def stack(stack_factory):  # type: ignore[no-untyped-def]
    return stack_factory("--api-key", KEY)


def test_requests_without_the_key_get_401_and_with_it_are_served(stack) -> None:  # type: ignore[no-untyped-def]
    for key in ("unused", KEY[:-1]):
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=stack.url, api_key=key, max_retries=0).completions.create(
                model=MODEL, prompt="x", max_tokens=2
            )
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    missing = httpx.post(f"{stack.url}/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    ok = openai.OpenAI(base_url=stack.url, api_key=KEY, max_retries=0).completions.create(
        model=MODEL, prompt="x", max_tokens=2
    )
    assert ok.usage.completion_tokens == 2
    base = stack.url.removesuffix("/v1")
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200
    assert KEY not in stack.output()
    router_pid = stack.pids["router"]
    with open(f"/proc/{router_pid}/cmdline", "rb") as f:
        assert KEY.encode() not in f.read()
