"""`baton router`: the OpenAI-compatible router over prefill and decode workers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from baton_worker.tls import TlsFiles, add_tls_arguments

from .app import Router, RouterConfig
from .auth import API_KEY_ENV, parse_keys
from .discovery import EndpointSliceWatcher, parse_static
from .dispatch import DispatchConfig
from .errors import ApiError
from .placement import DisaggConfig
from .pool import PoolConfig, WorkerPool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton router", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (0: pick a free one)")
    p.add_argument(
        "--model", default=None, help="model source for the tokenizer (default: what workers report)"
    )
    p.add_argument("--served-model-name", action="append", default=[], help="name clients use (repeatable)")
    p.add_argument("--max-model-len", type=int, default=0, help="context length (default: the workers')")
    g = p.add_argument_group("discovery")
    g.add_argument("--prefill", default="", help="static prefill workers host:port,...")
    g.add_argument("--decode", default="", help="static decode workers host:port,...")
    g.add_argument("--prefill-service", default="", help="Kubernetes Service of the prefill workers")
    g.add_argument("--decode-service", default="", help="Kubernetes Service of the decode workers")
    g.add_argument("--namespace", default="default")
    g.add_argument("--port-name", default="grpc", help="EndpointSlice port name of the workers' gRPC port")
    d = p.add_argument_group("placement and failover")
    d.add_argument("--local-prefill-max-tokens", type=int, default=DisaggConfig.local_prefill_max_tokens)
    d.add_argument("--prefill-saturation-tokens", type=int, default=DisaggConfig.prefill_saturation_tokens)
    d.add_argument(
        "--prefix-weight",
        type=float,
        default=DisaggConfig.prefix_weight,
        help="KV-aware placement: weight of a worker's cached prompt prefix against its load (0: load only)",
    )
    d.add_argument("--max-inflight", type=int, default=RouterConfig.max_inflight)
    d.add_argument(
        "--worker-wait", type=float, default=DispatchConfig.worker_wait_s, help="seconds before 503"
    )
    d.add_argument("--max-attempts", type=int, default=DispatchConfig.max_attempts)
    d.add_argument("--health-interval", type=float, default=PoolConfig.poll_interval_s)
    p.add_argument(
        "--api-key-file",
        default="",
        help="file of API keys clients must send as 'Authorization: Bearer KEY' (one per line or "
        "comma-separated; default: $BATON_API_KEY; none: no authentication)",
    )
    add_tls_arguments(p)
    p.add_argument("--log-level", default="INFO")
    return p


def tls_files(a: argparse.Namespace) -> TlsFiles | None:
    """The router's certificate for mutual TLS to the workers (``--tls-dir``); ValueError naming
    the flag when the files are missing or do not belong together."""
    return TlsFiles(a.tls_dir, a.tls_server_name) if a.tls_dir else None


def model_source_from_config(path: str | None) -> str | None:
    """``model.source`` of a pool config file (the operator's ConfigMap, named by $BATON_CONFIG),
    or None when there is no such readable file or field."""
    if not path:
        return None
    try:
        with open(path) as f:
            source = json.load(f).get("model", {}).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) and source else None


def api_keys(path: str) -> tuple[str, ...]:
    """The API keys of ``--api-key-file``, else of $BATON_API_KEY; ValueError naming the flag."""
    if path:
        try:
            keys = parse_keys(Path(path).read_text())
        except OSError as e:
            raise ValueError(f"--api-key-file {path}: {e.strerror}") from None
        if not keys:
            raise ValueError(f"--api-key-file {path}: no key in it")
        return keys
    return parse_keys(os.environ.get(API_KEY_ENV, ""))


def config_from_args(a: argparse.Namespace) -> tuple[RouterConfig, PoolConfig]:
    """Flags -> typed configuration; ValueError naming the flag on a bad value."""
    if a.local_prefill_max_tokens < 0:
        raise ValueError("--local-prefill-max-tokens must be >= 0")
    if a.prefill_saturation_tokens < 1:
        raise ValueError("--prefill-saturation-tokens must be >= 1")
    if a.prefix_weight < 0:
        raise ValueError("--prefix-weight must be >= 0")
    if a.max_inflight < 1 or a.max_attempts < 1 or a.worker_wait < 0 or a.health_interval <= 0:
        raise ValueError(
            "--max-inflight/--max-attempts must be >= 1, --worker-wait >= 0, --health-interval > 0"
        )
    if not (a.decode or a.decode_service):
        raise ValueError("no decode workers: give --decode host:port,... or --decode-service NAME")
    dispatch = DispatchConfig(
        disagg=DisaggConfig(a.local_prefill_max_tokens, a.prefill_saturation_tokens, a.prefix_weight),
        worker_wait_s=a.worker_wait,
        max_attempts=a.max_attempts,
    )
    names = tuple(n for arg in a.served_model_name for n in arg.split(",") if n)
    cfg = RouterConfig(
        # The tokenizer's source: the flag, else the pool config the operator mounts, else
        # (at the first request) what the workers report on Health.
        model_source=a.model or model_source_from_config(os.environ.get("BATON_CONFIG")),
        served_model_names=names,
        max_inflight=a.max_inflight,
        max_model_len=a.max_model_len,
        dispatch=dispatch,
        api_keys=api_keys(a.api_key_file),
    )
    return cfg, PoolConfig(poll_interval_s=a.health_interval)


async def serve(a: argparse.Namespace) -> int:
    cfg, pool_cfg = config_from_args(a)
    tls = tls_files(a)
    prefill, decode = WorkerPool("prefill", pool_cfg, tls), WorkerPool("decode", pool_cfg, tls)
    prefill.set_addresses(parse_static(a.prefill, "--prefill"))
    decode.set_addresses(parse_static(a.decode, "--decode"))
    loop = asyncio.get_running_loop()
    watchers = []
    for pool, service in ((prefill, a.prefill_service), (decode, a.decode_service)):
        if service:
            # The watcher thread reports through the loop: pools are touched only on the loop.
            w = EndpointSliceWatcher(
                a.namespace,
                service,
                lambda addrs, pool=pool: loop.call_soon_threadsafe(pool.set_addresses, addrs),
                a.port_name,
            )
            w.start()
            watchers.append(w)
    router = Router(cfg, prefill, decode)
    prefill.start()
    decode.start()
    if cfg.model_source:
        try:
            await router.ensure_tokenizer()
        except ApiError as e:
            print(f"baton router: {e.message}", file=sys.stderr)
            return 1
    # handler_cancellation: a client that disconnects cancels its handler, which cancels the
    # work on the workers.
    runner = web.AppRunner(router.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, a.host, a.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else a.port
    print(
        f"baton router ready http://{a.host}:{port} model={router.model_names} tls={'on' if tls else 'off'}",
        flush=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for w in watchers:
        w.stop()
    await runner.cleanup()
    with contextlib.suppress(Exception):
        await prefill.close()
        await decode.close()
    return 0


def main(argv: list[str]) -> int:
    """Run the router until SIGTERM/SIGINT; 2 on bad flags."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config_from_args(a)
        tls_files(a)
        parse_static(a.prefill, "--prefill")
        parse_static(a.decode, "--decode")
    except ValueError as e:
        print(f"baton router: {e}", file=sys.stderr)
        return 2
    return asyncio.run(serve(a))
