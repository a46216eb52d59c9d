"""`baton bench kv [--json]`: KV transfer bandwidth between two processes (nixl, grpc, memcpy).

A child process (:mod:`.kv_source`) plays the prefill side without a model: it holds a Llama-3-8B-shaped KV pool
(32 layers, 8 KV heads of dim 128, bfloat16: 128 KiB per token) filled with a known pattern,
and serves the real control plane (``Prefill`` returns a real KvHandle, ``GetAgentMetadata``,
``PullKv``, ``Release``) through :class:`KvSource`. This process is the decode side: it pulls
each size with :class:`KvSink` (NIXL READ, then the gRPC PullKv stream) into its own pool and
checks every byte, the backends taking turns. ``memcpy`` is the reference (:mod:`.kv_reference`):
the same byte runs copied into the same destination within this process, on as many threads as
the NIXL reader has lanes, and (``gbps_1thread``) on one thread. A backend asked for that cannot
be measured (NIXL does not load) fails the bench with exit code 1 and ``{"error": ...}``. It
also reports the handle round trip (what each request pays on the control plane) against the
transfer time of 512 MiB (an 8B model's 4k-token prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from baton_worker.bench.kv_source import (
    BLOCK,
    BLOCK_BYTES,
    ECHO_METHOD,
    HEAD_DIM,
    HEADS,
    LAYERS,
    MIB,
    NO_HANDLE,
    RTT_MIB,
    bench_compat,
    geometry_blocks,
    serve_source,
    start_source,
)

if TYPE_CHECKING:
    from baton_worker.bench.kv_reference import CopyFigure, CopyReference
    from baton_worker.kv.layout import Run
    from baton_worker.kv.sink import KvSink
    from baton_worker.rpc.pb2_grpc import PrefillWorkerStub

DEFAULT_SIZES = [1, 4, 16, 64, 256, 512, 1024]
RTT_SAMPLES = 60


def _expected_ok(dst, src_blocks: int, dst_start: int, num_blocks: int) -> bool:  # noqa: ANN001
    """Blocks [dst_start, dst_start + n) of every layer hold the pattern of source blocks [0, n)."""
    import torch

    per_block = dst[0, 0].numel() * dst.element_size() // 8
    for layer in range(dst.shape[0]):
        got = dst[layer, dst_start : dst_start + src_blocks].reshape(-1).view(torch.int64)
        start = layer * num_blocks * per_block
        want = torch.arange(start, start + got.numel(), dtype=torch.int64, device=got.device)
        if not torch.equal(got, want):
            return False
    return True


def prompt_ids(num_tokens: int) -> list[int]:
    """A fixed prompt with token ids spread over a Llama-3-sized vocabulary (real ids take 2-3
    bytes on the wire each, zeros only 1)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 128256, size=num_tokens).tolist()


async def _handle_round_trips(address: str, num_tokens: int, samples: int) -> dict[str, list[float]]:
    """Seconds per handle round trip, the way the router makes it, by kind:

    - ``stream``: ``Prefill`` of the prompt over the worker's long-lived PrefillStream
      (:class:`PrefillCaller`, grpc.aio) returning the KV handle, then the decode side's
      ``check_handle``: what the router does;
    - ``unary``: the same as one unary ``Prefill`` call (what the router did before);
    - ``stream_no_handle``: the same call answered without a handle (nothing issued, nothing
      checked): the control. ``stream`` minus this is what the KV metadata itself costs;
    - ``grpc_floor``: the bytes of the same call and of a reply with a handle, echoed over a bare
      bidi stream (``_echo_handler`` in :mod:`.kv_source`): no protobuf work, no framework, no handle issued or
      checked. What Python gRPC alone costs for this round trip on this machine.

    The kinds take turns call by call, so that the machine's noise hits them alike.
    """
    import grpc

    from baton_worker.kv.handle import check_handle
    from baton_worker.router.prefill_stream import PrefillCaller
    from baton_worker.rpc import pb2, pb2_grpc

    compat = bench_compat()
    ids = prompt_ids(num_tokens)
    out: dict[str, list[float]] = {"stream": [], "unary": [], "stream_no_handle": [], "grpc_floor": []}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb2_grpc.PrefillWorkerStub(ch)
        caller = PrefillCaller(ch, address)
        same = lambda b: b  # noqa: E731
        echo = ch.stream_stream(ECHO_METHOD, request_serializer=same, response_deserializer=same)()
        floor_call = pb2.PrefillCall(
            call_id=1, request=pb2.PrefillRequest(request_id="floor", prompt_token_ids=ids), timeout_ms=30000
        ).SerializeToString()

        async def floor(_request: pb2.PrefillRequest) -> pb2.PrefillResponse:
            await echo.write(floor_call)
            if await echo.read() == grpc.aio.EOF:
                raise AssertionError("the bench source's echo stream ended: no floor to measure")
            return pb2.PrefillResponse()  # nothing to check or release: the bytes were all it cost

        calls = {
            "stream": lambda r: caller.prefill(r, 30),
            "unary": lambda r: stub.Prefill(r, timeout=30),
            "stream_no_handle": lambda r: caller.prefill(r, 30),
            "grpc_floor": floor,
        }
        seq = 0
        for i in range(samples + 5):  # the first calls warm the channel and the threads
            for kind, call in calls.items():
                seq += 1
                rid = f"{NO_HANDLE if kind == 'stream_no_handle' else 'rtt-'}{seq}"
                request = pb2.PrefillRequest(request_id=rid, prompt_token_ids=ids)
                t0 = time.perf_counter()
                pre = await call(request)
                if pre.HasField("handle"):
                    check_handle(pre.handle, compat)
                took = time.perf_counter() - t0
                if i >= 5:
                    out[kind].append(took)
                # Every kind makes the Release the real flow makes (a no-op for the control).
                await stub.Release(
                    pb2.ReleaseRequest(request_id=rid, engine_id=pre.handle.engine_id), timeout=30
                )
        if caller.unary_calls:
            raise AssertionError("the bench source did not take a PrefillStream")
        await caller.close()
        await echo.done_writing()
    return out


class BenchFailed(RuntimeError):
    """The bench could not measure what was asked: reported as ``{"error": ...}``, exit code 1."""


def require_nixl(backends: list[str]) -> None:
    """Raise :class:`BenchFailed`, saying why, when ``nixl`` is asked for and does not load here."""
    from baton_worker.kv.errors import KvBackendUnavailable
    from baton_worker.kv.nixl_agent import load_nixl

    if "nixl" not in backends:
        return
    try:
        load_nixl()
    except KvBackendUnavailable as exc:
        why = str(exc).removesuffix("; use --kv-backend grpc")
        raise BenchFailed(
            f"nixl was asked for (--backends) and did not load: {why}. "
            "To measure the other backends without it: --backends grpc,memcpy"
        ) from None


def _pull_once(
    stub: PrefillWorkerStub, sink: KvSink, backend: str, n: int, seq: int, meta: dict
) -> tuple[float, bool]:
    """One pull of ``n`` blocks over ``backend`` into the last ``n`` blocks of the sink's pool:
    its seconds, and whether every byte arrived."""
    from baton_worker.kv.handle import check_handle
    from baton_worker.rpc import pb2

    dst = sink.storage
    pre = stub.Prefill(
        pb2.PrefillRequest(request_id=f"b{seq}", prompt_token_ids=[0] * (n * BLOCK)),
        timeout=30,
    )
    check_handle(pre.handle, bench_compat())
    dst[:, dst.shape[1] - n :].zero_()
    if backend == "nixl" and "agent_first_contact_ms" not in meta:
        t1 = time.perf_counter()
        sink._remote_agent(pre.handle, pre.handle.shards[0], time.monotonic() + 30)
        meta["agent_first_contact_ms"] = round((time.perf_counter() - t1) * 1000, 3)
    dst_blocks = list(range(dst.shape[1] - n, dst.shape[1]))
    res = sink.pull(pre.handle, dst_blocks, time.monotonic() + 120)
    if res.backend != backend:
        raise BenchFailed(f"{backend} was asked for, and the pull went over {res.backend}")
    if res.bytes != n * BLOCK_BYTES:
        raise AssertionError(f"{backend}: moved {res.bytes} of {n * BLOCK_BYTES} bytes")
    return res.seconds, _expected_ok(dst, n, dst.shape[1] - n, dst.shape[1])


def _copy_once(reference: CopyReference, runs: list[Run], lanes: int, n: int) -> CopyFigure:
    """One reference copy of ``runs`` on ``lanes`` threads, checked byte for byte."""
    dst = reference.dst
    dst[:, dst.shape[1] - n :].zero_()
    figure = reference.copy(runs, lanes)
    if figure.bytes != n * BLOCK_BYTES:
        raise AssertionError(f"memcpy: copied {figure.bytes} of {n * BLOCK_BYTES} bytes")
    if not _expected_ok(dst, n, dst.shape[1] - n, dst.shape[1]):
        raise AssertionError(f"memcpy on {lanes} thread(s): wrong bytes at {figure.bytes} bytes")
    return figure


def run(sizes_mib: list[int], backends: list[str], repeats: int, device: str = "cpu") -> dict:
    """Measure every size over every backend, the backends taking turns; raises
    :class:`BenchFailed` when a backend asked for cannot be measured (NIXL did not load, or a
    pull went over another backend)."""
    import grpc
    import torch

    from baton_worker.bench.kv_reference import CopyReference, lanes_used, pull_runs, summary
    from baton_worker.kv.nixl_agent import (
        UCX_DEFAULTS_ALWAYS,
        UCX_DEFAULTS_CPU,
        UCX_DEFAULTS_CUDA,
        apply_ucx_defaults,
        default_read_lanes,
    )
    from baton_worker.kv.sink import KvSink
    from baton_worker.rpc import pb2_grpc

    torch.set_num_threads(1)
    require_nixl(backends)
    max_blocks = geometry_blocks(max(sizes_mib) * MIB)
    cuda = device.startswith("cuda")
    applied = apply_ucx_defaults(cuda=cuda) if "nixl" in backends else {}
    child, address, source_backend = start_source(max_blocks, device)
    reference: CopyReference | None = None
    try:
        if "nixl" in backends and source_backend != "nixl":
            raise BenchFailed(
                "nixl was asked for, and the source process did not load it (it serves its KV over "
                f"{source_backend}): see its log above"
            )
        stub = pb2_grpc.PrefillWorkerStub(
            grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * MIB)])
        )
        dst = torch.zeros(LAYERS, max_blocks, 2, HEADS, BLOCK, HEAD_DIM, dtype=torch.bfloat16, device=device)
        sinks = {
            b: KvSink(storage=dst, dtype="bfloat16", backend=b, name=f"bench-sink-{b}-{os.getpid()}")
            for b in backends
            if b != "memcpy"
        }
        nixl_endpoint = sinks["nixl"].endpoint if "nixl" in sinks else None
        # The reference copies on as many threads as the NIXL reader has lanes (or would have).
        lanes = nixl_endpoint.read_lanes if nixl_endpoint else default_read_lanes("VRAM" if cuda else "DRAM")
        if "memcpy" in backends:
            reference = CopyReference(dst, lanes)
        results: list[dict] = []
        meta: dict[str, float] = {"memcpy_threads": lanes} if reference else {}
        xfer_512: dict[str, list[float]] = {}
        seq = 0
        for size in sizes_mib:
            n = geometry_blocks(size * MIB)
            nbytes = n * BLOCK_BYTES
            runs = pull_runs(max_blocks, n)
            reps = repeats if size < 256 else max(2, repeats // 2)
            secs: dict[str, list[float]] = {b: [] for b in sinks}
            copies: dict[int, list[CopyFigure]] = {lanes: [], 1: []}
            for _ in range(reps):
                # The backends take turns, so that the machine's noise hits them alike.
                for backend in backends:
                    if backend == "memcpy":
                        assert reference is not None
                        for threads in dict.fromkeys((lanes, 1)):
                            copies[threads].append(_copy_once(reference, runs, threads, n))
                        continue
                    seq += 1
                    took, ok = _pull_once(stub, sinks[backend], backend, n, seq, meta)
                    if not ok:
                        raise AssertionError(f"{backend}: bytes did not arrive intact at {nbytes} bytes")
                    secs[backend].append(took)
            rows: dict[str, dict] = {}
            for backend in backends:
                if backend == "memcpy":
                    one = summary(copies[1])
                    rows[backend] = {
                        "backend": "memcpy",
                        "bytes": nbytes,
                        **summary(copies[lanes]),
                        "lanes": copies[lanes][0].threads,
                        "gbps_1thread": one["gbps"],
                        "gbps_1thread_best": one["gbps_best"],
                        "verified": True,  # _copy_once raised otherwise
                    }
                    continue
                rates = [nbytes / t / 1e9 for t in secs[backend]]
                rows[backend] = {
                    "backend": backend,
                    "bytes": nbytes,
                    "gbps": round(statistics.median(rates), 3),
                    "gbps_best": round(max(rates), 3),
                    "seconds": round(statistics.median(secs[backend]), 6),
                    "verified": True,  # _pull_once's check raised otherwise
                }
                if backend == "nixl" and nixl_endpoint is not None:
                    rows[backend]["lanes"] = lanes_used(runs, nixl_endpoint.read_lanes)
                if size == RTT_MIB:
                    xfer_512[backend] = secs[backend]
            if "memcpy" in rows:
                ref = rows["memcpy"]
                for row in rows.values():
                    if row is not ref:
                        # against the copy on as many threads as nixl's lanes, and against one thread
                        row["ratio_to_memcpy"] = round(row["gbps"] / ref["gbps"], 3)
                        row["ratio_to_memcpy_1thread"] = round(row["gbps"] / ref["gbps_1thread"], 3)
            results += rows.values()
        if xfer_512:
            # The control plane a request pays before its bytes move: the Prefill call that
            # returns the handle of a 4k-token prompt, then the decode side's check of it.
            by_transport = asyncio.run(
                _handle_round_trips(address, geometry_blocks(RTT_MIB * MIB) * BLOCK, RTT_SAMPLES)
            )
            rtts = by_transport["stream"]
            meta["handle_rtt_ms"] = round(statistics.median(rtts) * 1000, 3)
            meta["handle_rtt_ms_best"] = round(min(rtts) * 1000, 3)
            meta["handle_rtt_samples"] = len(rtts)
            unary = by_transport["unary"]
            meta["handle_rtt_ms_unary"] = round(statistics.median(unary) * 1000, 3)
            meta["handle_rtt_ms_unary_best"] = round(min(unary) * 1000, 3)
            control = by_transport["stream_no_handle"]
            meta["prefill_call_without_handle_ms"] = round(statistics.median(control) * 1000, 3)
            # What handing out the KV metadata adds to the Prefill call a request makes anyway
            # (median minus median: below zero when the machine's noise is larger than the cost).
            marginal = statistics.median(rtts) - statistics.median(control)
            meta["handle_marginal_ms"] = round(marginal * 1000, 3)
            floor = by_transport["grpc_floor"]
            meta["grpc_floor_rtt_ms"] = round(statistics.median(floor) * 1000, 3)
            meta["grpc_floor_rtt_ms_best"] = round(min(floor) * 1000, 3)
            for b, xfer in xfer_512.items():
                meta[f"transfer_512mib_ms_{b}"] = round(statistics.median(xfer) * 1000, 3)
                meta[f"transfer_512mib_ms_{b}_best"] = round(min(xfer) * 1000, 3)
                # median against median; _best: best against best
                meta[f"handle_rtt_fraction_of_512mib_{b}"] = round(
                    statistics.median(rtts) / statistics.median(xfer), 5
                )
                meta[f"handle_rtt_fraction_of_512mib_{b}_best"] = round(min(rtts) / min(xfer), 5)
                meta[f"handle_marginal_fraction_of_512mib_{b}"] = round(marginal / statistics.median(xfer), 5)
                meta[f"grpc_floor_fraction_of_512mib_{b}"] = round(
                    statistics.median(floor) / statistics.median(xfer), 5
                )
        if nixl_endpoint is not None:
            meta["nixl_read_lanes"] = nixl_endpoint.read_lanes
        for sink in sinks.values():
            sink.close()
    finally:
        if reference is not None:
            reference.close()
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)
    ucx = {k: v for k, v in os.environ.items() if k.startswith("UCX_")}
    return {
        "results": results,
        "metadata": meta,
        "ucx_env": ucx,
        "ucx_defaults_applied": applied,
        "ucx_defaults": {**UCX_DEFAULTS_ALWAYS, **(UCX_DEFAULTS_CUDA if cuda else UCX_DEFAULTS_CPU)},
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cpus": os.cpu_count(),
        "load_avg": list(os.getloadavg()),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="baton bench kv", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="MiB, comma-separated")
    p.add_argument("--no-1g", action="store_true", help="skip the 1 GiB case (memory: 3 GiB)")
    p.add_argument("--backends", default="nixl,grpc,memcpy")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--device",
        default="cpu",
        help="where both pools live: cpu (host memory) or cuda[:N] (GPU memory, both processes on "
        "that GPU; the memcpy reference is then a device-to-device copy)",
    )
    p.add_argument(
        "--ucx-tls",
        default="",
        help="run the bench once per UCX setting, ';'-separated: a UCX_TLS value or 'default' (UCX's "
        "own choice), each optionally followed by +UCX_NAME=value assignments, "
        "e.g. 'default+UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto;default;cuda_ipc,cuda_copy,tcp,self'",
    )
    p.add_argument("--setting-timeout-s", type=float, default=300.0, help="--ucx-tls: limit per setting")
    p.add_argument("--serve-source", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--tp", default="", help="instead: per-rank pull bandwidth, prefill TP N -> decode TP M, e.g. 2:1,4:2"
    )
    a = p.parse_args(argv)
    if a.tp:
        from baton_worker.engine.tp_bench import kv_main

        return kv_main(a.tp, repeats=max(1, a.repeats), as_json=a.json)
    if a.serve_source:
        return serve_source(a.serve_source, a.device)
    try:
        sizes = sorted({int(s) for s in a.sizes.split(",") if s})
    except ValueError:
        print(f"baton bench kv: --sizes: expected MiB integers, got {a.sizes!r}", file=sys.stderr)
        return 2
    if a.no_1g:
        sizes = [s for s in sizes if s < 1024]
    backends = [b for b in a.backends.split(",") if b]
    bad = [b for b in backends if b not in ("nixl", "grpc", "memcpy")]
    if bad or not sizes or any(s < 1 for s in sizes):
        print(f"baton bench kv: bad --backends {bad} or --sizes {sizes}", file=sys.stderr)
        return 2
    if a.device != "cpu":
        import torch

        if not a.device.startswith("cuda") or not torch.cuda.is_available():
            print(
                f"baton bench kv: --device {a.device}: expected cpu, or cuda[:N] on a machine with a GPU",
                file=sys.stderr,
            )
            return 2
    try:
        if a.ucx_tls:
            from baton_worker.bench.kv_sweep import parse_ucx_settings, sweep

            try:
                settings = parse_ucx_settings(a.ucx_tls)
            except ValueError as exc:
                print(f"baton bench kv: {exc}", file=sys.stderr)
                return 2
            require_nixl(backends)  # here, not once per setting
            args = ["--sizes", ",".join(map(str, sizes)), "--backends", ",".join(backends)]
            args += ["--repeats", str(max(1, a.repeats)), "--device", a.device]
            out = sweep(settings, args, a.setting_timeout_s)
        else:
            out = run(sizes, backends, max(1, a.repeats), a.device)
    except BenchFailed as exc:
        print(f"baton bench kv: {exc}", file=sys.stderr)
        if a.json:
            print(json.dumps({"error": str(exc), "backends": backends, "device": a.device}))
        return 1
    if a.json:
        print(json.dumps(out))
    else:
        for r in out["results"]:
            tls = f"  UCX_TLS={r['ucx_tls']}" if "ucx_tls" in r else ""
            if r["backend"] == "memcpy":
                extra = f"  on {r['lanes']} thread(s); 1 thread {r['gbps_1thread']:.2f} GB/s"
            elif "ratio_to_memcpy" in r:
                extra = (
                    f"  {r['ratio_to_memcpy']:.2f} of memcpy, {r['ratio_to_memcpy_1thread']:.2f} of 1 thread"
                )
            else:
                extra = ""
            print(f"{r['backend']:>7} {r['bytes'] / MIB:>7.0f} MiB {r['gbps']:>8.2f} GB/s{extra}{tls}")
        print(json.dumps(out.get("metadata", out.get("sweep"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
