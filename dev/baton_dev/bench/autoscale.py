"""`baton bench autoscale`: time from a queue spike to updated replicas, on the sandbox.

Each run holds the queue at zero until both roles sit at minReplicas, waits a random phase of the
scrape cycle, sets a spike on a queue endpoint the pool's `metricsUrl` points at, and times until
the prefill StatefulSet and decode Deployment carry the new replicas. It splits the reaction into
*detect* (spike -> first scrape that saw it) and *actuate* (that scrape -> replicas written).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from typing import Any

from baton_dev.queue_endpoint import QueueEndpoint
from baton_dev.scenario import (
    Replicas,
    RoleKnobs,
    autoscaled_pool,
    pinned,
    private_gpu_node,
    wait_until,
)

PREFILL = RoleKnobs(min_replicas=1, max_replicas=4, target_queue_depth=4, gpu="H100", scale_down_s=2)
DECODE = RoleKnobs(min_replicas=1, max_replicas=4, target_queue_depth=8, gpu="A100", scale_down_s=2)
SPIKE = {"prefill": 16.0, "decode": 32.0}  # 4 replicas' worth on each role


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _summary(xs: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(xs), 3),
        "p90": round(_pct(xs, 0.9), 3),
        "min": round(min(xs), 3),
        "max": round(max(xs), 3),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton bench autoscale", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--runs", type=int, default=7, help="spikes to time (default 7)")
    p.add_argument("--interval", type=int, default=5, help="spec.autoscaling.intervalSeconds (default 5)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for any one step")
    return p


def _time_spike(
    endpoint: QueueEndpoint, replicas: Replicas, interval_s: int, timeout_s: float
) -> dict[str, float]:
    """One timed spike: settle both roles at minReplicas, spike the queue, wait for maxReplicas."""
    endpoint.set(prefill=0, decode=0)
    wait_until(
        lambda: (
            replicas.get("prefill") == PREFILL.min_replicas and replicas.get("decode") == DECODE.min_replicas
        ),
        timeout_s,
        "both roles at minReplicas",
        poll_s=0.2,
    )
    time.sleep(random.uniform(0, interval_s))  # a random phase of the scrape cycle
    scrapes_before = len(endpoint.scrapes)
    t0 = time.time()
    endpoint.set(**SPIKE)
    t_prefill = wait_until(
        lambda: replicas.get("prefill") == PREFILL.max_replicas, timeout_s, "prefill spike"
    )
    t_decode = wait_until(lambda: replicas.get("decode") == DECODE.max_replicas, timeout_s, "decode spike")
    seen = [t for t in endpoint.scrapes[scrapes_before:] if t >= t0]
    t_scrape = seen[0] if seen else t0
    return {
        "reaction_s": max(t_prefill, t_decode) - t0,
        "prefill_s": t_prefill - t0,
        "decode_s": t_decode - t0,
        "detect_s": t_scrape - t0,
        "actuate_s": max(t_prefill, t_decode) - t_scrape,
    }


def run(runs: int, interval_s: int, timeout_s: float, log: Any = print) -> dict[str, Any]:
    """Run the bench against the running sandbox; returns the JSON document."""
    from baton_dev.sandbox import cluster
    from baton_dev.sandbox.operator_proc import running_operators, start_operator, stop_operator

    sandbox = cluster.current()
    ns = f"bench-autoscale-{uuid.uuid4().hex[:6]}"
    pool = "bench"
    sandbox.kubectl("create", "namespace", ns)
    own_operator = None
    if not running_operators(sandbox):
        # Scoped to the bench's namespace, so it never competes with another operator elsewhere.
        own_operator = start_operator(
            sandbox, args=["-n", ns, "--standalone"], name="operator-bench-autoscale"
        )
        log(f"started `baton operator` pid {own_operator.pid}, log {own_operator.log}")
    endpoint = QueueEndpoint()
    replicas = Replicas(sandbox.kubeconfig, ns, pool)
    results: list[dict[str, float]] = []
    # Private GPU nodes: a sandbox whose pools other work has filled would (rightly) stop the
    # autoscaler at its capacity, and the bench would time something else.
    tag = uuid.uuid4().hex[:6]
    nodes = [private_gpu_node(tag, "H100"), private_gpu_node(tag, "A100")]
    try:
        for node in nodes:
            sandbox.kubectl("create", "-f", "-", input=json.dumps(node))
        prefill, decode = pinned(PREFILL, tag), pinned(DECODE, tag)
        sandbox.apply([autoscaled_pool(pool, ns, endpoint.url, interval_s, prefill, decode)])
        for i in range(runs):
            row = _time_spike(endpoint, replicas, interval_s, timeout_s)
            results.append(row)
            log(f"run {i + 1}/{runs}: reaction {row['reaction_s']:.2f} s (detect {row['detect_s']:.2f} s)")
    finally:
        endpoint.stop()
        replicas.close()
        sandbox.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for node in nodes:
            sandbox.kubectl("delete", "node", node["metadata"]["name"], "--wait=false", check=False)
        if own_operator is not None:
            stop_operator(sandbox, own_operator)
    return _document(results, interval_s)


def _document(results: list[dict[str, float]], interval_s: int) -> dict[str, Any]:
    """The bench's JSON document from its timed runs."""
    reaction = [r["reaction_s"] for r in results]
    return {
        "bench": "autoscale",
        "where": "baton sandbox (real kube-apiserver, kube-scheduler, kube-controller-manager, kwok nodes)",
        "interval_s": interval_s,
        "runs": len(results),
        "spike": SPIKE,
        "replicas": {"from": 1, "to": 4},
        "reaction_s": _summary(reaction),
        "detect_s": _summary([r["detect_s"] for r in results]),
        "actuate_s": _summary([r["actuate_s"] for r in results]),
        "expected_p50_s": interval_s / 2,
        "samples": [{k: round(v, 3) for k, v in r.items()} for r in results],
    }


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.runs < 1 or args.interval < 1:
        print("baton bench autoscale: --runs and --interval must be >= 1", file=sys.stderr)
        return 2
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        doc = run(args.runs, args.interval, args.timeout, log)
    except Exception as e:  # noqa: BLE001 - a CLI reports, it does not dump a traceback
        print(f"baton bench autoscale: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    r = doc["reaction_s"]
    print(
        f"reaction from spike to replicas 1 -> 4 (both roles), interval {doc['interval_s']} s, {doc['runs']} runs:"
    )
    print(f"  p50 {r['p50']:.2f} s  p90 {r['p90']:.2f} s  min {r['min']:.2f} s  max {r['max']:.2f} s")
    print(f"  detect p50 {doc['detect_s']['p50']:.2f} s, actuate p50 {doc['actuate_s']['p50']:.2f} s")
    return 0
