"""The capacity planner (pure): the cheapest deployment that meets TTFT and ITL SLOs at a rate.

A deployment *meets* the SLOs at a rate when, simulated over the workload (fixed seed), at least
``slo.attainment`` (0.9) of its requests meet both TTFT and ITL — DistServe's definition — and
the rate is within its throughput bound (:func:`capacity_bound`: a finite run that starts empty
can look fine while its queue grows without limit; such a deployment is not offered).

The search walks costs upward (GPUs; workers on a CPU profile): disaggregated P prefill + D
decode workers (1..max_replicas each, every measured TP size per role) and colocated N workers
(1..2*max_replicas, TP sizes measured for both roles), within an optional budget. The first cost
with a deployment that meets the SLOs wins; among several there, the one that sustains the
highest rate. A deployment's highest sustainable rate is found by bisection.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from baton_operator.planning.profile import Profile
from baton_operator.planning.simulate import Deployment, simulate
from baton_operator.planning.stats import SimResult
from baton_operator.planning.workload import Requests, Workload

RATE_TOLERANCE = 0.02  # bisection stops when the bracket is within 2% of the rate


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    itl_s: float
    attainment: float = 0.9  # fraction of requests that must meet both

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.itl_s > 0 and 0 < self.attainment <= 1):
            raise ValueError("SLOs must be > 0 and attainment in (0, 1]")


@dataclass(frozen=True)
class Options:
    """The search space: replicas per role, batch sizes, KV backend, GPU budget."""

    max_replicas: int = 8
    budget: int | None = None  # most GPUs (cpu profile: workers)
    prefill_max_batch: int = 1
    decode_max_batch: int = 64
    kv_backend: str = "auto"
    compare_cost: int | None = None  # cost of the disaggregated/colocated comparison (default: the chosen's)


def _prefill_per_request(profile: Profile, tokens: float, tp: int, most: int) -> float:
    """The least prefill seconds per request when up to ``most`` mean prompts share a batch."""
    return min(profile.prefill_seconds(k * tokens, tp) / k for k in range(1, max(1, most) + 1))


def capacity_bounds(profile: Profile, workload: Workload, dep: Deployment) -> dict[str, float]:
    """Upper bounds on the req/s each role of ``dep`` can sustain, from mean lengths: prefill time
    per request at the best batch of mean prompts (prefill workers: up to their max batch;
    colocated steps: as many as fit the step's token budget), and decode tokens per second at the
    best batch size up to the max batch (colocated: one bound, both costs on the same workers)."""
    prefill_tokens = workload.isl.mean * (1 - workload.prefix_cached)
    decode_tokens = max(workload.osl.mean - 1, 0.0)
    context = workload.isl.mean + workload.osl.mean / 2
    fit = profile.decode_fit(dep.decode_tp)
    per_token = min(fit(b, context) / b for b in range(1, dep.decode_max_batch + 1))
    if dep.mode == "colocated":
        per_step = min(dep.decode_max_batch, int(dep.prefill_budget // max(prefill_tokens, 1)))
        prefill = _prefill_per_request(profile, prefill_tokens, dep.decode_tp, per_step)
        return {"colocated": dep.decode_replicas / (prefill + decode_tokens * per_token)}
    prefill = _prefill_per_request(profile, prefill_tokens, dep.prefill_tp, dep.prefill_max_batch)
    decode = dep.decode_replicas / (decode_tokens * per_token) if decode_tokens else float("inf")
    return {"prefill": dep.prefill_replicas / prefill, "decode": decode}


def capacity_bound(profile: Profile, workload: Workload, dep: Deployment) -> float:
    """The req/s ``dep`` cannot exceed for long (the least of :func:`capacity_bounds`)."""
    return min(capacity_bounds(profile, workload, dep).values())


def candidates(profile: Profile, opts: Options) -> list[Deployment]:
    """Every deployment the search considers, cheapest first (within the budget if there is one)."""
    r = range(1, opts.max_replicas + 1)
    out = [
        Deployment(p, d, tp_p, tp_d, opts.prefill_max_batch, opts.decode_max_batch, opts.kv_backend)
        for p, d, tp_p, tp_d in itertools.product(r, r, profile.prefill_tp_sizes, profile.decode_tp_sizes)
        if profile.kv_backends  # no KV handoff figures: no disaggregated deployment
    ]
    both = sorted(set(profile.prefill_tp_sizes) & set(profile.decode_tp_sizes))
    out += [
        Deployment.colocated(n, tp, opts.decode_max_batch)
        for n, tp in itertools.product(range(1, 2 * opts.max_replicas + 1), both)
    ]
    return sorted(out, key=lambda d: (d.cost(profile), d.mode != "disaggregated", d.prefill_replicas))


@dataclass
class Searcher:
    """Simulations of one workload's requests on one profile, cached by (deployment, rate)."""

    profile: Profile
    workload: Workload
    slo: Slo
    simulations: int = 0
    _base: Requests | None = None
    _cache: dict[tuple[Deployment, float], SimResult] = field(default_factory=dict)
    _bounds: dict[Deployment, float] = field(default_factory=dict)

    def bound(self, dep: Deployment) -> float:
        if dep not in self._bounds:
            self._bounds[dep] = capacity_bound(self.profile, self.workload, dep)
        return self._bounds[dep]

    def run(self, dep: Deployment, rate: float) -> SimResult:
        key = (dep, rate)
        if key not in self._cache:
            if self._base is None:
                self._base = self.workload.sample()
            # Same requests at every rate: arrivals scale with 1/rate (see workload.py).
            scale = self.workload.rate / rate
            base = self._base
            reqs = Requests(
                [a * scale for a in base.arrival], base.prompt_tokens, base.prefill_tokens, base.output_tokens
            )
            self._cache[key] = simulate(self.profile, reqs, dep)
            self.simulations += 1
        return self._cache[key]

    def meets(self, dep: Deployment, rate: float) -> bool:
        if rate > self.bound(dep):
            return False
        return self.run(dep, rate).attainment(self.slo.ttft_s, self.slo.itl_s) >= self.slo.attainment

    def max_rate(self, dep: Deployment, start: float) -> float:
        """The highest rate at which ``dep`` meets the SLOs (0 when it does not at start/1024)."""
        bound = self.bound(dep)
        if self.meets(dep, bound):
            return bound
        lo, hi = min(start, bound), bound
        if not self.meets(dep, lo):
            hi = lo
            while not self.meets(dep, lo):
                hi, lo = lo, lo / 2
                if lo < start / 1024:
                    return 0.0
        while hi - lo > RATE_TOLERANCE * lo:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.meets(dep, mid) else (lo, mid)
        return lo

    def best(self, deps: Iterable[Deployment], start: float) -> tuple[Deployment | None, float]:
        """The deployment of ``deps`` that sustains the highest rate, and that rate. Bisects only
        those that meet the SLOs at the best rate found so far (others cannot win)."""
        best, best_rate = None, 0.0
        for dep in deps:
            if best_rate > 0:
                floor = best_rate * (1 + RATE_TOLERANCE)
                if not self.meets(dep, floor):
                    continue
            rate = self.max_rate(dep, best_rate * (1 + RATE_TOLERANCE) if best_rate > 0 else start)
            if best is None or rate > best_rate:
                best, best_rate = dep, rate
        return best, best_rate


@dataclass(frozen=True)
class ModeResult:
    deployment: Deployment
    cost: int
    max_rate: float

    def per_gpu(self) -> float:
        return self.max_rate / self.cost if self.cost else 0.0


@dataclass(frozen=True)
class Plan:
    profile: Profile
    workload: Workload
    slo: Slo
    options: Options
    chosen: Deployment | None
    prediction: SimResult | None  # the chosen deployment at the workload's rate
    max_rate: float  # highest rate the chosen deployment sustains (0 when infeasible)
    binding: str  # "ttft", "itl", "prefill capacity", "decode capacity" or "" (infeasible)
    cheapest: dict[str, Deployment]  # per mode, the cheapest meeting the SLOs (within budget)
    comparison: dict[str, ModeResult]  # per mode, the best at the chosen deployment's cost
    comparison_cost: int
    reason: str  # why nothing was chosen ("" when feasible)
    needed: Deployment | None  # over budget: the cheapest that would meet the SLOs
    best_attainment: tuple[Deployment, float] | None  # infeasible: closest miss
    simulations: int

    @property
    def feasible(self) -> bool:
        return self.chosen is not None

    def ratio(self) -> float | None:
        """Goodput per GPU, disaggregated over colocated, at equal cost."""
        d, c = self.comparison.get("disaggregated"), self.comparison.get("colocated")
        if d is None or c is None or c.max_rate <= 0:
            return None
        return d.per_gpu() / c.per_gpu()


def binding(s: Searcher, dep: Deployment, max_rate: float) -> str:
    """Which limit stops ``dep`` just above its highest sustainable rate."""
    bounds = capacity_bounds(s.profile, s.workload, dep)
    role = min(bounds, key=bounds.__getitem__)
    if max_rate >= bounds[role] * (1 - 1e-9):
        return f"{role} capacity"
    miss_ttft, miss_itl = s.run(dep, max_rate * (1 + 2 * RATE_TOLERANCE)).misses(s.slo.ttft_s, s.slo.itl_s)
    return "ttft" if miss_ttft >= miss_itl else "itl"


def _search(s: Searcher, deps: list[Deployment]) -> tuple[Deployment | None, float, dict, tuple | None]:
    """Walk ``deps`` by cost: the chosen deployment and its highest rate, the cheapest meeting the
    SLOs per mode, and (when none does) the closest miss as (deployment, attainment)."""
    rate, slo = s.workload.rate, s.slo
    by_cost: dict[int, list[Deployment]] = {}
    for d in deps:
        by_cost.setdefault(d.cost(s.profile), []).append(d)
    chosen, max_rate, cheapest = None, 0.0, {}
    closest: tuple[Deployment, float] | None = None
    for cost in sorted(by_cost):
        group = by_cost[cost]
        ok = [d for d in group if d.mode not in cheapest and s.meets(d, rate)]
        for d in ok:
            cheapest.setdefault(d.mode, d)
        if chosen is None and ok:
            chosen, max_rate = s.best(ok, rate)
        if chosen is None:
            for d in group:
                if rate <= s.bound(d):
                    att = s.run(d, rate).attainment(slo.ttft_s, slo.itl_s)
                    if closest is None or att > closest[1]:
                        closest = (d, att)
        if len(cheapest) == 2:
            break
    return chosen, max_rate, cheapest, closest


def _compare(s: Searcher, deps: list[Deployment], cost: int) -> dict[str, ModeResult]:
    """Per mode, the deployment of exactly ``cost`` that sustains the highest rate."""
    out = {}
    for mode in ("disaggregated", "colocated"):
        same = [d for d in deps if d.mode == mode and d.cost(s.profile) == cost]
        best, best_rate = s.best(same, s.workload.rate)
        if best is not None:
            out[mode] = ModeResult(best, cost, best_rate)
    return out


def plan(profile: Profile, workload: Workload, slo: Slo, opts: Options | None = None) -> Plan:
    """The cheapest deployment meeting ``slo`` at ``workload.rate`` (see the module docstring)."""
    opts = opts or Options()
    s = Searcher(profile, workload, slo)
    all_deps = candidates(profile, opts)
    within = [d for d in all_deps if opts.budget is None or d.cost(profile) <= opts.budget]
    chosen, max_rate, cheapest, closest = _search(s, within)
    needed = None
    if chosen is None and opts.budget is not None:
        over = (d for d in all_deps if d.cost(profile) > opts.budget)
        needed = next((d for d in over if s.meets(d, workload.rate)), None)
    comparison_cost = 0
    if chosen is not None or opts.compare_cost is not None:
        least = 2 * min(profile.worker_cost(t) for t in profile.prefill_tp_sizes)  # 1 prefill + 1 decode
        comparison_cost = opts.compare_cost or max(chosen.cost(profile) if chosen else 0, least)
    return Plan(
        profile=profile,
        workload=workload,
        slo=slo,
        options=opts,
        chosen=chosen,
        prediction=s.run(chosen, workload.rate) if chosen is not None else None,
        max_rate=max_rate,
        binding=binding(s, chosen, max_rate) if chosen is not None else "",
        cheapest=cheapest,
        comparison=_compare(s, all_deps, comparison_cost) if comparison_cost else {},
        comparison_cost=comparison_cost,
        reason="" if chosen is not None else _why_not(s, opts, closest, within),
        needed=needed,
        best_attainment=closest if chosen is None else None,
        simulations=s.simulations,
    )


def _why_not(s: Searcher, opts: Options, closest: tuple | None, within: list[Deployment]) -> str:
    """Why no deployment within the search space meets the SLOs, as specifically as possible."""
    profile, workload, slo = s.profile, s.workload, s.slo
    tokens = workload.isl.mean * (1 - workload.prefix_cached)
    idle_ttft = (
        min(profile.prefill_seconds(tokens, tp) for tp in profile.prefill_tp_sizes)
        + profile.overheads.router_s
    )
    if idle_ttft > slo.ttft_s:
        return (
            f"the TTFT SLO ({slo.ttft_s * 1000:g} ms) is below an idle worker's TTFT for a mean prompt "
            f"({idle_ttft * 1000:.1f} ms): no deployment can meet it"
        )
    context = workload.isl.mean + workload.osl.mean / 2
    idle_itl = min(profile.decode_step_seconds(1, context, tp) for tp in profile.decode_tp_sizes)
    if idle_itl > slo.itl_s:
        return (
            f"the ITL SLO ({slo.itl_s * 1000:g} ms) is below a decode step at batch 1 "
            f"({idle_itl * 1000:.1f} ms): no deployment can meet it"
        )
    limit = (
        profile.count(opts.budget) if opts.budget is not None else f"{opts.max_replicas} replicas per role"
    )
    where = ""
    if closest is not None:
        where = f"; the closest, {closest[0].describe()}, meets both SLOs for {closest[1]:.0%} of requests"
    elif within:
        top = max(within, key=s.bound)
        where = f"; none has the throughput: the most, {top.describe()}, sustains at most {s.bound(top):.1f} req/s"
    return (
        f"no deployment within {limit} meets both SLOs for {slo.attainment:.0%} of requests at "
        f"{workload.rate:g} req/s{where}"
    )
