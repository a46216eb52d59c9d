"""The sandbox's state file: what `up` recorded (ports, binaries, every process it started, the
real node), read and written under a lock shared by every process using the sandbox."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import procs, realnode
from .layout import Layout, Ports

STATE_VERSION = 1


@dataclass
class State:
    """What `up` recorded: ports, binaries and every process it started."""

    ports: Ports
    binaries: dict[str, str]
    procs: list[procs.ProcRecord] = field(default_factory=list)
    extra: list[procs.ProcRecord] = field(default_factory=list)
    started_at: float = 0.0
    ready_after_s: float = 0.0
    # Test sessions using this sandbox now, and whether the last one to leave stops it.
    users: list[procs.ProcRecord] = field(default_factory=list)
    auto_down: bool = False
    # Where the API server listens (the real node's address when there is one).
    api_host: str = "127.0.0.1"
    # The real node (`up --real-node`), None when every node is simulated.
    node: realnode.NodeState | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "ports": self.ports.as_dict(),
            "binaries": self.binaries,
            "procs": [p.to_json() for p in self.procs],
            "extra": [p.to_json() for p in self.extra],
            "started_at": self.started_at,
            "ready_after_s": self.ready_after_s,
            "users": [u.to_json() for u in self.users],
            "auto_down": self.auto_down,
            "api_host": self.api_host,
            "node": self.node.to_json() if self.node is not None else None,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> State:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"state file version {d.get('version')!r}, expected {STATE_VERSION}")
        return State(
            ports=Ports(**d["ports"]),
            binaries=dict(d["binaries"]),
            procs=[procs.ProcRecord.from_json(p) for p in d["procs"]],
            extra=[procs.ProcRecord.from_json(p) for p in d.get("extra", [])],
            started_at=float(d.get("started_at", 0.0)),
            ready_after_s=float(d.get("ready_after_s", 0.0)),
            users=[procs.ProcRecord.from_json(u) for u in d.get("users", [])],
            auto_down=bool(d.get("auto_down", False)),
            api_host=str(d.get("api_host", "127.0.0.1")),
            node=realnode.NodeState.from_json(d["node"]) if d.get("node") else None,
        )


def load_state(layout: Layout) -> State | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        return State.from_json(json.loads(layout.state_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_state(layout: Layout, state: State) -> None:
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=1))
    tmp.replace(layout.state_file)


@contextmanager
def state_lock(layout: Layout) -> Iterator[None]:
    """Serialize `up`/`down` and state-file updates of one sandbox across processes."""
    layout.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
