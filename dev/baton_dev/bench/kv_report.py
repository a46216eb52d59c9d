"""How `baton bench kv` reports what it measured (pure): one result row per backend and size, and
the ``metadata`` figures of the control plane against the transfer of 512 MiB."""

from __future__ import annotations

import statistics

from baton_dev.bench.kv_reference import CopyFigure, summary


def memcpy_row(nbytes: int, copies: dict[int, list[CopyFigure]], lanes: int) -> dict:
    """The row of the reference copy: on ``lanes`` threads, and on one."""
    one = summary(copies[1])
    return {
        "backend": "memcpy",
        "bytes": nbytes,
        **summary(copies[lanes]),
        "lanes": copies[lanes][0].threads,
        "gbps_1thread": one["gbps"],
        "gbps_1thread_best": one["gbps_best"],
        "verified": True,  # _copy_once raised otherwise
    }


def pull_row(backend: str, nbytes: int, secs: list[float]) -> dict:
    """The row of one pulling backend from its seconds per pull of ``nbytes``."""
    rates = [nbytes / t / 1e9 for t in secs]
    return {
        "backend": backend,
        "bytes": nbytes,
        "gbps": round(statistics.median(rates), 3),
        "gbps_best": round(max(rates), 3),
        "seconds": round(statistics.median(secs), 6),
        "verified": True,  # _pull_once's check raised otherwise
    }


def with_ratios(rows: dict[str, dict]) -> dict[str, dict]:
    """Each pull row against the copy on as many threads as nixl's lanes, and against one thread."""
    ref = rows.get("memcpy")
    if ref is not None:
        for row in rows.values():
            if row is not ref:
                row["ratio_to_memcpy"] = round(row["gbps"] / ref["gbps"], 3)
                row["ratio_to_memcpy_1thread"] = round(row["gbps"] / ref["gbps_1thread"], 3)
    return rows


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def rtt_metadata(by_transport: dict[str, list[float]], xfer_512: dict[str, list[float]]) -> dict[str, float]:
    """The bench's ``metadata`` figures of the handle round trip (from :func:`handle_round_trips`)
    and their fractions of each backend's 512 MiB transfer seconds ``xfer_512``."""
    med = statistics.median
    rtts, unary = by_transport["stream"], by_transport["unary"]
    control, floor = by_transport["stream_no_handle"], by_transport["grpc_floor"]
    # What handing out the KV metadata adds to the Prefill call a request makes anyway
    # (median minus median: below zero when the machine's noise is larger than the cost).
    marginal = med(rtts) - med(control)
    meta: dict[str, float] = {
        "handle_rtt_ms": _ms(med(rtts)),
        "handle_rtt_ms_best": _ms(min(rtts)),
        "handle_rtt_samples": len(rtts),
        "handle_rtt_ms_unary": _ms(med(unary)),
        "handle_rtt_ms_unary_best": _ms(min(unary)),
        "prefill_call_without_handle_ms": _ms(med(control)),
        "handle_marginal_ms": _ms(marginal),
        "grpc_floor_rtt_ms": _ms(med(floor)),
        "grpc_floor_rtt_ms_best": _ms(min(floor)),
    }
    for b, xfer in xfer_512.items():
        meta[f"transfer_512mib_ms_{b}"] = _ms(med(xfer))
        meta[f"transfer_512mib_ms_{b}_best"] = _ms(min(xfer))
        # median against median; _best: best against best
        meta[f"handle_rtt_fraction_of_512mib_{b}"] = round(med(rtts) / med(xfer), 5)
        meta[f"handle_rtt_fraction_of_512mib_{b}_best"] = round(min(rtts) / min(xfer), 5)
        meta[f"handle_marginal_fraction_of_512mib_{b}"] = round(marginal / med(xfer), 5)
        meta[f"grpc_floor_fraction_of_512mib_{b}"] = round(med(floor) / med(xfer), 5)
    return meta
