"""`baton bench operator`: InferencePools to Ready on the sandbox, and API writes on a no-op resync.

Creates N pools (default 50) in a fresh namespace of the running sandbox, on kwok GPU nodes added
for the run (the sandbox's own 2 H100 nodes hold only 16 GPUs) and removed afterwards, with a
`baton operator` process of its own (the chart's ServiceAccount, watching only that namespace, metrics on a local
port), and reports the time from each pool's creation to its Ready condition (p50, max) and the
API writes the operator makes during a resync period once everything is Ready (target 0).
The sandbox's background operator, if any, is paused meanwhile and restarted afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from baton_operator.api import POOL, KubeApi
from baton_operator.names import NODE_POOL_LABEL, inference_pool


@dataclass(frozen=True)
class BenchResult:
    pools: int
    ready_p50_s: float
    ready_max_s: float
    all_ready_s: float
    writes_until_ready: int
    noop_resync_window_s: float
    noop_resync_reconciles: int
    noop_resync_writes: int


BENCH_NODE_POOLS = ("bench-h100", "bench-a100", "bench-cpu")


def bench_node_pools(pools: int) -> list[Any]:
    """Enough simulated nodes for ``pools`` pools: 8 GPUs per node, routers on CPU nodes."""
    from baton_dev.sandbox.nodepools import GpuSpec, NodePool

    gpu_nodes = -(-pools // 8)
    return [
        NodePool("bench-h100", gpu_nodes, "208", "1800Gi", gpu=GpuSpec("NVIDIA-H100-80GB-HBM3", 8, 81559)),
        NodePool("bench-a100", gpu_nodes, "128", "1000Gi", gpu=GpuSpec("NVIDIA-A100-SXM4-80GB", 8, 81920)),
        NodePool("bench-cpu", -(-pools // 100) + 1, "64", "256Gi"),
    ]


def pool_manifest(name: str, namespace: str) -> dict[str, Any]:
    """A small pool: 1 prefill (H100, 1 GPU), 1 decode (A100), 1 router, on the bench's nodes."""
    spec = {
        "model": {"name": "tiny", "source": "builtin://tiny"},
        "prefill": {"replicas": 1, "tensorParallelSize": 1, "nodeSelector": {NODE_POOL_LABEL: "bench-h100"}},
        "decode": {"replicas": 1, "maxBatchSize": 8, "nodeSelector": {NODE_POOL_LABEL: "bench-a100"}},
    }
    return inference_pool(name, namespace, spec)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ready(pool: dict[str, Any]) -> bool:
    conditions = (pool.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def scrape_metric(url: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples ``name`` at ``url`` whose labels include ``labels`` (0 when absent)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric == name and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def serves_metric(url: str, name: str) -> bool:
    """Whether the Prometheus endpoint at ``url`` declares the metric ``name`` (its ``# TYPE``
    line, there before any sample is): the process meant answers, not just something on the port."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return any(line.startswith(f"# TYPE {name} ") for line in text.splitlines())


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass  # the metrics endpoint is not up yet
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _create_until_ready(
    api: KubeApi, namespace: str, pools: int, timeout: float
) -> tuple[list[float], float]:
    """Create ``pools`` pools at once and wait for each to be Ready: (each one's time to Ready,
    the time until the last was Ready)."""
    created: dict[str, float] = {}
    t_start = time.monotonic()
    for i in range(pools):
        name = f"pool-{i:03d}"
        created[name] = time.monotonic()
        api.request("POST", POOL.path(namespace), pool_manifest(name, namespace))
    ready_at: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(ready_at) < pools:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pools - len(ready_at)} of {pools} pools not Ready after {timeout:.0f}s")
        listing = api.request("GET", POOL.path(namespace)) or {}
        now = time.monotonic()
        for item in listing.get("items") or []:
            name = item["metadata"]["name"]
            if name in created and name not in ready_at and _ready(item):
                ready_at[name] = now
        time.sleep(0.2)
    return [ready_at[n] - created[n] for n in created], max(ready_at.values()) - t_start


def _noop_resync(url: str, pools: int, resync_seconds: float) -> tuple[float, int, int]:
    """Watch one full resync of every pool once all are Ready: (window, reconciles, API writes)."""
    # Let the last status writes land, then watch one full resync period (+ margin).
    settle = time.monotonic() + 3 * resync_seconds
    previous = -1.0
    while time.monotonic() < settle:
        current_writes = scrape_metric(url, "baton_operator_api_writes_total")
        if current_writes == previous:
            break
        previous = current_writes
        time.sleep(resync_seconds / 2)
    w0 = scrape_metric(url, "baton_operator_api_writes_total")
    r0 = scrape_metric(url, "baton_operator_reconciles_total", result="ok")
    t0 = time.monotonic()
    _wait(
        lambda: (
            scrape_metric(url, "baton_operator_reconciles_total", result="ok") >= r0 + pools
            and time.monotonic() - t0 >= resync_seconds
        ),
        resync_seconds * 4 + 30,
        "a full resync of every pool",
        interval=0.5,
    )
    window = time.monotonic() - t0
    reconciles = int(scrape_metric(url, "baton_operator_reconciles_total", result="ok") - r0)
    return window, reconciles, int(scrape_metric(url, "baton_operator_api_writes_total") - w0)


def run(pools: int, resync_seconds: float, timeout: float, log: Any = print) -> BenchResult:
    """Run the benchmark against the running sandbox; raises SandboxError/TimeoutError on failure."""
    from baton_dev.sandbox import procs
    from baton_dev.sandbox.cluster import current
    from baton_dev.sandbox.nodepools import node_manifests
    from baton_dev.sandbox.operator_proc import running_operators, start_operator

    sandbox = current()
    api = KubeApi.from_environment(str(sandbox.kubeconfig))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    paused = running_operators(sandbox)
    for rec in paused:
        procs.stop(rec)
    (port,) = procs.free_ports(1)
    url = f"http://127.0.0.1:{port}/metrics"
    sandbox.kubectl("create", "namespace", namespace)
    nodes = node_manifests(bench_node_pools(pools))
    sandbox.apply(nodes, field_manager="baton-bench")
    log(f"added {len(nodes)} kwok nodes for the run")
    args = ["-n", namespace, "--standalone", f"--resync-seconds={resync_seconds}", f"--metrics-port={port}"]
    op = start_operator(sandbox, args=args, name="operator-bench")
    try:
        _wait(lambda: serves_metric(url, "baton_operator_reconciles_total"), 60, "the operator's metrics")
        # One pool first, so the figures measure reconciling, not the operator's start-up (imports,
        # watch streams) on a busy machine.
        api.request("POST", POOL.path(namespace), pool_manifest("warmup", namespace))
        _wait(
            lambda: _ready(api.request("GET", POOL.path(namespace, "warmup")) or {}),
            timeout,
            "the warm-up pool",
        )
        warm_writes = scrape_metric(url, "baton_operator_api_writes_total")
        log(f"creating {pools} InferencePools in namespace {namespace}")
        latencies, all_ready = _create_until_ready(api, namespace, pools, timeout)
        writes_until_ready = int(scrape_metric(url, "baton_operator_api_writes_total") - warm_writes)
        log(f"all {pools} Ready after {all_ready:.1f}s; measuring a no-op resync")
        window, reconciles, writes = _noop_resync(url, pools, resync_seconds)
        return BenchResult(
            pools=pools,
            ready_p50_s=round(statistics.median(latencies), 3),
            ready_max_s=round(max(latencies), 3),
            all_ready_s=round(all_ready, 3),
            writes_until_ready=writes_until_ready,
            noop_resync_window_s=round(window, 1),
            noop_resync_reconciles=reconciles,
            noop_resync_writes=writes,
        )
    finally:
        _cleanup(sandbox, api, namespace, op, bool(paused), log)


def _cleanup(sandbox: Any, api: KubeApi, namespace: str, op: Any, restart_background: bool, log: Any) -> None:
    """Remove what the run created; problems are reported, never raised (the figures stand)."""
    from baton_dev.sandbox.operator_proc import ensure_operator, stop_operator

    # Delete the pools while the bench operator runs: kopf must lift its finalizer (the autoscaler's
    # timers put one on every pool), or the namespace would stay Terminating.
    try:
        api.request("DELETE", POOL.path(namespace))
        _wait(
            lambda: not (api.request("GET", POOL.path(namespace)) or {}).get("items"),
            300,
            "pools deleted",
            1.0,
        )
    except (TimeoutError, RuntimeError) as e:
        log(f"cleanup: {e}")
    stop_operator(sandbox, op)
    sandbox.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    selector = f"{NODE_POOL_LABEL} in ({','.join(BENCH_NODE_POOLS)})"
    sandbox.kubectl("delete", "nodes", "-l", selector, "--wait=false", check=False, timeout=120)
    if restart_background:
        ensure_operator(sandbox)


def main(argv: list[str]) -> int:
    if "--real-node" in argv:
        from baton_dev.bench import operator_realnode as bench_realnode

        return bench_realnode.main(argv)
    p = argparse.ArgumentParser(prog="baton bench operator", description=__doc__.splitlines()[0])
    p.add_argument("--pools", type=int, default=50, help="InferencePools to create (default 50)")
    p.add_argument("--resync-seconds", type=float, default=10.0, help="the bench operator's resync period")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every pool to be Ready")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.pools < 1:
        p.error("--pools: must be >= 1")
    quiet = (lambda *_: None) if a.json else print
    try:
        result = run(a.pools, a.resync_seconds, a.timeout, log=quiet)
    except (TimeoutError, RuntimeError) as e:
        print(f"baton bench operator: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"pools                     {result.pools}")
        print(f"time to Ready p50 / max   {result.ready_p50_s:.2f} s / {result.ready_max_s:.2f} s")
        print(
            f"all Ready after           {result.all_ready_s:.2f} s ({result.writes_until_ready} API writes)"
        )
        print(
            f"no-op resync              {result.noop_resync_writes} API writes "
            f"({result.noop_resync_reconciles} reconciles in {result.noop_resync_window_s:.0f} s; target 0)"
        )
    return 0
