"""Fixtures of the end-to-end tier: a sandbox with a real kubelet node (`up --real-node`).

``real_sandbox`` (session scope) yields a ``baton_operator.sandbox.handle.Sandbox`` whose
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
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from baton_operator.sandbox.handle import Sandbox

REAL_SANDBOX_DIR_ENV = "BATON_REAL_SANDBOX_DIR"


def real_state_dir() -> Path:
    env = os.environ.get(REAL_SANDBOX_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton" / "sandbox" / "real"


@pytest.fixture(scope="session")
def real_sandbox() -> Iterator[Sandbox]:
    from baton_operator.sandbox import cluster
    from baton_operator.sandbox.imageplan import OPERATOR_IMAGE, PAUSE_IMAGE, WORKER_IMAGE

    if os.geteuid() != 0:
        pytest.fail("the real-node tests need root (kubelet, containerd and CNI); run `make e2e` as root")
    state_dir = real_state_dir()
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
