"""`baton up`: the disaggregated data plane on one machine, as local processes.

Starts N prefill workers, M decode workers and the router, each in its own process group
(so Ctrl-C in the terminal reaches only us, and we stop each group as a whole), prints the
endpoint and a ready line, restarts a worker that dies, and on Ctrl-C or SIGTERM stops every
process it started. Children also get SIGTERM from the kernel if this process dies abruptly
(PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from baton_worker.router.auth import API_KEY_ENV

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Runs in the child between fork and exec: die with the parent, whatever kills it.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
# Ports handed to the children come from below the kernel's ephemeral range: a port there is
# only ever taken by an explicit bind, never as the source port of some process's outbound
# connection (NIXL/UCX, gRPC and HTTP clients connect all through start-up), which would make
# the child's bind fail.
LOWEST_PORT = 10000


def port_candidates(ephemeral_low: int, rng: random.Random, count: int = 64) -> list[int]:
    """Ports to try, below the ephemeral range and from ``LOWEST_PORT`` (pure); [] when the
    range leaves no room below it."""
    if ephemeral_low - LOWEST_PORT < count:
        return []
    return rng.sample(range(LOWEST_PORT, ephemeral_low), count)


def _ephemeral_low() -> int:
    try:
        with open(EPHEMERAL_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the child binds it right after), outside the
    kernel's ephemeral range where one is available there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in [*port_candidates(_ephemeral_low(), random.Random()), 0]:
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free TCP port on {host}")


@dataclass
class Child:
    """One process of the stack."""

    name: str  # prefill-0, decode-1, router
    cmd: list[str]
    ready_marker: str
    address: str = ""
    proc: subprocess.Popen | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    metrics: str = ""  # a worker's /metrics address

    def start(self, out: queue.Queue) -> None:
        self.ready.clear()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup,
            text=True,
            bufsize=1,
            env={**os.environ, **self.env} if self.env else None,
        )
        threading.Thread(target=self._pump, args=(self.proc, out), daemon=True).start()

    def _pump(self, proc: subprocess.Popen, out: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if self.ready_marker in line:
                self.ready.set()
            out.put(f"[{self.name}] {line.rstrip()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton up", description="Run router + prefill + decode workers locally.")
    p.add_argument("--model", default="builtin://tiny", help="builtin://tiny or a model directory")
    p.add_argument(
        "--served-model-name",
        default="",
        help="name clients send in the OpenAI API (default: derived from --model, e.g. tiny); "
        "the --model value is accepted too",
    )
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (default 1)")
    p.add_argument("--decode", type=int, default=1, help="decode workers (default 1)")
    p.add_argument(
        "--colocated",
        type=int,
        default=0,
        metavar="N",
        help="baseline: N workers that each prefill and decode (no prefill pool; overrides --prefill/--decode)",
    )
    p.add_argument("--port", type=int, default=8000, help="router HTTP port (0: a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="worker dtype (default: the worker's)")
    p.add_argument("--kv-backend", default=None, choices=["auto", "nixl", "grpc"])
    p.add_argument("--max-batch-size", type=int, default=None, help="decode workers' batch limit")
    p.add_argument(
        "--local-prefill-max-tokens",
        type=int,
        default=None,
        help="router: prompts this short prefill on decode",
    )
    p.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="workers compute every prompt from its first token (default: reuse cached prompt prefixes)",
    )
    p.add_argument(
        "--prefix-weight",
        type=float,
        default=None,
        help="router: weight of a worker's cached prompt prefix against its load (0: place on load only)",
    )
    p.add_argument(
        "--api-key",
        default="",
        help="clients must send 'Authorization: Bearer KEY' (401 otherwise); handed to the router in "
        "its environment, not on its command line",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between router and workers and between workers, with a throwaway CA and "
        "certificate made in a temporary directory (removed at exit)",
    )
    tls.add_argument(
        "--tls-dir",
        default="",
        help="mutual TLS with the ca.crt, tls.crt and tls.key of this directory (reloaded when they change)",
    )
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for every process")
    p.add_argument("--no-restart", action="store_true", help="do not restart a worker that exits")
    p.add_argument("--quiet", action="store_true", help="do not echo the children's output")
    p.add_argument(
        "--worker-arg", action="append", default=[], help="extra argument for every worker (repeatable)"
    )
    return p


def default_served_name(model: str) -> str:
    """The name `baton up` serves a model under: builtin://tiny -> tiny, hf://org/m -> org/m,
    a directory (plain, file:// or pvc://) -> its last path component."""
    for scheme in ("builtin://", "hf://"):
        if model.startswith(scheme):
            return model[len(scheme) :] or model
    path = model.removeprefix("file://").removeprefix("pvc://").rstrip("/")
    return path.rsplit("/", 1)[-1] or model


def plan(a: argparse.Namespace) -> list[Child]:
    """The processes to start, workers first; ValueError naming the flag on bad counts."""
    served = a.served_model_name or default_served_name(a.model)
    n_prefill, n_decode = (0, a.colocated) if a.colocated else (a.prefill, a.decode)
    if n_prefill < 0 or n_decode < 1:
        raise ValueError("--prefill must be >= 0 and --decode (or --colocated) >= 1")
    base = [sys.executable, "-m", "baton_worker.cli"]
    children: list[Child] = []
    for role, count in (("prefill", n_prefill), ("decode", n_decode)):
        for i in range(count):
            port, mport = free_port(), free_port()
            cmd = base + ["worker", "--role", role, "--model", a.model, "--served-model-name", served]
            cmd += ["--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--metrics-port", str(mport), "--device", a.device]
            if a.dtype:
                cmd += ["--dtype", a.dtype]
            if a.kv_backend:
                cmd += ["--kv-backend", a.kv_backend]
            if a.max_batch_size and role == "decode":
                cmd += ["--max-batch-size", str(a.max_batch_size)]
            if a.no_prefix_caching:
                cmd += ["--no-prefix-caching"]
            if a.tls_dir:
                cmd += ["--tls-dir", a.tls_dir]
            cmd += a.worker_arg
            children.append(
                Child(
                    f"{role}-{i}",
                    cmd,
                    "baton worker ready",
                    address=f"127.0.0.1:{port}",
                    metrics=f"127.0.0.1:{mport}",
                )
            )
    prefill = ",".join(c.address for c in children if c.name.startswith("prefill"))
    decode = ",".join(c.address for c in children if c.name.startswith("decode"))
    port = a.port or free_port(a.host)
    cmd = base + ["router", "--host", a.host, "--port", str(port), "--model", a.model, "--decode", decode]
    cmd += ["--served-model-name", served]
    if prefill:
        cmd += ["--prefill", prefill]
    if a.local_prefill_max_tokens is not None:
        cmd += ["--local-prefill-max-tokens", str(a.local_prefill_max_tokens)]
    if a.prefix_weight is not None:
        cmd += ["--prefix-weight", str(a.prefix_weight)]
    if a.tls_dir:
        cmd += ["--tls-dir", a.tls_dir]
    host = f"[{a.host}]" if ":" in a.host else a.host
    env = {API_KEY_ENV: a.api_key} if a.api_key else {}
    children.append(Child("router", cmd, "baton router ready", address=f"{host}:{port}", env=env))
    return children


def _router_sees_every_worker(address: str, prefill: int, decode: int) -> bool:
    """True once the router answers /health ok and counts every worker it was given as usable,
    so "ready" means the whole stack serves (not just one decode worker)."""
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=2) as r:
            health = json.loads(r.read()) if r.status == 200 else {}
    except (OSError, ValueError):
        return False
    usable = {role: int((health.get(role) or {}).get("usable") or 0) for role in ("prefill", "decode")}
    return health.get("status") == "ok" and usable["prefill"] >= prefill and usable["decode"] >= decode


class Stack:
    """The running processes; main-thread only (PDEATHSIG follows the thread that forked)."""

    def __init__(self, children: list[Child], quiet: bool, restart: bool) -> None:
        self.children = children
        self.quiet = quiet
        self.restart = restart
        self.out: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()

    def drain_output(self, timeout: float = 0.0) -> None:
        try:
            line = self.out.get(timeout=timeout) if timeout else self.out.get_nowait()
            while True:
                if not self.quiet:
                    print(line, flush=True)
                line = self.out.get_nowait()
        except queue.Empty:
            pass

    def wait_ready(self, children: list[Child], deadline: float) -> str | None:
        """None when every child printed its ready line; else why not."""
        while not all(c.ready.is_set() for c in children):
            self.drain_output(0.1)
            for c in children:
                if not c.alive():
                    return f"{c.name} exited with code {c.proc.returncode if c.proc else '?'} before it was ready"
            if self.stopping.is_set():
                return "interrupted"
            if time.monotonic() > deadline:
                late = [c.name for c in children if not c.ready.is_set()]
                return f"not ready within the timeout: {', '.join(late)}"
        return None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process group (router first, so no new work reaches workers), then SIGKILL."""
        for c in reversed(self.children):
            c.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in self.children:
            if c.proc is not None:
                try:
                    c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for c in self.children:
            c.signal_group(signal.SIGKILL)
            if c.proc is not None and c.proc.poll() is None:
                c.proc.wait(timeout=5)
        self.drain_output()

    def supervise(self) -> None:
        """Until stopped: echo output, restart workers that exit (with back-off)."""
        while not self.stopping.is_set():
            self.drain_output(0.2)
            for c in self.children:
                if c.proc is None or c.alive() or self.stopping.is_set():
                    continue
                code = c.proc.returncode
                if c.name == "router" or not self.restart:
                    print(f"baton up: {c.name} exited with code {code}", flush=True)
                    if c.name == "router":
                        self.stopping.set()
                    c.proc = None
                    continue
                # Back off when a worker keeps dying right after start.
                if time.monotonic() - c.started_at < 5 * (1 + c.restarts) and c.restarts:
                    continue
                c.restarts += 1
                print(
                    f"baton up: {c.name} exited with code {code}; restarting (restart {c.restarts})",
                    flush=True,
                )
                c.start(self.out)
                print(f"baton up: {c.name} pid={c.proc.pid} grpc={c.address} metrics={c.metrics}", flush=True)


def throwaway_tls_dir() -> str:
    """A temporary directory with a new CA and a certificate signed by it (``baton up --tls``)."""
    import datetime as dt
    import tempfile

    from baton_worker.pki import issue_pool, pool_identity, write_dir

    directory = tempfile.mkdtemp(prefix="baton-up-tls-")
    day = dt.timedelta(days=1)
    ca, leaf = issue_pool(pool_identity("baton-up", "local"), 30 * day, 120 * day, dt.datetime.now(dt.UTC))
    write_dir(directory, ca.cert, leaf)
    return directory


def main(argv: list[str]) -> int:
    """Run the stack until Ctrl-C/SIGTERM; 0 on a clean stop, 1 when it could not start, 2 on bad flags."""
    a = build_parser().parse_args(argv)
    made_tls_dir = ""
    if a.tls:
        a.tls_dir = made_tls_dir = throwaway_tls_dir()
    try:
        return _run(a)
    finally:
        if made_tls_dir:
            shutil.rmtree(made_tls_dir, ignore_errors=True)


def _run(a: argparse.Namespace) -> int:
    try:
        children = plan(a)
    except ValueError as e:
        print(f"baton up: {e}", file=sys.stderr)
        return 2
    stack = Stack(children, a.quiet, restart=not a.no_restart)

    def on_signal(signum: int, frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    deadline = t0 + a.ready_timeout
    workers, router = children[:-1], children[-1]
    try:
        # Everything starts at once: the router loads its tokenizer while the workers load
        # the model, and finds the workers through health polling as they come up.
        for c in workers:
            c.start(stack.out)
            print(f"baton up: {c.name} pid={c.proc.pid} grpc={c.address} metrics={c.metrics}", flush=True)
        router.start(stack.out)
        print(f"baton up: router pid={router.proc.pid} http={router.address}", flush=True)
        n_p = sum(c.name.startswith("prefill") for c in workers)
        n_d = len(workers) - n_p
        why = stack.wait_ready(children, deadline)
        while why is None and not _router_sees_every_worker(router.address, n_p, n_d):
            stack.drain_output(0.2)
            if stack.stopping.is_set() or not router.alive():
                why = "interrupted" if stack.stopping.is_set() else "router exited"
            elif time.monotonic() > deadline:
                why = "the router did not report every worker usable in time"
        if why is not None:
            print(f"baton up: failed to start: {why}", file=sys.stderr, flush=True)
            return 0 if why == "interrupted" else 1
        print(
            f"baton up: endpoint http://{router.address}/v1 (OpenAI-compatible), model {a.model}"
            + (f"; gRPC with mutual TLS ({a.tls_dir})" if a.tls_dir else ""),
            flush=True,
        )
        print(
            f"baton up ready in {time.monotonic() - t0:.1f}s: prefill={n_p} decode={n_d} "
            f"url=http://{router.address}/v1 (Ctrl-C stops everything)",
            flush=True,
        )
        stack.supervise()
        return 0
    finally:
        stack.stop()
        print("baton up: stopped", flush=True)
