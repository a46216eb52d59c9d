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
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from baton_dev.bench.kv_source import (
    BLOCK,
    BLOCK_BYTES,
    HEAD_DIM,
    HEADS,
    LAYERS,
    MIB,
    RTT_MIB,
    bench_compat,
    geometry_blocks,
    serve_source,
    start_source,
)

if TYPE_CHECKING:
    from baton_worker.kv.layout import Run
    from baton_worker.kv.sink import KvSink
    from baton_worker.rpc.pb2_grpc import PrefillWorkerStub

    from baton_dev.bench.kv_reference import CopyFigure, CopyReference

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
        sink.remote_agent(pre.handle, pre.handle.shards[0], time.monotonic() + 30)
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


@dataclass
class _Bench:
    """What one bench run measures with: the source's stub, one sink per pulling backend, the
    reference copy (with ``memcpy``) and the NIXL reader's lane count it copies on."""

    stub: PrefillWorkerStub
    sinks: dict[str, KvSink]
    reference: CopyReference | None
    lanes: int
    meta: dict
    seq: int = 0

    def sample(
        self, backends: list[str], n: int, runs: list[Run], reps: int
    ) -> tuple[dict[str, list[float]], dict[int, list[CopyFigure]]]:
        """``reps`` pulls of ``n`` blocks per backend (seconds) and reference copies of ``runs``
        on ``lanes`` threads and on one, the backends taking turns so that the machine's noise
        hits them alike."""
        secs: dict[str, list[float]] = {b: [] for b in self.sinks}
        copies: dict[int, list[CopyFigure]] = {self.lanes: [], 1: []}
        for _ in range(reps):
            for backend in backends:
                if backend == "memcpy":
                    assert self.reference is not None
                    for threads in dict.fromkeys((self.lanes, 1)):
                        copies[threads].append(_copy_once(self.reference, runs, threads, n))
                    continue
                self.seq += 1
                took, ok = _pull_once(self.stub, self.sinks[backend], backend, n, self.seq, self.meta)
                if not ok:
                    raise AssertionError(f"{backend}: bytes did not arrive intact at {n * BLOCK_BYTES} bytes")
                secs[backend].append(took)
        return secs, copies


def _open_sinks(dst, backends: list[str]) -> dict[str, KvSink]:  # noqa: ANN001 - a torch tensor
    from baton_worker.kv.sink import KvSink

    return {
        b: KvSink(storage=dst, dtype="bfloat16", backend=b, name=f"bench-sink-{b}-{os.getpid()}")
        for b in backends
        if b != "memcpy"
    }


def _measure(
    bench: _Bench, address: str, sizes_mib: list[int], backends: list[str], repeats: int
) -> list[dict]:
    """The result rows of every size; the control plane's figures go into ``bench.meta``."""
    from baton_dev.bench.kv_reference import lanes_used, pull_runs
    from baton_dev.bench.kv_report import memcpy_row, pull_row, rtt_metadata, with_ratios
    from baton_dev.bench.kv_rtt import handle_round_trips

    max_blocks = geometry_blocks(max(sizes_mib) * MIB)
    nixl_sink = bench.sinks.get("nixl")
    results: list[dict] = []
    xfer_512: dict[str, list[float]] = {}
    for size in sizes_mib:
        n = geometry_blocks(size * MIB)
        nbytes = n * BLOCK_BYTES
        runs = pull_runs(max_blocks, n)
        secs, copies = bench.sample(backends, n, runs, repeats if size < 256 else max(2, repeats // 2))
        rows: dict[str, dict] = {}
        for backend in backends:
            if backend == "memcpy":
                rows[backend] = memcpy_row(nbytes, copies, bench.lanes)
                continue
            rows[backend] = pull_row(backend, nbytes, secs[backend])
            if backend == "nixl" and nixl_sink is not None and nixl_sink.endpoint is not None:
                rows[backend]["lanes"] = lanes_used(runs, nixl_sink.endpoint.read_lanes)
            if size == RTT_MIB:
                xfer_512[backend] = secs[backend]
        results += with_ratios(rows).values()
    if xfer_512:
        # The control plane a request pays before its bytes move: the Prefill call that
        # returns the handle of a 4k-token prompt, then the decode side's check of it.
        ids = prompt_ids(geometry_blocks(RTT_MIB * MIB) * BLOCK)
        bench.meta.update(rtt_metadata(asyncio.run(handle_round_trips(address, ids, RTT_SAMPLES)), xfer_512))
    return results


def run(sizes_mib: list[int], backends: list[str], repeats: int, device: str = "cpu") -> dict:
    """Measure every size over every backend, the backends taking turns; raises
    :class:`BenchFailed` when a backend asked for cannot be measured (NIXL did not load, or a
    pull went over another backend)."""
    import grpc
    import torch
    from baton_worker.kv.nixl_agent import (
        UCX_DEFAULTS_ALWAYS,
        UCX_DEFAULTS_CPU,
        UCX_DEFAULTS_CUDA,
        apply_ucx_defaults,
        default_read_lanes,
    )
    from baton_worker.rpc import pb2_grpc

    from baton_dev.bench.kv_reference import CopyReference

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
        sinks = _open_sinks(dst, backends)
        nixl_endpoint = sinks["nixl"].endpoint if "nixl" in sinks else None
        # The reference copies on as many threads as the NIXL reader has lanes (or would have).
        lanes = nixl_endpoint.read_lanes if nixl_endpoint else default_read_lanes("VRAM" if cuda else "DRAM")
        if "memcpy" in backends:
            reference = CopyReference(dst, lanes)
        meta: dict[str, float] = {"memcpy_threads": lanes} if reference else {}
        results = _measure(_Bench(stub, sinks, reference, lanes, meta), address, sizes_mib, backends, repeats)
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
    return {
        "results": results,
        "metadata": meta,
        "ucx_env": {k: v for k, v in os.environ.items() if k.startswith("UCX_")},
        "ucx_defaults_applied": applied,
        "ucx_defaults": {**UCX_DEFAULTS_ALWAYS, **(UCX_DEFAULTS_CUDA if cuda else UCX_DEFAULTS_CPU)},
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cpus": os.cpu_count(),
        "load_avg": list(os.getloadavg()),
    }


def _parser() -> argparse.ArgumentParser:
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
    return p


def _bad_args(a: argparse.Namespace, sizes: list[int], backends: list[str]) -> str:
    """Why the parsed sizes, backends and device cannot run ("" when they can)."""
    bad = [b for b in backends if b not in ("nixl", "grpc", "memcpy")]
    if bad or not sizes or any(s < 1 for s in sizes):
        return f"bad --backends {bad} or --sizes {sizes}"
    if a.device != "cpu":
        import torch

        if not a.device.startswith("cuda") or not torch.cuda.is_available():
            return f"--device {a.device}: expected cpu, or cuda[:N] on a machine with a GPU"
    return ""


def _print_text(out: dict) -> None:
    for r in out["results"]:
        tls = f"  UCX_TLS={r['ucx_tls']}" if "ucx_tls" in r else ""
        if r["backend"] == "memcpy":
            extra = f"  on {r['lanes']} thread(s); 1 thread {r['gbps_1thread']:.2f} GB/s"
        elif "ratio_to_memcpy" in r:
            extra = f"  {r['ratio_to_memcpy']:.2f} of memcpy, {r['ratio_to_memcpy_1thread']:.2f} of 1 thread"
        else:
            extra = ""
        print(f"{r['backend']:>7} {r['bytes'] / MIB:>7.0f} MiB {r['gbps']:>8.2f} GB/s{extra}{tls}")
    print(json.dumps(out.get("metadata", out.get("sweep"))))


def _sweep(a: argparse.Namespace, sizes: list[int], backends: list[str]) -> dict | None:
    """``--ucx-tls``: the bench once per setting (None, said on stderr, for a bad list)."""
    from baton_dev.bench.kv_sweep import parse_ucx_settings, sweep

    try:
        settings = parse_ucx_settings(a.ucx_tls)
    except ValueError as exc:
        print(f"baton bench kv: {exc}", file=sys.stderr)
        return None
    require_nixl(backends)  # here, not once per setting
    args = ["--sizes", ",".join(map(str, sizes)), "--backends", ",".join(backends)]
    args += ["--repeats", str(max(1, a.repeats)), "--device", a.device]
    return sweep(settings, args, a.setting_timeout_s)


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if a.tp:
        from baton_dev.bench.tp import kv_main

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
    why = _bad_args(a, sizes, backends)
    if why:
        print(f"baton bench kv: {why}", file=sys.stderr)
        return 2
    try:
        out = _sweep(a, sizes, backends) if a.ucx_tls else run(sizes, backends, max(1, a.repeats), a.device)
    except BenchFailed as exc:
        print(f"baton bench kv: {exc}", file=sys.stderr)
        if a.json:
            print(json.dumps({"error": str(exc), "backends": backends, "device": a.device}))
        return 1
    if out is None:
        return 2
    if a.json:
        print(json.dumps(out))
    else:
        _print_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
