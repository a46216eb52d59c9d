"""The NIXL data path: one agent per worker rank, its pool registered once, READs with deadlines.

NIXL is optional: :func:`load_nixl` imports ``nixl_cu12`` / ``nixl_cu13`` / ``nixl`` lazily and
raises :class:`KvBackendUnavailable` with the reason when none loads. Memory is registered
*before* the agent metadata is exported (metadata exported earlier does not describe it).
The UCX transport defaults that made transfers fast are applied in :func:`apply_ucx_defaults`
before the first agent is created (see docs/kv-transfer.md for the measurements).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from baton_worker.kv.errors import KvBackendUnavailable, KvTransferError
from baton_worker.kv.layout import Run

_MODULES = ("nixl_cu12", "nixl_cu13", "nixl._api")
_nixl: ModuleType | None = None
_nixl_error: str | None = None
_lock = threading.Lock()

# Environment UCX reads when the first agent starts. Only values the user has not set are
# applied, so an operator can always override them. See docs/kv-transfer.md for the figures.
UCX_DEFAULTS_CPU: dict[str, str] = {}
UCX_DEFAULTS_CUDA: dict[str, str] = {}


def apply_ucx_defaults(cuda: bool) -> dict[str, str]:
    """Set the measured-best UCX settings not already in the environment; returns what was set."""
    applied = {}
    for key, value in (UCX_DEFAULTS_CUDA if cuda else UCX_DEFAULTS_CPU).items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


def load_nixl() -> ModuleType:
    """Return the NIXL Python module, importing it on first use.

    Raises KvBackendUnavailable naming every module tried and why it failed.
    """
    global _nixl, _nixl_error
    with _lock:
        if _nixl is not None:
            return _nixl
        if _nixl_error is not None:
            raise KvBackendUnavailable(_nixl_error)
        errors = []
        for name in _MODULES:
            try:
                mod = importlib.import_module(name)
                if hasattr(mod, "nixl_agent"):
                    _logs_to_stderr()
                    _nixl = mod
                    return mod
                errors.append(f"{name}: no nixl_agent")
            except Exception as exc:  # an ImportError or a broken native library
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        _nixl_error = "NIXL is not available (" + "; ".join(errors) + "); use --kv-backend grpc"
        raise KvBackendUnavailable(_nixl_error)


def _logs_to_stderr() -> None:
    # NIXL logs to stdout; stdout belongs to the program (ready lines, `--json` output).
    for handler in logging.getLogger("nixl").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def nixl_available() -> bool:
    """True when a NIXL module imports (used by backend ``auto``)."""
    try:
        load_nixl()
        return True
    except KvBackendUnavailable:
        return False


@dataclass(frozen=True)
class Region:
    """A registered memory region: the pool tensor of one rank."""

    address: int
    length: int
    device_id: int
    memory_type: str  # "DRAM" | "VRAM"


class NixlEndpoint:
    """One NIXL agent with one registered region; thread-safe (calls are serialised)."""

    def __init__(self, name: str, region: Region, progress_thread: bool | None = None) -> None:
        # NIXL's Python wrapper runs its progress thread with no delay between polls: a busy
        # loop that costs a whole core per idle agent (measured: ~98% of a core for each idle
        # `baton up` worker). Default: the thread only for GPU memory; host-memory agents are
        # progressed by whoever polls them (read()'s status checks, the source's housekeeping).
        if progress_thread is None:
            progress_thread = region.memory_type != "DRAM"
        nixl = load_nixl()
        config = nixl.nixl_agent_config(
            enable_prog_thread=progress_thread,
            backends=["UCX"],
            sync_mode=nixl.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT,
        )
        self.name = name
        self.region = region
        self._call = threading.Lock()
        self._agent = nixl.nixl_agent(name, config)
        if "UCX" not in self._agent.backends:
            raise KvBackendUnavailable(f"NIXL agent {name}: the UCX backend plugin did not load")
        self._reg = self._agent.register_memory(
            [(region.address, region.length, region.device_id, "")], region.memory_type
        )
        # Exported after registration so peers learn about the region.
        self.metadata: bytes = self._agent.get_agent_metadata()
        self._peers: dict[str, str] = {}  # peer key (engine id) -> remote agent name

    def peer(self, key: str) -> str | None:
        """Remote agent name already added for ``key`` (an engine id), else None."""
        with self._call:
            return self._peers.get(key)

    def add_peer(self, key: str, metadata: bytes) -> str:
        """Add a remote agent from its exported metadata once per ``key``; returns its name."""
        with self._call:
            if key in self._peers:
                return self._peers[key]
            try:
                remote = self._agent.add_remote_agent(metadata)
            except Exception as exc:
                raise KvTransferError(f"NIXL rejected the agent metadata of {key}: {exc}") from exc
            name = remote.decode() if isinstance(remote, bytes) else str(remote)
            self._peers[key] = name
            return name

    def forget_peer(self, key: str) -> None:
        """Drop a peer (it restarted or died) so the next contact fetches fresh metadata."""
        with self._call:
            name = self._peers.pop(key, None)
            if name is not None:
                try:
                    self._agent.remove_remote_agent(name)
                except Exception:  # already gone on the NIXL side: nothing to undo
                    pass

    def read(
        self,
        remote_agent: str,
        remote: Region,
        runs: list[Run],
        notify: bytes,
        deadline: float,
    ) -> int:
        """READ ``runs`` (src = remote offsets, dst = local offsets) and post ``notify`` to the
        peer when done. Returns the bytes moved; raises KvTransferError on error or when
        ``deadline`` (time.monotonic()) passes, never hangs."""
        if not runs:
            return 0
        local = np.array(
            [(self.region.address + r.dst, r.length, self.region.device_id) for r in runs], dtype=np.uint64
        )
        far = np.array([(remote.address + r.src, r.length, remote.device_id) for r in runs], dtype=np.uint64)
        with self._call:
            try:
                local_d = self._agent.get_xfer_descs(local, self.region.memory_type)
                far_d = self._agent.get_xfer_descs(far, remote.memory_type)
                handle = self._agent.initialize_xfer("READ", local_d, far_d, remote_agent, notify)
                state = self._agent.transfer(handle)
            except Exception as exc:
                raise KvTransferError(f"NIXL READ from {remote_agent} could not start: {exc}") from exc
        try:
            pause = 0.0001
            while state == "PROC":
                if time.monotonic() > deadline:
                    raise KvTransferError(f"NIXL READ from {remote_agent} timed out")
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
                with self._call:
                    state = self._agent.check_xfer_state(handle)
            if state != "DONE":
                raise KvTransferError(f"NIXL READ from {remote_agent} failed (state {state})")
        finally:
            with self._call:
                try:
                    self._agent.release_xfer_handle(handle)
                except Exception:  # a failed/aborted request may refuse release; NIXL reaps it
                    pass
        return int(sum(r.length for r in runs))

    def notify(self, remote_agent: str, message: bytes) -> None:
        """Send a standalone notification to a peer."""
        with self._call:
            self._agent.send_notif(remote_agent, message)

    def take_notifications(self) -> list[bytes]:
        """Notifications received since the last call (from any peer)."""
        with self._call:
            got = self._agent.get_new_notifs()
        return [m for msgs in got.values() for m in msgs]

    def close(self) -> None:
        """Deregister the region; the agent is dropped with the object."""
        with self._call:
            try:
                self._agent.deregister_memory(self._reg)
            except Exception:  # shutting down: nothing left to protect
                pass
