"""spec.autoscaling.slo: parsing with errors naming the field, and the CRD's schema and CEL rules."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from baton_operator import crd
from baton_operator.autoscaling import config
from baton_operator.spec import SpecError, parse_pool
from baton_operator.spec_slo import RoleShape, SloSpec

ROOT = Path(__file__).resolve().parents[2]
ROLE = {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
SPEC = {
    "model": {"source": "builtin://tiny"},
    "prefill": {"tensorParallelSize": 2, "autoscaling": ROLE},
    "decode": {"maxBatchSize": 32, "autoscaling": {**ROLE, "minReplicas": 2}},
    "kvTransfer": {"backend": "grpc"},
    "autoscaling": {
        "slo": {
            "ttftMs": 500,
            "itlMs": 50,
            "profile": {"configMapRef": {"name": "llama-profile"}},
            "maxGpus": 12,
        }
    },
}


def with_(path: str, value: object) -> dict:
    """SPEC with the dotted ``path`` set to ``value`` (deleted when value is ...)."""
    spec = copy.deepcopy(SPEC)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return spec


def test_slo_spec_parses_with_defaults_and_the_pool_shape() -> None:
    cfg = config.parse(SPEC)
    assert cfg.slo == SloSpec(
        ttft_ms=500,
        itl_ms=50,
        profile_config_map="llama-profile",
        profile_key="profile.json",
        attainment=0.9,
        max_gpus=12,
        rate_window_seconds=60,
        scale_up_intervals=2,
        prefill=RoleShape(2, 1, 2),
        decode=RoleShape(1, 32, 1),
        kv_backend="grpc",
    )
    pool = parse_pool({"metadata": {"name": "p"}, "spec": SPEC}, "img")
    assert pool.spec.autoscaling.mode == "builtin"  # the operator accepts the same spec
    assert config.parse(with_("autoscaling.slo", ...)).slo is None
    cpu = config.parse(with_("decode.device", "cpu"))
    assert cpu.slo is not None and cpu.slo.decode.pod_cost == 1


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("autoscaling.slo.ttftMs", ..., "spec.autoscaling.slo.ttftMs"),
        ("autoscaling.slo.ttftMs", 0, "spec.autoscaling.slo.ttftMs"),
        ("autoscaling.slo.itlMs", "50ms", "spec.autoscaling.slo.itlMs"),
        ("autoscaling.slo.attainment", 1.5, "spec.autoscaling.slo.attainment"),
        ("autoscaling.slo.profile", ..., "spec.autoscaling.slo.profile.configMapRef"),
        ("autoscaling.slo.profile.configMapRef.name", "", "spec.autoscaling.slo.profile.configMapRef.name"),
        ("autoscaling.slo.maxGpus", 0, "spec.autoscaling.slo.maxGpus"),
        # Both roles at their minimum need 1 x 2 (prefill TP 2) + 2 x 1 = 4 GPUs.
        ("autoscaling.slo.maxGpus", 3, "spec.autoscaling.slo.maxGpus"),
        ("autoscaling.slo.rateWindowSeconds", 0, "spec.autoscaling.slo.rateWindowSeconds"),
        ("autoscaling.slo.scaleUpIntervals", 100, "spec.autoscaling.slo.scaleUpIntervals"),
        ("autoscaling.mode", "keda", "spec.autoscaling.mode"),
        ("prefill.autoscaling.enabled", False, "spec.prefill.autoscaling.enabled"),
        ("decode.autoscaling", ..., "spec.decode.autoscaling.enabled"),
        ("autoscaling.slo", "fast", "spec.autoscaling.slo"),
    ],
)
def test_slo_spec_errors_name_the_field(path, value, field) -> None:
    spec = with_(path, value)
    with pytest.raises(SpecError) as err:
        config.parse(spec)
    assert err.value.field == field, err.value
    with pytest.raises(SpecError) as err2:
        parse_pool({"metadata": {"name": "p"}, "spec": spec}, "img")
    assert err2.value.field == field


def test_max_gpus_holds_at_least_one_prefill_replica() -> None:
    spec = with_("prefill.autoscaling", {**ROLE, "minReplicas": 0})
    spec["autoscaling"]["slo"]["maxGpus"] = 3  # 1 x 2 (one prefill replica, TP 2) + 2 x 1 = 4
    with pytest.raises(SpecError, match="maxGpus"):
        config.parse(spec)
    spec["autoscaling"]["slo"]["maxGpus"] = 4
    assert config.parse(spec).slo is not None


def _crd_spec() -> dict:
    doc = yaml.safe_load((ROOT / "crds" / crd.FILE_NAME).read_text())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_crd_slo_schema_defaults_and_bounds() -> None:
    slo = _crd_spec()["properties"]["autoscaling"]["properties"]["slo"]
    props = slo["properties"]
    assert slo["required"] == ["ttftMs", "itlMs", "profile"]
    assert props["ttftMs"]["exclusiveMinimum"] and props["itlMs"]["exclusiveMinimum"]
    assert props["attainment"]["default"] == 0.9 and props["attainment"]["maximum"] == 1
    ref = props["profile"]["properties"]["configMapRef"]
    assert ref["required"] == ["name"] and ref["properties"]["key"]["default"] == "profile.json"
    assert props["maxGpus"]["minimum"] == 1 and "default" not in props["maxGpus"]
    assert props["rateWindowSeconds"]["default"] == 60 and props["scaleUpIntervals"]["default"] == 2


def test_crd_slo_cel_rules_name_their_fields() -> None:
    rules = {r["fieldPath"]: r for r in _crd_spec()["x-kubernetes-validations"] if "slo" in r["rule"]}
    assert set(rules) == {".autoscaling.mode", ".prefill", ".decode", ".autoscaling.slo.maxGpus"}
    assert "self.autoscaling.mode == 'builtin'" in rules[".autoscaling.mode"]["rule"]
    assert "self.decode.autoscaling.enabled" in rules[".decode"]["rule"]
    assert rules[".prefill"]["message"].startswith("spec.prefill.autoscaling.enabled must be true")
    budget = rules[".autoscaling.slo.maxGpus"]
    assert "<= self.autoscaling.slo.maxGpus" in budget["rule"] and "device == 'cpu'" in budget["rule"]
    assert budget["message"].startswith("spec.autoscaling.slo.maxGpus")


def test_crd_status_shows_the_planner_decision() -> None:
    doc = yaml.safe_load((ROOT / "crds" / crd.FILE_NAME).read_text())
    status = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    slo = status["properties"]["autoscaling"]["properties"]["slo"]["properties"]
    assert {"rateRps", "inputTokens", "outputTokens", "prefillReplicas", "decodeReplicas", "binding"} <= set(
        slo
    )
