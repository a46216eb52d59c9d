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
from concurrent import futures
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from baton_worker.kv.errors import KvBackendUnavailable, KvTransferError
from baton_worker.kv.layout import Run, split_runs

log = logging.getLogger("baton.kv")

_MODULES = ("nixl_cu12", "nixl_cu13", "nixl._api")
_nixl: ModuleType | None = None
_nixl_error: str | None = None
_lock = threading.Lock()

# Environment UCX reads when the first agent starts. Only values the user has not set are
# applied, so an operator can always override them. See docs/kv-transfer.md for the figures.
UCX_DEFAULTS_CPU: dict[str, str] = {}
# GPU memory. Decode pulls with NIXL READ, which is a UCX get. UCX's cuda_ipc transport turns
# its get off on GPUs without an active NVLink (a single GPU, PCIe-only nodes: "cuda-ipc get
# zcopy disabled as no nvlinks detected"), so a READ between two processes on one node falls
# back to software emulation over tcp: 0.5 GB/s measured on one H100 with UCX's defaults
# (a device copy there: 1273 GB/s). With get on, cuda_ipc maps the peer's VRAM and copies
# device to device. Cross-node transfers (RDMA) never use cuda_ipc and are unaffected. From
# UCX's source and NIXL's upstream fix for the same problem; `bash e2e/gpu_kv_check.sh run`
# measures it against UCX's own choice on a GPU machine.
UCX_DEFAULTS_CUDA: dict[str, str] = {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "on"}


# Whatever the memory: UCX logs (warnings such as "unused environment variable") go to stderr.
# By default UCX prints them on stdout, which belongs to the program: the worker's ready line,
# `baton bench ... --json`.
UCX_DEFAULTS_ALWAYS: dict[str, str] = {"UCX_LOG_FILE": "stderr"}


def apply_ucx_defaults(cuda: bool) -> dict[str, str]:
    """Set baton's UCX settings not already in the environment (before the first agent starts:
    UCX reads them when it loads); returns what was set."""
    applied = {}
    chosen = UCX_DEFAULTS_CUDA if cuda else UCX_DEFAULTS_CPU
    for key, value in {**UCX_DEFAULTS_ALWAYS, **chosen}.items():
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


# Below this many bytes per lane, handing a READ to another thread costs more than it saves.
READ_LANE_MIN_BYTES = 8 << 20
MAX_READ_LANES = 4


def default_read_lanes(memory_type: str) -> int:
    """How many parallel READ lanes a reader uses: ``$BATON_KV_READ_LANES`` when set, else one
    per usable core (at most 4) for host memory, 1 for GPU memory.

    On host memory UCX moves the bytes with a kernel copy (CMA, ``process_vm_readv``) in the
    thread that posts the READ: one thread tops out near 4-5 GB/s on the development machine,
    two reach 7-8 GB/s (docs/kv-transfer.md). GPU memory is moved by the NIC or the copy
    engines, not the posting thread, so extra lanes there only add agents.
    """
    raw = os.environ.get("BATON_KV_READ_LANES", "")
    if raw:
        try:
            lanes = int(raw)
        except ValueError:
            lanes = 0  # refused below, with the same message as a number < 1
        if lanes < 1:
            raise ValueError(f"BATON_KV_READ_LANES={raw!r}: expected an integer >= 1")
        return lanes
    if memory_type != "DRAM":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_READ_LANES, cores))


class _Lane:
    """One NIXL agent with the endpoint's region registered; calls on it are serialised."""

    def __init__(self, nixl: ModuleType, name: str, region: Region, progress_thread: bool) -> None:
        config = nixl.nixl_agent_config(
            enable_prog_thread=progress_thread,
            backends=["UCX"],
            sync_mode=nixl.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT,
        )
        self.lock = threading.Lock()
        self.agent = nixl.nixl_agent(name, config)
        if "UCX" not in self.agent.backends:
            raise KvBackendUnavailable(f"NIXL agent {name}: the UCX backend plugin did not load")
        self.reg = self.agent.register_memory(
            [(region.address, region.length, region.device_id, "")], region.memory_type
        )

    def close(self) -> None:
        with self.lock:
            try:
                self.agent.deregister_memory(self.reg)
            except Exception:  # shutting down: nothing left to protect
                pass


class NixlEndpoint:
    """One NIXL agent per registered region (plus, for a reader, extra READ lanes); thread-safe.

    ``read_lanes`` > 1 gives the endpoint that many agents on the same region, each with its
    own UCX worker, and splits a large READ across them in parallel threads (see
    :func:`default_read_lanes`). Only the first agent is announced to peers: its metadata is
    what ``GetAgentMetadata`` serves and it receives the notifications.
    """

    def __init__(
        self, name: str, region: Region, progress_thread: bool | None = None, read_lanes: int = 1
    ) -> None:
        # NIXL's Python wrapper runs its progress thread with no delay between polls: a busy
        # loop that costs a whole core per idle agent (measured: ~98% of a core for each idle
        # `baton up` worker). Default: the thread only for GPU memory; host-memory agents are
        # progressed by whoever polls them (read()'s status checks, the source's housekeeping).
        if progress_thread is None:
            progress_thread = region.memory_type != "DRAM"
        if read_lanes < 1:
            raise ValueError(f"read_lanes must be >= 1, got {read_lanes}")
        nixl = load_nixl()
        self.name = name
        self.region = region
        self._lanes = [_Lane(nixl, name, region, progress_thread)]
        for i in range(1, read_lanes):
            try:
                self._lanes.append(_Lane(nixl, f"{name}.lane{i}", region, progress_thread))
            except Exception as exc:  # extra lanes only add speed: run with the ones we have
                log.warning("NIXL agent %s.lane%d not created (%s): reading on %d lane(s)", name, i, exc, i)
                break
        self._pool = (
            futures.ThreadPoolExecutor(max_workers=len(self._lanes) - 1, thread_name_prefix="baton-kv-read")
            if len(self._lanes) > 1
            else None
        )
        # Exported after registration so peers learn about the region.
        self.metadata: bytes = self._lanes[0].agent.get_agent_metadata()
        self._peers: dict[str, str] = {}  # peer key (engine id) -> remote agent name
        self._peers_lock = threading.Lock()
        self.split_reads = 0  # READs that ran on more than one lane (observability, tests)

    @property
    def read_lanes(self) -> int:
        """How many agents a large READ is split across."""
        return len(self._lanes)

    def peer(self, key: str) -> str | None:
        """Remote agent name already added for ``key`` (an engine id), else None."""
        with self._peers_lock:
            return self._peers.get(key)

    def add_peer(self, key: str, metadata: bytes) -> str:
        """Add a remote agent from its exported metadata once per ``key`` (to every lane);
        returns its name."""
        with self._peers_lock:
            if key in self._peers:
                return self._peers[key]
            added: list[tuple[_Lane, str]] = []
            try:
                for lane in self._lanes:
                    with lane.lock:
                        remote = lane.agent.add_remote_agent(metadata)
                    added.append((lane, remote.decode() if isinstance(remote, bytes) else str(remote)))
            except Exception as exc:
                for lane, name in added:
                    _remove_remote(lane, name)
                raise KvTransferError(f"NIXL rejected the agent metadata of {key}: {exc}") from exc
            name = added[0][1]
            self._peers[key] = name
            return name

    def forget_peer(self, key: str) -> None:
        """Drop a peer (it restarted or died) so the next contact fetches fresh metadata."""
        with self._peers_lock:
            name = self._peers.pop(key, None)
            if name is not None:
                for lane in self._lanes:
                    _remove_remote(lane, name)

    def read(
        self,
        remote_agent: str,
        remote: Region,
        runs: list[Run],
        notify: bytes,
        deadline: float,
    ) -> int:
        """READ ``runs`` (src = remote offsets, dst = local offsets) and post ``notify`` to the
        peer when all bytes are in. Returns the bytes moved; raises KvTransferError on error or
        when ``deadline`` (time.monotonic()) passes, never hangs.

        The notification is its own message, sent once every READ is DONE (never earlier: the
        peer frees the blocks when it arrives). Riding on the READ instead makes NIXL flush the
        endpoint first, a round trip the peer must progress: measured ~15 ms per READ against a
        peer that polls every 20 ms, against ~0.1 ms for the message. With several lanes a
        large READ is split (:func:`split_runs`) and the parts run in parallel threads; on any
        failure no part is still writing when this returns."""
        if not runs:
            return 0
        groups = split_runs(runs, len(self._lanes), READ_LANE_MIN_BYTES) if self._pool else [runs]
        if len(groups) == 1:
            moved = _read_on(self._lanes[0], remote_agent, remote, self.region, groups[0], deadline)
        else:
            self.split_reads += 1
            moved = self._read_parallel(remote_agent, remote, groups, deadline)
        if notify:
            self.notify(remote_agent, notify)
        return moved

    def _read_parallel(
        self, remote_agent: str, remote: Region, groups: list[list[Run]], deadline: float
    ) -> int:
        assert self._pool is not None
        parts = [
            self._pool.submit(_read_on, lane, remote_agent, remote, self.region, group, deadline)
            for lane, group in zip(self._lanes[1:], groups[1:], strict=False)
        ]
        moved, errors = 0, []
        try:
            moved += _read_on(self._lanes[0], remote_agent, remote, self.region, groups[0], deadline)
        except KvTransferError as exc:
            errors.append(exc)
        for part in parts:
            try:
                # Each part gives up at the deadline itself (and aborts its transfer); the extra
                # margin only guards against a part that never returns.
                moved += part.result(timeout=max(0.0, deadline - time.monotonic()) + 30)
            except KvTransferError as exc:
                errors.append(exc)
            except futures.TimeoutError:
                errors.append(KvTransferError(f"NIXL READ from {remote_agent}: a lane did not return"))
        if errors:
            raise errors[0]
        return moved

    def notify(self, remote_agent: str, message: bytes) -> None:
        """Send a standalone notification to a peer."""
        lane = self._lanes[0]
        with lane.lock:
            try:
                lane.agent.send_notif(remote_agent, message)
            except Exception as exc:
                raise KvTransferError(f"NIXL notification to {remote_agent} failed: {exc}") from exc

    def take_notifications(self) -> list[bytes]:
        """Notifications received since the last call (from any peer)."""
        lane = self._lanes[0]
        with lane.lock:
            got = lane.agent.get_new_notifs()
        return [m for msgs in got.values() for m in msgs]

    def close(self) -> None:
        """Stop the READ threads and deregister the region from every lane; the agents are
        dropped with the object."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for lane in self._lanes:
            lane.close()


def _remove_remote(lane: _Lane, name: str) -> None:
    with lane.lock:
        try:
            lane.agent.remove_remote_agent(name)
        except Exception:  # already gone on the NIXL side: nothing to undo
            pass


# Checks of a READ's state, each after a bare yield, before polling backs off to sleeps. A READ
# of a short prompt's KV (1 MiB: 8 tokens of an 8B model) is seldom DONE when posted but nearly
# always a few microseconds later, while the first 0.1 ms sleep takes ~0.25 ms on a busy
# machine: measured side by side, 0.68-0.74 -> 0.60-0.63 ms per 1 MiB pull on the 2-core VM.
READ_POLL_SPINS = 20


def _read_on(
    lane: _Lane,
    remote_agent: str,
    remote: Region,
    local: Region,
    runs: list[Run],
    deadline: float,
) -> int:
    """One READ of ``runs`` on one lane, polled until DONE, error or ``deadline``."""
    mine = np.array([(local.address + r.dst, r.length, local.device_id) for r in runs], dtype=np.uint64)
    far = np.array([(remote.address + r.src, r.length, remote.device_id) for r in runs], dtype=np.uint64)
    agent = lane.agent
    with lane.lock:
        try:
            local_d = agent.get_xfer_descs(mine, local.memory_type)
            far_d = agent.get_xfer_descs(far, remote.memory_type)
            handle = agent.initialize_xfer("READ", local_d, far_d, remote_agent, b"")
            state = agent.transfer(handle)
        except Exception as exc:
            raise KvTransferError(f"NIXL READ from {remote_agent} could not start: {exc}") from exc
    try:
        pause, spins = 0.0001, READ_POLL_SPINS
        while state == "PROC":
            if time.monotonic() > deadline:
                raise KvTransferError(f"NIXL READ from {remote_agent} timed out")
            if spins:
                spins -= 1
                time.sleep(0)  # yield only: the last part of a small READ lands within microseconds
            else:
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
            with lane.lock:
                state = agent.check_xfer_state(handle)
        if state != "DONE":
            raise KvTransferError(f"NIXL READ from {remote_agent} failed (state {state})")
    finally:
        with lane.lock:
            try:
                agent.release_xfer_handle(handle)
            except Exception:  # a failed/aborted request may refuse release; NIXL reaps it
                pass
    return int(sum(r.length for r in runs))
