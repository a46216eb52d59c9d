"""The policy over whole traces: a burst, a sine, noise."""

from __future__ import annotations

import math

import pytest
from baton_operator.autoscaling.policy import RoleScaling
from baton_operator.autoscaling.simulate import burst, noise, simulate, sine

SPEC = RoleScaling(
    min_replicas=1,
    max_replicas=8,
    target_queue_depth=4,
    tolerance=0.1,
    scale_up_stabilization_s=0,
    scale_down_stabilization_s=60,
    max_scale_step=4,
)


def test_autoscaling_sim_burst_follows_and_waits_the_window() -> None:
    # 2 requests waiting, then 24 for two minutes, then back to 2.
    run = simulate(burst(2, 24, 100, 120), SPEC, duration_s=400, interval_s=5)
    assert run.replicas_at(95) == 1
    # One interval after the spike: +4 (max step) at once, the rest at the next interval.
    assert run.replicas_at(100) == 5
    assert run.replicas_at(105) == 6
    # The burst ends at 220; replicas hold for the 60 s window, then return to min.
    assert run.replicas_at(275) == 6
    assert run.replicas_at(280) == 2  # max step 4 per decision
    assert run.replicas_at(285) == 1
    assert [s.replicas for s in run.scale_events] == [5, 6, 2, 1]


def test_autoscaling_sim_sine_tracks_load_within_bounds() -> None:
    spec = RoleScaling(min_replicas=2, max_replicas=6, target_queue_depth=4, scale_down_stabilization_s=30)
    run = simulate(sine(14, 14, 600), spec, duration_s=1800, interval_s=5)
    replicas = [s.replicas for s in run.steps]
    assert min(replicas) == 2 and max(replicas) == 6
    assert all(2 <= r <= 6 for r in replicas)
    # Never under-provisioned beyond tolerance after a decision (up to the step cap).
    for prev, step in zip(run.steps, run.steps[1:], strict=False):
        need = min(6, max(2, math.ceil(step.queue_depth / (4 * (1 + spec.tolerance)) - 1e-9)))
        assert step.replicas >= min(need, prev.replicas + spec.max_scale_step)
    # Three periods: up and down three times, not more (no flapping on the slopes).
    ups = sum(1 for a, b in zip(replicas, replicas[1:], strict=False) if b > a)
    downs = sum(1 for a, b in zip(replicas, replicas[1:], strict=False) if b < a)
    assert ups >= 3 and downs >= 3
    direction_changes = sum(
        1 for a, b, c in zip(replicas, replicas[1:], replicas[2:], strict=False) if (b - a) * (c - b) < 0
    )
    assert direction_changes == 0  # a change of direction always has a hold in between
    assert len(run.scale_events) <= 3 * (4 + 4)


@pytest.mark.parametrize("seed", range(5))
def test_autoscaling_sim_noise_within_tolerance_no_events(seed: int) -> None:
    # A queue of 12 (3 replicas' worth) with +-9% noise: inside the 10% tolerance.
    run = simulate(noise(12, 0.09, seed), SPEC, duration_s=1200, interval_s=5, initial_replicas=3)
    assert run.scale_events == []
    assert {s.replicas for s in run.steps} == {3}


def test_autoscaling_sim_noise_beyond_tolerance_bounded_flap() -> None:
    # Noise of +-30% crosses tolerance: scale-ups happen, but the down window keeps them.
    run = simulate(noise(12, 0.3, 7), SPEC, duration_s=1200, interval_s=5, initial_replicas=3)
    replicas = [s.replicas for s in run.steps]
    downs = [b for a, b in zip(replicas, replicas[1:], strict=False) if b < a]
    assert max(replicas) <= 5
    assert len(downs) <= 1  # settles at the noise's upper level and stays
