"""`baton worker --role prefill|decode`: load the model, serve gRPC plus /health and /metrics.

Start-up: the HTTP side server answers first (503 "loading"), then the model and the KV pool
load, the KV backend is chosen (``auto``: NIXL when it loads, else gRPC), the gRPC server starts
and one ready line is printed: ``baton worker ready role=prefill grpc=HOST:PORT metrics=...``.
SIGTERM/SIGINT drain: readiness drops at once, new requests get UNAVAILABLE, running ones may
finish for ``--drain-grace-s``; then the decode worker aborts what is left (streams end with
``abort``, which the router resumes elsewhere) and the process exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from baton_worker.kv.backend import CHOICES
from baton_worker.server.lifecycle import Lifecycle
from baton_worker.tls import add_tls_arguments


@dataclass(frozen=True)
class WorkerOptions:
    role: str
    model: str
    served_model_name: str
    host: str
    port: int
    metrics_port: int
    advertise_host: str
    device: str
    dtype: str
    max_model_len: int | None
    tensor_parallel_size: int
    max_batch_size: int
    kv_backend: str
    kv_blocks: int
    block_size: int
    kv_ttl_s: float
    kv_timeout_s: float
    drain_grace_s: float
    threads: int
    kv_pull_delay_ms: float
    kv_read_lanes: int = 0  # 0: auto (baton_worker.kv.nixl_agent.default_read_lanes)
    prefix_caching: bool = True
    tls_dir: str = ""  # "": plaintext gRPC; see baton_worker.tls
    tls_server_name: str = ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton worker", description="Run a prefill or decode worker.")
    p.add_argument("--role", required=True, choices=["prefill", "decode"])
    p.add_argument(
        "--model", default="builtin://tiny", help="builtin://tiny | DIR | file:// | pvc:// | hf://"
    )
    p.add_argument("--served-model-name", default="", help="name reported on Health (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address of the gRPC and HTTP servers")
    p.add_argument("--port", type=int, default=0, help="gRPC port (0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=0, help="HTTP /health and /metrics port (0 = any)")
    p.add_argument(
        "--advertise-host",
        default="",
        help="host put in KV handles (default: --host, or POD_IP / this host's address when binding 0.0.0.0)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=None, help="default: prefill 1, decode 64")
    p.add_argument("--kv-backend", default="auto", choices=list(CHOICES))
    p.add_argument("--kv-blocks", type=int, default=512, help="KV blocks in this worker's pool")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--kv-ttl-s", type=float, default=60.0, help="prefill: free unread KV after this long")
    p.add_argument("--kv-timeout-s", type=float, default=30.0, help="decode: deadline of one KV pull")
    p.add_argument(
        "--kv-read-lanes",
        type=int,
        default=0,
        help="decode, NIXL: parallel READs a large pull is split across (0 = auto: one per usable core "
        "up to 4 for host memory, 1 for GPU memory; $BATON_KV_READ_LANES)",
    )
    p.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="compute every prompt from its first token (default: reuse the KV of cached prompt prefixes)",
    )
    p.add_argument("--drain-grace-s", type=float, default=30.0, help="SIGTERM: let running requests finish")
    add_tls_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    # Fault injection for tests: pause between PullKv chunks (opens a window to kill mid-transfer).
    p.add_argument("--kv-pull-delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def parse_options(argv: list[str]) -> WorkerOptions:
    """WorkerOptions from the command line; ValueError naming the flag for bad values."""
    a = build_parser().parse_args(argv)
    for flag, value, low in (
        ("--kv-blocks", a.kv_blocks, 1),
        ("--block-size", a.block_size, 1),
        ("--tensor-parallel-size", a.tensor_parallel_size, 1),
        ("--port", a.port, 0),
        ("--metrics-port", a.metrics_port, 0),
        ("--kv-read-lanes", a.kv_read_lanes, 0),
    ):
        if value < low:
            raise ValueError(f"{flag}: must be >= {low}, got {value}")
    if a.tensor_parallel_size not in (1, 2, 4, 8):
        raise ValueError(f"--tensor-parallel-size: {a.tensor_parallel_size} is not one of 1, 2, 4, 8")
    for flag, value in (("--kv-ttl-s", a.kv_ttl_s), ("--kv-timeout-s", a.kv_timeout_s)):
        if value <= 0:
            raise ValueError(f"{flag}: must be > 0, got {value}")
    batch = a.max_batch_size if a.max_batch_size is not None else (1 if a.role == "prefill" else 64)
    if batch < 1:
        raise ValueError(f"--max-batch-size: must be >= 1, got {batch}")
    advertise = a.advertise_host or a.host
    if advertise in ("0.0.0.0", "::", ""):
        advertise = os.environ.get("POD_IP") or socket.gethostbyname(socket.gethostname())
    return WorkerOptions(
        role=a.role,
        model=a.model,
        served_model_name=a.served_model_name or a.model,
        host=a.host,
        port=a.port,
        metrics_port=a.metrics_port,
        advertise_host=advertise,
        device=a.device,
        dtype=a.dtype,
        max_model_len=a.max_model_len,
        tensor_parallel_size=a.tensor_parallel_size,
        max_batch_size=batch,
        kv_backend=a.kv_backend,
        kv_blocks=a.kv_blocks,
        block_size=a.block_size,
        kv_ttl_s=a.kv_ttl_s,
        kv_timeout_s=a.kv_timeout_s,
        drain_grace_s=a.drain_grace_s,
        threads=a.threads,
        kv_pull_delay_ms=a.kv_pull_delay_ms,
        kv_read_lanes=a.kv_read_lanes,
        prefix_caching=a.prefix_caching,
        tls_dir=a.tls_dir,
        tls_server_name=a.tls_server_name,
    )


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: list[str]) -> int:
    try:
        opts = parse_options(argv)
    except ValueError as exc:
        print(f"baton worker: {exc}", file=sys.stderr)
        return 2
    from baton_worker.server.run import run_worker  # heavy imports (torch) only past arg parsing

    lifecycle = Lifecycle()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        print(f"baton worker: {signal.Signals(signum).name}: draining", file=sys.stderr, flush=True)
        lifecycle.start_drain()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run_worker(opts, lifecycle, stop)
    except Exception as exc:
        print(f"baton worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
