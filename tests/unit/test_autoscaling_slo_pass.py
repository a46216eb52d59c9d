"""SLO-mode passes over a pool, with a fake cluster and synthetic router counters (pure logic)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from baton_operator.autoscaling import config
from baton_operator.autoscaling.capacity import Scheduling
from baton_operator.autoscaling.controller import PoolState, Workload
from baton_operator.autoscaling.signal import SignalError
from baton_operator.autoscaling.slo_pass import SloState, run_slo_pass
from baton_operator.autoscaling.slo_plan import Bounds, plan_pool
from baton_operator.autoscaling.slo_profile import ProfileUnavailable
from baton_operator.autoscaling.slo_rate import Counters, CounterSample, planned_inputs
from baton_operator.autoscaling.slo_signal import Reading
from baton_operator.planning.profile import load_profile

PROFILE = load_profile(Path(__file__).resolve().parents[2] / "profiles" / "h100-llama3-8b.json")
INTERVAL = 5
WINDOW_S = 30
ROLE = {"enabled": True, "minReplicas": 1, "maxReplicas": 8, "scaleDownStabilizationSeconds": WINDOW_S}
SPEC = {
    "prefill": {"autoscaling": {**ROLE, "targetQueueDepth": 4}},
    "decode": {"autoscaling": {**ROLE, "targetQueueDepth": 16}},
    "autoscaling": {
        "intervalSeconds": INTERVAL,
        "slo": {
            "ttftMs": 500,
            "itlMs": 50,
            "profile": {"configMapRef": {"name": "h100"}},
            "rateWindowSeconds": 15,
        },
    },
}
CFG = config.parse(SPEC)


@dataclass
class FakeCluster:
    replicas: dict[str, int] = field(default_factory=lambda: {"prefill": 1, "decode": 1})
    unschedulable: int = 0
    writes: list[tuple[str, int]] = field(default_factory=list)

    def workload(self, namespace: str, pool: str, role: str) -> Workload | None:
        kind = "StatefulSet" if role == "prefill" else "Deployment"
        return Workload(kind, f"{pool}-{role}", namespace, self.replicas[role], pool=pool, role=role)

    def scheduling(self, namespace: str, pool: str, role: str) -> Scheduling:
        return Scheduling(self.replicas[role], self.unschedulable, ("0/6 nodes are available",))

    def capacity(self, workload: Workload, scheduled: int) -> int | None:
        return None

    def begin_pass(self) -> None:
        pass

    def set_replicas(self, workload: Workload, replicas: int) -> None:
        self.writes.append((workload.kind, replicas))
        self.replicas[workload.name.rsplit("-", 1)[1]] = replicas


@dataclass
class Router:
    """A router's counters under a load that the test changes: requests finish as they arrive."""

    rate: float = 0.0
    isl: float = 1000
    osl: float = 200
    t: float = 0.0
    counts: Counters = Counters(started=1.0)
    queue: dict[str, float] = field(default_factory=lambda: {"prefill": 0.0, "decode": 0.0})

    def advance(self, now: float) -> None:
        n = self.rate * (now - self.t)
        c = self.counts
        self.counts = Counters(
            c.requests + n,
            c.finished + n,
            c.prompt_tokens + n * self.isl,
            c.generation_tokens + n * self.osl,
            c.started,
        )
        self.t = now

    def restart(self, now: float) -> None:
        self.t, self.counts = now, Counters(started=now)

    def reading(self, now: float) -> Reading:
        self.advance(now)
        return Reading(dict(self.queue), CounterSample(now, {"r1": self.counts}))


def profile(namespace: str, name: str, key: str):
    return PROFILE, "v1"


class Pool:
    def __init__(self, cfg=CFG, cluster: FakeCluster | None = None, get_profile=profile) -> None:
        self.cfg, self.cluster, self.get_profile = cfg, cluster or FakeCluster(), get_profile
        self.state, self.slo, self.router = PoolState(), SloState(), Router()
        self.now, self.history, self.events, self.status = 1000.0, [], [], {}

    def step(self, seconds: float = INTERVAL, fail: bool = False):
        for _ in range(int(seconds // INTERVAL)):
            self.now += INTERVAL
            now = self.now

            def read(now: float = now) -> Reading:
                if fail:
                    raise SignalError("connection refused")
                return self.router.reading(now)

            result = run_slo_pass(
                self.state, self.slo, self.cfg, "p", "ns", now, read, self.cluster, self.get_profile, "fake"
            )
            self.events += result.events
            self.status = result.status
            self.history.append((self.cluster.replicas["prefill"], self.cluster.replicas["decode"]))
        return self.history[-1]


def expected(rate: float, cfg=CFG) -> tuple[int, int]:
    slo = cfg.slo
    bounds = Bounds(1, 8, 1, 8, slo.max_gpus)
    got = plan_pool(PROFILE, slo, bounds, *planned_inputs(rate, 1000, 200))
    return got.prefill, got.decode


def changes(values: list[int]) -> int:
    return sum(1 for a, b in zip(values, values[1:], strict=False) if a != b)


def test_rising_then_falling_load_moves_both_roles_to_the_plan_and_back() -> None:
    pool = Pool()
    pool.router.rate = 2
    assert pool.step(60) == expected(2) == (1, 1)
    pool.router.rate = 30
    high = expected(30)
    assert high[0] >= 2 and high[1] >= 3
    pool.step(60)
    assert pool.history[-1] == high
    rise = len(pool.history)
    pool.step(60)  # steady: nothing moves
    assert pool.history[-1] == high and changes([p for p, _ in pool.history[rise - 1 :]]) == 0
    pool.router.rate = 2
    fall = len(pool.history)
    pool.step(WINDOW_S)  # within the scale-down window: held
    assert pool.history[-1] == high
    pool.step(60)
    assert pool.history[-1] == (1, 1)
    for role in (0, 1):
        up, down = [h[role] for h in pool.history[:fall]], [h[role] for h in pool.history[fall - 1 :]]
        assert up == sorted(up) and down == sorted(down, reverse=True), pool.history  # no flap
    reasons = [e.reason for e in pool.events]
    assert "SloScaleUp" in reasons and "SloScaleDown" in reasons and "ScaleUp" not in reasons
    up_event = next(e for e in pool.events if e.reason == "SloScaleUp")
    assert "planner asked for more on 2 intervals" in up_event.message and "->" in up_event.message


def test_status_shows_the_planner_decision() -> None:
    pool = Pool()
    pool.router.rate = 20
    pool.step(30)
    slo = pool.status["autoscaling"]["slo"]
    rate, isl, osl = planned_inputs(20, 1000, 200)
    assert (slo["rateRps"], slo["inputTokens"], slo["outputTokens"]) == (rate, isl, osl)
    assert (slo["prefillReplicas"], slo["decodeReplicas"]) == expected(20)
    assert slo["feasible"] is True and slo["binding"] in (
        "ttft",
        "itl",
        "prefill capacity",
        "decode capacity",
    )
    assert slo["gpus"] == sum(expected(20)) and slo["ttftP90Ms"] <= 500 and slo["maxRateRps"] >= rate
    assert f"{rate:.3g} req/s, ISL {isl}, OSL {osl}" in slo["message"]
    assert pool.status["prefill"]["desiredReplicas"] == expected(20)[0]
    assert pool.slo.cache.misses <= 3 and pool.slo.cache.hits >= 2  # a steady load plans once


def test_cold_start_waits_for_a_rate_and_a_router_restart_is_ignored() -> None:
    pool = Pool()
    pool.router.rate = 30
    pool.step()
    assert "no rate yet (first sample)" in pool.status["autoscaling"]["slo"]["message"]
    pool.step(60)
    high = pool.history[-1]
    assert high == expected(30)
    pool.router.restart(pool.now + 1)  # counters back to 0: that window is left out
    pool.step(60)
    assert set(pool.history[-13:]) == {high}
    assert not [e for e in pool.events if e.warning]


def test_queue_floor_scales_a_burst_the_planner_did_not_predict() -> None:
    pool = Pool()
    pool.router.rate = 2
    pool.step(30)
    pool.router.queue = {"prefill": 2, "decode": 100}  # 100 waiting for decode at 16 per replica
    pool.step()
    assert pool.history[-1] == (1, 5)  # at once (4 a step), not after two intervals
    assert pool.events[-1].reason == "ScaleUp"
    pool.router.queue = {"prefill": 0, "decode": 0}
    pool.step(WINDOW_S)
    assert pool.history[-1][1] == 5  # the queue policy's own scale-down window
    pool.step(WINDOW_S)
    assert pool.history[-1] == (1, 1)


def test_budget_caps_the_plan_and_the_floor() -> None:
    spec = copy.deepcopy(SPEC)
    spec["autoscaling"]["slo"]["maxGpus"] = 4
    pool = Pool(config.parse(spec))
    pool.router.rate = 30
    pool.router.queue = {"prefill": 40, "decode": 400}
    pool.step(120)
    assert all(p + d <= 4 for p, d in pool.history), pool.history
    assert "MaxGpus" in (pool.status["autoscaling"]["limitedBy"] or "")
    assert pool.status["autoscaling"]["slo"]["feasible"] is False


def test_unusable_profile_warns_once_and_the_queue_still_scales() -> None:
    def missing(namespace: str, name: str, key: str):
        raise ProfileUnavailable("ConfigMap ns/h100 not found")

    pool = Pool(get_profile=missing)
    pool.router.rate = 30
    pool.step(30)
    assert pool.history[-1] == (1, 1)
    assert "ConfigMap ns/h100 not found" in pool.status["autoscaling"]["slo"]["message"]
    assert [e.reason for e in pool.events] == ["SloUnavailable"]
    pool.router.queue = {"prefill": 12, "decode": 0}
    pool.step()
    assert pool.history[-1] == (3, 1)


def test_failed_reads_hold_and_unschedulable_pods_stop_a_planner_scale_up() -> None:
    pool = Pool()
    pool.router.rate = 2
    pool.step(30)
    pool.step(30, fail=True)
    assert pool.history[-1] == (1, 1) and pool.status["autoscaling"]["metricsAvailable"] is False
    assert "could not be read" in pool.status["autoscaling"]["slo"]["message"]
    pool.cluster.unschedulable = 1
    pool.router.rate = 30
    pool.step(60)
    assert pool.history[-1] == (1, 1)
    assert "Unschedulable" in (pool.status["autoscaling"]["limitedBy"] or "")
    pool.cluster.unschedulable = 0
    pool.step(10)
    assert pool.history[-1] == expected(30)
