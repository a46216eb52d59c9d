"""Nodes of the sandbox: create and wait for the kwok nodes; start, drain and stop the real node.

cluster.py sequences these steps; each takes what it needs (layout, state, a Sandbox handle,
liveness checks) as arguments, so this module never reaches back into cluster.py.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import node_images, node_stop, procs, realnode
from .addresses import NODE_NAME
from .build import Resolved
from .handle import Sandbox
from .health import get_json, tls_context, wait_for
from .imageplan import OPERATOR_IMAGE, PAUSE_IMAGE, WORKER_IMAGE
from .layout import Layout, server_url
from .nodeplan import rbac_manifests
from .nodepools import load_pools, node_manifests
from .state import State, save_state

START_TIMEOUT_S = 60.0
# A check that raises when the named control-plane process died.
AliveCheck = Callable[[str], Callable[[], None]]


def node_schedulable(node: dict[str, Any]) -> bool:
    """Ready, and without the not-ready/unreachable taints the node-lifecycle controller lifts."""
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = {t["key"] for t in node.get("spec", {}).get("taints", [])}
    return ready and not taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def admin_ctx(layout: Layout) -> ssl.SSLContext:
    pki = layout.pki
    return tls_context(pki.ca_cert, pki.client_cert("admin"), pki.client_key("admin"))


def nodes_ready(layout: Layout, state: State, expected: set[str]) -> bool:
    nodes = get_json(state.ports.apiserver, "/api/v1/nodes", admin_ctx(layout), host=state.api_host)
    if nodes is None:
        return False
    return expected <= {n["metadata"]["name"] for n in nodes["items"] if node_schedulable(n)}


def _default_sa_exists(layout: Layout, state: State) -> bool:
    path = "/api/v1/namespaces/default/serviceaccounts/default"
    return get_json(state.ports.apiserver, path, admin_ctx(layout), host=state.api_host) is not None


def create_nodes(sandbox: Sandbox, nodepools: Path, real_node: bool) -> set[str]:
    pools = load_pools(nodepools)
    if real_node:
        # The real node takes the place of the simulated pools without GPUs: pods that need no
        # GPU (CPU pools, routers, the operator) run there for real.
        pools = [p for p in pools if p.gpu is not None]
    manifests = node_manifests(pools)
    # Plain create: Node status (capacity, allocatable) is kept only on create, and apply
    # would strip it as a reset field. `up` only adds nodes to a fresh cluster.
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    sandbox.kubectl("create", "-f", "-", input=doc)
    return {m["metadata"]["name"] for m in manifests}


def wait_nodes(
    layout: Layout, state: State, names: set[str], alive: AliveCheck, log: Callable[[str], None]
) -> int:
    wait_for(
        f"{len(names)} kwok nodes",
        lambda: nodes_ready(layout, state, names),
        START_TIMEOUT_S,
        check_alive=alive("kwok"),
        interval_s=0.3,
    )
    log(f"{len(names)} kwok nodes Ready and untainted")
    # Pods cannot be created in a namespace before its `default` ServiceAccount exists.
    wait_for(
        "the default ServiceAccount",
        lambda: _default_sa_exists(layout, state),
        START_TIMEOUT_S,
        check_alive=alive("kube-controller-manager"),
        interval_s=0.2,
    )
    return len(names)


def start_real_node(
    layout: Layout, state: State, sandbox: Sandbox, bins: Resolved, log: Callable[[str], None]
) -> int:
    """containerd with the images loaded, kubelet, kube-proxy and CoreDNS; returns 1 (the node)."""
    from .images import build_images, image_exists, tool

    node = state.node
    assert node is not None
    paths = realnode.node_paths(layout.state_dir)
    realnode.write_configs(paths, node.ports, layout.pki, server_url(state.ports, state.api_host))
    sandbox.apply(rbac_manifests())

    def record(rec: procs.ProcRecord) -> None:
        node.procs.append(rec)
        save_state(layout, state)

    realnode.start_containerd(paths, layout.logs, record, log)
    podman = tool("podman")
    wanted = {"pause": PAUSE_IMAGE, "operator": OPERATOR_IMAGE, "worker": WORKER_IMAGE}
    missing = [key for key, ref in wanted.items() if not image_exists(podman, ref)]
    if missing:
        log(f"building images {', '.join(missing)} (`make images`)")
        build_images(missing, log=log)
    node_images.load_images(paths, wanted.values(), log)

    def node_ready() -> bool:
        return nodes_ready(layout, state, {NODE_NAME})

    realnode.start_agents(paths, node.ports, bins, layout.logs, record, node_ready, log)
    return 1


def drain_real_node(layout: Layout, sandbox: Sandbox) -> None:
    """Cordon the real node and delete its pods while the API server runs, so kubelet stops
    the containers and tears their networking down itself."""
    sandbox.kubectl("cordon", NODE_NAME, check=False)
    sandbox.kubectl(
        "delete",
        "pods",
        "--all-namespaces",
        f"--field-selector=spec.nodeName={NODE_NAME}",
        "--grace-period=2",
        "--wait=false",
        check=False,
    )
    node_stop.wait_containers_gone(realnode.node_paths(layout.state_dir))


def stop_real_node(layout: Layout, state: State) -> list[str]:
    """Stop the real node's processes and undo its changes to the machine; returns what stuck."""
    if state.node is None:
        return []
    kube_proxy = state.binaries.get("kube-proxy")

    def cleanup_iptables() -> None:
        if kube_proxy:
            subprocess.run([kube_proxy, "--cleanup"], capture_output=True, timeout=60, check=False)

    return node_stop.stop(realnode.node_paths(layout.state_dir), state.node, cleanup_iptables)
