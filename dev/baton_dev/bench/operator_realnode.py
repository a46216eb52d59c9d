"""`baton bench operator --real-node`: the real-node sandbox, from `up` to tokens.

Measures, on this machine:
- `baton sandbox up --real-node` from a stopped sandbox (binaries and images built), until the
  chart's operator pod is Ready: with the node's image store emptied first (``--cold``: the
  images are imported again) and with the images already in it (warm); and `up` on a running
  sandbox (reuse);
- apply -> first token: `kubectl apply` of a CPU pool (examples/inferencepool-cpu.yaml's spec
  under a fresh name) until the first streamed token arrives through the router Service, the
  median of ``--runs`` pools created and deleted one after the other;
- the memory of the whole sandbox with one CPU pool serving: control plane, node agents,
  container shims and the pods (their cgroup's resident memory).
Prints one JSON object with ``--json``. Needs root and `make images`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from baton_operator.names import pool_selector

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "inferencepool-cpu.yaml"
KUBEPODS_MEMORY = Path("/sys/fs/cgroup/memory/kubepods/memory.stat")


def _wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except Exception:  # noqa: BLE001 - not up yet: retried until the deadline
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f} s")
        time.sleep(interval)


def bring_up(state_dir: Path, log: Callable[[str], None]) -> tuple[Any, float]:
    """`up --real-node` plus the chart with the in-cluster operator; seconds until its pod is Ready."""
    from baton_dev.sandbox import cluster
    from baton_dev.sandbox.operator_proc import (
        REAL_NODE_HELM_TIMEOUT_S,
        find_chart,
        in_cluster_operator_values,
        install_chart,
    )

    t0 = time.monotonic()
    sandbox, _ = cluster.up(state_dir, real_node=True, log=log)
    chart = find_chart()
    if chart is None:
        raise RuntimeError("charts/baton not found: run from a checkout")
    install_chart(sandbox, chart, in_cluster_operator_values(), wait_s=REAL_NODE_HELM_TIMEOUT_S)
    return sandbox, time.monotonic() - t0


def first_token_s(sandbox: Any, namespace: str, name: str, timeout: float) -> float:
    """Seconds from `kubectl apply` of a CPU pool to the first token streamed through its router."""
    import http.client

    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    t0 = time.monotonic()
    sandbox.kubectl("apply", "-f", "-", input=json.dumps(body))
    ip = _wait(
        lambda: sandbox.kubectl_json("get", "service", f"{name}-router", "-n", namespace)["spec"][
            "clusterIP"
        ],
        timeout,
        "the router Service",
    )
    request = json.dumps(
        {"model": body["spec"]["model"]["name"], "prompt": "Hello", "max_tokens": 4, "stream": True}
    )

    def token() -> bool:
        conn = http.client.HTTPConnection(ip, 8000, timeout=5)
        try:
            conn.request(
                "POST", "/v1/completions", body=request, headers={"content-type": "application/json"}
            )
            resp = conn.getresponse()
            if resp.status != 200:
                return False
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: {") and '"text"' in line:
                    return True
            return False
        finally:
            conn.close()

    _wait(token, timeout, f"the first token of {name}", interval=0.1)
    return time.monotonic() - t0


def delete_pool(sandbox: Any, namespace: str, name: str, timeout: float) -> None:
    sandbox.kubectl("delete", "inferencepool", name, "-n", namespace, "--wait=false")
    _wait(
        lambda: not sandbox.kubectl_json("get", "pods", "-n", namespace, "-l", pool_selector(name))["items"],
        timeout,
        f"the pods of {name} gone",
        interval=0.5,
    )


def memory(state_dir: Path) -> dict[str, int]:
    """Resident memory (bytes) of the sandbox's processes and of its pods."""
    from baton_dev.sandbox import cluster, procs
    from baton_dev.sandbox.layout import Layout

    state = cluster.load_state(Layout(state_dir))
    if state is None or state.node is None:
        raise RuntimeError(f"no real-node sandbox in {state_dir}")
    out = {
        "control_plane": sum(procs.rss_bytes(p.pid) for p in state.procs),
        "node_agents": sum(procs.rss_bytes(p.pid) for p in state.node.procs),
    }
    shims = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"containerd-shim" in (entry / "cmdline").read_bytes():
                shims += procs.rss_bytes(int(entry.name))
        except OSError:
            continue
    out["container_shims"] = shims
    pods = 0
    if KUBEPODS_MEMORY.exists():
        stat = dict(line.split() for line in KUBEPODS_MEMORY.read_text().splitlines())
        pods = int(stat.get("total_rss", 0)) + int(stat.get("total_mapped_file", 0))
    out["pods"] = pods
    out["total"] = sum(out.values())
    return out


def run(state_dir: Path, runs: int, cold: bool, timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    from baton_dev.sandbox import cluster
    from baton_dev.sandbox.realnode import node_paths

    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}}
    if cluster.down(state_dir):
        raise RuntimeError(f"could not stop the sandbox in {state_dir}")
    if cold:
        store = node_paths(state_dir).containerd_root
        shutil.rmtree(store, ignore_errors=True)
        log(f"emptied the node's image store {store}")
        _, result["up_cold_s"] = bring_up(state_dir, log)
        if cluster.down(state_dir):
            raise RuntimeError(f"could not stop the sandbox in {state_dir}")
    sandbox, result["up_warm_s"] = bring_up(state_dir, log)
    t0 = time.monotonic()
    bring_up(state_dir, log)
    result["up_reuse_s"] = time.monotonic() - t0
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    sandbox.kubectl("create", "namespace", namespace)
    try:
        samples = []
        for i in range(runs):
            name = f"ttft-{i}"
            samples.append(first_token_s(sandbox, namespace, name, timeout))
            log(f"apply -> first token: {samples[-1]:.1f} s")
            if i == runs - 1:
                result["memory_bytes"] = memory(state_dir)
            delete_pool(sandbox, namespace, name, timeout)
        result["apply_to_first_token_s"] = {
            "median": statistics.median(samples),
            "samples": [round(s, 2) for s in samples],
        }
    finally:
        sandbox.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    result["memory_idle_bytes"] = memory(state_dir)
    for key in ("up_cold_s", "up_warm_s", "up_reuse_s"):
        if key in result:
            result[key] = round(result[key], 2)
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="baton bench operator --real-node", description=__doc__.splitlines()[0])
    p.add_argument("--real-node", action="store_true", required=True)
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="sandbox state directory, stopped and started again (default $BATON_REAL_SANDBOX_DIR or "
        "~/.cache/baton/sandbox/real)",
    )
    p.add_argument("--runs", type=int, default=3, help="CPU pools applied one after the other (median)")
    p.add_argument(
        "--cold", action="store_true", help="also measure `up` with the node's image store emptied"
    )
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    from baton_dev.sandbox.layout import real_node_state_dir

    log = (lambda m: print(m, file=sys.stderr)) if a.json else print
    try:
        result = run(a.state_dir or real_node_state_dir(), a.runs, a.cold, a.timeout, log)
    except (TimeoutError, RuntimeError) as e:
        print(f"baton bench operator --real-node: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=None if a.json else 1))
    return 0
