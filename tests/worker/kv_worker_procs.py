"""Start real `baton worker` processes for the KV and server tests, and talk to them over gRPC."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
from baton_worker.rpc import pb2, pb2_grpc

READY = re.compile(r"baton worker ready role=(\w+) grpc=(\S+) metrics=(\S+) kv_backend=(\w+)")


class WorkerProc:
    """One `baton worker` child process; ``wait_ready`` parses its ready line."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        cmd = [sys.executable, "-m", "baton_worker.cli", "worker", "--role", role, "--threads", "1", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        self.lines: list[str] = []
        self._ready: queue.Queue[re.Match[str] | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.address = self.metrics = self.backend = ""

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = READY.search(line)
            if m:
                self._ready.put(m)
        self._ready.put(None)

    def wait_ready(self, timeout: float = 180.0) -> WorkerProc:
        try:
            m = self._ready.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.role} not ready in {timeout}s:\n" + "\n".join(self.lines[-30:])
            ) from None
        if m is None:
            raise AssertionError(f"{self.role} exited before ready:\n" + "\n".join(self.lines[-30:]))
        self.address, self.metrics, self.backend = m.group(2), m.group(3), m.group(4)
        self.channel = grpc.insecure_channel(self.address)
        return self

    def prefill_stub(self) -> pb2_grpc.PrefillWorkerStub:
        return pb2_grpc.PrefillWorkerStub(self.channel)

    def decode_stub(self) -> pb2_grpc.DecodeWorkerStub:
        return pb2_grpc.DecodeWorkerStub(self.channel)

    def health(self) -> pb2.HealthResponse:
        stub = self.prefill_stub() if self.role == "prefill" else self.decode_stub()
        return stub.Health(pb2.HealthRequest(), timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


def all_blocks_free(worker: WorkerProc) -> bool:
    h = worker.health()
    return h.free_blocks == h.total_blocks


def generate(
    decode: WorkerProc,
    request_id: str,
    prompt: list[int],
    sampling: pb2.SamplingParams,
    prefill: pb2.PrefillResponse | None = None,
    timeout: float = 60.0,
) -> tuple[list[int], list[pb2.TokenChunk]]:
    """Run Generate to the end; returns (all token ids, chunks)."""
    req = pb2.GenerateRequest(request_id=request_id, prompt_token_ids=prompt, sampling=sampling)
    if prefill is not None:
        req.handle.CopyFrom(prefill.handle)
        req.first_token = prefill.first_token
    chunks = list(decode.decode_stub().Generate(req, timeout=timeout))
    return [t for c in chunks for t in c.token_ids], chunks


@contextlib.contextmanager
def running(procs: dict[str, WorkerProc]) -> Iterator[dict[str, WorkerProc]]:
    """Wait until every worker of ``procs`` is ready; kill them all on the way out (also when one
    of them fails to start)."""
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.kill()
