"""The autoscaler's view of an InferencePool spec: the policy's inputs, from spec.py's parse.

Parsing and validation of the autoscaling fields are :func:`baton_operator.spec.parse_autoscaling`'s
(the same code :func:`~baton_operator.spec.parse_pool` runs), so the operator and the autoscaler
accept and refuse the same specs with the same messages. This module only converts the parsed
values. Bad values raise :class:`ConfigError` naming the field; the autoscaler then leaves that
pool's replicas alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baton_operator.autoscaling.policy import RoleScaling
from baton_operator.spec import AutoscalingSpec, RoleAutoscaling, SpecError, parse_autoscaling
from baton_operator.spec_slo import SloSpec


class ConfigError(SpecError):
    """A spec value the autoscaler cannot use; ``field`` is its path.

    A SpecError, so whoever maps SpecError to the InvalidSpec condition handles it too.
    """


@dataclass(frozen=True)
class AutoscalingConfig:
    """What the autoscaler needs from one pool. ``roles`` holds only the autoscaled roles."""

    mode: str = "builtin"
    metrics_url: str = ""
    interval_s: int = 5
    prometheus_url: str = ""
    prometheus_query: str = ""
    router_port: int = 8000
    roles: dict[str, RoleScaling] = field(default_factory=dict)
    slo: SloSpec | None = None  # SLO mode (autoscaling/slo_pass.py); None: queue depth alone


def role_scaling(autoscaling: RoleAutoscaling) -> RoleScaling:
    """The policy input of one role, from its parsed `spec.<role>.autoscaling`."""
    return RoleScaling(
        min_replicas=autoscaling.min_replicas,
        max_replicas=autoscaling.max_replicas,
        target_queue_depth=autoscaling.target_queue_depth,
        tolerance=autoscaling.tolerance,
        scale_up_stabilization_s=autoscaling.scale_up_stabilization_seconds,
        scale_down_stabilization_s=autoscaling.scale_down_stabilization_seconds,
        max_scale_step=autoscaling.max_scale_step,
    )


def from_spec(spec: AutoscalingSpec) -> AutoscalingConfig:
    """The autoscaler's config of a parsed spec; only enabled roles are in ``roles``."""
    return AutoscalingConfig(
        mode=spec.pool.mode,
        metrics_url=spec.pool.metrics_url,
        interval_s=spec.pool.interval_seconds,
        prometheus_url=spec.pool.prometheus_url,
        prometheus_query=spec.pool.prometheus_query,
        router_port=spec.router_port,
        roles={role: role_scaling(a) for role, a in spec.roles.items() if a.enabled},
        slo=spec.slo,
    )


def parse(spec: Any) -> AutoscalingConfig:
    """Parse an InferencePool ``spec`` dict; raises ConfigError naming the bad field."""
    try:
        parsed = parse_autoscaling(spec)
    except SpecError as e:
        raise ConfigError(e.field, e.message) from e
    return from_spec(parsed)
