"""Readiness probes over TLS and a polling helper with a deadline (never a fixed sleep)."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class NotReady(RuntimeError):
    """A component did not become ready in time, or died; the message says which and why."""


def tls_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Client TLS context: verify against ``ca`` (or not at all when None), present ``cert``."""
    if ca is None:
        # Controller-manager and scheduler serve self-signed certs made at start; only their
        # always-allowed /healthz is probed, over loopback.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def https_get(
    port: int, path: str, ctx: ssl.SSLContext, timeout_s: float = 2.0, host: str = "127.0.0.1"
) -> tuple[int, str]:
    """GET https://``host``:``port````path``; returns (status, body); raises OSError when down."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def get_json(port: int, path: str, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> dict[str, Any] | None:
    """GET a JSON object from the API server; None when it is not there (yet) or unreachable.

    Used for readiness polls instead of spawning kubectl, which costs CPU a loaded machine lacks.
    """
    try:
        code, body = https_get(port, path, ctx, host=host)
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return None
    return json.loads(body) if code == 200 else None


def healthy(port: int, path: str, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> bool:
    """Whether the endpoint answers 200 now."""
    try:
        return https_get(port, path, ctx, host=host)[0] == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float,
    *,
    check_alive: Callable[[], None] | None = None,
    interval_s: float = 0.1,
) -> T:
    """Poll ``probe`` until it returns something truthy; raise NotReady after ``timeout_s``.

    ``check_alive`` runs between polls and raises (e.g. when the component's process died),
    so a crash is reported at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if check_alive is not None:
            check_alive()
        if time.monotonic() >= deadline:
            raise NotReady(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)
