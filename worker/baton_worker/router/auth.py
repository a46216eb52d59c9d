"""API keys on the router (pure): which requests need one, and OpenAI's 401 when it is missing or wrong.

Keys come from ``--api-key-file`` or ``$BATON_API_KEY`` (several separated by commas), never
from the command line, where every user of the machine could read them; they are never
logged. Probes and scrapers keep working without a key: /health, /livez and /metrics stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from .errors import ApiError

API_KEY_ENV = "BATON_API_KEY"
OPEN_PATHS = frozenset({"/health", "/livez", "/metrics"})


def parse_keys(text: str) -> tuple[str, ...]:
    """Keys from a file's or a variable's text: separated by commas or newlines, blanks dropped."""
    return tuple(k.strip() for k in text.replace("\n", ",").split(",") if k.strip())


def refusal(keys: Sequence[str], path: str, authorization: str | None) -> ApiError | None:
    """None when the request may go on; else the 401 to answer (OpenAI's shape and wording)."""
    if not keys or path in OPEN_PATHS:
        return None
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            param=None,
            code="missing_api_key",
        )
    # Compare with every key, in constant time: the time taken says nothing about a key.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.strip().encode(), key.encode())
    if matched:
        return None
    return ApiError(401, "Incorrect API key provided.", param=None, code="invalid_api_key")
