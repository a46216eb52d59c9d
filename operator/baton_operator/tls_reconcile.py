"""A pool's mutual TLS, the thin part: read the Secret, draw new keys when :func:`tls.plan` says
so, write the Secret. Runs in every reconcile of a pool whose ``spec.tls`` is on without a
``secretName``, before the workloads (their pods mount the Secret). The Secret is read fresh each
time (never from a cache: a stale copy could drop a CA that pods already trust); a no-op reconcile
reads it and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from baton_worker.pki import BACKDATE, Pem, issue_pool, new_ca, new_leaf

from baton_operator import tls
from baton_operator.api import KINDS, ApiError, KubeApi
from baton_operator.spec import Pool

log = logging.getLogger(__name__)
SECRET = KINDS[("v1", "Secret")]


def next_data(
    step: tls.TlsPlan, pki: tls.PoolPki | None, data: Mapping[str, bytes], pool: Pool, now: dt.datetime
) -> dict[str, bytes]:
    """The Secret's data after ``step`` (new keys drawn here); ``data`` is what it holds now."""
    name, life = tls.identity(pool), tls.lifetime(pool)
    start = now - BACKDATE
    if step.action == "issue" or pki is None or pki.signer is None:
        ca, leaf = issue_pool(name, life, tls.ca_lifetime(life), now)
        return {tls.CA_FILE: ca.cert, tls.CA_KEY: ca.key, tls.CERT_FILE: leaf.cert, tls.KEY_FILE: leaf.key}
    out = dict(data)
    if step.action == "new-ca":
        ca = new_ca(name, start, now + tls.ca_lifetime(life))
        out.update({tls.CA_FILE: tls.bundle_with(pki, ca.cert, now), tls.CA_KEY: ca.key})
    elif step.action in ("renew", "move"):
        leaf = new_leaf(name, Pem(pki.signer.pem, data[tls.CA_KEY]), start, now + life)
        out.update({tls.CERT_FILE: leaf.cert, tls.KEY_FILE: leaf.key})
    elif step.action == "prune":
        out[tls.CA_FILE] = pki.signer.pem
    return out


def ensure_tls_secret(api: KubeApi, pool: Pool, body: Mapping[str, Any], now: dt.datetime) -> tuple[str, str]:
    """Bring the pool's Secret one step forward when it needs one. Returns (action taken or "",
    error message or ""); transient API errors propagate."""
    if not pool.spec.tls.operator_issued:
        return "", ""
    name = tls.tls_secret_name(pool)
    try:
        live = api.get(SECRET, pool.namespace, name)
    except ApiError as e:
        if e.transient:
            raise
        return "", f"reading Secret/{name}: {e.message}"  # e.g. the chart's RBAC not upgraded
    refusal = tls.foreign_owner(live, pool)
    if refusal:
        return "", refusal
    data = tls.secret_bytes(live) if live is not None else {}
    pki = tls.read_pki(data, tls.identity(pool)) if live is not None else None
    step = tls.plan(pki, tls.lifetime(pool), now)
    if step.action == "keep":
        return "", ""
    manifest = tls.build_tls_secret(pool, next_data(step, pki, data, pool, now))
    try:
        api.apply(manifest)
    except ApiError as e:
        if e.transient:
            raise
        return "", f"applying Secret/{name}: {e.message}"
    log.info("%s/%s: Secret %s: %s (%s)", pool.namespace, pool.name, name, step.action, step.reason)
    api.post_event(body, "Normal", "Certificate", f"Secret {name}: {step.action}: {step.reason}")
    return step.action, ""
