"""The autoscaling part of an InferencePool spec, parsed once with the CRD's defaults.

Only the fields the autoscaler reads: per role `spec.<role>.autoscaling`, the top-level
`spec.autoscaling` and the router's service port (the default metrics source). Bad values raise
:class:`ConfigError` naming the field; the autoscaler then leaves that pool's replicas alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton_operator.autoscaling.policy import RoleScaling, validate

ROLES = ("prefill", "decode")
MODES = ("builtin", "keda")


class ConfigError(ValueError):
    """A spec value the autoscaler cannot use; ``field`` is its path."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path


@dataclass(frozen=True)
class AutoscalingConfig:
    """What the autoscaler needs from one pool. ``roles`` holds only the autoscaled roles."""

    mode: str = "builtin"
    metrics_url: str = ""
    interval_s: float = 5.0
    prometheus_url: str = ""
    prometheus_query: str = ""
    router_port: int = 8000
    roles: dict[str, RoleScaling] = field(default_factory=dict)


def _obj(raw: Any, path: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"must be an object, got {type(raw).__name__}")
    return raw


def _num(raw: Mapping[str, Any], key: str, path: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}.{key}", f"must be a number, got {value!r}")
    return float(value)


def _int(raw: Mapping[str, Any], key: str, path: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}.{key}", f"must be an integer, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], key: str, path: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{path}.{key}", f"must be a string, got {value!r}")
    return value


def role_scaling(raw: Any, path: str) -> RoleScaling | None:
    """The policy spec of one role, or None when its autoscaling is disabled."""
    obj = _obj(raw, path)
    if not obj.get("enabled", False):
        return None
    spec = RoleScaling(
        min_replicas=_int(obj, "minReplicas", path, 1),
        max_replicas=_int(obj, "maxReplicas", path, 8),
        target_queue_depth=_num(obj, "targetQueueDepth", path, 4),
        tolerance=_num(obj, "tolerance", path, 0.1),
        scale_up_stabilization_s=_num(obj, "scaleUpStabilizationSeconds", path, 0),
        scale_down_stabilization_s=_num(obj, "scaleDownStabilizationSeconds", path, 300),
        max_scale_step=_int(obj, "maxScaleStep", path, 4),
    )
    try:
        validate(spec, path)
    except ValueError as e:
        field_name = str(e).split(" ", 1)[0]
        raise ConfigError(field_name, str(e).split(" ", 1)[1]) from e
    return spec


def parse(spec: Any) -> AutoscalingConfig:
    """Parse an InferencePool ``spec`` dict; raises ConfigError naming the bad field."""
    root = _obj(spec, "spec")
    auto = _obj(root.get("autoscaling"), "spec.autoscaling")
    prom = _obj(auto.get("prometheus"), "spec.autoscaling.prometheus")
    router_service = _obj(_obj(root.get("router"), "spec.router").get("service"), "spec.router.service")
    mode = auto.get("mode", "builtin")
    if mode not in MODES:
        raise ConfigError("spec.autoscaling.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    interval = _num(auto, "intervalSeconds", "spec.autoscaling", 5)
    if interval < 1:
        raise ConfigError("spec.autoscaling.intervalSeconds", f"must be >= 1, got {interval:g}")
    roles: dict[str, RoleScaling] = {}
    for role in ROLES:
        scaling = role_scaling(
            _obj(root.get(role), f"spec.{role}").get("autoscaling"), f"spec.{role}.autoscaling"
        )
        if scaling is not None:
            roles[role] = scaling
    return AutoscalingConfig(
        mode=mode,
        metrics_url=_str(auto, "metricsUrl", "spec.autoscaling"),
        interval_s=interval,
        prometheus_url=_str(prom, "url", "spec.autoscaling.prometheus"),
        prometheus_query=_str(prom, "query", "spec.autoscaling.prometheus"),
        router_port=_int(router_service, "port", "spec.router.service", 8000),
        roles=roles,
    )
