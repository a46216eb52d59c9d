"""``spec.tls``: mutual TLS between a pool's router and workers and between its workers.

Off unless ``enabled: true``. Turning it on changes every pod template of the pool (a volume, a
mount, ``--tls-dir``), and the rollout that follows is not seamless: plaintext and TLS pods cannot
talk to each other, so while old and new pods coexist some requests can fail. A default of true
would start that rollout in every existing pool at once, on an operator upgrade nobody tied to
it; the platform team turns it on per pool, or requires it with an admission policy
(docs/operator.md, "Mutual TLS").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baton_operator.spec_base import SpecError, as_obj, read_bool, read_str

DEFAULT_LIFETIME = "720h"  # 30 days
MIN_LIFETIME_S = 3600  # 1h: renewal at 2/3 of it must leave the kubelet time to update every pod
# Go's duration syntax (what cert-manager and the CRD's CEL duration() accept), hours to seconds.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
MAX_SECRET_NAME = 253


@dataclass(frozen=True)
class TlsSpec:
    """``spec.tls``, parsed. ``secret_name`` empty: the operator issues ``<pool>-tls`` itself."""

    enabled: bool = False
    lifetime_s: float = 720 * 3600.0
    secret_name: str = ""

    @property
    def operator_issued(self) -> bool:
        return self.enabled and not self.secret_name


def parse_duration(text: str, path: str) -> float:
    """Seconds of a Go-style duration such as ``720h`` or ``1h30m``; SpecError naming ``path``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise SpecError(path, f"must be a duration such as 720h or 90m, got {text!r}")
    return sum(float(n) * _UNITS[unit] for n, _, unit in re.findall(r"([0-9]+(\.[0-9]+)?)(h|m|s)", text))


def parse_tls(spec: Mapping[str, Any]) -> TlsSpec:
    """``spec.tls`` of an InferencePool ``spec`` (already an object), with the CRD's defaults."""
    path = "spec.tls"
    raw = as_obj(spec.get("tls"), path)
    lifetime = parse_duration(
        read_str(raw, "certificateLifetime", path, DEFAULT_LIFETIME), f"{path}.certificateLifetime"
    )
    if lifetime < MIN_LIFETIME_S:
        raise SpecError(f"{path}.certificateLifetime", f"must be at least 1h, got {lifetime:g}s")
    secret = read_str(raw, "secretName", path, "")
    if secret and (len(secret) > MAX_SECRET_NAME or not re.fullmatch(SECRET_NAME_PATTERN, secret)):
        raise SpecError(f"{path}.secretName", f"must be a Secret name (DNS subdomain), got {secret!r}")
    return TlsSpec(enabled=read_bool(raw, "enabled", path, False), lifetime_s=lifetime, secret_name=secret)
