"""`up`, `down` and `status` of the sandbox control plane (the imperative shell).

What each component runs with is decided in layout.py; this module starts the processes in
order, waits on observable readiness with deadlines, records every pid in the state file and
stops exactly those pids again.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from . import node_images, nodes, procs, realnode
from .build import Resolved, resolve
from .certs import CLIENTS, ensure_pki
from .handle import Sandbox
from .health import NotReady, healthy, tls_context, wait_for
from .kubeconfig import kubeconfig_dict, write_kubeconfig
from .layout import COMPONENTS, Layout, Ports, api_host, command, default_state_dir, server_url
from .nodeplan import NODE_COMPONENTS, NodePorts
from .nodepools import DEFAULT_NODEPOOLS, KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE
from .nodes import START_TIMEOUT_S
from .nodes import node_schedulable as node_schedulable  # re-exported
from .state import State, load_state, save_state, state_lock

REUSE_TIMEOUT_S = 30.0


class SandboxError(RuntimeError):
    """The sandbox could not be brought up or inspected; the message says what is wrong."""


def handle(layout: Layout, state: State) -> Sandbox:
    """The Sandbox handle of a recorded state."""
    return Sandbox(
        state_dir=layout.state_dir,
        server=server_url(state.ports, state.api_host),
        kubeconfig=layout.admin_kubeconfig,
        kubectl_path=Path(state.binaries["kubectl"]),
        helm_path=Path(state.binaries["helm"]),
        ca_file=layout.pki.ca_cert,
    )


def _died(rec: procs.ProcRecord, ports: Ports) -> SandboxError:
    log_tail = procs.tail(rec.log)
    if "address already in use" in log_tail:
        taken = [p for p in ports.as_dict().values() if str(p) in log_tail and not procs.port_is_free(p)]
        where = f"port {taken[0]}" if taken else "a port"
        return SandboxError(f"{rec.name}: {where} on 127.0.0.1 is taken by another process; run `up` again")
    return SandboxError(f"{rec.name} died; last lines of {rec.log}:\n{log_tail}")


def _alive_check(rec: procs.ProcRecord, ports: Ports) -> Callable[[], None]:
    def check() -> None:
        if not procs.is_running(rec):
            raise _died(rec, ports)

    return check


def processes_alive(state: State) -> bool:
    """Whether every control-plane component (and real-node process) was started and runs."""
    control_plane = len(state.procs) == len(COMPONENTS) and all(procs.is_running(p) for p in state.procs)
    if state.node is None:
        return control_plane
    node_procs = state.node.procs
    return (
        control_plane
        and len(node_procs) == len(NODE_COMPONENTS)
        and all(procs.is_running(p) for p in node_procs)
    )


def api_ready(layout: Layout, state: State) -> bool:
    """Whether the API server answers /readyz with 200 now."""
    return healthy(state.ports.apiserver, "/readyz", nodes.admin_ctx(layout), host=state.api_host)


def running_ok(layout: Layout, state: State) -> bool:
    """Whether every control-plane process is alive and the API server answers /readyz."""
    return processes_alive(state) and api_ready(layout, state)


def _write_configs(layout: Layout, ports: Ports, host: str) -> None:
    pki = ensure_pki(layout.pki.dir)
    server = server_url(ports, host)
    users = {c.file_stem: c.user for c in CLIENTS}
    admin = kubeconfig_dict(
        server,
        pki.ca_cert,
        users["admin"],
        client_cert=pki.client_cert("admin"),
        client_key=pki.client_key("admin"),
    )
    write_kubeconfig(layout.admin_kubeconfig, admin)
    for stem in ("controller-manager", "scheduler", "kwok"):
        cfg = kubeconfig_dict(
            server,
            pki.ca_cert,
            users[stem],
            client_cert=pki.client_cert(stem),
            client_key=pki.client_key(stem),
        )
        write_kubeconfig(layout.component_kubeconfig(stem), cfg)
    # An explicit (empty) kwok configuration: never pick up a user's ~/.kwok/kwok.yaml.
    kwok_cfg = {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration", "options": {}}
    (layout.state_dir / "kwok.yaml").write_text(yaml.safe_dump(kwok_cfg))


def _start_control_plane(
    layout: Layout,
    state: State,
    bins: Resolved,
    log: Callable[[str], None],
    before_controllers: Callable[[], None],
) -> None:
    pki, ports = layout.pki, state.ports
    annotation = f"{KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}"
    real_node = state.api_host != "127.0.0.1"

    def launch(name: str) -> procs.ProcRecord:
        argv = command(name, bins[name], layout, ports, annotation, real_node)
        rec = procs.start(name, argv, layout.log(name))
        state.procs.append(rec)
        save_state(layout, state)  # recorded at once, so `down` can stop a half-started sandbox
        return rec

    etcd = launch("etcd")
    etcd_ctx = tls_context(
        pki.ca_cert, pki.client_cert("apiserver-etcd-client"), pki.client_key("apiserver-etcd-client")
    )
    wait_for(
        "etcd",
        lambda: healthy(ports.etcd_client, "/health", etcd_ctx),
        START_TIMEOUT_S,
        check_alive=_alive_check(etcd, ports),
    )
    log(f"etcd ready on 127.0.0.1:{ports.etcd_client}")
    api = launch("kube-apiserver")
    admin_ctx = tls_context(pki.ca_cert, pki.client_cert("admin"), pki.client_key("admin"))
    wait_for(
        "kube-apiserver",
        lambda: healthy(ports.apiserver, "/readyz", admin_ctx, host=state.api_host),
        START_TIMEOUT_S,
        check_alive=_alive_check(api, ports),
    )
    log(f"kube-apiserver ready at {server_url(ports, state.api_host)}")
    before_controllers()
    rest = [launch(name) for name in ("kube-controller-manager", "kube-scheduler", "kwok")]
    anon = tls_context(None)
    for rec, port in ((rest[0], ports.controller_manager), (rest[1], ports.scheduler)):
        wait_for(
            rec.name,
            lambda port=port: healthy(port, "/healthz", anon),
            START_TIMEOUT_S,
            check_alive=_alive_check(rec, ports),
        )
    log("kube-controller-manager and kube-scheduler healthy")


def _remove_state_dir(layout: Layout) -> None:
    # $BATON_SANDBOX_DIR may point anywhere: only ever delete a directory the sandbox made.
    d = layout.state_dir
    if not d.exists():
        return
    if any(d.iterdir()) and not (d / "sandbox.json").exists() and not (d / "pki").exists():
        raise SandboxError(f"{d} is not empty and is not a sandbox state directory; refusing to delete it")
    shutil.rmtree(d, ignore_errors=True)


def stop_all(layout: Layout, state: State) -> list[str]:
    """Stop every recorded process (extras first, then the control plane in reverse order).

    Returns the names of processes that would not stop (empty when all are gone).
    """
    stuck: list[str] = []
    for rec in [*reversed(state.extra), *reversed(state.procs)]:
        if not procs.stop(rec):
            stuck.append(f"{rec.name} (pid {rec.pid})")
    return stuck


def _reuse(layout: Layout, state: State, real_node: bool, log: Callable[[str], None]) -> Sandbox:
    """The handle of the live sandbox recorded in ``state``, once its API server answers."""
    if real_node and state.node is None:
        raise SandboxError(
            f"the sandbox in {layout.state_dir} runs without a real node: "
            "`baton sandbox down`, then `up --real-node`"
        )
    # Never restart a live sandbox others may be using because it answers slowly
    # (a loaded machine): wait for it, and fail rather than wipe it.
    try:
        wait_for("the running sandbox's API server", lambda: api_ready(layout, state), REUSE_TIMEOUT_S)
    except NotReady:
        raise SandboxError(
            f"sandbox processes in {layout.state_dir} run but the API server is not ready after "
            f"{REUSE_TIMEOUT_S:.0f} s; see {layout.logs}, or `baton sandbox down` and `up` again"
        ) from None
    log(f"sandbox already up ({layout.state_dir})")
    return handle(layout, state)


def _fresh_state(layout: Layout, bins: Resolved, real_node: bool) -> State:
    """A new state directory with certificates and kubeconfigs, and its recorded state."""
    if real_node:
        realnode.preflight(bins)
    _remove_state_dir(layout)
    layout.state_dir.mkdir(parents=True)
    layout.state_dir.chmod(0o700)
    ports = Ports(*procs.free_ports(6))
    host = api_host(real_node)
    _write_configs(layout, ports, host)
    state = State(
        ports=ports,
        binaries={k: str(v) for k, v in bins.paths.items()},
        started_at=time.time(),
        api_host=host,
    )
    if real_node:
        state.node = realnode.NodeState(ports=NodePorts(*procs.free_ports(6)), host=realnode.snapshot_host())
    save_state(layout, state)
    return state


def _start(
    layout: Layout,
    state: State,
    bins: Resolved,
    nodepools: Path,
    real_node: bool,
    progress: Callable[[str], None],
) -> tuple[Sandbox, int]:
    """Start the control plane, the kwok nodes and the real node; returns the handle and the
    number of nodes. Stops whatever it started when a step fails."""
    try:
        if real_node:
            # The API server binds to the bridge's address: the bridge comes first.
            realnode.setup_bridge()
        sandbox = handle(layout, state)
        names: set[str] = set()

        def create_nodes() -> None:
            # Nodes exist before kwok and the node-lifecycle controller start: both pick
            # them up in their first sync instead of on a later event.
            names.update(nodes.create_nodes(sandbox, nodepools, real_node))

        def alive(name: str) -> Callable[[], None]:
            return _alive_check(next(p for p in state.procs if p.name == name), state.ports)

        _start_control_plane(layout, state, bins, progress, create_nodes)
        n = nodes.wait_nodes(layout, state, names, alive, progress)
        if real_node:
            n += nodes.start_real_node(layout, state, sandbox, bins, progress)
    except (NotReady, SandboxError, RuntimeError) as exc:
        _stop_everything(layout, state)
        raise SandboxError(str(exc)) from None
    return sandbox, n


def up(
    state_dir: Path | None = None,
    *,
    nodepools: Path = DEFAULT_NODEPOOLS,
    real_node: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Sandbox, bool]:
    """Bring the control plane and node pools up, or reuse the one already running.

    With ``real_node``, one real kubelet node (containerd, CNI, kube-proxy, CoreDNS) joins the
    kwok GPU pools in place of the simulated pools without GPUs. Returns the handle and whether
    this call started it. Raises SandboxError (one-line cause, plus a log tail when a component
    died) and BuildError when binaries cannot be built.
    """
    layout = Layout(state_dir or default_state_dir())
    with state_lock(layout):
        state = load_state(layout)
        if state is not None and processes_alive(state):
            return _reuse(layout, state, real_node, log), False
        if state is not None:
            _clear_dead(layout, state, log)
        t0 = time.monotonic()

        def progress(msg: str) -> None:
            log(f"  [{time.monotonic() - t0:5.1f} s] {msg}")

        bins = resolve(build_missing=True, log=log)
        state = _fresh_state(layout, bins, real_node)
        sandbox, n = _start(layout, state, bins, nodepools, real_node, progress)
        state.ready_after_s = time.monotonic() - t0
        save_state(layout, state)
        progress(f"sandbox ready: {n} nodes, default ServiceAccount present")
        return sandbox, True


def load_node_images(state_dir: Path | None, references: list[str], log: Callable[[str], None]) -> bool:
    """Import freshly built images into a running real node's containerd (pods pick them up
    when they are recreated). False when no sandbox with a real node runs there."""
    layout = Layout(state_dir or default_state_dir())
    state = load_state(layout)
    if state is None or state.node is None or not processes_alive(state):
        return False
    node_images.load_images(realnode.node_paths(layout.state_dir), references, log)
    return True


def _stop_everything(layout: Layout, state: State) -> list[str]:
    """The real node (drained first), then every other recorded process; returns what stuck."""
    if state.node is not None and running_ok(layout, state):
        nodes.drain_real_node(layout, handle(layout, state))
    return nodes.stop_real_node(layout, state) + stop_all(layout, state)


def _clear_dead(layout: Layout, state: State, log: Callable[[str], None]) -> None:
    dead = [
        p.name for p in [*state.procs, *(state.node.procs if state.node else [])] if not procs.is_running(p)
    ]
    log(f"sandbox state found but not healthy (stopped: {', '.join(dead) or 'none'}); clearing it")
    _stop_everything(layout, state)


def clear_stale(state_dir: Path | None = None, log: Callable[[str], None] = print) -> bool:
    """Undo what a sandbox whose processes died (machine restart, kill -9) left behind:
    mounts, network namespaces, iptables chains, the bridge. A live sandbox is left alone.
    Returns whether there was something to clear."""
    layout = Layout(state_dir or default_state_dir())
    with state_lock(layout):
        state = load_state(layout)
        if state is None or processes_alive(state):
            return False
        _clear_dead(layout, state, log)
        return True


def down(state_dir: Path | None = None, *, keep_state: bool = False) -> list[str]:
    """Stop every process the sandbox started, undo what its real node did to the machine and
    remove its state directory.

    Returns what could not be stopped (empty on success); the state is kept in that case so
    a second `down` can retry.
    """
    layout = Layout(state_dir or default_state_dir())
    with state_lock(layout):
        state = load_state(layout)
        stuck = _stop_everything(layout, state) if state is not None else []
        # Components of this sandbox whose record was lost (state file deleted or corrupt).
        for pid in procs.find_strays(COMPONENTS + NODE_COMPONENTS, f"{layout.state_dir}/"):
            ticks = procs.start_ticks(pid)
            if ticks is not None and not procs.stop(procs.ProcRecord("stray", pid, ticks, "")):
                stuck.append(f"stray pid {pid}")
        if not stuck and not keep_state:
            _remove_state_dir(layout)
        return stuck


def current(state_dir: Path | None = None) -> Sandbox:
    """Handle of the running sandbox; raises SandboxError when it is not up."""
    layout = Layout(state_dir or default_state_dir())
    state = load_state(layout)
    if state is None or not processes_alive(state):
        raise SandboxError(f"no running sandbox in {layout.state_dir}: run `baton sandbox up`")
    return handle(layout, state)


def join(state_dir: Path, *, auto_down: bool) -> None:
    """Register this process as a user of the sandbox (a test session sharing it).

    ``auto_down`` marks the sandbox to be stopped when its last user leaves (set by the
    session that started it). Raises SandboxError when there is no sandbox state.
    """
    layout = Layout(state_dir)
    me = procs.ProcRecord("user", os.getpid(), procs.start_ticks(os.getpid()) or 0, "")
    with state_lock(layout):
        state = load_state(layout)
        if state is None:
            raise SandboxError(f"no sandbox state in {state_dir}")
        state.users = [u for u in state.users if procs.is_running(u) and u.pid != me.pid] + [me]
        state.auto_down = state.auto_down or auto_down
        save_state(layout, state)


def leave(state_dir: Path) -> bool:
    """Unregister this process; True when it was the last live user of an auto-down sandbox."""
    layout = Layout(state_dir)
    with state_lock(layout):
        state = load_state(layout)
        if state is None:
            return False
        state.users = [u for u in state.users if procs.is_running(u) and u.pid != os.getpid()]
        save_state(layout, state)
        return state.auto_down and not state.users
