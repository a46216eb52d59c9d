"""SLO mode's pure policy: stabilizing the planner's answers, and the queue floor and GPU budget."""

from __future__ import annotations

import pytest
from baton_operator.autoscaling.slo import (
    DOWN,
    HOLD_DOWN,
    HOLD_UP,
    LIMIT_BUDGET,
    NONE,
    STEADY,
    UP,
    Combined,
    PlanSample,
    RoleBounds,
    combine,
    slo_target,
)

INTERVAL = 5.0


def hist(*answers: int, end: float = 100.0) -> list[PlanSample]:
    """One answer per interval, the last one at ``end``."""
    n = len(answers)
    return [PlanSample(end - INTERVAL * (n - 1 - i), a) for i, a in enumerate(answers)]


def target(history: list[PlanSample], current: int, now: float = 100.0, up: int = 2, window: float = 30.0):
    return slo_target(history, current, now, interval_s=INTERVAL, up_intervals=up, down_window_s=window)


@pytest.mark.parametrize(
    ("history", "current", "up", "replicas", "state"),
    [
        # Up: the planner asked for more on K consecutive intervals, to the least of them.
        (hist(2, 4, 5), 2, 2, 4, UP),
        (hist(2, 2, 5), 2, 2, 2, HOLD_UP),  # only once so far
        (hist(5, 2, 5), 2, 2, 2, HOLD_UP),  # not consecutive: an alternating answer moves nothing
        (hist(3, 3, 3), 2, 3, 3, UP),
        (hist(3, 3), 2, 3, 2, HOLD_UP),  # K=3 needs three
        (hist(4), 2, 1, 4, UP),  # K=1: at once
        # A gap (a pass without an answer) breaks the run.
        ([PlanSample(80, 4), PlanSample(100, 4)], 2, 2, 2, HOLD_UP),
        # The latest answer is not from this pass: no scale-up on an old answer.
        (hist(4, 4, end=95), 2, 2, 2, HOLD_UP),
        # Down: every answer of the 30 s window (and the one in effect at its start) asked for fewer.
        (hist(*[1] * 8), 4, 2, 1, DOWN),
        (hist(1, 3, 1, 1, 2, 1, 1, 1), 4, 2, 3, DOWN),  # to the most of them (the 3 at its start)
        (hist(*[1] * 6), 4, 2, 4, HOLD_DOWN),  # the window is not observed in full yet (a restart)
        (hist(4, 1, 1, 1, 1, 1, 1, 1), 4, 2, 1, DOWN),  # the 4 fell out of the window
        (hist(1, 1, 4, 1, 1, 1, 1, 1), 4, 2, 4, HOLD_DOWN),  # a 4 inside the window holds
        # Steady, and no answer for a whole window: no opinion (the queue policy alone).
        (hist(3, 3), 3, 2, 3, STEADY),
        ([], 3, 2, None, NONE),
        (hist(1, 1, end=50), 3, 2, None, NONE),
    ],
)
def test_slo_target_stabilizes_the_planner(history, current, up, replicas, state) -> None:
    got = target(history, current, up=up)
    assert (got.replicas, got.state) == (replicas, state), got.message


def test_slo_target_without_a_window_scales_down_at_once() -> None:
    assert target(hist(1), 3, window=0).replicas == 1


def _replay(answers: list[int], current: int, up: int = 2, window: float = 30.0) -> list[int]:
    """Apply slo_target pass by pass to a sequence of planner answers; the counts applied."""
    history: list[PlanSample] = []
    counts = []
    for i, a in enumerate(answers):
        now = INTERVAL * (i + 1)
        history.append(PlanSample(now, a))
        t = target(history, current, now=now, up=up, window=window)
        current = t.replicas if t.replicas is not None else current
        counts.append(current)
    return counts


def _changes(counts: list[int]) -> int:
    return sum(1 for a, b in zip(counts, counts[1:], strict=False) if a != b)


@pytest.mark.parametrize(
    "answers",
    [
        [2, 3] * 40,  # a rate at a bucket edge: the answer alternates every interval
        [3, 2] * 40,
        [1, 4, 4, 1] * 20,  # a two-interval burst, repeated
        [2, 2, 3, 2, 2, 3, 2, 3] * 10,
    ],
)
def test_alternating_answers_do_not_flap(answers) -> None:
    counts = _replay(answers, current=2)
    # At most one move up and no move down inside a window of high answers: never a flap.
    assert _changes(counts) <= 1, counts
    assert counts == sorted(counts), counts


def test_rise_then_fall_moves_once_each_way_after_the_windows() -> None:
    answers = [1] * 10 + [4] * 20 + [1] * 20
    counts = _replay(answers, current=1)
    assert _changes(counts) == 2
    up_at = counts.index(4)
    assert up_at == 10 + 1  # the second consecutive high answer
    down_at = max(i for i, n in enumerate(counts) if n == 4) + 1
    assert (down_at - 30) * INTERVAL >= 30  # the whole 30 s window of low answers first


BOUNDS = {"prefill": RoleBounds(1, 8, 4, 1), "decode": RoleBounds(1, 8, 4, 1)}
TP2 = {"prefill": RoleBounds(1, 8, 4, 2), "decode": RoleBounds(1, 8, 4, 1)}


def run(current, floor, slo, budget=None, bounds=BOUNDS):
    out = combine(current, floor, slo, bounds, budget)
    return {r: c.desired for r, c in out.items()}, out


@pytest.mark.parametrize(
    ("current", "floor", "slo", "budget", "bounds", "expected"),
    [
        # The planner leads when the queue asks for less...
        (
            {"prefill": 1, "decode": 1},
            {"prefill": 1, "decode": 1},
            {"prefill": 2, "decode": 3},
            None,
            BOUNDS,
            (2, 3),
        ),
        # ...the queue floor when it asks for more (a burst the model did not predict).
        (
            {"prefill": 2, "decode": 3},
            {"prefill": 2, "decode": 7},
            {"prefill": 2, "decode": 3},
            None,
            BOUNDS,
            (2, 7),
        ),
        # No opinion from the planner: the queue policy alone.
        (
            {"prefill": 4, "decode": 4},
            {"prefill": 1, "decode": 2},
            {"prefill": None, "decode": None},
            None,
            BOUNDS,
            (1, 2),
        ),
        # maxScaleStep applies to a planner-driven move; bounds always.
        (
            {"prefill": 1, "decode": 1},
            {"prefill": 1, "decode": 1},
            {"prefill": 8, "decode": 12},
            None,
            BOUNDS,
            (5, 5),
        ),
        (
            {"prefill": 8, "decode": 8},
            {"prefill": 1, "decode": 1},
            {"prefill": 1, "decode": 6},
            None,
            BOUNDS,
            (4, 6),
        ),
        # Budget 6: the plan fits; the floor's extra decode does not, past what is left.
        (
            {"prefill": 2, "decode": 3},
            {"prefill": 2, "decode": 7},
            {"prefill": 2, "decode": 3},
            6,
            BOUNDS,
            (2, 4),
        ),
        # The plan moves from 4P+2D to 2P+4D while prefill is held for its window: decode waits.
        (
            {"prefill": 4, "decode": 2},
            {"prefill": 1, "decode": 1},
            {"prefill": 4, "decode": 4},
            6,
            BOUNDS,
            (4, 2),
        ),
        # ...and follows once prefill comes down.
        (
            {"prefill": 4, "decode": 2},
            {"prefill": 1, "decode": 1},
            {"prefill": 2, "decode": 4},
            6,
            BOUNDS,
            (2, 4),
        ),
        # Increases are shared out, one replica at a time to the role with the most wanted.
        (
            {"prefill": 1, "decode": 1},
            {"prefill": 1, "decode": 1},
            {"prefill": 3, "decode": 5},
            6,
            BOUNDS,
            (2, 4),
        ),
        # Over budget already (maxGpus lowered, a manual scale): down, the role furthest above first.
        (
            {"prefill": 4, "decode": 4},
            {"prefill": 4, "decode": 4},
            {"prefill": 4, "decode": 4},
            6,
            BOUNDS,
            (3, 3),
        ),
        (
            {"prefill": 1, "decode": 8},
            {"prefill": 1, "decode": 8},
            {"prefill": 1, "decode": 2},
            6,
            BOUNDS,
            (1, 5),
        ),
        # Prefill TP 2 costs 2 GPUs a replica.
        (
            {"prefill": 1, "decode": 1},
            {"prefill": 1, "decode": 1},
            {"prefill": 3, "decode": 2},
            6,
            TP2,
            (2, 2),
        ),
    ],
)
def test_combine_floor_bounds_step_and_budget(current, floor, slo, budget, bounds, expected) -> None:
    got, out = run(current, floor, slo, budget, bounds)
    assert (got["prefill"], got["decode"]) == expected, out
    if budget is not None:
        assert sum(got[r] * bounds[r].pod_cost for r in got) <= budget


def test_combine_reports_the_driver_and_the_budget_limit() -> None:
    _, out = run({"prefill": 2, "decode": 3}, {"prefill": 2, "decode": 7}, {"prefill": 2, "decode": 3}, 6)
    assert out["decode"] == Combined(4, "queue", 7, LIMIT_BUDGET)
    assert out["prefill"] == Combined(2, "slo", 2, None)


def test_budget_is_respected_on_every_combination() -> None:
    for p in range(1, 9):
        for d in range(1, 9):
            for fp in (1, 4, 8):
                for fd in (1, 4, 8):
                    got, _ = run(
                        {"prefill": p, "decode": d},
                        {"prefill": fp, "decode": fd},
                        {"prefill": 2, "decode": 3},
                        7,
                    )
                    assert got["prefill"] + got["decode"] <= 7, (p, d, fp, fd, got)
                    assert got["prefill"] >= 1 and got["decode"] >= 1
