"""`baton sandbox status`: observe the sandbox's processes and API server without changing them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import procs
from .cluster import load_state, running_ok
from .layout import COMPONENTS, Layout, default_state_dir, server_url
from .nodeplan import NODE_COMPONENTS


@dataclass(frozen=True)
class ProcStatus:
    name: str
    pid: int
    running: bool
    rss_bytes: int
    log: str


@dataclass(frozen=True)
class Status:
    """What `status` reports; ``up`` is False when nothing was recorded."""

    state_dir: Path
    up: bool
    server: str | None
    kubeconfig: Path | None
    processes: tuple[ProcStatus, ...]
    api_ready: bool

    @property
    def control_plane_rss_bytes(self) -> int:
        return sum(p.rss_bytes for p in self.processes if p.name in COMPONENTS)

    @property
    def node_rss_bytes(self) -> int:
        """The real node's processes (kubelet, containerd, kube-proxy, CoreDNS); 0 without one."""
        return sum(p.rss_bytes for p in self.processes if p.name in NODE_COMPONENTS)


def status(state_dir: Path | None = None) -> Status:
    """Observe the sandbox without changing it."""
    layout = Layout(state_dir or default_state_dir())
    state = load_state(layout)
    if state is None:
        return Status(layout.state_dir, False, None, None, (), False)
    rows = tuple(
        ProcStatus(
            p.name, p.pid, procs.is_running(p), procs.rss_bytes(p.pid) if procs.is_running(p) else 0, p.log
        )
        for p in [*state.procs, *(state.node.procs if state.node else []), *state.extra]
    )
    ready = running_ok(layout, state)
    server = server_url(state.ports, state.api_host)
    return Status(layout.state_dir, True, server, layout.admin_kubeconfig, rows, ready)
