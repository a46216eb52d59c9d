"""The scaling policy of one role: a pure function of samples, replicas, spec and clock.

``decide`` is the only place where baton chooses a replica count. It follows the HPA's
stabilization rules, on the whole queue of a role instead of a per-pod average:

- a recommendation is ``ceil(queue / targetQueueDepth)``; a queue within ``tolerance`` of what
  the current replicas are sized for recommends the current count (noise moves nothing);
- scale up to the *lowest* recommendation of the scale-up window (window 0 = the latest sample),
  so a spike is acted on at the next interval;
- scale down to the *highest* recommendation of the scale-down window (counting the sample in
  effect at the window's start), and only once the samples cover that whole window, so a queue
  must be seen low for the full window before replicas go;
- at most ``maxScaleStep`` replicas per decision, always inside ``[minReplicas, maxReplicas]``;
- no new replicas beyond what the cluster can run (unschedulable pods, free GPU capacity);
- metrics unreachable: hold the replicas (bounds still apply) and say so.

Since a scale-down needs a full window of low samples and a scale-up needs a recommendation
above the current count, the count cannot alternate between two values within one window: no flap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Decision reasons: also the Event reasons and `lastScaleReason` prefixes.
SCALE_UP = "ScaleUp"
SCALE_DOWN = "ScaleDown"
STABLE = "Stable"
WITHIN_TOLERANCE = "WithinTolerance"
SCALE_DOWN_WINDOW = "ScaleDownStabilization"
SCALE_UP_WINDOW = "ScaleUpStabilization"
METRICS_UNAVAILABLE = "MetricsUnavailable"
BELOW_MIN = "BelowMinReplicas"
ABOVE_MAX = "AboveMaxReplicas"

# What capped a decision (status.autoscaling.limitedBy).
LIMIT_MAX = "MaxReplicas"
LIMIT_MIN = "MinReplicas"
LIMIT_STEP = "MaxScaleStep"
LIMIT_UNSCHEDULABLE = "Unschedulable"
LIMIT_CAPACITY = "InsufficientCapacity"

# Float noise guard: a queue of exactly 8 with target 4 must give 2, not 3.
_EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    """One observation of a role's queue depth (requests waiting) at unix time ``time``."""

    time: float
    queue_depth: float


@dataclass(frozen=True)
class RoleScaling:
    """The autoscaling spec of one role, the policy's input.

    Built by ``config.role_scaling`` from `spec.<role>.autoscaling` as spec.py parsed and validated
    it; the policy trusts these values. Windows are whole seconds, as in the CRD.
    """

    min_replicas: int = 1
    max_replicas: int = 8
    target_queue_depth: float = 4.0
    tolerance: float = 0.1
    scale_up_stabilization_s: int = 0
    scale_down_stabilization_s: int = 300
    max_scale_step: int = 4


@dataclass(frozen=True)
class Decision:
    """What to do with one role: ``desired`` replicas, a reason constant and a human message.

    ``limited_by`` names the constraint that made ``desired`` differ from the raw recommendation
    (one of the LIMIT_* constants) or is None.
    """

    desired: int
    reason: str
    message: str
    limited_by: str | None = None
    recommendation: int | None = None


def recommend(queue_depth: float, current: int, spec: RoleScaling) -> int:
    """Replicas one sample asks for, before bounds: ceil(queue / target), or ``current``
    when the queue is within ``tolerance`` of what ``current`` replicas are sized for."""
    queue = max(0.0, queue_depth)
    if current > 0 and abs(queue / (current * spec.target_queue_depth) - 1.0) <= spec.tolerance + _EPS:
        return current
    return max(0, math.ceil(queue / spec.target_queue_depth - _EPS))


def _clamp(n: int, spec: RoleScaling) -> int:
    return min(spec.max_replicas, max(spec.min_replicas, n))


def _bounded(current: int, spec: RoleScaling) -> Decision | None:
    """Bring a count outside [min, max] back inside, whatever the metrics say."""
    if current < spec.min_replicas:
        return Decision(
            spec.min_replicas,
            BELOW_MIN,
            f"{current} replicas below minReplicas {spec.min_replicas}",
            LIMIT_MIN,
        )
    if current > spec.max_replicas:
        return Decision(
            spec.max_replicas,
            ABOVE_MAX,
            f"{current} replicas above maxReplicas {spec.max_replicas}",
            LIMIT_MAX,
        )
    return None


def decide(
    samples: Sequence[Sample],
    current: int,
    spec: RoleScaling,
    now: float,
    *,
    metrics_error: str | None = None,
    unschedulable: int = 0,
    capacity: int | None = None,
) -> Decision:
    """Desired replicas for one role, with the reason.

    ``samples`` are this role's recent observations (any order, older ones are ignored past the
    longest window); ``current`` is the workload's spec.replicas; ``now`` the unix time.
    ``metrics_error`` set means the latest scrape failed: replicas hold. ``unschedulable`` counts
    this role's pods the scheduler cannot place: no replicas are added while it is > 0.
    ``capacity``, when known, is the most replicas of this role the cluster can run: scale-up stops
    there. Never returns less than minReplicas or more than maxReplicas, never moves more than
    maxScaleStep from ``current`` (except to come back inside [min, max]).
    """
    bounded = _bounded(current, spec)
    if bounded is not None:
        return bounded
    if metrics_error is not None:
        return Decision(current, METRICS_UNAVAILABLE, f"holding {current} replicas: {metrics_error}")
    ordered = sorted((s for s in samples if s.time <= now + _EPS), key=lambda s: s.time)
    if not ordered:
        return Decision(current, METRICS_UNAVAILABLE, f"holding {current} replicas: no queue samples yet")

    latest = ordered[-1]
    raw = recommend(latest.queue_depth, current, spec)
    up_from = now - spec.scale_up_stabilization_s
    up_window = [s for s in ordered if s.time >= up_from - _EPS] or [latest]
    up_rec = min(recommend(s.queue_depth, current, spec) for s in up_window)
    if spec.scale_up_stabilization_s > 0 and ordered[0].time > up_from + _EPS:
        up_rec = current  # the scale-up window is not observed in full yet
    down_from = now - spec.scale_down_stabilization_s
    # The window's samples plus the one in effect at its start: the queue must have been seen low
    # from the window's first instant on, not merely since the last high sample fell out of it.
    at_start = [s for s in ordered if s.time <= down_from + _EPS][-1:]
    down_window = at_start + [s for s in ordered if s.time > down_from + _EPS]
    down_rec = max(recommend(s.queue_depth, current, spec) for s in down_window)
    # A window is only trusted once observed in full (e.g. after an operator restart).
    down_covered = bool(at_start)

    queue = f"queue {latest.queue_depth:g}, target {spec.target_queue_depth:g}/replica"
    if up_rec > current:
        return _scale_up(current, up_rec, spec, queue, unschedulable, capacity)
    if raw > current:
        return Decision(
            current,
            SCALE_UP_WINDOW,
            f"{queue}: holding {current} until the queue stays high for {spec.scale_up_stabilization_s:g}s",
            recommendation=raw,
        )
    if down_rec < current and down_covered:
        target = max(_clamp(down_rec, spec), current - spec.max_scale_step)
        limited = LIMIT_STEP if target > _clamp(down_rec, spec) else None
        if target < current:
            if limited is None and down_rec < spec.min_replicas:
                limited = LIMIT_MIN
            return Decision(
                target,
                SCALE_DOWN,
                f"{queue}, low for {spec.scale_down_stabilization_s:g}s: {current} -> {target}",
                limited,
                down_rec,
            )
        return Decision(current, STABLE, f"{queue}: at minReplicas {current}", LIMIT_MIN, down_rec)
    if raw < current:
        return Decision(
            current,
            SCALE_DOWN_WINDOW,
            f"{queue}: holding {current} until the queue stays low for {spec.scale_down_stabilization_s:g}s",
            recommendation=raw,
        )
    exact = max(0, math.ceil(max(0.0, latest.queue_depth) / spec.target_queue_depth - _EPS))
    if _clamp(exact, spec) != current:
        return Decision(current, WITHIN_TOLERANCE, f"{queue}: within tolerance of {current}", None, raw)
    return Decision(current, STABLE, f"{queue}: {current} replicas fit", None, raw)


def _scale_up(
    current: int,
    recommended: int,
    spec: RoleScaling,
    queue: str,
    unschedulable: int,
    capacity: int | None,
) -> Decision:
    target = _clamp(recommended, spec)
    limited = LIMIT_MAX if recommended > spec.max_replicas else None
    if target > current + spec.max_scale_step:
        target, limited = current + spec.max_scale_step, LIMIT_STEP
    if unschedulable > 0:
        return Decision(
            current,
            STABLE,
            f"{queue}: wants {target} but {unschedulable} pod(s) cannot be scheduled; holding {current}",
            LIMIT_UNSCHEDULABLE,
            recommended,
        )
    if capacity is not None and target > max(current, capacity):
        target, limited = max(current, capacity), LIMIT_CAPACITY
        if target == current:
            return Decision(
                current,
                STABLE,
                f"{queue}: wants {recommended} but the cluster can run only {capacity}; holding {current}",
                limited,
                recommended,
            )
    if target <= current:
        return Decision(
            current, STABLE, f"{queue}: wants {recommended}, at maxReplicas {current}", limited, recommended
        )
    return Decision(target, SCALE_UP, f"{queue}: {current} -> {target}", limited, recommended)


def prune(samples: Sequence[Sample], now: float, keep_s: float) -> list[Sample]:
    """The samples a policy with windows up to ``keep_s`` still needs: those newer than
    ``now - keep_s`` plus the newest older one (it proves the window is covered)."""
    ordered = sorted(samples, key=lambda s: s.time)
    cut = now - keep_s
    older = [s for s in ordered if s.time < cut - _EPS]
    newer = [s for s in ordered if s.time >= cut - _EPS]
    return older[-1:] + newer
