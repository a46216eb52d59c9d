"""Tensor-parallel measurements: prefill latency by TP size, and per-rank KV transfer bandwidth
between a prefill TP-N group and a decode TP-M group (real processes, NIXL READs).

Used by ``baton bench decode --tp N`` and ``baton bench kv --tp N[:M]``; also runnable alone:
``python -m baton_dev.bench.tp --tp 1,2 --prompt 512 [--transfer 2:1] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from dataclasses import asdict, dataclass

from baton_worker.engine.tp_group import TpSpec
from baton_worker.engine.types import SamplingParams

from baton_dev.tp_host import TpHost


@dataclass(frozen=True)
class PrefillFigure:
    tp: int
    prompt_tokens: int
    median_ms: float
    min_ms: float
    repeats: int


@dataclass(frozen=True)
class RankTransfer:
    rank: int
    bytes: int
    seconds: float
    gb_per_s: float
    sources: int


@dataclass(frozen=True)
class TransferFigure:
    prefill_tp: int
    decode_tp: int
    prompt_tokens: int
    total_bytes: int
    seconds: float  # all ranks, wall clock
    ranks: list[RankTransfer]


def _prompt(n: int) -> list[int]:
    return [3 + (i * 7919) % 800 for i in range(n)]


def _spec(source: str, tp: int, role: str, device: str, dtype: str, blocks: int, nixl: bool) -> TpSpec:
    return TpSpec(
        source, tp, role, f"bench-{role}-{uuid.uuid4().hex[:8]}", dtype=dtype, device=device,
        num_blocks=blocks, nixl=nixl, timeout_s=300.0,
    )  # fmt: skip


def prefill_latency(
    source: str, tp: int, prompt_tokens: int, repeats: int, device: str = "cpu", dtype: str = "float32"
) -> PrefillFigure:
    """Median and best wall time of one prefill (batch 1) on a TP-``tp`` group, after a warm-up."""
    blocks = -(-prompt_tokens // 16) + 2
    host = TpHost.start(_spec(source, tp, "prefill", device, dtype, blocks, nixl=False))
    try:
        times = []
        for i in range(repeats + 1):
            rid = f"lat-{i}"
            reply = host.prefill(rid, _prompt(prompt_tokens), SamplingParams(max_tokens=1))
            host.release(rid)
            if i:  # the first run warms up allocators and kernels
                times.append(reply.prefill_seconds * 1000)
    finally:
        host.close()
    return PrefillFigure(tp, prompt_tokens, statistics.median(times), min(times), repeats)


def transfer(
    source: str, prefill_tp: int, decode_tp: int, prompt_tokens: int, repeats: int,
    device: str = "cpu", dtype: str = "float32",
) -> TransferFigure:  # fmt: skip
    """Per-rank bytes, seconds and GB/s of the KV pull of one prompt, best of ``repeats``."""
    blocks = -(-prompt_tokens // 16) + 2
    pre = TpHost.spawn(_spec(source, prefill_tp, "prefill", device, dtype, blocks, nixl=True))
    dec = TpHost.spawn(_spec(source, decode_tp, "decode", device, dtype, blocks, nixl=True))
    try:
        pre.wait_ready()
        dec.wait_ready()
        best = None
        for i in range(repeats + 1):
            rid = f"xfer-{i}"
            sp = SamplingParams(max_tokens=1, ignore_eos=True)
            reply = pre.prefill(rid, _prompt(prompt_tokens), sp)
            out = dec.generate(rid, _prompt(prompt_tokens), sp, reply)
            pre.release(rid)
            if i and (best is None or out.kv_seconds < best.kv_seconds):
                best = out
    finally:
        pre.stop()
        dec.stop()
        pre.close()
        dec.close()
    assert best is not None
    ranks = [
        RankTransfer(p.rank, p.bytes, p.seconds, p.bytes / p.seconds / 1e9, p.sources) for p in best.pulls
    ]
    return TransferFigure(
        prefill_tp, decode_tp, prompt_tokens, sum(r.bytes for r in ranks), best.kv_seconds, ranks
    )


def parse_pair(text: str) -> tuple[int, int]:
    """``"N:M"`` (prefill TP N, decode TP M) or ``"N"`` (both N); ValueError naming the option."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--tp: {text!r} is not N or N:M") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"--tp: {text!r} is not N or N:M")


def _common(model: str, device: str, dtype: str | None, repeats: int, as_json: bool) -> list[str]:
    args = ["--model", model, "--device", device, "--repeats", str(repeats)]
    return args + (["--dtype", dtype] if dtype else []) + (["--json"] if as_json else [])


def kv_main(
    pairs: str, *, model: str = "builtin://tiny", device: str = "cpu", dtype: str | None = None,
    prompt_tokens: int = 1024, repeats: int = 5, as_json: bool = False,
) -> int:  # fmt: skip
    """``baton bench kv --tp N:M[,N:M]``: per-rank pull bandwidth between TP groups."""
    return main(["--tp", "", "--transfer", pairs, "--prompt", str(prompt_tokens)]
                + _common(model, device, dtype, repeats, as_json))  # fmt: skip


def decode_main(
    sizes: str, *, model: str = "builtin://tiny", device: str = "cpu", dtype: str | None = None,
    prompt_tokens: int = 512, repeats: int = 5, as_json: bool = False,
) -> int:  # fmt: skip
    """``baton bench decode --tp 1,2``: prefill latency of a prefill worker by TP size."""
    return main(
        ["--tp", sizes, "--prompt", str(prompt_tokens)] + _common(model, device, dtype, repeats, as_json)
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tp_bench", description=__doc__)
    p.add_argument("--model", default="builtin://tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tp", default="1,2", help="prefill latency for these TP sizes (comma list)")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--transfer", default="", help="also measure KV pulls, e.g. 2:1,4:2")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result: dict[str, list] = {"prefill": [], "transfer": []}
    for tp in [int(t) for t in a.tp.split(",") if t]:
        fig = prefill_latency(a.model, tp, a.prompt, a.repeats, a.device, a.dtype)
        result["prefill"].append(asdict(fig))
        if not a.json:
            print(
                f"prefill TP {tp}: {a.prompt} tokens, median {fig.median_ms:.1f} ms, best {fig.min_ms:.1f} ms"
            )
    for pair in [t for t in a.transfer.split(",") if t]:
        n, m = parse_pair(pair)
        fig = transfer(a.model, n, m, a.prompt, a.repeats, a.device, a.dtype)
        result["transfer"].append(asdict(fig))
        if not a.json:
            print(
                f"KV prefill TP {n} -> decode TP {m}: {fig.total_bytes} bytes in {fig.seconds * 1000:.1f} ms"
            )
            for r in fig.ranks:
                print(
                    f"  decode rank {r.rank}: {r.bytes} bytes from {r.sources} prefill ranks, {r.gb_per_s:.2f} GB/s"
                )
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from baton_dev.bench.tp import main as _entry

    sys.exit(_entry(sys.argv[1:]))
