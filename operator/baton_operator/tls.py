"""A pool's mutual TLS, the pure part: what the Secret holds, what to do about it, the manifests.

With ``spec.tls.enabled`` and no ``secretName``, the operator keeps a Secret ``<pool>-tls`` (type
``kubernetes.io/tls``, owned by the pool): ``ca.crt`` (the CAs the pool trusts), ``tls.crt`` and
``tls.key`` (the one certificate every pod of the pool presents, as server and as client, SAN
``DNS:<pool>.<namespace>.baton.internal``) and ``ca.key`` (the key of the CA that signs the next
certificate). Pods mount the first three at :data:`TLS_MOUNT`; ``ca.key`` never leaves the Secret.

:func:`plan` decides from the Secret and the clock alone (no I/O, no randomness):

- ``issue``: no Secret, or one that cannot be used (a missing key, a certificate without the
  pool's name, a key that does not match...): a new CA and certificate;
- ``renew``: the certificate is past 2/3 of its lifetime: a new one from the same CA (ca.crt is
  unchanged, so pods may pick it up in any order);
- ``new-ca``: the CA is past 2/3 of its lifetime (4x the certificate's): a new CA is added to
  ca.crt and becomes the signer; the certificate stays;
- ``move``: the certificate comes from an older CA and the signer has been in ca.crt for
  :func:`propagation` (every pod's kubelet has had time to mount it): a new certificate from it;
- ``prune``: that certificate has been out for :func:`propagation` too: ca.crt keeps the signer
  alone, and the old CA is trusted no more;
- ``keep``: nothing to do.

The thin part that draws keys and writes the Secret is :mod:`baton_operator.tls_reconcile`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baton_worker.pki import CertInfo, key_matches, pool_identity, read_bundle, read_cert, signed_by

from baton_operator.names import TLS_IDENTITY_ANNOTATION, metadata, pool_labels
from baton_operator.spec import Pool

TLS_MOUNT = "/etc/baton-tls"
CA_FILE, CERT_FILE, KEY_FILE, CA_KEY = "ca.crt", "tls.crt", "tls.key", "ca.key"
MOUNTED = (CA_FILE, CERT_FILE, KEY_FILE)
SECRET_TYPE = "kubernetes.io/tls"
IDENTITY_ANNOTATION = TLS_IDENTITY_ANNOTATION
RENEW_AT = 2 / 3  # of a certificate's lifetime
CA_LIFETIME_FACTOR = 4
# How long a change of the Secret takes to reach every pod: the kubelet's sync period (1 min by
# default) plus its cache, with margin. Shorter for short lifetimes.
PROPAGATION = dt.timedelta(minutes=5)
# Secret keys the pod's file mode (fsGroup-readable, no one else): 0440.
SECRET_MODE = 0o440


def tls_secret_name(pool: Pool) -> str:
    """The Secret the pool's pods mount: ``spec.tls.secretName``, else ``<pool>-tls``."""
    return pool.spec.tls.secret_name or f"{pool.name}-tls"


def identity(pool: Pool) -> str:
    return pool_identity(pool.name, pool.namespace)


def lifetime(pool: Pool) -> dt.timedelta:
    return dt.timedelta(seconds=pool.spec.tls.lifetime_s)


def ca_lifetime(leaf_lifetime: dt.timedelta) -> dt.timedelta:
    return leaf_lifetime * CA_LIFETIME_FACTOR


def propagation(leaf_lifetime: dt.timedelta) -> dt.timedelta:
    """How long a CA is trusted before certificates from it are handed out (and an old one is
    still trusted after the last certificate from it was replaced)."""
    return min(PROPAGATION, leaf_lifetime / 20)


@dataclass(frozen=True)
class PoolPki:
    """The certificates of a pool's Secret, checked; ``problem`` says why it cannot be used."""

    cas: tuple[CertInfo, ...] = ()
    signer: CertInfo | None = None  # the CA of ca.key
    leaf: CertInfo | None = None
    leaf_ca: CertInfo | None = None  # the CA of ca.crt that signed tls.crt
    problem: str = ""


def secret_bytes(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's ``data`` decoded; undecodable values are left out."""
    out = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            continue
    return out


def read_pki(data: Mapping[str, bytes], name: str) -> PoolPki:
    """Check the four keys of a pool's Secret against each other and the pool's ``name``."""
    missing = [k for k in (CA_FILE, CERT_FILE, KEY_FILE, CA_KEY) if not data.get(k)]
    if missing:
        return PoolPki(problem=f"no {', '.join(missing)} in the Secret")
    try:
        cas = tuple(read_bundle(data[CA_FILE]))
        leaf = read_cert(data[CERT_FILE])
    except ValueError as exc:
        return PoolPki(problem=str(exc))
    signer = next((c for c in cas if c.is_ca and key_matches(c.pem, data[CA_KEY])), None)
    leaf_ca = next((c for c in cas if signed_by(leaf.pem, c.pem)), None)
    if signer is None:
        problem = f"{CA_KEY} is the key of no CA in {CA_FILE}"
    elif leaf_ca is None:
        problem = f"{CERT_FILE} was signed by no CA in {CA_FILE}"
    elif name not in leaf.dns_names:
        problem = f"{CERT_FILE} does not name {name}"
    elif leaf.is_ca or not key_matches(leaf.pem, data[KEY_FILE]):
        problem = f"{KEY_FILE} is not the key of {CERT_FILE}"
    else:
        problem = ""
    return PoolPki(cas, signer, leaf, leaf_ca, problem)


@dataclass(frozen=True)
class TlsPlan:
    """What to do with a pool's Secret now, and why."""

    action: str  # keep | issue | renew | new-ca | move | prune
    reason: str


def _due(cert: CertInfo, cap: dt.timedelta) -> dt.datetime:
    """When ``cert`` is to be replaced: at 2/3 of its lifetime, or of ``cap`` when shorter."""
    return cert.not_before + min(cert.lifetime, cap) * RENEW_AT


def plan(pki: PoolPki | None, leaf_lifetime: dt.timedelta, now: dt.datetime) -> TlsPlan:
    """The next step for a pool's Secret (see the module docstring); pure."""
    if pki is None:
        return TlsPlan("issue", "no Secret yet")
    if pki.problem:
        return TlsPlan("issue", f"the Secret cannot be used: {pki.problem}")
    signer, leaf, leaf_ca = pki.signer, pki.leaf, pki.leaf_ca
    assert signer is not None and leaf is not None and leaf_ca is not None
    settle = propagation(leaf_lifetime)
    if now >= signer.not_after:
        return TlsPlan("issue", f"the CA expired at {signer.not_after:%Y-%m-%dT%H:%M:%SZ}")
    if now >= _due(signer, ca_lifetime(leaf_lifetime)):
        return TlsPlan("new-ca", f"the CA is past {RENEW_AT:.0%} of its lifetime")
    if leaf_ca.fingerprint != signer.fingerprint:
        if now >= signer.issued_at + settle or now >= leaf.not_after - settle:
            return TlsPlan("move", "the certificate comes from the previous CA; every pod trusts the new one")
        return TlsPlan("keep", "waiting for every pod to trust the new CA")
    if now >= _due(leaf, leaf_lifetime):
        return TlsPlan("renew", f"the certificate is past {RENEW_AT:.0%} of its lifetime")
    if len(pki.cas) > 1 and now >= leaf.issued_at + settle:
        return TlsPlan("prune", "every pod has the certificate from the new CA; the old CA is dropped")
    return TlsPlan("keep", "")


def bundle_with(pki: PoolPki, new_ca: bytes, now: dt.datetime) -> bytes:
    """ca.crt with ``new_ca`` appended and expired CAs left out."""
    return b"".join([c.pem for c in pki.cas if c.not_after > now] + [new_ca])


def foreign_owner(secret: Mapping[str, Any] | None, pool: Pool) -> str:
    """Why the operator must not write ``secret`` (a Secret of that name the pool does not own),
    "" when it may."""
    if secret is None:
        return ""
    refs = (secret.get("metadata") or {}).get("ownerReferences") or []
    if any(ref.get("uid") == pool.uid and ref.get("controller") for ref in refs):
        return ""
    return (
        f"Secret {tls_secret_name(pool)} exists and is not owned by this pool: delete it, or name it "
        "in spec.tls.secretName to use it as it is"
    )


def build_tls_secret(pool: Pool, data: Mapping[str, bytes]) -> dict[str, Any]:
    """The Secret manifest holding ``data`` (server-side applied by the operator)."""
    meta = metadata(pool, tls_secret_name(pool), pool_labels(pool))
    meta["annotations"] = {IDENTITY_ANNOTATION: identity(pool)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": meta,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def tls_volume(pool: Pool) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The Secret volume and its mount of every pod of a pool with TLS; None without."""
    if not pool.spec.tls.enabled:
        return None
    volume = {
        "name": "tls",
        "secret": {
            "secretName": tls_secret_name(pool),
            "items": [{"key": k, "path": k} for k in MOUNTED],  # not ca.key
            "defaultMode": SECRET_MODE,
        },
    }
    return volume, {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}


def tls_args(pool: Pool) -> list[str]:
    """The worker's and router's flags: ``--tls-dir`` when the pool has TLS."""
    return ["--tls-dir", TLS_MOUNT] if pool.spec.tls.enabled else []
