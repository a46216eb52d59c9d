"""Wiring of a worker process: model, pool, KV backend, gRPC server, side server, drain."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import torch

from baton_worker.engine import DecodeEngine, EngineLoop, KvBlockPool, LoadedModel, PrefillRunner, load_model
from baton_worker.kv.backend import choose_backend
from baton_worker.kv.grpc_stream import GRPC_OPTIONS
from baton_worker.kv.handle import CompatInfo
from baton_worker.kv.nixl_agent import apply_ucx_defaults, load_nixl, nixl_available
from baton_worker.rpc import pb2_grpc
from baton_worker.server.http_side import SideServer
from baton_worker.server.lifecycle import Lifecycle
from baton_worker.server.main import WorkerOptions, _hostport
from baton_worker.server.prefill_stream import MAX_STREAMS
from baton_worker.tls import TlsFiles, add_port, export_env

if TYPE_CHECKING:
    from baton_worker.engine.tp_group import TpGroup


def compat_info(model: LoadedModel, opts: WorkerOptions) -> CompatInfo:
    """What prefill and decode must agree on; the weights' fingerprint is the revision."""
    shape = model.shape
    return CompatInfo(
        model=opts.served_model_name,
        revision=model.fingerprint,
        dtype=model.dtype_name,
        num_layers=shape.num_layers,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        block_size=opts.block_size,
    )


def _why_nixl_not() -> str:
    try:
        load_nixl()
        return ""
    except Exception as exc:
        return str(exc)


def _kv_backend(opts: WorkerOptions) -> tuple[str, str]:
    """The KV backend to run and, when ``auto`` fell back to grpc, why (both said on stderr);
    baton's UCX settings are applied before any NIXL agent starts."""
    backend = choose_backend(opts.kv_backend, nixl_available, _why_nixl_not)
    fallback = _why_nixl_not() if opts.kv_backend == "auto" and backend == "grpc" else ""
    if fallback:
        # Loud: KV over the gRPC stream is one to two orders of magnitude slower than RDMA.
        print(
            f"baton worker: WARNING kv_backend auto fell back to grpc (KV moves over the gRPC stream, "
            f"not RDMA): {fallback}",
            file=sys.stderr,
            flush=True,
        )
    if backend == "nixl":
        applied = apply_ucx_defaults(cuda=opts.device.startswith("cuda"))
        if applied:
            # On stderr, so that an operator debugging a slow transfer sees what baton chose.
            said = " ".join(f"{k}={v}" for k, v in sorted(applied.items()))
            print(
                f"baton worker: UCX settings applied (unset in the environment): {said}",
                file=sys.stderr,
                flush=True,
            )
    return backend, fallback


def _load(opts: WorkerOptions, backend: str) -> tuple[TpGroup | None, LoadedModel, KvBlockPool, CompatInfo]:
    """The model and KV pool this process serves: its own, or rank 0's of a TP group it starts."""
    if opts.tensor_parallel_size > 1:
        from baton_worker.server.tp_worker import global_model, launch_worker_group

        tp = launch_worker_group(opts, backend)  # this process is rank 0; see docs/tensor-parallel.md
        return tp, tp.model, tp.pool, compat_info(global_model(tp), opts)
    model = load_model(opts.model, dtype=opts.dtype, device=opts.device, max_model_len=opts.max_model_len)
    pool = KvBlockPool.for_model(model, num_blocks=opts.kv_blocks, block_size=opts.block_size)
    return None, model, pool, compat_info(model, opts)


@dataclass(frozen=True)
class _Loaded:
    """What both roles' services are built on."""

    opts: WorkerOptions
    lifecycle: Lifecycle
    backend: str
    tls: TlsFiles | None
    tp: TpGroup | None
    model: LoadedModel
    pool: KvBlockPool
    compat: CompatInfo


def _prefill_service(w: _Loaded, address: str) -> tuple[Any, list[Callable[[], None]]]:
    from baton_worker.kv.source import KvSource
    from baton_worker.server.prefill import PrefillService

    opts, tp = w.opts, w.tp
    runner = PrefillRunner(
        w.model, w.pool, max_batch_size=opts.max_batch_size, prefix_caching=opts.prefix_caching
    )
    if tp is not None:
        tp.drive(runner)
    source = KvSource(
        storage=w.pool.storage,
        compat=w.compat,
        free=lambda request_id, _blocks: runner.release(request_id),
        backend=w.backend,
        address=address,
        ttl_s=opts.kv_ttl_s,
        pull_delay_s=opts.kv_pull_delay_ms / 1000.0,
        extra_shards=tuple(tp.shards[1:]) if tp is not None else (),
        engine_id=tp.spec.engine_id if tp is not None else None,  # one id for all ranks
    )
    service = PrefillService(
        model=w.model, runner=runner, source=source, lifecycle=w.lifecycle, served_name=opts.served_model_name
    )
    return service, [service.close, source.close]


def _decode_service(w: _Loaded, port: int) -> tuple[Any, list[Callable[[], None]]]:
    from baton_worker.kv.sink import KvSink
    from baton_worker.server.decode import DecodeService

    opts, tp = w.opts, w.tp
    engine = DecodeEngine(
        w.model, w.pool, max_batch_size=opts.max_batch_size, prefix_caching=opts.prefix_caching
    )
    if tp is not None:
        tp.drive(engine)
    loop = EngineLoop(engine).start()
    sink = KvSink(
        storage=w.pool.storage,
        dtype=w.model.dtype_name,
        backend=w.backend if tp is None else "grpc",  # TP: every rank has its own NIXL agent
        name=f"baton-decode-{port}-{time.time_ns():x}",
        read_lanes=opts.kv_read_lanes,
        tls=w.tls,
    )
    if tp is not None:
        from baton_worker.server.tp_worker import TpSink

        sink = TpSink(tp, sink)
    service = DecodeService(
        model=w.model,
        pool=w.pool,
        loop=loop,
        sink=sink,
        compat=w.compat,
        lifecycle=w.lifecycle,
        served_name=opts.served_model_name,
        kv_timeout_s=opts.kv_timeout_s,
    )
    return service, [loop.stop, sink.close]


def _drain(opts: WorkerOptions, lifecycle: Lifecycle, service: Any, server: grpc.Server) -> None:
    """Readiness is already down: let running requests finish within the grace period."""
    idle = lifecycle.wait_idle(opts.drain_grace_s)
    if not idle and opts.role == "decode":
        aborted = service.abort_all()
        print(
            f"baton worker: drain grace over, aborted {aborted} running requests", file=sys.stderr, flush=True
        )
        lifecycle.wait_idle(5.0)
    if opts.role == "prefill":
        service.streams.end_all()  # routers' PrefillStreams end cleanly instead of at the grace
    server.stop(grace=2.0).wait(5.0)


def run_worker(opts: WorkerOptions, lifecycle: Lifecycle, stop: threading.Event) -> int:
    """Serve until ``stop`` is set, then drain; returns the process exit code."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    # Read (and checked) before the model loads: a bad --tls-dir fails in a second, not minutes.
    tls = TlsFiles(opts.tls_dir, opts.tls_server_name) if opts.tls_dir else None
    export_env(tls)  # tensor-parallel ranks serve and fetch KV metadata with it too
    holder: dict[str, object] = {}
    side = SideServer(opts.host, opts.metrics_port, lifecycle.readiness, _LazyRegistry(holder)).start()
    t0 = time.monotonic()
    backend, fallback = _kv_backend(opts)
    tp, model, pool, compat = _load(opts, backend)
    loaded = _Loaded(opts, lifecycle, backend, tls, tp, model, pool, compat)
    # Each open PrefillStream (one per router replica) holds a server thread for its lifetime.
    threads = max(16, opts.max_batch_size + 16) + (MAX_STREAMS if opts.role == "prefill" else 0)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=GRPC_OPTIONS)
    port = add_port(server, _hostport(opts.host, opts.port), tls)
    if port == 0:
        raise OSError(f"--port: cannot bind {_hostport(opts.host, opts.port)}")
    address = _hostport(opts.advertise_host, port)
    if opts.role == "prefill":
        service, closers = _prefill_service(loaded, address)
        pb2_grpc.add_PrefillWorkerServicer_to_server(service, server)
    else:
        service, closers = _decode_service(loaded, port)
        pb2_grpc.add_DecodeWorkerServicer_to_server(service, server)
    service.metrics.kv_backend(opts.kv_backend, backend, fallback=bool(fallback))
    holder["registry"] = service.metrics.registry
    server.start()
    lifecycle.set_loaded()
    print(
        f"baton worker ready role={opts.role} grpc={address} metrics={_hostport(opts.host, side.port)} "
        f"kv_backend={backend} model={opts.served_model_name} blocks={pool.num_blocks} "
        f"load_s={time.monotonic() - t0:.1f} tls={'on' if tls else 'off'}",
        flush=True,
    )
    stop.wait()
    _drain(opts, lifecycle, service, server)
    for close in closers:
        close()
    if tp is not None:
        tp.close()
    side.stop()
    print(f"baton worker stopped role={opts.role}", file=sys.stderr, flush=True)
    return 0


class _LazyRegistry:
    """The metrics registry once the service exists (the side server starts before the model)."""

    def __init__(self, holder: dict[str, object]) -> None:
        self._holder = holder

    def collect(self):  # prometheus_client's generate_latest only calls collect()
        registry = self._holder.get("registry")
        return registry.collect() if registry is not None else iter(())
