"""One autoscaling pass over one pool: read the signal, decide per role, scale, report.

The pass is plain logic over two seams, so it runs the same under kopf, in a bench, or in a unit
test with a fake cluster: ``read_signal()`` returns the queue depth per role (or raises
SignalError) and a :class:`Cluster` reads workloads and sets replicas. The result is the status
patch the autoscaler owns and the scale events to post; the caller writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from baton_operator.autoscaling.capacity import Scheduling
from baton_operator.autoscaling.config import AutoscalingConfig
from baton_operator.autoscaling.policy import (
    LIMIT_MIN,
    METRICS_UNAVAILABLE,
    SCALE_UP,
    Decision,
    RoleScaling,
    Sample,
    decide,
    prune,
)
from baton_operator.autoscaling.signal import SignalError

# Write status at least this often even when nothing but lastSampleTime moved (a heartbeat that
# shows the autoscaler is alive without one API write per pool per interval).
STATUS_HEARTBEAT_S = 60.0
FIELD_MANAGER = "baton-autoscaler"


@dataclass(frozen=True)
class Workload:
    """A role's StatefulSet/Deployment as the autoscaler sees it."""

    kind: str
    name: str
    namespace: str
    replicas: int
    pod_spec: Mapping[str, Any] = field(default_factory=dict)
    pool: str = ""
    role: str = ""


class Cluster(Protocol):
    """The cluster I/O one pass needs (see actuation.KubeCluster)."""

    def workload(self, namespace: str, pool: str, role: str) -> Workload | None: ...

    def scheduling(self, namespace: str, pool: str, role: str) -> Scheduling: ...

    def capacity(self, workload: Workload, scheduled: int) -> int | None: ...

    def set_replicas(self, workload: Workload, replicas: int) -> None: ...

    def begin_pass(self) -> None: ...


@dataclass(frozen=True)
class ScaleEvent:
    """One replica change (or a warning), to be posted as a Kubernetes Event on the pool."""

    role: str
    reason: str
    message: str
    warning: bool = False


@dataclass
class RoleState:
    samples: list[Sample] = field(default_factory=list)
    last_scale_time: str | None = None
    last_scale_reason: str | None = None


@dataclass
class PoolState:
    """What the autoscaler remembers about a pool between passes (in memory, per operator)."""

    last_pass: float = float("-inf")
    roles: dict[str, RoleState] = field(default_factory=dict)
    written: dict[str, Any] | None = None
    written_at: float = float("-inf")
    metrics_ok: bool | None = None
    last_sample_time: float | None = None


# Replaces a pass's decisions (per role, with the roles' workloads) before they are applied.
Adjust = Callable[[dict[str, Decision], dict[str, Workload]], dict[str, Decision]]


@dataclass(frozen=True)
class PassResult:
    status: dict[str, Any]
    events: list[ScaleEvent]
    decisions: dict[str, Decision]


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def due(state: PoolState, cfg: AutoscalingConfig, now: float) -> bool:
    """Whether a pass is due: ``intervalSeconds`` since the last one (kopf ticks faster)."""
    # A little slack so a 1 s tick does not turn a 5 s interval into 6 s.
    return now - state.last_pass >= cfg.interval_s - 0.25


def seed_from_status(state: PoolState, status: Mapping[str, Any] | None) -> None:
    """After an operator restart, keep lastScaleTime/Reason from the object's status."""
    for role in ("prefill", "decode"):
        block = (status or {}).get(role) or {}
        rs = state.roles.setdefault(role, RoleState())
        if rs.last_scale_time is None and block.get("lastScaleTime"):
            rs.last_scale_time = str(block["lastScaleTime"])
            rs.last_scale_reason = str(block.get("lastScaleReason") or "") or None


def _decide_role(
    role: str,
    scaling: RoleScaling,
    rs: RoleState,
    workload: Workload,
    cluster: Cluster,
    pool: str,
    now: float,
    error: str | None,
) -> Decision:
    decision = decide(rs.samples, workload.replicas, scaling, now, metrics_error=error)
    if decision.reason != SCALE_UP:
        return decision
    # Only a scale-up needs the scheduler's view: never ask for pods that cannot run.
    sched = cluster.scheduling(workload.namespace, pool, role)
    capacity = cluster.capacity(workload, sched.scheduled) if sched.unschedulable == 0 else None
    decision = decide(
        rs.samples,
        workload.replicas,
        scaling,
        now,
        unschedulable=sched.unschedulable,
        capacity=capacity,
    )
    if sched.messages and decision.limited_by == "Unschedulable":
        decision = Decision(
            decision.desired,
            decision.reason,
            f"{decision.message} ({sched.messages[0]})",
            decision.limited_by,
            decision.recommendation,
        )
    return decision


def _read_depths(
    read_signal: Callable[[], Mapping[str, float]], source: str
) -> tuple[Mapping[str, float], str | None]:
    """The queue depth per role, or ({}, why) when the signal cannot be read."""
    try:
        return read_signal(), None
    except SignalError as e:
        return {}, f"cannot read queue depth from {source or 'the metrics source'}: {e}"


def _decide_roles(
    state: PoolState,
    cfg: AutoscalingConfig,
    pool: str,
    namespace: str,
    now: float,
    cluster: Cluster,
    depths: Mapping[str, float],
    error: str | None,
    source: str,
    messages: list[str],
) -> tuple[dict[str, Decision], dict[str, Workload]]:
    """Record this pass's sample of every autoscaled role and decide its replicas (no writes)."""
    keep = max(
        [max(s.scale_up_stabilization_s, s.scale_down_stabilization_s) for s in cfg.roles.values()] or [0]
    )
    keep += 2 * cfg.interval_s
    decisions: dict[str, Decision] = {}
    workloads: dict[str, Workload] = {}
    for role, scaling in cfg.roles.items():
        rs = state.roles.setdefault(role, RoleState())
        role_error = error
        if error is None and role not in depths:
            role_error = f"no baton_queue_depth{{role={role!r}}} at {source or 'the metrics source'}"
        if role_error is None:
            rs.samples.append(Sample(now, float(depths[role])))
            rs.samples = prune(rs.samples, now, keep)
        else:
            # A gap in the samples is not a low queue: after an outage the scale-down window
            # must be observed in full again.
            rs.samples.clear()
        workload = cluster.workload(namespace, pool, role)
        if workload is None:
            messages.append(f"{role}: waiting for its workload")
            continue
        decisions[role] = _decide_role(role, scaling, rs, workload, cluster, pool, now, role_error)
        workloads[role] = workload
        if role_error is not None and role_error not in messages:
            messages.append(role_error)
    return decisions, workloads


def _scale(
    role: str, rs: RoleState, workload: Workload, decision: Decision, cluster: Cluster, now: float
) -> tuple[ScaleEvent, str]:
    """Write one role's new replicas; the event to post and a message ("" when it worked)."""
    try:
        cluster.set_replicas(workload, decision.desired)
    except Exception as e:  # noqa: BLE001 - any API failure is reported, the pass goes on
        return (
            ScaleEvent(role, "ScaleFailed", f"{role}: {e}", warning=True),
            f"{role}: failed to set replicas to {decision.desired}: {e}",
        )
    rs.last_scale_time = rfc3339(now)
    rs.last_scale_reason = f"{decision.reason}: {decision.message}"
    message = f"{role} {workload.kind}/{workload.name}: {workload.replicas} -> {decision.desired} ({decision.message})"
    return ScaleEvent(role, decision.reason, message), ""


def _role_block(rs: RoleState, decision: Decision) -> dict[str, Any]:
    """A role's part of the autoscaler's status."""
    block: dict[str, Any] = {"desiredReplicas": decision.desired}
    if rs.samples and decision.reason != METRICS_UNAVAILABLE:
        block["queueDepth"] = rs.samples[-1].queue_depth
    if rs.last_scale_time:
        block["lastScaleTime"] = rs.last_scale_time
        block["lastScaleReason"] = rs.last_scale_reason
    return block


def run_pass(
    state: PoolState,
    cfg: AutoscalingConfig,
    pool: str,
    namespace: str,
    now: float,
    read_signal: Callable[[], Mapping[str, float]],
    cluster: Cluster,
    source: str = "",
    adjust: Adjust | None = None,
) -> PassResult:
    """One pass: sample, decide and scale every autoscaled role; return status and events.

    Promises: replicas are written only when a decision changes them, with the autoscaler's
    field manager; a failed read holds every role's replicas and reports metricsAvailable False;
    a missing workload or a failed write is reported in the message, never raised.
    ``adjust`` (SLO mode, slo_pass.py) may replace the queue-depth decisions before any write.
    """
    state.last_pass = now
    cluster.begin_pass()
    depths, error = _read_depths(read_signal, source)
    messages: list[str] = []
    decisions, workloads = _decide_roles(
        state, cfg, pool, namespace, now, cluster, depths, error, source, messages
    )
    if adjust is not None:
        decisions = adjust(decisions, workloads)
    status: dict[str, Any] = {}
    events: list[ScaleEvent] = []
    limits: list[str] = []
    # Writes come after every decision, back to back: a spike on both roles lands at once.
    for role, decision in decisions.items():
        rs, workload = state.roles[role], workloads[role]
        if decision.desired != workload.replicas:
            event, failure = _scale(role, rs, workload, decision, cluster, now)
            if failure:
                messages.append(failure)
            events.append(event)
        if decision.limited_by and decision.limited_by != LIMIT_MIN:
            limits.append(f"{role}:{decision.limited_by}")
            messages.append(f"{role}: {decision.message}")
        status[role] = _role_block(rs, decision)

    metrics_ok = error is None and all(d.reason != METRICS_UNAVAILABLE for d in decisions.values())
    if not metrics_ok and state.metrics_ok is not False:
        events.append(ScaleEvent("", "MetricsUnavailable", "; ".join(messages) or str(error), warning=True))
    state.metrics_ok = metrics_ok
    status["autoscaling"] = _summary(state, status, decisions, messages, limits, metrics_ok)
    return PassResult(status, events, decisions)


def _summary(
    state: PoolState,
    status: Mapping[str, Any],
    decisions: Mapping[str, Decision],
    messages: list[str],
    limits: list[str],
    metrics_ok: bool,
) -> dict[str, Any]:
    """``status.autoscaling``: whether metrics flow, what happened, when the last sample was taken."""
    if not messages:
        messages.append(
            "; ".join(
                f"{r}: queue {status[r].get('queueDepth', 0):g} -> {d.desired} replicas"
                for r, d in decisions.items()
            )
            or "no autoscaled role"
        )
    last_sample = max((rs.samples[-1].time for rs in state.roles.values() if rs.samples), default=None)
    if last_sample is not None:
        state.last_sample_time = last_sample
    last_sample = state.last_sample_time
    return {
        "metricsAvailable": metrics_ok,
        "message": "; ".join(messages),
        "lastSampleTime": rfc3339(last_sample) if last_sample is not None else None,
        "limitedBy": ",".join(limits) or None,
    }


def status_to_write(state: PoolState, result: PassResult, now: float) -> dict[str, Any] | None:
    """The status patch to send, or None when nothing but lastSampleTime changed recently."""

    def essence(s: Mapping[str, Any]) -> dict[str, Any]:
        return {**s, "autoscaling": {k: v for k, v in s["autoscaling"].items() if k != "lastSampleTime"}}

    if (
        state.written is not None
        and essence(state.written) == essence(result.status)
        and now - state.written_at < STATUS_HEARTBEAT_S
    ):
        return None
    return result.status


def mark_written(state: PoolState, status: dict[str, Any], now: float) -> None:
    state.written = status
    state.written_at = now
