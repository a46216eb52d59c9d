"""Run the policy over a queue-depth trace, as the operator would, without a cluster.

A trace is a function of time giving the queue depth a role's router would report. The simulator
samples it every ``interval_s``, keeps the history the operator keeps, calls :func:`policy.decide`
and applies the decision at once (a perfect actuator). Used by the tests (burst, sine, noise) and
as a dry run for choosing windows and targets before applying them to a pool.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from baton_operator.autoscaling.policy import Decision, RoleScaling, Sample, decide, prune

Trace = Callable[[float], float]


@dataclass(frozen=True)
class Step:
    """The state after one interval: time, queue seen, replicas after the decision, the decision."""

    time: float
    queue_depth: float
    replicas: int
    decision: Decision


@dataclass(frozen=True)
class Run:
    """A whole simulated run, with the scale events it produced."""

    steps: list[Step]

    @property
    def scale_events(self) -> list[Step]:
        """Steps where the replica count changed."""
        out = []
        prev = None
        for step in self.steps:
            if prev is not None and step.replicas != prev:
                out.append(step)
            prev = step.replicas
        return out

    def replicas_at(self, t: float) -> int:
        """Replicas in effect at time ``t`` (after the last decision at or before ``t``)."""
        current = self.steps[0].replicas
        for step in self.steps:
            if step.time > t:
                break
            current = step.replicas
        return current


def simulate(
    trace: Trace,
    spec: RoleScaling,
    *,
    duration_s: float,
    interval_s: float = 5.0,
    initial_replicas: int | None = None,
    start: float = 0.0,
) -> Run:
    """Sample ``trace`` every ``interval_s`` for ``duration_s`` seconds and apply each decision."""
    replicas = spec.min_replicas if initial_replicas is None else initial_replicas
    keep = max(spec.scale_up_stabilization_s, spec.scale_down_stabilization_s) + interval_s
    history: list[Sample] = []
    steps: list[Step] = []
    n = int(duration_s / interval_s)
    for i in range(n + 1):
        now = start + i * interval_s
        queue = max(0.0, trace(now))
        history = prune([*history, Sample(now, queue)], now, keep)
        decision = decide(history, replicas, spec, now)
        replicas = decision.desired
        steps.append(Step(now, queue, replicas, decision))
    return Run(steps)


def burst(base: float, peak: float, start_s: float, length_s: float) -> Trace:
    """A queue at ``base`` that jumps to ``peak`` for ``length_s`` seconds from ``start_s``."""
    return lambda t: peak if start_s <= t < start_s + length_s else base


def sine(mean: float, amplitude: float, period_s: float) -> Trace:
    """A queue oscillating around ``mean`` (a day of traffic squeezed into ``period_s``)."""
    return lambda t: mean + amplitude * math.sin(2 * math.pi * t / period_s)


def noise(level: float, relative: float, seed: int = 0) -> Trace:
    """A queue at ``level`` with uniform noise of +-``relative`` x level, repeatable by ``seed``."""
    cache: dict[float, float] = {}
    rng = random.Random(seed)

    def trace(t: float) -> float:
        if t not in cache:
            cache[t] = level * (1 + rng.uniform(-relative, relative))
        return cache[t]

    return trace
