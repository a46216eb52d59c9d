"""`baton sandbox build|up|down|status|env|kubeconfig`: thin wiring of the sandbox modules to a CLI."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from .build import BuildError, resolve
from .cluster import SandboxError, current, down, load_node_images, up
from .handle import KubectlError
from .images import ImageError, build_images
from .layout import COMPONENTS
from .nodeplan import NODE_COMPONENTS
from .nodepools import DEFAULT_NODEPOOLS, NodePoolError
from .observe import status
from .operator_proc import (
    NAMESPACE,
    REAL_NODE_HELM_TIMEOUT_S,
    RELEASE,
    ensure_operator,
    find_chart,
    in_cluster_operator_values,
    install_chart,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baton sandbox", description="local Kubernetes control plane with simulated GPU pools"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default $BATON_SANDBOX_DIR or ~/.cache/baton/sandbox/state)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="find or build etcd, kube-*, kwok, kubectl and helm (cached per version)")
    u = sub.add_parser("up", help="start the sandbox (idempotent), install the chart, run the operator")
    u.add_argument("--node-pools", type=Path, default=DEFAULT_NODEPOOLS, help="node pool YAML")
    u.add_argument(
        "--real-node",
        action="store_true",
        help="add one real kubelet node (containerd, CNI, kube-proxy, CoreDNS) that runs pods needing no GPU; "
        "the chart then runs the operator as a pod there (needs root)",
    )
    u.add_argument(
        "--no-chart", action="store_true", help="do not install charts/baton (implies --no-operator)"
    )
    u.add_argument(
        "--no-operator", action="store_true", help="do not start `baton operator` in the background"
    )
    u.add_argument(
        "--operator-arg", action="append", default=[], help="extra argument for `baton operator` (repeatable)"
    )
    i = sub.add_parser(
        "images", help="build baton-operator:dev and baton-worker:dev with podman (no registry)"
    )
    i.add_argument("image", nargs="*", metavar="IMAGE", help="operator, worker, pause (default: all three)")
    i.add_argument(
        "--variant", choices=["cpu", "cuda"], default="cpu", help="worker base: Debian (cpu) or NVIDIA CUDA"
    )
    i.add_argument(
        "--context-only", type=Path, metavar="DIR", help="write the build contexts under DIR, build nothing"
    )
    i.add_argument("--json", action="store_true", help="print what was built as JSON")
    d = sub.add_parser("down", help="stop every sandbox process and remove its state")
    d.add_argument("--keep-state", action="store_true", help="stop processes but keep the state directory")
    sub.add_parser("status", help="say what runs, where, and its memory")
    sub.add_parser("env", help="print export lines: KUBECONFIG and PATH with the matching kubectl and helm")
    k = sub.add_parser(
        "kubeconfig", help="print the admin kubeconfig path, or write one for a ServiceAccount"
    )
    k.add_argument("service_account", nargs="?", help="NAMESPACE/NAME of a ServiceAccount")
    return p


def _build() -> int:
    t0 = time.monotonic()
    bins = resolve(build_missing=True)
    for name, path in bins.paths.items():
        print(f"  {name:<24} {path}  ({bins.sources[name]})")
    print(f"sandbox binaries ready in {time.monotonic() - t0:.1f} s")
    return 0


def _images(args: argparse.Namespace) -> int:
    which = args.image or (["worker"] if args.variant == "cuda" else ["operator", "worker", "pause"])
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    t0 = time.monotonic()
    built = build_images(which, variant=args.variant, context_only=args.context_only, log=log)
    if args.variant == "cpu" and not args.context_only:
        refs = [b.reference for b in built]
        if load_node_images(args.state_dir, refs, log):
            log("  loaded into the sandbox's real node (recreate pods to run the new images)")
    if args.json:
        print(
            json.dumps(
                {"images": [b.to_json() for b in built], "seconds": round(time.monotonic() - t0, 1)}, indent=1
            )
        )
    else:
        for b in built:
            size = f"{b.size_bytes / 1e6:8.0f} MB" if b.size_bytes else "  (context only)"
            print(f"  {b.reference:<48} {size}  {b.build_seconds:6.1f} s")
        print(f"images ready in {time.monotonic() - t0:.1f} s")
    return 0


def _up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    sandbox, started = up(args.state_dir, nodepools=args.node_pools, real_node=args.real_node)
    chart = None if args.no_chart else find_chart()
    if args.no_chart:
        print("  chart: skipped (--no-chart)")
    elif chart is None:
        print("  chart: charts/baton/Chart.yaml not found yet; cluster only")
    elif args.real_node:
        install_chart(sandbox, chart, in_cluster_operator_values(), wait_s=REAL_NODE_HELM_TIMEOUT_S)
        print(
            f"  chart: helm release {RELEASE!r} of {chart} in namespace {NAMESPACE}; "
            "the operator runs as a pod on the real node"
        )
    else:
        install_chart(sandbox, chart)
        print(
            f"  chart: helm release {RELEASE!r} of {chart} in namespace {NAMESPACE} (operator.enabled=false)"
        )
    if args.real_node and chart is not None:
        print("  operator: Deployment baton-operator in namespace baton-system (no local process)")
    elif chart is None or args.no_operator:
        print("  operator: not started" + (" (--no-operator)" if args.no_operator else ""))
    else:
        op, new = ensure_operator(sandbox, args.operator_arg)
        if op is None:
            print("  operator: already running")
        else:
            print(f"  operator: `baton operator` pid {op.pid}, log {op.log}")
    print(f"sandbox {'up' if started else 'already up'} in {time.monotonic() - t0:.1f} s")
    print(f"  server      {sandbox.server}")
    print(f"  kubeconfig  {sandbox.kubeconfig}")
    print(f"  logs        {sandbox.layout.logs}")
    print('  use it:     eval "$(baton sandbox env)" && kubectl get nodes')
    return 0


def _down(args: argparse.Namespace) -> int:
    stuck = down(args.state_dir, keep_state=args.keep_state)
    if stuck:
        print(f"baton sandbox down: could not stop {', '.join(stuck)}", file=sys.stderr)
        return 1
    print("sandbox down: no sandbox process left" + ("" if args.keep_state else "; state removed"))
    return 0


def _status(args: argparse.Namespace) -> int:
    st = status(args.state_dir)
    if not st.up:
        print(f"sandbox: not up (no state in {st.state_dir})")
        return 3
    print(f"sandbox: {'ready' if st.api_ready else 'NOT ready'}  server {st.server}")
    print(f"  kubeconfig {st.kubeconfig}")
    for p in st.processes:
        state = f"running  {p.rss_bytes / 2**20:7.0f} MiB" if p.running else "STOPPED"
        print(f"  {p.name:<24} pid {p.pid:<8} {state}  log {p.log}")
    print(f"  control plane RSS: {st.control_plane_rss_bytes / 2**20:.0f} MiB ({', '.join(COMPONENTS)})")
    if st.node_rss_bytes:
        print(
            f"  real node RSS: {st.node_rss_bytes / 2**20:.0f} MiB ({', '.join(NODE_COMPONENTS)}; pods not counted)"
        )
    return 0 if st.api_ready else 1


def _env(args: argparse.Namespace) -> int:
    sandbox = current(args.state_dir)
    dirs = list(dict.fromkeys([str(sandbox.kubectl_path.parent), str(sandbox.helm_path.parent)]))
    print(f"export KUBECONFIG={shlex.quote(str(sandbox.kubeconfig))}")
    print(f'export PATH={shlex.quote(":".join(dirs))}:"$PATH"')
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    sandbox = current(args.state_dir)
    if not args.service_account:
        print(sandbox.kubeconfig)
        return 0
    ns, sep, name = args.service_account.partition("/")
    if not sep or not ns or not name:
        print(
            f"baton sandbox kubeconfig: expected NAMESPACE/NAME, got {args.service_account!r}",
            file=sys.stderr,
        )
        return 2
    print(sandbox.kubeconfig_for_service_account(ns, name))
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `baton sandbox`; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.state_dir is not None:
        args.state_dir = args.state_dir.expanduser().resolve()
    handlers = {"build": lambda a: _build(), "up": _up, "down": _down, "status": _status, "env": _env}
    handlers["kubeconfig"] = _kubeconfig
    handlers["images"] = _images
    try:
        return handlers[args.cmd](args)
    except (BuildError, SandboxError, NodePoolError, KubectlError, ImageError) as exc:
        print(f"baton sandbox {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of the sandbox.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter exit quiet
        return 0
    except KeyboardInterrupt:
        print(
            f"baton sandbox {args.cmd}: interrupted; `baton sandbox down` stops what was started",
            file=sys.stderr,
        )
        return 130
