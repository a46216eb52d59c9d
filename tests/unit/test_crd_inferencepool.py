"""The CRD file: generated from baton_operator.crd, copied byte-equal into the chart, documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from baton_operator import crd
from baton_operator.spec_pod import reserved_env_hint

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "crds" / crd.FILE_NAME
CHART_COPY = ROOT / "charts" / "baton" / "crds" / crd.FILE_NAME


def _schema():
    doc = yaml.safe_load(SOURCE.read_text())
    return doc, doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(schema, path="<root>"):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


def test_chart_copy_is_byte_equal_to_crds_dir():
    assert CHART_COPY.read_bytes() == SOURCE.read_bytes(), "run: python -m baton_operator.crd"


def test_committed_file_matches_the_generator():
    assert SOURCE.read_text() == crd.render(), "run: python -m baton_operator.crd"


def test_every_field_has_a_description_and_no_unknown_fields_are_preserved():
    _, root = _schema()
    for path, sub in _walk(root):
        if path == "<root>.metadata":
            continue  # Kubernetes owns metadata's schema
        if path.endswith("[]") and sub.get("type") in ("string", "integer"):
            continue  # scalar list items: the list itself is described
        assert sub.get("description"), f"{path} has no description"
        assert "x-kubernetes-preserve-unknown-fields" not in sub, path
        if sub.get("type") == "object":
            assert "properties" in sub or "additionalProperties" in sub, f"{path} is not structural"


def test_names_short_name_status_and_printer_columns():
    doc, root = _schema()
    spec = doc["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == (
        "baton.dev",
        "InferencePool",
        "inferencepools",
    )
    assert "infpool" not in spec["names"]["shortNames"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert columns == ["Ready", "Prefill", "Decode", "Endpoint", "Age"]
    assert root["required"] == ["spec"]
    assert root["properties"]["spec"]["required"] == ["model"]


def test_architecture_fields_defaults_and_validation():
    _, root = _schema()
    spec = root["properties"]["spec"]["properties"]
    assert set(spec) == {
        "model",
        "image",
        "imagePullSecrets",
        "env",
        "envFrom",
        "prefill",
        "decode",
        "router",
        "networkPolicy",
        "kvTransfer",
        "prefixCaching",
        "autoscaling",
        "tls",
    }
    network = spec["networkPolicy"]["properties"]
    assert network["enabled"]["default"] is True
    for peers in ("metricsFrom", "routerFrom"):
        assert (network[peers]["minItems"], network[peers]["maxItems"]) == (1, 32)
        peer = network[peers]["items"]
        assert set(peer["properties"]) == {"namespaceSelector", "podSelector", "ipBlock"}
        assert len(peer["x-kubernetes-validations"]) == 2
    caching = spec["prefixCaching"]["properties"]
    assert caching["enabled"]["default"] is True
    assert caching["routingWeight"]["default"] == 1.0 and caching["routingWeight"]["minimum"] == 0
    prefill, decode = spec["prefill"]["properties"], spec["decode"]["properties"]
    assert prefill["tensorParallelSize"]["enum"] == [1, 2, 4, 8]
    assert prefill["replicas"]["minimum"] == 0 and prefill["maxBatchSize"]["minimum"] == 1
    assert (
        decode["maxBatchSize"]["default"] == 64 and decode["gpu"]["properties"]["type"]["default"] == "A100"
    )
    assert prefill["gpu"]["properties"]["type"]["default"] == "H100"
    auto = prefill["autoscaling"]
    assert set(auto["properties"]) >= {
        "enabled",
        "minReplicas",
        "maxReplicas",
        "targetQueueDepth",
        "tolerance",
        "maxScaleStep",
    }
    assert (
        auto["properties"]["tolerance"]["default"] == 0.1
        and auto["properties"]["maxScaleStep"]["default"] == 4
    )
    tolerance = auto["properties"]["tolerance"]
    assert (tolerance["minimum"], tolerance["maximum"], tolerance["exclusiveMaximum"]) == (0, 1, True)
    for window in ("scaleUpStabilizationSeconds", "scaleDownStabilizationSeconds"):
        assert auto["properties"][window]["type"] == "integer"
    (rule,) = auto["x-kubernetes-validations"]
    assert rule["rule"] == "self.minReplicas <= self.maxReplicas" and rule["fieldPath"] == ".minReplicas"
    assert "spec.prefill.autoscaling.minReplicas" in rule["message"]
    top = spec["autoscaling"]["properties"]
    assert top["mode"]["enum"] == ["builtin", "keda"] and top["intervalSeconds"]["minimum"] == 1
    assert spec["kvTransfer"]["properties"]["backend"]["enum"] == ["auto", "nixl", "grpc"]
    assert spec["model"]["properties"]["dtype"]["default"] == "bfloat16"
    status = root["properties"]["status"]["properties"]
    assert set(status["autoscaling"]["properties"]) == {
        "metricsAvailable",
        "message",
        "lastSampleTime",
        "limitedBy",
        "slo",  # SLO mode: the planner's latest decision
    }
    assert set(status["prefill"]["properties"]) >= {
        "replicas",
        "readyReplicas",
        "desiredReplicas",
        "queueDepth",
        "lastScaleTime",
        "lastScaleReason",
        "summary",
    }


def _spec_field(path: str) -> dict:
    _, root = _schema()
    node = root["properties"]["spec"]
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


@pytest.mark.parametrize(
    ("path", "list_key", "max_items", "required"),
    [
        ("env", "name", 128, ["name"]),
        ("envFrom", None, 32, None),
        ("imagePullSecrets", "name", 16, ["name"]),
    ],
)
def test_pod_lists_are_bounded_and_keyed(path, list_key, max_items, required):
    schema = _spec_field(path)
    assert schema["type"] == "array" and schema["maxItems"] == max_items
    # A map list refuses two entries of one name at apply time.
    assert schema.get("x-kubernetes-list-map-keys") == ([list_key] if list_key else None)
    assert schema["items"].get("required") == required


def test_model_secret_ref_defaults_its_key_to_hf_token():
    ref = _spec_field("model.secretRef")
    assert ref["required"] == ["name"] and ref["properties"]["key"]["default"] == "HF_TOKEN"
    assert "HF_TOKEN" in ref["description"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("HF_TOKEN", "spec.model.secretRef"),
        ("BATON_API_KEY", "spec.router.auth.apiKeySecretRef"),
        ("POD_NAME", "set by the operator"),
        ("BATON_CONFIG", "set by the operator"),
        ("UCX_TLS", "spec.kvTransfer.ucx"),
    ],
)
def test_reserved_env_names_have_a_cel_rule_naming_the_field_to_use(name, message):
    rules = _spec_field("env.[]")["x-kubernetes-validations"]
    matching = [
        r for r in rules if f"'{name}'" in r["rule"] or (name.startswith("UCX_") and "UCX_" in r["rule"])
    ]
    (rule,) = matching
    assert rule["fieldPath"] == ".name" and rule["reason"] == "FieldValueForbidden"
    assert "spec.env" in rule["message"] and message in rule["message"]
    assert reserved_env_hint(name) and message in reserved_env_hint(name)  # the parser says the same


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("env.[]", "!has(self.valueFrom) || !has(self.value) || self.value == ''"),
        (
            "env.[].valueFrom",
            "[has(self.configMapKeyRef), has(self.secretKeyRef), has(self.fieldRef), "
            "has(self.resourceFieldRef)].exists_one(x, x)",
        ),
        ("envFrom.[]", "has(self.configMapRef) != has(self.secretRef)"),
    ],
)
def test_one_value_source_is_checked_at_apply_time(path, rule):
    rules = _spec_field(path)["x-kubernetes-validations"]
    assert rule in [r["rule"] for r in rules]
