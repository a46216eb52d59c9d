"""SLO mode's policy (pure): stabilize the planner's answers, combine them with the queue floor.

Each pass the planner (slo_plan.py) says how many replicas each role needs for the measured
load. Acting on every answer would thrash: the estimate moves with every window, and a cold start
or a short burst is not a new steady load. :func:`slo_target` turns a role's history of answers
into what to apply:

- **up** when the planner asked for more than the current count on ``up_intervals``
  consecutive passes (this one included): to the least of those answers;
- **down** only once every answer of the role's ``scaleDownStabilizationSeconds`` window (and the
  one in effect at its start: the window must be observed in full, e.g. after an operator restart)
  asked for fewer: to the most of them;
- otherwise **hold** the current count. An answer that alternates around the current count
  never satisfies either rule, so it moves nothing.
- no answer at all for a whole window (no rate, no profile): no opinion (``None``); the
  queue-depth policy alone decides, as without SLO mode.

:func:`combine` applies, per role, replicas = max(planner's, queue-depth policy's): the queue
policy is a floor, so a burst the planner did not predict (a load above the measured average, a
profile that flatters the hardware) still scales at the next interval. Then the role's
[minReplicas, maxReplicas], its maxScaleStep for a planner-driven move, and ``maxGpus``: a
decrease always fits; increases are granted one replica at a time to the role with the most
still wanted, while they fit; a pool over budget (a lowered maxGpus, a manual scale) comes down,
roles above the planner's number first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SLO_SCALE_UP = "SloScaleUp"  # Event reasons and lastScaleReason prefixes
SLO_SCALE_DOWN = "SloScaleDown"
LIMIT_BUDGET = "MaxGpus"  # status.autoscaling.limitedBy: <role>:MaxGpus

UP, DOWN, HOLD_UP, HOLD_DOWN, STEADY, NONE = "up", "down", "hold-up", "hold-down", "steady", "none"
_EPS = 1e-6


@dataclass(frozen=True)
class PlanSample:
    """The planner's answer for one role at one pass."""

    time: float
    replicas: int


@dataclass(frozen=True)
class SloTarget:
    """What SLO mode wants for a role: ``replicas`` (None: no opinion), ``state`` (one of UP, DOWN,
    HOLD_UP, HOLD_DOWN, STEADY, NONE) and the words for it."""

    replicas: int | None
    state: str
    message: str


def slo_target(
    history: Sequence[PlanSample],
    current: int,
    now: float,
    *,
    interval_s: float,
    up_intervals: int,
    down_window_s: float,
) -> SloTarget:
    """The stabilized planner target of one role (see the module docstring)."""
    ordered = sorted((h for h in history if h.time <= now + _EPS), key=lambda h: h.time)
    stale_after = max(down_window_s, 3 * interval_s)
    if not ordered or ordered[-1].time <= now - stale_after - _EPS:
        return SloTarget(None, NONE, f"no planner answer for {stale_after:g}s")
    latest = ordered[-1]
    run = _consecutive(ordered, now, interval_s)
    if latest.replicas > current:
        if len(run) >= up_intervals and all(h.replicas > current for h in run[-up_intervals:]):
            target = min(h.replicas for h in run[-up_intervals:])
            return SloTarget(
                target, UP, f"planner asked for more on {up_intervals} intervals: {current} -> {target}"
            )
        above = 0
        for h in reversed(run):
            if h.replicas <= current:
                break
            above += 1
        return SloTarget(
            current, HOLD_UP, f"planner asks for {latest.replicas} ({above} of {up_intervals} intervals)"
        )
    down_from = now - down_window_s
    at_start = [h for h in ordered if h.time <= down_from + _EPS][-1:]
    window = at_start + [h for h in ordered if h.time > down_from + _EPS]
    highest = max(h.replicas for h in window)
    if latest.replicas < current:
        if at_start and highest < current:
            return SloTarget(
                highest, DOWN, f"planner asked for fewer for {down_window_s:g}s: {current} -> {highest}"
            )
        return SloTarget(
            current,
            HOLD_DOWN,
            f"planner asks for {latest.replicas}; holding {current} for {down_window_s:g}s",
        )
    return SloTarget(current, STEADY, f"planner asks for {current}")


def _consecutive(ordered: Sequence[PlanSample], now: float, interval_s: float) -> list[PlanSample]:
    """The answers of the latest passes without a gap, ending with one from this pass."""
    if not ordered or ordered[-1].time < now - 0.5 * interval_s - _EPS:
        return []
    run = [ordered[-1]]
    for h in reversed(ordered[:-1]):
        if run[0].time - h.time > 1.5 * interval_s + _EPS:
            break
        run.insert(0, h)
    return run


@dataclass(frozen=True)
class RoleBounds:
    """A role's limits: replicas, most replicas per decision, and what one pod costs against maxGpus."""

    min_replicas: int
    max_replicas: int
    max_scale_step: int
    pod_cost: int


@dataclass(frozen=True)
class Combined:
    """A role's final count; ``driver`` is "slo" or "queue" (which asked for it), ``limited_by``
    LIMIT_BUDGET when maxGpus held it below that."""

    desired: int
    driver: str
    wanted: int
    limited_by: str | None = None


def _wanted(current: int, floor: int, slo: int | None, b: RoleBounds) -> tuple[int, str]:
    if slo is None or floor > slo:
        want, driver = floor, "queue"  # the queue policy's own decision: already bounded and stepped
    else:
        want, driver = slo, "slo"
        if want > current:
            want = min(want, current + b.max_scale_step)
        elif want < current:
            want = max(want, current - b.max_scale_step)
    return min(b.max_replicas, max(b.min_replicas, want)), driver


def _cost(counts: Mapping[str, int], bounds: Mapping[str, RoleBounds]) -> int:
    return sum(n * bounds[r].pod_cost for r, n in counts.items())


def combine(
    current: Mapping[str, int],
    floor: Mapping[str, int],
    slo: Mapping[str, int | None],
    bounds: Mapping[str, RoleBounds],
    max_gpus: int | None,
) -> dict[str, Combined]:
    """Final replicas per role: max(planner, queue floor) within bounds, step and budget."""
    wanted: dict[str, tuple[int, str]] = {
        r: _wanted(current[r], floor[r], slo.get(r), bounds[r]) for r in current
    }
    if max_gpus is None:
        return {r: Combined(n, d, n) for r, (n, d) in wanted.items()}
    out = {r: min(current[r], n) for r, (n, _) in wanted.items()}  # decreases now, increases below
    # Over budget before any increase: come down, roles above what they are wanted at first.
    while _cost(out, bounds) > max_gpus:
        shrinkable = [r for r in out if out[r] > bounds[r].min_replicas]
        if not shrinkable:
            break
        r = max(shrinkable, key=lambda r: (out[r] - wanted[r][0], out[r] * bounds[r].pod_cost, r))
        out[r] -= 1
    pending = {r: n - out[r] for r, (n, _) in wanted.items() if n > out[r]}
    while pending:
        r = max(sorted(pending), key=lambda r: pending[r])
        if _cost(out, bounds) + bounds[r].pod_cost > max_gpus:
            del pending[r]
            continue
        out[r] += 1
        pending[r] -= 1
        if not pending[r]:
            del pending[r]
    return {r: Combined(out[r], d, n, LIMIT_BUDGET if out[r] < n else None) for r, (n, d) in wanted.items()}
