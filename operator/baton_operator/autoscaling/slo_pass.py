"""One autoscaling pass in SLO mode: the queue-depth pass, with the planner on top.

The pass is controller.run_pass (same read, same per-role queue-depth decisions, same writes,
Events and status), given two things: a read that also returns the routers' counters
(slo_signal.read), and an ``adjust`` step that, before any write, updates the rate estimate
(slo_rate.py), asks the planner (slo_plan.py, cached) for this pool's replicas at that rate and
those lengths, stabilizes its answers and combines them with the queue-depth decisions as a
floor, within bounds and maxGpus (slo.py). ``status.autoscaling.slo`` shows the planner's latest
decision; a replica change it drives is a ``SloScaleUp`` / ``SloScaleDown`` Event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from baton_operator.autoscaling import slo_rate
from baton_operator.autoscaling.config import AutoscalingConfig
from baton_operator.autoscaling.controller import (
    Cluster,
    PassResult,
    PoolState,
    ScaleEvent,
    Workload,
    run_pass,
)
from baton_operator.autoscaling.policy import (
    LIMIT_CAPACITY,
    LIMIT_UNSCHEDULABLE,
    METRICS_UNAVAILABLE,
    STABLE,
    Decision,
)
from baton_operator.autoscaling.slo import (
    SLO_SCALE_DOWN,
    SLO_SCALE_UP,
    PlanSample,
    RoleBounds,
    SloTarget,
    combine,
    slo_target,
)
from baton_operator.autoscaling.slo_plan import Bounds, PlanCache, PoolPlan, plan_pool
from baton_operator.autoscaling.slo_profile import ProfileUnavailable
from baton_operator.autoscaling.slo_signal import Reading
from baton_operator.planning.profile import Profile
from baton_operator.spec_slo import SloSpec

log = logging.getLogger(__name__)
ROLES = ("prefill", "decode")
UNAVAILABLE = "SloUnavailable"  # Warning Event when the planner has no answer for a reason to fix
_STATUS_KEYS = ("rateRps", "inputTokens", "outputTokens", "prefillReplicas", "decodeReplicas", "gpus")
_STATUS_KEYS += ("feasible", "binding", "maxRateRps", "ttftP90Ms", "itlP90Ms")

# (namespace, ConfigMap name, key) -> the profile and a version that changes with its content.
GetProfile = Callable[[str, str, str], tuple[Profile, str]]


@dataclass
class SloState:
    """What SLO mode remembers about a pool between passes (in memory, per operator)."""

    spec: SloSpec | None = None  # the spec this state was built for: a change starts it over
    last_sample: slo_rate.CounterSample | None = None
    windows: list[slo_rate.Window] = field(default_factory=list)
    input_tokens: float | None = None  # the latest mean lengths measured (kept through idle windows)
    output_tokens: float | None = None
    history: dict[str, list[PlanSample]] = field(default_factory=dict)
    cache: PlanCache = field(default_factory=PlanCache)
    plan: PoolPlan | None = None  # this pass's answer (None: no answer this pass)
    inputs: tuple[float, int, int] | None = None
    why_not: str = ""  # why there is no answer this pass
    problem: bool = False  # the reason is something to fix (not a warm-up)
    plan_seconds: list[float] = field(default_factory=list)  # time of each planner run (cache misses)

    def reset(self, spec: SloSpec | None) -> None:
        """Forget everything: a new spec (other SLOs, bounds or profile) starts over."""
        self.__dict__.update(SloState(spec=spec).__dict__)


def _bounds(cfg: AutoscalingConfig, slo: SloSpec) -> Bounds:
    p, d = cfg.roles["prefill"], cfg.roles["decode"]
    return Bounds(p.min_replicas, p.max_replicas, d.min_replicas, d.max_replicas, slo.max_gpus)


def _no_plan(st: SloState, why: str, problem: bool) -> None:
    st.plan, st.inputs, st.why_not, st.problem = None, None, why, problem


def update_estimate(
    st: SloState, reading: Reading, now: float, interval_s: float
) -> slo_rate.Estimate | None:
    """Fold this pass's counters into the rate windows; the estimate (None: none yet, and why)."""
    slo = st.spec
    assert slo is not None
    why = reading.counters_error
    if reading.counters is not None:
        max_seconds = max(float(slo.rate_window_seconds), 3.0 * interval_s)
        w, why = slo_rate.window(st.last_sample, reading.counters, max_seconds)
        st.last_sample = reading.counters
        if w is not None:
            st.windows.append(w)
    st.windows = slo_rate.recent(st.windows, now, slo.rate_window_seconds)
    est = slo_rate.estimate(st.windows, now, slo.rate_window_seconds)
    if est is None:
        _no_plan(st, f"no rate yet ({why})", reading.counters is None)
    elif est.input_tokens is not None and est.output_tokens is not None:
        st.input_tokens, st.output_tokens = est.input_tokens, est.output_tokens
    return est


def plan_for(
    st: SloState, cfg: AutoscalingConfig, est: slo_rate.Estimate, namespace: str, get_profile: GetProfile
) -> None:
    """Ask the planner (or its cache) for this estimate; the answer, or why none, lands in ``st``."""
    slo = st.spec
    assert slo is not None
    if est.rate_rps > 0 and (st.input_tokens is None or st.output_tokens is None):
        _no_plan(st, "no request has finished yet: mean lengths unknown", False)
        return
    try:
        profile, version = get_profile(namespace, slo.profile_config_map, slo.profile_key)
    except ProfileUnavailable as e:
        _no_plan(st, str(e), True)
        return
    inputs = (0.0, 1, 1)
    if est.rate_rps > 0:
        inputs = slo_rate.planned_inputs(est.rate_rps, st.input_tokens or 1.0, st.output_tokens or 1.0)
    bounds = _bounds(cfg, slo)
    key: Hashable = (version, slo, bounds, inputs)

    def compute() -> PoolPlan:
        started = time.perf_counter()
        try:
            return plan_pool(profile, slo, bounds, *inputs)
        finally:
            st.plan_seconds = [*st.plan_seconds[-99:], time.perf_counter() - started]
            log.debug("planner: %s -> %.3fs", inputs, st.plan_seconds[-1])

    try:
        st.plan, _ = st.cache.get(key, compute)
    except ValueError as e:
        _no_plan(st, f"the planner cannot use the profile for this pool: {e}", True)
        return
    st.inputs, st.why_not, st.problem = inputs, "", False


def record(st: SloState, now: float, keep_s: float) -> None:
    """Add this pass's answer to each role's history; drop what no window needs any more."""
    for role in ROLES:
        hist = st.history.setdefault(role, [])
        if st.plan is not None:
            hist.append(PlanSample(now, st.plan.prefill if role == "prefill" else st.plan.decode))
        older = [h for h in hist if h.time <= now - keep_s]
        st.history[role] = older[-1:] + [h for h in hist if h.time > now - keep_s]


def status_block(st: SloState) -> dict[str, Any]:
    """``status.autoscaling.slo``: every key present (None clears it in the merge patch)."""
    block: dict[str, Any] = dict.fromkeys(_STATUS_KEYS)
    plan, slo = st.plan, st.spec
    if plan is None or st.inputs is None or slo is None:
        block["message"] = f"no planner decision: {st.why_not}"
        return block
    rate, isl, osl = st.inputs
    block.update(
        rateRps=rate,
        inputTokens=isl,
        outputTokens=osl,
        prefillReplicas=plan.prefill,
        decodeReplicas=plan.decode,
        gpus=plan.gpus,
        feasible=plan.feasible,
        binding=plan.binding or None,
        maxRateRps=plan.max_rate or None,
        ttftP90Ms=plan.ttft_p90_ms,
        itlP90Ms=plan.itl_p90_ms,
    )
    what = f"{plan.prefill} prefill + {plan.decode} decode = {plan.gpus} GPUs"
    if rate == 0:
        block["message"] = f"no requests: {what}"
    elif plan.feasible:
        block["message"] = (
            f"{rate:.3g} req/s, ISL {isl}, OSL {osl}: {what} meet TTFT {slo.ttft_ms:g} ms and ITL "
            f"{slo.itl_ms:g} ms for {slo.attainment:.0%} (p90 {plan.ttft_p90_ms:g} / {plan.itl_p90_ms:g} ms); "
            f"binds: {plan.binding}, up to {plan.max_rate:.3g} req/s"
        )
    else:
        block["message"] = f"{rate:.3g} req/s, ISL {isl}, OSL {osl}: {what}, the closest: {plan.reason}"
    return block


def _role_decision(
    queue: Decision, target: SloTarget, final: int, driver: str, limited: str | None, current: int
) -> Decision:
    words = f"{target.message}; queue floor {queue.desired}"
    if final == current:
        if driver == "queue":
            return Decision(
                current, queue.reason, f"{queue.message}; {target.message}", limited or queue.limited_by
            )
        return Decision(current, STABLE, words, limited, target.replicas)
    if driver == "queue" and limited is None:
        return (
            queue
            if queue.desired == final
            else Decision(final, queue.reason, queue.message, queue.limited_by)
        )
    reason = SLO_SCALE_UP if final > current else SLO_SCALE_DOWN
    return Decision(final, reason, f"{words}: {current} -> {final}", limited, target.replicas)


def _schedulable(
    cluster: Cluster, workload: Workload, pool: str, role: str, want: int
) -> tuple[int, str | None]:
    """At most what the cluster can run (as the queue policy's scale-up checks): no new pods
    while one of the role's cannot be scheduled, no more than the free GPUs hold."""
    sched = cluster.scheduling(workload.namespace, pool, role)
    if sched.unschedulable > 0:
        return workload.replicas, LIMIT_UNSCHEDULABLE
    capacity = cluster.capacity(workload, sched.scheduled)
    if capacity is not None and want > max(workload.replicas, capacity):
        return max(workload.replicas, capacity), LIMIT_CAPACITY
    return want, None


def adjust(
    st: SloState,
    cfg: AutoscalingConfig,
    pool: str,
    now: float,
    cluster: Cluster,
    decisions: dict[str, Decision],
    workloads: dict[str, Workload],
) -> dict[str, Decision]:
    """Replace the queue-depth decisions by max(planner, queue) within bounds and budget."""
    slo = st.spec
    if slo is None or set(decisions) != set(ROLES):
        return decisions  # a workload is missing: nothing to size against
    if any(d.reason == METRICS_UNAVAILABLE for d in decisions.values()):
        return decisions  # held: no fresh queue, no fresh rate
    current = {r: workloads[r].replicas for r in ROLES}
    targets = {
        r: slo_target(
            st.history.get(r, []),
            current[r],
            now,
            interval_s=cfg.interval_s,
            up_intervals=slo.scale_up_intervals,
            down_window_s=cfg.roles[r].scale_down_stabilization_s,
        )
        for r in ROLES
    }
    bounds = {
        r: RoleBounds(s.min_replicas, s.max_replicas, s.max_scale_step, slo.shape(r).pod_cost)
        for r, s in cfg.roles.items()
    }
    floor = {r: decisions[r].desired for r in ROLES}
    combined = combine(current, floor, {r: t.replicas for r, t in targets.items()}, bounds, slo.max_gpus)
    out: dict[str, Decision] = {}
    for r in ROLES:
        c = combined[r]
        final, limited = c.desired, c.limited_by
        if final > current[r] and c.driver == "slo":
            final, sched_limit = _schedulable(cluster, workloads[r], pool, r, final)
            limited = sched_limit or limited
        out[r] = _role_decision(decisions[r], targets[r], final, c.driver, limited, current[r])
    return out


def run_slo_pass(
    state: PoolState,
    st: SloState,
    cfg: AutoscalingConfig,
    pool: str,
    namespace: str,
    now: float,
    read: Callable[[], Reading],
    cluster: Cluster,
    get_profile: GetProfile,
    source: str = "",
) -> PassResult:
    """One SLO-mode pass (see the module docstring); ``read`` raises SignalError like the queue read."""
    if st.spec != cfg.slo:
        st.reset(cfg.slo)
    reading: list[Reading] = []
    was_problem = st.problem

    def read_signal() -> dict[str, float]:
        reading.append(read())
        return reading[0].depths

    def step(decisions: dict[str, Decision], workloads: dict[str, Workload]) -> dict[str, Decision]:
        if not reading:  # the read failed: run_pass holds every role; the rate windows wait
            _no_plan(st, "the routers could not be read", False)
            return decisions
        est = update_estimate(st, reading[0], now, cfg.interval_s)
        if est is not None:
            plan_for(st, cfg, est, namespace, get_profile)
        keep = max([s.scale_down_stabilization_s for s in cfg.roles.values()] or [0]) + 2 * cfg.interval_s
        record(st, now, keep)
        return adjust(st, cfg, pool, now, cluster, decisions, workloads)

    result = run_pass(state, cfg, pool, namespace, now, read_signal, cluster, source, step)
    result.status["autoscaling"]["slo"] = status_block(st)
    events = list(result.events)
    if st.problem and not was_problem:
        events.append(
            ScaleEvent("", UNAVAILABLE, f"SLO mode has no planner decision: {st.why_not}", warning=True)
        )
    return PassResult(result.status, events, result.decisions)
