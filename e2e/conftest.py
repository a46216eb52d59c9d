"""Fixtures of the end-to-end tier: a sandbox with a real kubelet node (`up --real-node`).

``real_sandbox`` (session scope) yields a ``baton_dev.sandbox.handle.Sandbox`` whose
cluster has the kwok GPU pools plus the real node ``real-0``, with the local images
(``make images``) loaded into the node's containerd. It lives in its own state directory
(``$BATON_REAL_SANDBOX_DIR``, default ``~/.cache/baton/sandbox/real``), apart from the kwok-only
sandbox of tests/integration, and is stopped at session end only if this session started it.
Needs root (kubelet, containerd and CNI change mounts, cgroups and networking).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from baton_dev.sandbox.handle import Sandbox


def _cmdlines() -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit():
                found.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # exited meanwhile
    return found


def machine_state(state_dir: Path) -> dict[str, Any]:
    """What `up --real-node` changes on the machine and `down` must put back."""
    from baton_dev.sandbox import realnode
    from baton_dev.sandbox.addresses import BRIDGE

    snap = realnode.snapshot_host()
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(state_dir) in line.split()[4] or "/baton-sandbox-" in line.split()[4]
    ]
    return {
        "ip_forward": snap.ip_forward,
        "iptables_chains": snap.chains,
        "netns": snap.netns,
        "kubepods_cgroups": snap.cgroups,
        "absent_dirs": snap.absent_dirs,
        "bridge": Path(f"/sys/class/net/{BRIDGE}").exists(),
        "mounts": mounts,
    }


@pytest.fixture(scope="session")
def real_sandbox() -> Iterator[Sandbox]:
    from baton_dev.sandbox import cluster, procs
    from baton_dev.sandbox.imageplan import OPERATOR_IMAGE, PAUSE_IMAGE, WORKER_IMAGE
    from baton_dev.sandbox.layout import real_node_state_dir
    from baton_dev.sandbox.nodeplan import NODE_COMPONENTS

    if os.geteuid() != 0:
        pytest.fail("the real-node tests need root (kubelet, containerd and CNI); run `make e2e` as root")
    state_dir = real_node_state_dir()
    # A sandbox whose processes died with the machine leaves its node's changes behind: clear
    # them first, so `before` is the machine as it was without any sandbox.
    cluster.clear_stale(state_dir, log=lambda msg: print(f"[real-node] {msg}"))
    before = machine_state(state_dir)
    handle, started = cluster.up(state_dir, real_node=True, log=lambda msg: print(f"[real-node] {msg}"))
    if not started:
        # A sandbox left up by hand or by another session: give it the current images.
        cluster.load_node_images(state_dir, [PAUSE_IMAGE, OPERATOR_IMAGE, WORKER_IMAGE], print)
    cluster.join(state_dir, auto_down=started)
    try:
        yield handle
    finally:
        if cluster.leave(state_dir):
            stuck = cluster.down(state_dir)
            assert not stuck, f"real-node sandbox would not stop: {stuck}"
            # `down` leaves the machine as `up` found it.
            assert machine_state(state_dir) == before
            assert not procs.find_strays(NODE_COMPONENTS, f"{state_dir}/")
            assert not [c for c in _cmdlines() if "containerd-shim" in c and "/baton-sandbox-" in c]
