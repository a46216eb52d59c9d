"""The capacity planner: cheapest deployment meeting the SLOs, budgets, infeasibility, the pool snippet."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from baton_operator.planning.plan import Options, Searcher, Slo, candidates, capacity_bound, plan
from baton_operator.planning.profile import load_profile, parse_profile
from baton_operator.planning.report import explain, pool_yaml, to_json
from baton_operator.planning.simulate import Deployment
from baton_operator.planning.workload import LengthDist, Workload
from baton_operator.spec import parse_pool

H100_PATH = Path(__file__).resolve().parents[2] / "profiles" / "h100-llama3-8b.json"
H100 = load_profile(H100_PATH)
CHAT_SLO = Slo(0.5, 0.05)


def chat(rate: float, n: int = 300) -> Workload:
    return Workload(rate=rate, isl=LengthDist.lognormal(1000, 0.5), osl=LengthDist.fixed(200), num_requests=n)


def long_prompts(rate: float, n: int = 300) -> Workload:
    return Workload(rate=rate, isl=LengthDist.fixed(8000), osl=LengthDist.fixed(50), num_requests=n)


def test_only_measured_tp_sizes_are_offered() -> None:
    deps = candidates(H100, Options(max_replicas=3))
    assert {(d.prefill_tp, d.decode_tp) for d in deps} == {(1, 1)}
    assert len(deps) == 3 * 3 + 6  # P x D disaggregated, 1..2*3 colocated
    costs = [d.cost(H100) for d in deps]
    assert costs == sorted(costs)
    raw = json.loads(H100_PATH.read_text())
    raw["prefill"].append({"tp": 2, "prompt_tokens": 2048, "seconds": 0.04})
    two = parse_profile(raw)
    deps = candidates(two, Options(max_replicas=2))
    assert {d.prefill_tp for d in deps if d.mode == "disaggregated"} == {1, 2}
    assert {d.decode_tp for d in deps} == {1}  # no decode figures at TP 2
    assert Deployment(1, 1, prefill_tp=2).cost(two) == 3


def test_the_planner_picks_larger_deployments_as_the_rate_rises() -> None:
    costs = []
    for rate in (2, 8, 16, 28):
        p = plan(H100, chat(rate), CHAT_SLO)
        assert p.feasible and p.prediction is not None and p.chosen is not None
        assert p.prediction.attainment(CHAT_SLO.ttft_s, CHAT_SLO.itl_s) >= 0.9
        assert p.max_rate >= rate
        costs.append(p.chosen.cost(H100))
    assert costs == sorted(costs) and costs[-1] > costs[0]


def test_the_chosen_deployment_sustains_its_max_rate_and_not_much_more() -> None:
    p = plan(H100, chat(8), CHAT_SLO)
    assert p.chosen is not None
    s = Searcher(H100, chat(8), CHAT_SLO)
    assert s.meets(p.chosen, p.max_rate)
    assert not s.meets(p.chosen, p.max_rate * 1.1)
    assert p.max_rate <= capacity_bound(H100, chat(8), p.chosen)
    assert p.binding in ("ttft", "itl", "prefill capacity", "decode capacity", "colocated capacity")


@pytest.mark.parametrize("budget", [2, 3, 4])
def test_the_budget_is_respected(budget: int) -> None:
    p = plan(H100, chat(10), CHAT_SLO, Options(budget=budget))
    if p.feasible:
        assert p.chosen is not None and p.chosen.cost(H100) <= budget
    assert all(d.cost(H100) <= budget for d in p.cheapest.values())


def test_nothing_within_the_budget_is_reported_with_what_would_fit() -> None:
    p = plan(H100, chat(24), CHAT_SLO, Options(budget=2))
    assert not p.feasible and p.chosen is None
    assert "no deployment within 2 GPUs meets both SLOs for 90% of requests at 24 req/s" in p.reason
    assert "none has the throughput: the most, 2 colocated (TP 1, batch 64), sustains at most" in p.reason
    assert p.needed is not None and p.needed.cost(H100) > 2
    text = explain(p)
    assert "infeasible:" in text and "without the budget" in text
    doc = to_json(p)
    assert doc["feasible"] is False and doc["needed"]["gpus"] == p.needed.cost(H100)


@pytest.mark.parametrize(
    ("slo", "why"),
    [
        (Slo(0.02, 0.05), "TTFT SLO (20 ms) is below an idle worker's TTFT for a mean prompt"),
        (Slo(0.5, 0.02), "ITL SLO (20 ms) is below a decode step at batch 1"),
        (Slo(0.5, 0.05, attainment=1.0), "no deployment within 2 replicas per role"),
    ],
)
def test_unreachable_slos_say_why(slo: Slo, why: str) -> None:
    p = plan(H100, chat(30, n=100), slo, Options(max_replicas=2))
    assert not p.feasible and why in p.reason


def test_a_near_miss_names_the_closest_deployment() -> None:
    # An idle worker answers a mean prompt in ~45 ms, but at 15 req/s queueing pushes many past 60 ms.
    p = plan(H100, chat(15, n=200), Slo(0.06, 0.05), Options(max_replicas=2))
    assert not p.feasible and p.best_attainment is not None
    assert f"the closest, {p.best_attainment[0].describe()}, meets both SLOs for" in p.reason
    assert 0 < p.best_attainment[1] < 0.9


def test_long_prompts_favour_disaggregation_at_equal_gpus() -> None:
    p = plan(H100, long_prompts(2), Slo(2.0, 0.05))
    assert p.feasible and set(p.comparison) == {"disaggregated", "colocated"}
    d, c = p.comparison["disaggregated"], p.comparison["colocated"]
    assert d.cost == c.cost == p.comparison_cost
    assert p.ratio() == pytest.approx(d.per_gpu() / c.per_gpu())
    assert p.ratio() > 1.5


def test_the_comparison_cost_can_be_chosen() -> None:
    p = plan(H100, long_prompts(2), Slo(2.0, 0.05), Options(compare_cost=4))
    assert p.comparison_cost == 4
    assert {r.deployment.cost(H100) for r in p.comparison.values()} == {4}


def _pool(snippet: str) -> Any:
    body = yaml.safe_load(snippet)
    spec = {"model": {"source": "hf://meta-llama/Meta-Llama-3-8B"}, **body["spec"]}
    return parse_pool(
        {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1}, "spec": spec}, "img"
    )


def test_the_inference_pool_snippet_is_a_valid_spec() -> None:
    disagg = _pool(pool_yaml(H100, Deployment(2, 3, kv_backend="nixl"))).spec
    assert (disagg.prefill.replicas, disagg.prefill.tensor_parallel_size, disagg.prefill.max_batch_size) == (
        2,
        1,
        1,
    )
    assert (disagg.decode.replicas, disagg.decode.max_batch_size) == (3, 64)
    assert (disagg.prefill.gpu_type, disagg.decode.gpu_type) == ("H100", "H100")
    assert disagg.kv_transfer.backend == "nixl"
    coloc = _pool(pool_yaml(H100, Deployment.colocated(4, max_batch=32))).spec
    assert (coloc.prefill.replicas, coloc.decode.replicas, coloc.decode.max_batch_size) == (0, 4, 32)


def test_a_cpu_profile_counts_workers() -> None:
    raw = copy.deepcopy(json.loads(H100_PATH.read_text()))
    raw["hardware"] = {"device": "cpu", "name": "2-core Xeon VM", "gpus_per_worker_tp1": 1}
    cpu = parse_profile(raw)
    assert cpu.unit == "workers" and Deployment(2, 3).cost(cpu) == 5
    spec = _pool(pool_yaml(cpu, Deployment(1, 1))).spec
    assert (spec.prefill.device, spec.decode.device) == ("cpu", "cpu")
    p = plan(cpu, chat(4, n=100), CHAT_SLO, Options(max_replicas=2))
    assert "workers" in explain(p) and "workers" in to_json(p)["comparison"]


def test_the_json_document() -> None:
    p = plan(H100, chat(6), CHAT_SLO)
    doc = json.loads(json.dumps(to_json(p, str(H100_PATH))))
    assert doc["feasible"] is True and doc["unit"] == "GPUs"
    assert doc["chosen"]["gpus"] == p.chosen.cost(H100)  # type: ignore[union-attr]
    assert doc["prediction"]["attainment"] >= 0.9
    assert doc["headroom"] == pytest.approx(p.max_rate / 6, rel=1e-3)
    assert set(doc["comparison"]) >= {"gpus", "ratio_disaggregated_over_colocated"}
    assert yaml.safe_load(doc["inference_pool_yaml"])["spec"]["decode"]["replicas"] >= 1
    assert any("tensor parallel size 1 only" in w for w in doc["warnings"])


def test_a_profile_without_kv_figures_plans_colocated_pools_only() -> None:
    raw = json.loads(H100_PATH.read_text())
    raw["kv_transfer"] = []
    p = plan(parse_profile(raw), chat(6), CHAT_SLO)
    assert p.feasible and p.chosen is not None and p.chosen.mode == "colocated"
    assert set(p.comparison) == {"colocated"} and p.ratio() is None
    assert "only colocated deployments are offered" in explain(p)
