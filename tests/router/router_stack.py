"""Helpers of the router tests: a real `baton up` stack (router + worker processes), a router
process, and single-process reference generation. (A uniquely named module rather than
conftest.py: test directories share one `conftest` module name.)
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from polling import wait_until

MODEL = "builtin://tiny"
READY_TIMEOUT_S = 180.0  # generous: a loaded two-core machine loads the model slowly


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class LocalStack:
    """A `baton up` process and what it printed: URL, worker pids and gRPC addresses."""

    def __init__(self, *args: str, stop_signal: int = signal.SIGTERM) -> None:
        self.stop_signal = stop_signal  # SIGINT is what Ctrl-C in a terminal sends
        cmd = [sys.executable, "-m", "baton_worker.cli", "up", "--model", MODEL, "--port", "0", *args]
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready_line = wait_until(
            self._ready, timeout=READY_TIMEOUT_S, what="the `baton up ... ready` line", interval=0.1
        )
        self.ready_s = time.monotonic() - self.started
        self.url = re.search(r"url=(\S+)", self.ready_line).group(1)  # type: ignore[union-attr]
        self.pids: dict[str, int] = {}
        self.grpc: dict[str, str] = {}
        for line in self.lines:
            m = re.match(r"baton up: (\S+) pid=(\d+) (?:grpc|http)=(\S+)", line)
            if m:
                self.pids[m.group(1)] = int(m.group(2))
                self.grpc[m.group(1)] = m.group(3)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def _ready(self) -> str | None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.lines[-40:])
            raise AssertionError(f"baton up exited with {self.proc.returncode} before ready:\n{tail}")
        for line in self.lines:
            if line.startswith("baton up ready"):
                return line
        return None

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self, name: str) -> None:
        """SIGKILL one worker process (no chance to drain)."""
        os.kill(self.pids[name], signal.SIGKILL)

    def stop(self) -> None:
        """Signal `baton up` (SIGTERM or SIGINT); assert it exits 0 and leaves no process behind."""
        children = list(self.pids.values())
        self.proc.send_signal(self.stop_signal)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(
                f"baton up did not stop within 60s of SIGTERM:\n{self.output()[-3000:]}"
            ) from None
        assert code == 0, f"baton up exited with {code}:\n{self.output()[-3000:]}"
        wait_until(
            lambda: not [p for p in children if pid_alive(p)], timeout=10, what=f"children {children} to exit"
        )


def reference_generate(prompts: list[list[int]], **sampling: object) -> list[list[int]]:
    """Output token ids of ``prompts`` from the engine in this one process (the single-process
    reference the router's answers must equal)."""
    import torch
    from baton_worker.engine import DecodeEngine, EngineRequest, KvBlockPool, SamplingParams

    torch.set_num_threads(1)
    model = _reference_model()
    pool = KvBlockPool.for_model(model, num_blocks=2048, block_size=16)
    engine = DecodeEngine(model, pool, max_batch_size=64)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(f"r{i}", tuple(p), SamplingParams(**sampling)))  # type: ignore[arg-type]
    out: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    done: set[str] = set()
    for _ in range(100_000):
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
            if o.finished:
                done.add(o.request_id)
        if len(done) == len(prompts):
            break
    assert len(done) == len(prompts), "reference engine did not finish"
    return [out[f"r{i}"] for i in range(len(prompts))]


_MODEL_CACHE: list = []


def _reference_model():  # type: ignore[no-untyped-def]
    from baton_worker.engine import load_model

    if not _MODEL_CACHE:
        _MODEL_CACHE.append(load_model(MODEL))
    return _MODEL_CACHE[0]


@functools.cache
def tokenizer():  # type: ignore[no-untyped-def]
    """The router's own tokenizer of MODEL (what the router uses to encode and decode)."""
    from baton_worker.text import load_tokenizer

    return load_tokenizer(MODEL)


def start_router(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A `baton router --port 0 --model MODEL *args` process and its base URL (http://h:p).

    Its output is drained in a thread (a full pipe would block it) and kept on ``proc.lines``.
    """
    cmd = [sys.executable, "-m", "baton_worker.cli", "router", "--port", "0", "--model", MODEL, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("baton router ready"):
                ready.append(line.split()[3])

    threading.Thread(target=read, daemon=True).start()
    proc.lines = lines  # type: ignore[attr-defined]

    def is_ready() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"router exited with {proc.returncode}:\n" + "\n".join(lines[-30:]))
        return ready[0] if ready else None

    return proc, wait_until(is_ready, timeout=120, what="the router's ready line", interval=0.1)
