"""One autoscaling pass over a pool, with a fake cluster (pure logic; the real API is in the sandbox tests)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from baton_operator.autoscaling import config, controller
from baton_operator.autoscaling.capacity import Scheduling
from baton_operator.autoscaling.controller import PoolState, Workload, run_pass, status_to_write
from baton_operator.autoscaling.signal import SignalError

SPEC = {
    "autoscaling": {"intervalSeconds": 1},
    "prefill": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 6,
            "targetQueueDepth": 4,
            "scaleDownStabilizationSeconds": 10,
        }
    },
    "decode": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 8,
            "targetQueueDepth": 8,
            "scaleDownStabilizationSeconds": 10,
        }
    },
}
CFG = config.parse(SPEC)


@dataclass
class FakeCluster:
    replicas: dict[str, int] = field(default_factory=lambda: {"prefill": 1, "decode": 2})
    unschedulable: int = 0
    capacity_left: int | None = None
    fail_writes: bool = False
    writes: list[tuple[str, int]] = field(default_factory=list)
    passes: int = 0

    def workload(self, namespace: str, pool: str, role: str) -> Workload | None:
        if role not in self.replicas:
            return None
        kind = "StatefulSet" if role == "prefill" else "Deployment"
        return Workload(kind, f"{pool}-{role}", namespace, self.replicas[role])

    def scheduling(self, namespace: str, pool: str, role: str) -> Scheduling:
        return Scheduling(
            self.replicas[role] - self.unschedulable, self.unschedulable, ("0/6 nodes are available",)
        )

    def capacity(self, workload: Workload, scheduled: int) -> int | None:
        return None if self.capacity_left is None else scheduled + self.capacity_left

    def begin_pass(self) -> None:
        self.passes += 1

    def set_replicas(self, workload: Workload, replicas: int) -> None:
        if self.fail_writes:
            raise RuntimeError("apiserver said no")
        self.writes.append((workload.name.split("-")[-1], replicas))
        self.replicas[workload.name.split("-")[-1]] = replicas


def signal_of(**depths: float):
    return lambda: depths


def failing() -> dict:
    raise SignalError("connection refused")


def test_autoscaling_pass_scales_both_roles_and_reports() -> None:
    state, cluster = PoolState(), FakeCluster()
    res = run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=16, decode=40), cluster, "http://m")
    assert cluster.replicas == {"prefill": 4, "decode": 5}
    assert res.status["prefill"]["desiredReplicas"] == 4 and res.status["prefill"]["queueDepth"] == 16
    assert res.status["decode"]["lastScaleReason"].startswith("ScaleUp")
    assert res.status["prefill"]["lastScaleTime"] == "1970-01-01T00:01:40Z"
    assert res.status["autoscaling"]["metricsAvailable"] is True
    assert res.status["autoscaling"]["limitedBy"] is None
    assert [e.reason for e in res.events] == ["ScaleUp", "ScaleUp"]


def test_autoscaling_pass_holds_and_warns_when_metrics_fail() -> None:
    state, cluster = PoolState(), FakeCluster(replicas={"prefill": 3, "decode": 2})
    res = run_pass(state, CFG, "p", "ns", 100.0, failing, cluster, "http://m")
    assert cluster.writes == []
    assert res.status["autoscaling"]["metricsAvailable"] is False
    assert "connection refused" in res.status["autoscaling"]["message"]
    assert "http://m" in res.status["autoscaling"]["message"]
    assert [e.reason for e in res.events] == ["MetricsUnavailable"]
    # The warning is posted on the transition only, not every interval.
    res = run_pass(state, CFG, "p", "ns", 101.0, failing, cluster, "http://m")
    assert res.events == []


def test_autoscaling_pass_missing_role_metric_holds_that_role() -> None:
    state, cluster = PoolState(), FakeCluster()
    res = run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=16), cluster, "http://m")
    assert cluster.replicas == {"prefill": 4, "decode": 2}
    assert res.status["autoscaling"]["metricsAvailable"] is False
    assert "role='decode'" in res.status["autoscaling"]["message"]


def test_autoscaling_pass_unschedulable_limits() -> None:
    state, cluster = PoolState(), FakeCluster(replicas={"prefill": 3, "decode": 2}, unschedulable=1)
    res = run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=40, decode=0), cluster)
    assert cluster.replicas["prefill"] == 3
    assert res.status["autoscaling"]["limitedBy"] == "prefill:Unschedulable"
    assert "0/6 nodes are available" in res.status["autoscaling"]["message"]


def test_autoscaling_pass_capacity_limits() -> None:
    state, cluster = PoolState(), FakeCluster(capacity_left=1)
    run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=40, decode=16), cluster)
    assert cluster.replicas == {"prefill": 2, "decode": 2}


def test_autoscaling_pass_failed_write_is_reported_not_raised() -> None:
    state, cluster = PoolState(), FakeCluster(fail_writes=True)
    res = run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=40, decode=0), cluster)
    assert "apiserver said no" in res.status["autoscaling"]["message"]
    assert "lastScaleTime" not in res.status["prefill"]
    assert any(e.warning and e.reason == "ScaleFailed" for e in res.events)


def test_autoscaling_pass_waits_for_workload() -> None:
    state, cluster = PoolState(), FakeCluster(replicas={"prefill": 1})
    res = run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=0, decode=0), cluster)
    assert "decode" not in res.status
    assert "decode: waiting for its workload" in res.status["autoscaling"]["message"]


def test_autoscaling_spike_then_drop_over_passes() -> None:
    state, cluster = PoolState(), FakeCluster()
    t = 100.0
    run_pass(state, CFG, "p", "ns", t, signal_of(prefill=20, decode=64), cluster)
    assert cluster.replicas == {"prefill": 5, "decode": 6}
    for i in range(1, 10):  # low for 9 s: the 10 s window holds
        run_pass(state, CFG, "p", "ns", t + i, signal_of(prefill=0, decode=0), cluster)
        assert cluster.replicas == {"prefill": 5, "decode": 6}
    run_pass(state, CFG, "p", "ns", t + 11, signal_of(prefill=0, decode=0), cluster)
    assert cluster.replicas == {"prefill": 1, "decode": 2}


def test_autoscaling_status_written_only_on_change_or_heartbeat() -> None:
    state, cluster = PoolState(), FakeCluster()
    res = run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=4, decode=16), cluster)
    patch = status_to_write(state, res, 100.0)
    assert patch is not None
    controller.mark_written(state, patch, 100.0)
    res = run_pass(state, CFG, "p", "ns", 101.0, signal_of(prefill=4, decode=16), cluster)
    assert status_to_write(state, res, 101.0) is None  # only lastSampleTime moved
    res = run_pass(state, CFG, "p", "ns", 102.0, signal_of(prefill=3, decode=16), cluster)
    assert status_to_write(state, res, 102.0) is not None  # the queue moved
    res = run_pass(
        state,
        CFG,
        "p",
        "ns",
        100.0 + controller.STATUS_HEARTBEAT_S + 1,
        signal_of(prefill=4, decode=16),
        cluster,
    )
    assert status_to_write(state, res, 100.0 + controller.STATUS_HEARTBEAT_S + 1) is not None


def test_autoscaling_due_and_seed() -> None:
    state = PoolState()
    cfg = replace(CFG, interval_s=5)
    assert controller.due(state, cfg, 0.0)
    state.last_pass = 0.0
    assert not controller.due(state, cfg, 4.0)
    assert controller.due(state, cfg, 4.9)
    controller.seed_from_status(
        state, {"prefill": {"lastScaleTime": "2026-01-01T00:00:00Z", "lastScaleReason": "x"}}
    )
    assert state.roles["prefill"].last_scale_time == "2026-01-01T00:00:00Z"


def test_autoscaling_outage_restarts_the_scale_down_window() -> None:
    state, cluster = PoolState(), FakeCluster()
    run_pass(state, CFG, "p", "ns", 100.0, signal_of(prefill=20, decode=64), cluster)
    assert cluster.replicas == {"prefill": 5, "decode": 6}
    for t in range(101, 130):  # metrics down for half a minute: hold
        run_pass(state, CFG, "p", "ns", float(t), failing, cluster)
    assert cluster.replicas == {"prefill": 5, "decode": 6}
    for t in range(130, 140):  # back, and low: still a full 10 s window before shrinking
        run_pass(state, CFG, "p", "ns", float(t), signal_of(prefill=0, decode=0), cluster)
        assert cluster.replicas == {"prefill": 5, "decode": 6}, t
    run_pass(state, CFG, "p", "ns", 140.0, signal_of(prefill=0, decode=0), cluster)
    assert cluster.replicas == {"prefill": 1, "decode": 2}
