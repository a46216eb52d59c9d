"""`baton plan`'s output: the explanation, the JSON document, the InferencePool snippet, warnings."""

from __future__ import annotations

import math
from typing import Any

import yaml

from baton_operator.planning.plan import Plan
from baton_operator.planning.profile import Profile
from baton_operator.planning.simulate import Deployment
from baton_operator.planning.workload import LengthDist, Workload
from baton_operator.spec import GPU_PRODUCTS

KV_WARN_BYTES = 40e9  # a full decode batch's KV above this is worth checking against GPU memory


def gpu_type(profile: Profile) -> str | None:
    """The InferencePool gpu.type of the profiled hardware (longest name found in it), if any."""
    name = profile.hardware.name.upper().replace(" ", "-")
    for key in sorted(GPU_PRODUCTS, key=len, reverse=True):
        if key.upper() in name or GPU_PRODUCTS[key].upper() in name:
            return key
    return None


def pool_spec(profile: Profile, dep: Deployment) -> dict[str, Any]:
    """The InferencePool ``spec`` fields that size ``dep`` (field names of crd.py / spec.py)."""

    def role(replicas: int, tp: int, batch: int) -> dict[str, Any]:
        out: dict[str, Any] = {"replicas": replicas, "tensorParallelSize": tp, "maxBatchSize": batch}
        if profile.hardware.device == "cpu":
            out["device"] = "cpu"
        elif gpu_type(profile):
            out["gpu"] = {"type": gpu_type(profile)}
        return out

    if dep.mode == "colocated":
        return {
            "prefill": {"replicas": 0},
            "decode": role(dep.decode_replicas, dep.decode_tp, dep.decode_max_batch),
        }
    return {
        "prefill": role(dep.prefill_replicas, dep.prefill_tp, dep.prefill_max_batch),
        "decode": role(dep.decode_replicas, dep.decode_tp, dep.decode_max_batch),
        "kvTransfer": {"backend": dep.kv_backend},
    }


def pool_yaml(profile: Profile, dep: Deployment) -> str:
    """An InferencePool snippet (``spec:`` and the sizing fields) to merge into a pool's manifest."""
    head = f"# baton plan: {dep.describe()} on {profile.hardware.name}\n"
    if profile.hardware.device != "cpu" and gpu_type(profile) is None:
        head += "# set gpu.type of each role to the profiled GPU\n"
    return head + yaml.safe_dump({"spec": pool_spec(profile, dep)}, sort_keys=False, default_flow_style=False)


def _high(dist: LengthDist) -> float:
    """A length few requests exceed: the top of a uniform range, a lognormal's ~99th percentile."""
    if dist.kind == "uniform":
        return dist.high
    if dist.kind == "lognormal":
        return dist.mean * math.exp(2.33 * dist.sigma - dist.sigma**2 / 2)
    return dist.mean


def warnings(profile: Profile, workload: Workload, deps: list[Deployment]) -> list[str]:
    """Where the prediction leans on extrapolation or on what the model leaves out."""
    out = []
    if not profile.kv_backends:
        out.append("the profile has no kv_transfer figures: only colocated deployments are offered")
    if profile.prefill_tp_sizes == (1,) and profile.decode_tp_sizes == (1,):
        out.append("the profile measures tensor parallel size 1 only: no larger TP size is offered")
    measured = max(p.prompt_tokens for p in profile.prefill)
    if _high(workload.isl) * (1 - workload.prefix_cached) > measured:
        out.append(
            f"prompts of more than {measured} tokens (the longest measured prefill) occur: their prefill "
            "time is extrapolated linearly from the last two measured points"
        )
    context = workload.isl.mean + workload.osl.mean / 2
    for tp in sorted({d.decode_tp for d in deps}):
        lo, hi = profile.decode_fit(tp).context_span
        if context > 2 * hi or context < lo / 2:
            how = "held constant (one context measured)" if lo == hi else "extrapolated linearly"
            out.append(
                f"the mean decode context (~{context:.0f} tokens) is far from the measured "
                f"{lo:.0f}-{hi:.0f} (TP {tp}): decode step times are {how}, so ITL is likely "
                f"{'underestimated' if context > hi else 'overestimated'}"
            )
    for d in deps:
        kv = d.decode_max_batch * (workload.isl.mean + workload.osl.mean) * profile.model.kv_bytes_per_token
        if kv > KV_WARN_BYTES:
            out.append(
                f"a full decode batch of {d.decode_max_batch} holds ~{kv / 1e9:.0f} GB of KV per decode worker "
                f"(TP {d.decode_tp}); the simulator does not limit KV memory: check it fits next to the weights"
            )
            break
    return out


def _dep_json(profile: Profile, dep: Deployment) -> dict[str, Any]:
    return {
        "mode": dep.mode,
        "description": dep.describe(),
        profile.unit.lower(): dep.cost(profile),
        "prefill": {
            "replicas": dep.prefill_replicas,
            "tp": dep.prefill_tp,
            "max_batch": dep.prefill_max_batch,
        },
        "decode": {"replicas": dep.decode_replicas, "tp": dep.decode_tp, "max_batch": dep.decode_max_batch},
    }


def to_json(p: Plan, profile_path: str = "") -> dict[str, Any]:
    """The plan as a JSON-ready document (what `baton plan --json` prints)."""
    prof, w, slo = p.profile, p.workload, p.slo
    deps = [d for d in (p.chosen, *p.cheapest.values()) if d is not None]
    doc: dict[str, Any] = {
        "profile": {"path": profile_path, "hardware": prof.hardware.name, "model": prof.model.source},
        "workload": {
            "rate_rps": w.rate,
            "burstiness": w.burstiness,
            "requests": w.num_requests if w.duration_s is None else None,
            "isl": w.isl.describe(),
            "osl": w.osl.describe(),
            "prefix_cached": w.prefix_cached,
            "seed": w.seed,
        },
        "slo": {"ttft_ms": slo.ttft_s * 1000, "itl_ms": slo.itl_s * 1000, "attainment": slo.attainment},
        "unit": prof.unit,
        "feasible": p.feasible,
    }
    if p.chosen is None:
        doc["reason"] = p.reason
        doc["needed"] = _dep_json(prof, p.needed) if p.needed is not None else None
        if p.best_attainment is not None:
            doc["closest"] = {
                **_dep_json(prof, p.best_attainment[0]),
                "attainment": round(p.best_attainment[1], 4),
            }
    else:
        assert p.prediction is not None
        doc["chosen"] = _dep_json(prof, p.chosen)
        doc["prediction"] = p.prediction.summary(slo.ttft_s, slo.itl_s)
        doc["max_rate_rps"] = round(p.max_rate, 3)
        doc["headroom"] = round(p.max_rate / w.rate, 3)
        doc["binding"] = p.binding
        doc["inference_pool_yaml"] = pool_yaml(prof, p.chosen)
    doc["cheapest"] = {mode: _dep_json(prof, d) for mode, d in p.cheapest.items()}
    doc["comparison"] = {
        prof.unit.lower(): p.comparison_cost,
        **{
            mode: {
                **_dep_json(prof, r.deployment),
                "max_rate_rps": round(r.max_rate, 3),
                f"goodput_per_{prof.unit.lower()[:-1]}": round(r.per_gpu(), 3),
            }
            for mode, r in p.comparison.items()
        },
        "ratio_disaggregated_over_colocated": round(p.ratio(), 3) if p.ratio() is not None else None,
    }
    doc["warnings"] = warnings(prof, w, deps)
    doc["simulations"] = p.simulations
    return doc


def _ms(summary: dict[str, Any], key: str) -> str:
    s = summary[key]
    return f"{s['p50']:.1f} / {s['p90']:.1f} / {s['p99']:.1f} ms"


def explain(p: Plan, profile_path: str = "") -> str:
    """The plan in words, with the InferencePool snippet."""
    prof, w, slo, unit = p.profile, p.workload, p.slo, p.profile.unit
    lines = [
        f"profile:  {profile_path or '(given)'}: {prof.model.source} ({prof.model.dtype}) on {prof.hardware.name}",
        f"workload: {w.describe()}",
        f"SLOs:     TTFT <= {slo.ttft_s * 1000:g} ms and ITL <= {slo.itl_s * 1000:g} ms for >= {slo.attainment:.0%} "
        "of requests",
        "",
    ]
    if p.chosen is None:
        lines.append(f"infeasible: {p.reason}")
        if p.needed is not None:
            lines.append(
                f"without the budget: {p.needed.describe()} = {prof.count(p.needed.cost(prof))} would meet them"
            )
    else:
        assert p.prediction is not None
        s = p.prediction.summary(slo.ttft_s, slo.itl_s)
        binds = {"ttft": "the TTFT SLO", "itl": "the ITL SLO"}.get(p.binding, p.binding)
        lines += [
            f"chosen:   {p.chosen.describe()} = {prof.count(p.chosen.cost(prof))}",
            f"  at {w.rate:g} req/s: TTFT p50/p90/p99 {_ms(s, 'ttft_ms')}, ITL {_ms(s, 'itl_ms')}; "
            f"{s['attainment']:.1%} of requests within both SLOs, goodput {s['goodput_rps']:.2f} req/s",
            f"  headroom: sustains up to {p.max_rate:.2f} req/s ({p.max_rate / w.rate:.2f}x the target); "
            f"past that, {binds} binds",
        ]
    for mode, d in p.cheapest.items():
        lines.append(f"cheapest {mode}: {d.describe()} = {prof.count(d.cost(prof))}")
    if p.comparison:
        lines.append(f"at {prof.count(p.comparison_cost)}, the highest rate meeting the SLOs:")
        for mode, r in p.comparison.items():
            lines.append(
                f"  {mode:<13} {r.deployment.describe()}: {r.max_rate:.2f} req/s = {r.per_gpu():.2f} per "
                f"{unit[:-1]}"
            )
        if p.ratio() is not None:
            lines.append(f"  goodput per {unit[:-1]}, disaggregated / colocated: {p.ratio():.2f}x")
    if p.chosen is not None:
        lines += ["", "InferencePool:", *("  " + x for x in pool_yaml(prof, p.chosen).rstrip().splitlines())]
    warns = warnings(prof, w, [d for d in (p.chosen, *p.cheapest.values()) if d is not None])
    if warns:
        lines += ["", "warnings:", *(f"  - {x}" for x in warns)]
    lines += ["", f"(simulated runs: {p.simulations}, of {w.num_requests} requests each, seed {w.seed})"]
    return "\n".join(lines)
