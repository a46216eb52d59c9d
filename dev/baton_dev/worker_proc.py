"""A real `baton worker` child process, for the benchmarks, `baton profile` and the tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import grpc
from baton_worker.rpc import pb2, pb2_grpc

READY = re.compile(r"baton worker ready role=(\w+) grpc=(\S+) metrics=(\S+) kv_backend=(\w+)")


class WorkerProc:
    """One `baton worker --role ROLE ARGS` in a process group of its own; ``wait_ready`` parses its
    ready line (the gRPC and metrics addresses, the KV backend it runs)."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        cmd = [sys.executable, "-m", "baton_worker.cli", "worker", "--role", role, *args]
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
        """Block until the worker is ready; AssertionError with its last lines when it is not."""
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
