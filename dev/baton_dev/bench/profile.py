"""`baton profile`: measure one worker's performance on the machine it runs on and write a
capacity-planning profile (format ``baton-profile/v1``, read by `baton plan`; see docs/planning.md).

- prefill: seconds of :class:`PagedModel.prefill` at batch 1 for each prompt length;
- decode: seconds per step of the real :class:`DecodeEngine` (scheduling, paged attention,
  sampling, detokenization) for each batch size and context length;
- kv_transfer: seconds of the KV handoff between a real prefill and a real decode worker process
  (what the decode worker reports in ``TokenChunk.kv_transfer_seconds``), per backend and prompt
  length, with prefix caching off so every block moves;
- overheads: the router's share of a request (a no-op round trip through a running router is not
  measured here: the figure is the handoff's fixed part, the intercept of the KV fit).

Each figure is the median of ``--repeats`` runs after a warm-up. With ``--threads N`` torch uses N
threads, as a worker started with ``--threads N`` would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

FORMAT = "baton-profile/v1"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton profile", description=__doc__)
    p.add_argument("--model", default="builtin://tiny")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--prompt-tokens", default="32,128,256,512,1024,1536", help="prefill lengths")
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="decode batch sizes")
    p.add_argument("--contexts", default="128,512,1024", help="decode context lengths")
    p.add_argument("--kv-backends", default="grpc,nixl", help="KV transfer backends to time ('' for none)")
    p.add_argument("--kv-tokens", default="128,512,1024,1536", help="prompt lengths of the KV timings")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--no-serving",
        dest="serving",
        action="store_false",
        help="engine figures only: no `baton up` stack for the router's share and the decode step as served",
    )
    p.add_argument("--out", default="", help="write the profile here (default: print it)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON (also with --out)")
    return p


def profile_prefill(model: Any, lengths: list[int], repeats: int) -> list[dict[str, Any]]:
    """Median seconds per prompt length. The lengths take turns within each repeat, so a burst of
    load from elsewhere on the machine lands on all of them alike rather than on one."""
    from baton_worker.engine import KvBlockPool
    from baton_worker.engine.model import PagedModel

    from baton_dev.bench.decode import _prompts, _sync

    runs = {}
    for n in lengths:
        pool = KvBlockPool.for_model(model, num_blocks=-(-n // 16), block_size=16)
        runner = PagedModel(model, pool)
        prompt = [list(_prompts(1, n, model.shape.vocab_size, 1)[0])]
        table = [pool.allocate(pool.blocks_needed(n))]

        def run(runner=runner, prompt=prompt, table=table) -> None:  # type: ignore[no-untyped-def]
            runner.prefill(prompt, table)
            _sync(model.device)

        run()  # warm-up
        runs[n] = run
    times: dict[int, list[float]] = {n: [] for n in lengths}
    for _ in range(repeats):
        for n in lengths:
            t0 = time.perf_counter()
            runs[n]()
            times[n].append(time.perf_counter() - t0)
    return [{"tp": 1, "prompt_tokens": n, "seconds": round(statistics.median(times[n]), 6)} for n in lengths]


def profile_decode(model: Any, batches: list[int], contexts: list[int], repeats: int) -> list[dict[str, Any]]:
    from baton_dev.bench.decode import measure_decode

    rows = []
    for context in contexts:
        for batch in batches:
            steps = [measure_decode(model, batch, context, 8) for _ in range(max(1, repeats))]
            rows.append(
                {
                    "tp": 1,
                    "batch": batch,
                    "context_tokens": context,
                    "step_seconds": round(statistics.median(steps), 6),
                }
            )
    return rows


def profile_kv(opts: argparse.Namespace, backend: str, lengths: list[int]) -> list[dict[str, Any]]:
    """Seconds of the KV handoff between two worker processes on this host, per prompt length."""
    from baton_worker.rpc import pb2

    from baton_dev.worker_proc import WorkerProc

    common = ["--model", opts.model, "--device", opts.device, "--dtype", opts.dtype, "--kv-backend", backend]
    common += ["--no-prefix-caching", "--kv-blocks", str(2 * (max(lengths) // 16 + 2))]
    if opts.threads:
        common += ["--threads", str(opts.threads)]
    workers = [WorkerProc("prefill", *common), WorkerProc("decode", *common)]
    try:
        for w in workers:
            w.wait_ready(300)
        if any(w.backend != backend for w in workers):
            raise RuntimeError(f"asked for the {backend} backend, the workers run {workers[0].backend}")
        prefill, decode = workers[0].prefill_stub(), workers[1].decode_stub()
        sp = pb2.SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        rows = []
        for n in lengths:
            seconds = []
            for i in range(opts.repeats + 1):  # the first is a warm-up
                rid = f"kv-{backend}-{n}-{i}"
                prompt = [3 + (k * 7 + i) % 500 for k in range(n)]
                pre = prefill.Prefill(
                    pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sp), timeout=120
                )
                req = pb2.GenerateRequest(
                    request_id=rid, prompt_token_ids=prompt, sampling=sp, first_token=pre.first_token
                )
                req.handle.CopyFrom(pre.handle)
                chunks = list(decode.Generate(req, timeout=120))
                if i:
                    seconds.append(chunks[0].kv_transfer_seconds)
            rows.append({"backend": backend, "tokens": n, "seconds": round(statistics.median(seconds), 6)})
        return rows
    finally:
        for w in workers:
            w.kill()


def _fixed_cost(rows: list[dict[str, Any]]) -> float:
    """Intercept of seconds against tokens (least squares), floored at 0."""
    if len(rows) < 2:
        return 0.0
    xs, ys = [r["tokens"] for r in rows], [r["seconds"] for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return max(0.0, my - slope * mx)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def run_profile(opts: argparse.Namespace) -> dict[str, Any]:
    import torch
    from baton_worker.engine import KvBlockPool, load_model

    if opts.threads:
        torch.set_num_threads(opts.threads)
    model = load_model(opts.model, dtype=opts.dtype, device=opts.device)
    pool = KvBlockPool.for_model(model, num_blocks=1, block_size=16)
    t0 = time.time()
    prefill = profile_prefill(model, _ints(opts.prompt_tokens), opts.repeats)
    decode = profile_decode(model, _ints(opts.batches), _ints(opts.contexts), opts.repeats)
    kv: list[dict[str, Any]] = []
    for backend in [b for b in opts.kv_backends.split(",") if b]:
        kv += profile_kv(opts, backend, _ints(opts.kv_tokens))
    router_s, decode_how = 0.0, "DecodeEngine.step"
    if opts.serving:
        from baton_dev.bench.profile_serving import serving_figures

        router_s, decode = serving_figures(
            opts.model,
            opts.device,
            {r["prompt_tokens"]: r["seconds"] for r in prefill},
            _ints(opts.batches),
            _ints(opts.contexts),
            opts.repeats,
        )
        decode_how = "time per output token of that many concurrent streams through baton up"
    device = (
        torch.cuda.get_device_name(0) if opts.device.startswith("cuda") else platform.processor() or "cpu"
    )
    how = f"baton profile on {socket.gethostname()} at {datetime.now(UTC).isoformat(timespec='seconds')}"
    threads = torch.get_num_threads()
    return {
        "format": FORMAT,
        "hardware": {
            "device": "cuda" if opts.device.startswith("cuda") else "cpu",
            "name": f"{device} ({os.cpu_count()} cores, torch threads {threads})",
            "gpus_per_worker_tp1": 1,
        },
        "model": {
            "source": opts.model,
            "dtype": opts.dtype,
            "kv_bytes_per_token": pool.bytes_per_block // pool.block_size,
        },
        "measured_by": how,
        "sources": {
            "prefill": f"{how}: PagedModel.prefill, batch 1, median of {opts.repeats}",
            "decode": f"{how}: {decode_how}, median over {max(1, opts.repeats)} runs"
            if not opts.serving
            else f"{how}: {decode_how} (1 prefill + 1 decode worker), median over the streams",
            "router": f"{how}: time to first token through baton up at idle less the prefill time"
            if opts.serving
            else "not measured (--no-serving)",
            "kv_transfer": f"{how}: prefill -> decode worker processes on this host, median of {opts.repeats}",
        },
        "prefill": prefill,
        "decode": decode,
        "kv_transfer": kv,
        "overheads": {
            "router_s": router_s,
            "handoff_s": round(
                min(
                    (_fixed_cost([r for r in kv if r["backend"] == b]) for b in {r["backend"] for r in kv}),
                    default=0.0,
                ),
                6,
            ),
        },
        "profile_seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str]) -> int:
    opts = build_parser().parse_args(argv)
    for flag in ("prompt_tokens", "batches", "contexts", "kv_tokens"):
        try:
            values = _ints(getattr(opts, flag))
        except ValueError:
            values = []
        if not values or min(values) < 1:
            print(
                f"baton profile: --{flag.replace('_', '-')}: comma list of positive integers", file=sys.stderr
            )
            return 2
    profile = run_profile(opts)
    text = json.dumps(profile, indent=2)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text + "\n")
    if opts.json or not opts.out:
        print(text)
    return 0
