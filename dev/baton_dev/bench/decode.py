"""`baton bench decode`: prefill and decode tokens/s of the engine at batch 1, 8 and 64.

Decode is measured through the real :class:`DecodeEngine` (scheduling, paged attention, sampling,
detokenization), prefill through :class:`PagedModel.prefill`. On CUDA the default model is a
Llama-3-8B-shaped bf16 model with random weights, and each decode figure comes with the fraction of
the HBM roofline it reaches (weights + KV bytes read per step at the device's peak bandwidth).
With ``--compare-hf`` plain transformers ``generate()`` is measured on the same model for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

# Peak HBM bandwidth (bytes/s) by device-name fragment.
HBM_PEAK = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.039e12, "L40S": 0.864e12, "A10": 0.6e12}


@dataclass(frozen=True)
class BatchFigures:
    batch: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_step_ms: float
    roofline_fraction: float | None
    hf_decode_tokens_per_s: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bandwidth(device: torch.device, override_gbps: float | None) -> float | None:
    if override_gbps:
        return override_gbps * 1e9
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for frag, bw in HBM_PEAK.items() if frag in name), None)


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[tuple[int, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(3, vocab, (length,), generator=g).tolist()) for _ in range(batch)]


def measure_prefill(model, batch: int, prompt_len: int, repeats: int) -> float:
    """Prompt tokens per second of PagedModel.prefill for ``batch`` prompts of ``prompt_len``."""
    from baton_worker.engine import KvBlockPool
    from baton_worker.engine.model import PagedModel

    pool = KvBlockPool.for_model(model, num_blocks=batch * (-(-prompt_len // 16)), block_size=16)
    runner = PagedModel(model, pool)
    prompts = [list(p) for p in _prompts(batch, prompt_len, model.shape.vocab_size, 1)]
    tables = [pool.allocate(pool.blocks_needed(prompt_len)) for _ in prompts]
    runner.prefill(prompts, tables)  # warm-up
    _sync(model.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        runner.prefill(prompts, tables)
    _sync(model.device)
    return batch * prompt_len * repeats / (time.perf_counter() - t0)


def measure_decode(model, batch: int, context: int, steps: int) -> float:
    """Seconds per decode step of the DecodeEngine with ``batch`` sequences at ~``context`` tokens."""
    from baton_worker.engine import DecodeEngine, EngineRequest, KvBlockPool, SamplingParams

    pool = KvBlockPool.for_model(model, num_blocks=batch * (-(-(context + steps + 8) // 16)), block_size=16)
    engine = DecodeEngine(model, pool, max_batch_size=batch)
    sampling = SamplingParams(max_tokens=steps + 64, ignore_eos=True)
    for i, p in enumerate(_prompts(batch, context, model.shape.vocab_size, 2)):
        engine.add_request(EngineRequest(f"b{i}", p, sampling))
    while engine.stats().running < batch:  # admission + prefill, not timed
        engine.step()
    for _ in range(2):  # warm-up
        engine.step()
    _sync(model.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _sync(model.device)
    return (time.perf_counter() - t0) / steps


def measure_hf_decode(model, batch: int, context: int, steps: int) -> float:
    """Seconds per decode step of plain transformers generate() (DynamicCache, sdpa)."""
    ids = torch.tensor(_prompts(batch, context, model.shape.vocab_size, 3), device=model.device)

    def run(n: int) -> float:
        _sync(model.device)
        t0 = time.perf_counter()
        model.hf_model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        _sync(model.device)
        return time.perf_counter() - t0

    run(2)
    return (run(steps + 1) - run(1)) / steps


def roofline_fraction(model, batch: int, context: int, step_s: float, peak: float | None) -> float | None:
    """Bytes a decode step must read (all weights + every sequence's KV) over peak bandwidth, per step time."""
    if peak is None:
        return None
    weights = sum(p.numel() * p.element_size() for p in model.hf_model.parameters())
    s = model.shape
    kv = (
        batch
        * context
        * 2
        * s.num_layers
        * s.num_kv_heads
        * s.head_dim
        * torch.empty((), dtype=model.dtype).element_size()
    )
    return (weights + kv) / peak / step_s


def _load(args: argparse.Namespace):
    from baton_worker.engine import load_model, random_model
    from baton_worker.engine.builtin import LLAMA3_8B_SHAPE

    if args.model == "llama3-8b-random":
        return random_model(LLAMA3_8B_SHAPE, dtype=args.dtype or "bfloat16", device=args.device)
    return load_model(args.model, dtype=args.dtype or "float32", device=args.device)


def _parser(cuda: bool) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="baton bench decode", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default=None,
        help="builtin://tiny (CPU default), llama3-8b-random (CUDA default), or a dir",
    )
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 tiny, bf16 8B)"
    )
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument(
        "--context", type=int, default=None, help="tokens of context per sequence (1024 CUDA, 256 CPU)"
    )
    ap.add_argument(
        "--prompt-len", type=int, default=None, help="prompt length for prefill (512 CUDA, 128 CPU)"
    )
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (50 CUDA, 20 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--hbm-gbps", type=float, default=None, help="peak memory bandwidth for the roofline")
    ap.add_argument("--compare-hf", action="store_true", help="also time plain transformers generate()")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--tp",
        default="",
        help="instead: prefill latency of TP groups of these sizes, e.g. 1,2 (tensor-parallel.md)",
    )
    return ap


def _measure_batch(
    model, b: int, context: int, prompt_len: int, steps: int, peak: float | None, compare_hf: bool
) -> BatchFigures:
    """Prefill and decode figures at batch size ``b``."""
    on_cuda = model.device.type == "cuda"
    prefill_tps = measure_prefill(model, b, prompt_len, repeats=2 if not on_cuda else 5)
    step_s = measure_decode(model, b, context, steps)
    hf = measure_hf_decode(model, b, context, steps) if compare_hf else None
    return BatchFigures(
        batch=b,
        prefill_tokens_per_s=round(prefill_tps, 1),
        decode_tokens_per_s=round(b / step_s, 1),
        decode_step_ms=round(step_s * 1e3, 3),
        roofline_fraction=None
        if peak is None
        else round(roofline_fraction(model, b, context, step_s, peak), 4),
        hf_decode_tokens_per_s=None if hf is None else round(b / hf, 1),
    )


def decode_ratio(figures: list[BatchFigures]) -> float | None:
    """Decode tokens/s at batch 64 over batch 1, when both were measured."""
    by_batch = {f.batch: f for f in figures}
    if 1 in by_batch and 64 in by_batch:
        return round(by_batch[64].decode_tokens_per_s / by_batch[1].decode_tokens_per_s, 2)
    return None


def _print_table(figures: list[BatchFigures], ratio: float | None) -> None:
    for f in figures:
        roof = f" ({f.roofline_fraction:.0%} of HBM roofline)" if f.roofline_fraction is not None else ""
        print(
            f"batch {f.batch:>3}: prefill {f.prefill_tokens_per_s:>10.1f} tok/s   "
            f"decode {f.decode_tokens_per_s:>10.1f} tok/s, {f.decode_step_ms:.2f} ms/step{roof}"
        )
    if ratio is not None:
        print(f"decode tokens/s, batch 64 / batch 1: {ratio}x")


def main(argv: list[str]) -> int:
    args = _parser(torch.cuda.is_available()).parse_args(argv)
    if args.tp:
        from baton_dev.bench.tp import decode_main

        return decode_main(
            args.tp, model=args.model or "builtin://tiny", device=args.device, dtype=args.dtype,
            prompt_tokens=args.prompt_len or 512, as_json=args.json,
        )  # fmt: skip
    on_cuda = args.device.startswith("cuda")
    args.model = args.model or ("llama3-8b-random" if on_cuda else "builtin://tiny")
    context = args.context or (1024 if on_cuda else 256)
    prompt_len = args.prompt_len or (512 if on_cuda else 128)
    steps = args.steps or (50 if on_cuda else 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print(f"--batches: expected comma-separated integers, got {args.batches!r}", file=sys.stderr)
        return 2
    model = _load(args)
    device = model.device
    peak = _peak_bandwidth(device, args.hbm_gbps)
    figures = []
    for b in batches:
        figures.append(_measure_batch(model, b, context, prompt_len, steps, peak, args.compare_hf))
        if not args.json:
            print(f"batch {b}: {asdict(figures[-1])}", file=sys.stderr)
    ratio = decode_ratio(figures)
    report = {
        "bench": "decode",
        "model": args.model,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": model.dtype_name,
        "context_tokens": context,
        "prompt_tokens": prompt_len,
        "decode_steps": steps,
        "hbm_peak_bytes_per_s": peak,
        "results": [asdict(f) for f in figures],
        "decode_ratio_64_to_1": ratio,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(figures, ratio)
    return 0
