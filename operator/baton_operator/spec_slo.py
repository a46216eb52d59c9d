"""`spec.autoscaling.slo`: SLO mode, parsed and validated (errors name the field).

With SLO mode the autoscaler sizes both roles with the capacity planner (docs/autoscaling.md,
"SLO mode") from the arrival rate and mean lengths it measures, the TTFT and ITL targets and a
baton-profile/v1 stored in a ConfigMap; the queue-depth policy of each role stays on as a floor.
What the planner needs of the rest of the spec (each role's tensor parallelism, batch size and
GPUs per pod, the KV backend) is read here too, with the CRD's defaults, so the autoscaler never
parses the whole pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baton_operator.spec_base import SpecError, as_obj, read_int, read_num, read_str

PATH = "spec.autoscaling.slo"
DEFAULT_PROFILE_KEY = "profile.json"
DEFAULT_ATTAINMENT = 0.9
DEFAULT_RATE_WINDOW_S = 60
DEFAULT_SCALE_UP_INTERVALS = 2
MAX_RATE_WINDOW_S = 3600
MAX_SCALE_UP_INTERVALS = 60


@dataclass(frozen=True)
class RoleShape:
    """What the planner simulates of one role: its pods' tensor parallelism and batch size, and
    what one pod costs against ``maxGpus`` (its GPUs; 1 for a ``device: cpu`` pod)."""

    tensor_parallel_size: int
    max_batch_size: int
    pod_cost: int


@dataclass(frozen=True)
class SloSpec:
    """`spec.autoscaling.slo`, validated, plus the pool's shape the planner needs."""

    ttft_ms: float
    itl_ms: float
    profile_config_map: str
    profile_key: str = DEFAULT_PROFILE_KEY
    attainment: float = DEFAULT_ATTAINMENT
    max_gpus: int | None = None
    rate_window_seconds: int = DEFAULT_RATE_WINDOW_S
    scale_up_intervals: int = DEFAULT_SCALE_UP_INTERVALS
    prefill: RoleShape = RoleShape(1, 1, 1)
    decode: RoleShape = RoleShape(1, 64, 1)
    kv_backend: str = "auto"

    def shape(self, role: str) -> RoleShape:
        return self.prefill if role == "prefill" else self.decode


def _positive(obj: Mapping[str, Any], key: str, path: str) -> float:
    if key not in obj:
        raise SpecError(f"{path}.{key}", "is required")
    value = read_num(obj, key, path, 0.0)
    if not value > 0:
        raise SpecError(f"{path}.{key}", f"must be > 0, got {value:g}")
    return value


def _shape(spec: Mapping[str, Any], role: str, defaults: Mapping[str, Any]) -> RoleShape:
    path = f"spec.{role}"
    obj = as_obj(spec.get(role), path)
    tp = read_int(obj, "tensorParallelSize", path, defaults["tensorParallelSize"], minimum=1)
    batch = read_int(obj, "maxBatchSize", path, defaults["maxBatchSize"], minimum=1)
    device = read_str(obj, "device", path, defaults["device"])
    return RoleShape(tp, batch, 1 if device == "cpu" else tp)


def _profile_ref(raw: Any) -> tuple[str, str]:
    profile = as_obj(raw, f"{PATH}.profile")
    path = f"{PATH}.profile.configMapRef"
    if "configMapRef" not in profile:
        raise SpecError(path, "is required: the ConfigMap holding the baton-profile/v1 JSON")
    ref = as_obj(profile["configMapRef"], path)
    name = read_str(ref, "name", path, "")
    if not name:
        raise SpecError(f"{path}.name", "is required")
    key = read_str(ref, "key", path, DEFAULT_PROFILE_KEY)
    if not key:
        raise SpecError(f"{path}.key", "must not be empty")
    return name, key


def parse_slo(
    spec: Mapping[str, Any],
    *,
    mode: str,
    enabled: Mapping[str, bool],
    min_replicas: Mapping[str, int],
    role_defaults: Mapping[str, Mapping[str, Any]],
) -> SloSpec | None:
    """``spec.autoscaling.slo`` of an InferencePool ``spec`` (None when absent).

    ``mode``, ``enabled`` and ``min_replicas`` are the already parsed autoscaling fields (per
    role), ``role_defaults`` the CRD's role defaults. The cross-field rules are the CRD's CEL
    rules: SLO mode needs the builtin autoscaler, both roles autoscaled, and a ``maxGpus`` that
    holds both roles at their minimum (at least one prefill replica). Raises SpecError.
    """
    auto = as_obj(spec.get("autoscaling"), "spec.autoscaling")
    if auto.get("slo") is None:
        return None
    slo = as_obj(auto["slo"], PATH)
    if mode != "builtin":
        raise SpecError(
            "spec.autoscaling.mode", f"must be builtin with {PATH}: KEDA scales on queue depth only"
        )
    for role in ("prefill", "decode"):
        if not enabled.get(role):
            raise SpecError(
                f"spec.{role}.autoscaling.enabled",
                f"must be true with {PATH}: SLO mode sizes both roles within their minReplicas and maxReplicas",
            )
    ttft_ms, itl_ms = _positive(slo, "ttftMs", PATH), _positive(slo, "itlMs", PATH)
    attainment = read_num(slo, "attainment", PATH, DEFAULT_ATTAINMENT)
    if not 0 < attainment <= 1:
        raise SpecError(f"{PATH}.attainment", f"must be > 0 and <= 1, got {attainment:g}")
    name, key = _profile_ref(slo.get("profile"))
    max_gpus = None
    if slo.get("maxGpus") is not None:
        max_gpus = read_int(slo, "maxGpus", PATH, 0, minimum=1)
    window = read_int(slo, "rateWindowSeconds", PATH, DEFAULT_RATE_WINDOW_S, minimum=1)
    if window > MAX_RATE_WINDOW_S:
        raise SpecError(f"{PATH}.rateWindowSeconds", f"must be <= {MAX_RATE_WINDOW_S}, got {window}")
    intervals = read_int(slo, "scaleUpIntervals", PATH, DEFAULT_SCALE_UP_INTERVALS, minimum=1)
    if intervals > MAX_SCALE_UP_INTERVALS:
        raise SpecError(f"{PATH}.scaleUpIntervals", f"must be <= {MAX_SCALE_UP_INTERVALS}, got {intervals}")
    prefill = _shape(spec, "prefill", role_defaults["prefill"])
    decode = _shape(spec, "decode", role_defaults["decode"])
    least = (
        max(1, min_replicas.get("prefill", 1)) * prefill.pod_cost
        + max(1, min_replicas.get("decode", 1)) * decode.pod_cost
    )
    if max_gpus is not None and max_gpus < least:
        raise SpecError(
            f"{PATH}.maxGpus",
            f"must be >= {least}: both roles at minReplicas (at least one prefill replica) need that many",
        )
    kv = as_obj(spec.get("kvTransfer"), "spec.kvTransfer")
    return SloSpec(
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        profile_config_map=name,
        profile_key=key,
        attainment=attainment,
        max_gpus=max_gpus,
        rate_window_seconds=window,
        scale_up_intervals=intervals,
        prefill=prefill,
        decode=decode,
        kv_backend=read_str(kv, "backend", "spec.kvTransfer", "auto"),
    )
