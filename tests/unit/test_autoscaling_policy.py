"""Table-driven tests of the autoscaling policy (pure)."""

from __future__ import annotations

import pytest
from baton_operator.autoscaling import policy
from baton_operator.autoscaling.policy import Decision, RoleScaling, Sample, decide, prune, recommend

SPEC = RoleScaling(
    min_replicas=1,
    max_replicas=8,
    target_queue_depth=4,
    tolerance=0.1,
    scale_up_stabilization_s=0,
    scale_down_stabilization_s=30,
    max_scale_step=4,
)
WIDE = RoleScaling(min_replicas=1, max_replicas=32, target_queue_depth=4, scale_down_stabilization_s=30)
NOW = 1000.0


def steady(queue: float, span: float = 60, every: float = 5, now: float = NOW) -> list[Sample]:
    """Samples of a constant queue covering ``span`` seconds up to ``now``."""
    n = int(span / every)
    return [Sample(now - span + i * every, queue) for i in range(n + 1)]


def drop(high: float, low: float, low_for: float, now: float = NOW, every: float = 5) -> list[Sample]:
    """High for a minute, then low for the last ``low_for`` seconds."""
    start = now - low_for
    return steady(high, 60, every, start - every) + steady(low, low_for, every, now)


CASES: list[tuple[str, list[Sample], int, RoleScaling, dict, int, str, str | None]] = [
    # name, samples, current, spec, kwargs, desired, reason, limited_by
    ("steady at target", steady(8), 2, SPEC, {}, 2, policy.STABLE, None),
    ("spike scales up at once", steady(4)[:-1] + [Sample(NOW, 20)], 1, SPEC, {}, 5, policy.SCALE_UP, None),
    (
        "spike capped by step",
        steady(4)[:-1] + [Sample(NOW, 40)],
        1,
        SPEC,
        {},
        5,
        policy.SCALE_UP,
        "MaxScaleStep",
    ),
    ("spike capped by max", steady(40), 6, SPEC, {}, 8, policy.SCALE_UP, "MaxReplicas"),
    ("at max stays", steady(400), 8, SPEC, {}, 8, policy.STABLE, "MaxReplicas"),
    ("noise within tolerance up", steady(8.7), 2, SPEC, {}, 2, policy.WITHIN_TOLERANCE, None),
    ("ceil keeps a lower queue", steady(7.3), 2, SPEC, {}, 2, policy.STABLE, None),
    ("noise within tolerance down", steady(76), 20, WIDE, {}, 20, policy.WITHIN_TOLERANCE, None),
    ("just above tolerance", steady(8.9), 2, SPEC, {}, 3, policy.SCALE_UP, None),
    ("low but inside down window", drop(24, 0, 20), 6, SPEC, {}, 6, policy.SCALE_DOWN_WINDOW, None),
    ("low for the whole window", drop(24, 0, 35), 6, SPEC, {}, 2, policy.SCALE_DOWN, "MaxScaleStep"),
    ("scale down to min", drop(12, 0, 35), 3, SPEC, {}, 1, policy.SCALE_DOWN, "MinReplicas"),
    (
        "high sample just before the window still counts",
        [Sample(NOW - 32, 24)] + [Sample(NOW - 27 + 5 * i, 0) for i in range(6)],
        6,
        SPEC,
        {},
        6,
        policy.SCALE_DOWN_WINDOW,
        None,
    ),
    (
        "low since the window's first instant",
        [Sample(NOW - 35, 24)] + [Sample(NOW - 30 + 5 * i, 0) for i in range(7)],
        6,
        SPEC,
        {},
        2,
        policy.SCALE_DOWN,
        "MaxScaleStep",
    ),
    ("scale down to the window max", drop(24, 8, 35), 4, SPEC, {}, 2, policy.SCALE_DOWN, None),
    ("never below min", steady(0), 1, SPEC, {}, 1, policy.STABLE, "MinReplicas"),
    ("below min raised", steady(0), 0, SPEC, {}, 1, policy.BELOW_MIN, "MinReplicas"),
    ("above max lowered", steady(0), 12, SPEC, {}, 8, policy.ABOVE_MAX, "MaxReplicas"),
    (
        "window not yet observed (restart)",
        [Sample(NOW - 10, 0), Sample(NOW, 0)],
        5,
        SPEC,
        {},
        5,
        policy.SCALE_DOWN_WINDOW,
        None,
    ),
    (
        "metrics down holds",
        steady(40),
        3,
        SPEC,
        {"metrics_error": "timeout"},
        3,
        policy.METRICS_UNAVAILABLE,
        None,
    ),
    (
        "metrics down still honours min",
        steady(40),
        0,
        SPEC,
        {"metrics_error": "x"},
        1,
        policy.BELOW_MIN,
        "MinReplicas",
    ),
    ("no samples holds", [], 3, SPEC, {}, 3, policy.METRICS_UNAVAILABLE, None),
    (
        "unschedulable stops scale-up",
        steady(40),
        3,
        SPEC,
        {"unschedulable": 1},
        3,
        policy.STABLE,
        "Unschedulable",
    ),
    (
        "unschedulable does not stop scale-down",
        drop(40, 0, 35),
        3,
        SPEC,
        {"unschedulable": 1},
        1,
        policy.SCALE_DOWN,
        "MinReplicas",
    ),
    (
        "capacity caps scale-up",
        steady(40),
        2,
        SPEC,
        {"capacity": 4},
        4,
        policy.SCALE_UP,
        "InsufficientCapacity",
    ),
    ("no capacity holds", steady(40), 4, SPEC, {"capacity": 3}, 4, policy.STABLE, "InsufficientCapacity"),
    (
        "up window holds a short spike",
        steady(4)[:-1] + [Sample(NOW, 24)],
        1,
        RoleScaling(scale_up_stabilization_s=10, scale_down_stabilization_s=30),
        {},
        1,
        policy.SCALE_UP_WINDOW,
        None,
    ),
    (
        "up window passes a sustained spike",
        steady(4, 60)[:-3] + [Sample(NOW - 10, 24), Sample(NOW - 5, 20), Sample(NOW, 28)],
        1,
        RoleScaling(scale_up_stabilization_s=10, scale_down_stabilization_s=30),
        {},
        5,
        policy.SCALE_UP,
        None,
    ),
    ("future samples ignored", steady(8) + [Sample(NOW + 50, 400)], 2, SPEC, {}, 2, policy.STABLE, None),
]


@pytest.mark.parametrize(
    "name,samples,current,spec,kwargs,desired,reason,limited", CASES, ids=[c[0] for c in CASES]
)
def test_autoscaling_policy_table(name, samples, current, spec, kwargs, desired, reason, limited) -> None:
    d = decide(samples, current, spec, NOW, **kwargs)
    assert isinstance(d, Decision)
    assert (d.desired, d.reason, d.limited_by) == (desired, reason, limited), d.message
    assert spec.min_replicas <= d.desired <= spec.max_replicas
    assert d.message


@pytest.mark.parametrize(
    "queue,current,want",
    [(0, 1, 0), (4, 1, 1), (8, 1, 2), (8.0000001, 2, 2), (9, 2, 3), (4.4, 1, 1), (4.5, 1, 2), (1, 0, 1)],
)
def test_autoscaling_recommend(queue: float, current: int, want: int) -> None:
    assert recommend(queue, current, SPEC) == want


def test_autoscaling_prune_keeps_window_proof() -> None:
    samples = steady(3, span=100)
    kept = prune(samples, NOW, 30)
    assert kept[0].time < NOW - 30 <= kept[1].time
    assert kept[-1].time == NOW
    # A pruned history gives the same decision as the full one.
    assert decide(kept, 6, SPEC, NOW) == decide(samples, 6, SPEC, NOW)
