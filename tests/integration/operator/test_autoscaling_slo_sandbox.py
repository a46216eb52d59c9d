"""SLO mode end to end on the sandbox: a real operator process (the chart's RBAC), the CRD's CEL
rules, a profile in a ConfigMap, and router counters the test controls (the pool's metricsUrl).

A rising then falling synthetic load must move both roles to the planner's numbers and back, each
count moving one way per phase (no flapping), a router restart under load must move nothing, and
the pool's status must show the planner's decision.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baton_dev.queue_endpoint import QueueEndpoint
from baton_dev.sandbox.handle import KubectlError, Sandbox
from baton_dev.sandbox.operator_proc import OperatorProcess, start_operator, stop_operator
from baton_dev.scenario import (
    Replicas,
    RoleKnobs,
    autoscaled_pool,
    pinned,
    private_gpu_node,
    wait_until,
)
from baton_operator.autoscaling.slo_plan import Bounds, plan_pool
from baton_operator.autoscaling.slo_rate import planned_inputs
from baton_operator.planning.profile import load_profile
from baton_operator.spec_slo import SloSpec

pytestmark = pytest.mark.sandbox

PROFILE_FILE = Path(__file__).resolve().parents[3] / "profiles" / "h100-llama3-8b.json"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "inferencepool-slo.yaml"
INTERVAL_S = 2
WINDOW_S = 10  # scaleDownStabilizationSeconds of both roles
RATE_WINDOW_S = 6
LOW, HIGH = 2.0, 26.0  # req/s; ISL 1000, OSL 200
PREFILL = RoleKnobs(min_replicas=1, max_replicas=4, target_queue_depth=4, gpu="H100", scale_down_s=WINDOW_S)
DECODE = RoleKnobs(min_replicas=1, max_replicas=6, target_queue_depth=16, gpu="A100", scale_down_s=WINDOW_S)
SLO = {
    "ttftMs": 500,
    "itlMs": 50,
    "profile": {"configMapRef": {"name": "h100-profile"}},
    "rateWindowSeconds": RATE_WINDOW_S,
    "scaleUpIntervals": 2,
}


def planner(rate: float) -> tuple[int, int]:
    """What the planner answers for ``rate`` on this pool (the test's expectation)."""
    slo = SloSpec(500, 50, "h100-profile")
    bounds = Bounds(PREFILL.min_replicas, PREFILL.max_replicas, DECODE.min_replicas, DECODE.max_replicas)
    got = plan_pool(load_profile(PROFILE_FILE), slo, bounds, *planned_inputs(rate, 1000, 200))
    return got.prefill, got.decode


@pytest.fixture(scope="module")
def namespace(sandbox: Sandbox) -> Iterator[str]:
    name = f"slo-{uuid.uuid4().hex[:6]}"
    sandbox.kubectl("create", "namespace", name)
    wait_until(
        lambda: sandbox.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        30,
        f"default ServiceAccount in {name}",
        poll_s=0.2,
    )
    sandbox.kubectl(
        "create", "configmap", "h100-profile", "-n", name, f"--from-file=profile.json={PROFILE_FILE}"
    )
    yield name
    sandbox.kubectl("delete", "inferencepools", "--all", "-n", name, "--timeout=30s", check=False)
    sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(sandbox: Sandbox, namespace: str) -> Iterator[OperatorProcess]:
    """`baton operator` watching only this namespace, under the chart's RBAC (it reads the
    profile's ConfigMap with it)."""
    op = start_operator(
        sandbox, args=["-n", namespace, "--standalone", "--resync-seconds", "10"], name="operator-slo"
    )
    try:
        yield op
    finally:
        assert stop_operator(sandbox, op), f"operator {op.pid} would not stop; log {op.log}"


@pytest.fixture(scope="module")
def private_nodes(sandbox: Sandbox) -> Iterator[str]:
    """A private H100 and A100 node (8 GPUs each): the counts the planner asks for always fit."""
    tag = uuid.uuid4().hex[:6]
    nodes = [private_gpu_node(tag, "H100"), private_gpu_node(tag, "A100")]
    for node in nodes:
        sandbox.kubectl("create", "-f", "-", input=json.dumps(node))
    yield tag
    for node in nodes:
        sandbox.kubectl("delete", "node", node["metadata"]["name"], "--wait=false", check=False)


def _pool(name: str, namespace: str, url: str, tag: str, **slo: Any) -> dict[str, Any]:
    body = autoscaled_pool(name, namespace, url, INTERVAL_S, pinned(PREFILL, tag), pinned(DECODE, tag))
    body["spec"]["autoscaling"]["slo"] = {**SLO, **slo}
    return body


def _status(sandbox: Sandbox, ns: str, name: str) -> dict[str, Any]:
    return sandbox.kubectl_json("get", "inferencepool", name, "-n", ns).get("status") or {}


def _log_tail(op: OperatorProcess) -> str:
    return "\n".join(op.log.read_text(errors="replace").splitlines()[-30:])


class Recorder:
    """Every replica count each role goes through, polled in the background."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas, self.seen = replicas, {"prefill": [], "decode": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for role, seen in self.seen.items():
                n = self.replicas.get(role)
                if n is not None and (not seen or seen[-1] != n):
                    seen.append(n)
            time.sleep(0.2)

    def now(self) -> tuple[int | None, int | None]:
        return self.replicas.get("prefill"), self.replicas.get("decode")

    def mark(self) -> dict[str, int]:
        return {role: len(seen) for role, seen in self.seen.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_slo_mode_follows_a_rising_then_falling_load_without_flapping(
    sandbox: Sandbox, namespace: str, operator: OperatorProcess, private_nodes: str
) -> None:
    low, high = planner(LOW), planner(HIGH)
    assert low == (1, 1) and high[0] > 1 and high[1] > 1, (low, high)  # both roles must move
    endpoint = QueueEndpoint()
    endpoint.set_load(LOW, 1000, 200)
    sandbox.apply([_pool("slo", namespace, endpoint.url, private_nodes)])
    rec = Recorder(Replicas(sandbox.kubeconfig, namespace, "slo"))

    def planned() -> tuple[Any, Any]:
        slo = (_status(sandbox, namespace, "slo").get("autoscaling") or {}).get("slo") or {}
        return slo.get("prefillReplicas"), slo.get("decodeReplicas")

    try:
        wait_until(
            lambda: planned() == low and rec.now() == low,
            60,
            f"the planner's {low} at {LOW} req/s (log:\n{_log_tail(operator)})",
            poll_s=0.5,
        )
        start = rec.mark()
        t_rise = time.time()
        endpoint.set_load(HIGH, 1000, 200)
        wait_until(lambda: rec.now() == high, 60, f"both roles at the planner's {high}", poll_s=0.2)
        print(f"rise: {rec.now()} after {time.time() - t_rise:.1f} s")
        assert planned() == high
        st = _status(sandbox, namespace, "slo")["autoscaling"]["slo"]
        assert st["feasible"] is True and st["rateRps"] >= HIGH * 0.9 and st["binding"], st
        assert st["inputTokens"] >= 1000 and st["outputTokens"] >= 200, st
        # Steady under load, through a router restart (its counters back to zero): nothing moves.
        endpoint.restart_router()
        t = time.time()
        while time.time() < t + 4 * INTERVAL_S:
            assert rec.now() == high, rec.seen
            time.sleep(0.2)
        top = rec.mark()
        t_fall = time.time()
        endpoint.set_load(LOW, 1000, 200)
        while time.time() < t_fall + WINDOW_S - 0.5:  # the scale-down window holds
            assert rec.now() == high, f"scaled down {time.time() - t_fall:.1f} s after the drop"
            time.sleep(0.2)
        wait_until(lambda: rec.now() == low, 60, f"both roles back at {low}", poll_s=0.2)
        print(f"fall: {rec.now()} after {time.time() - t_fall:.1f} s; counts {rec.seen}")
    finally:
        rec.stop()
        endpoint.stop()
    for role in ("prefill", "decode"):
        rise = rec.seen[role][start[role] - 1 : top[role]]
        fall = rec.seen[role][top[role] - 1 :]
        assert rise == sorted(rise) and fall == sorted(fall, reverse=True), rec.seen  # one way per phase
        assert len(rise) - 1 <= 3 and len(fall) - 1 <= 3, rec.seen
    events = sandbox.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=slo"
    )["items"]
    reasons = [e["reason"] for e in events]
    assert "SloScaleUp" in reasons and "SloScaleDown" in reasons, reasons


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b["spec"]["decode"]["autoscaling"].update(enabled=False),
            "spec.decode.autoscaling.enabled",
        ),
        (lambda b: b["spec"]["autoscaling"].update(mode="keda"), "spec.autoscaling.mode must be builtin"),
        (lambda b: b["spec"]["autoscaling"]["slo"].update(maxGpus=1), "spec.autoscaling.slo.maxGpus"),
        (lambda b: b["spec"]["autoscaling"]["slo"].pop("itlMs"), "itlMs"),
        (lambda b: b["spec"]["autoscaling"]["slo"].update(ttftMs=0), "ttftMs"),
    ],
)
def test_slo_spec_is_refused_at_apply_time_naming_the_field(
    sandbox: Sandbox, namespace: str, change: Any, message: str
) -> None:
    body = _pool("refused", namespace, "http://127.0.0.1:9/metrics", "none")
    change(body)
    with pytest.raises(KubectlError) as err:
        sandbox.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body))
    assert message in str(err.value), err.value
    ok = _pool("accepted", namespace, "http://127.0.0.1:9/metrics", "none", maxGpus=2)
    sandbox.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(ok))
    sandbox.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLE))
