"""spec.model.cache: parsing, the CRD's rules, the claim and volumes the builders make, and the
ModelCacheReady condition. Pure, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from baton_operator import builders, crd
from baton_operator.spec import SpecError, parse_pool
from baton_operator.spec_cache import ModelCacheSpec, canonical_size
from baton_operator.status import Observed, compute_status, model_cache_verdict

SOURCE = Path(__file__).resolve().parents[2] / "crds" / crd.FILE_NAME


def make_pool(cache=None, name="llama"):
    model = {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}
    if cache is not None:
        model["cache"] = cache
    body = {
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1", "generation": 4},
        "spec": {"model": model},
    }
    return parse_pool(body, "img")


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        (None, ModelCacheSpec()),
        ({}, ModelCacheSpec()),
        ({"enabled": False, "size": "10Gi"}, ModelCacheSpec(size="10Gi")),
        ({"enabled": True, "size": "100Gi"}, ModelCacheSpec(True, "100Gi")),
        (
            {"enabled": True, "size": "2048Mi", "storageClassName": "nfs", "accessMode": "ReadWriteOnce"},
            ModelCacheSpec(True, "2Gi", "nfs", "ReadWriteOnce"),
        ),
        ({"enabled": True, "size": 20_000_000_000, "storageClassName": ""}, ModelCacheSpec(True, "20G", "")),
    ],
)
def test_spec_parses_with_the_crd_defaults(cache, expected):
    assert make_pool(cache).spec.model.cache == expected


@pytest.mark.parametrize(
    ("cache", "field"),
    [
        ({"enabled": True}, "spec.model.cache.size"),
        ({"enabled": True, "size": "lots"}, "spec.model.cache.size"),
        ({"enabled": True, "size": "0Gi"}, "spec.model.cache.size"),
        ({"enabled": True, "size": "-1Gi"}, "spec.model.cache.size"),
        ({"enabled": "yes", "size": "1Gi"}, "spec.model.cache.enabled"),
        ({"enabled": True, "size": "1Gi", "accessMode": "ReadOnlyMany"}, "spec.model.cache.accessMode"),
        (
            {"enabled": True, "size": "1Gi", "storageClassName": "Fast_NFS"},
            "spec.model.cache.storageClassName",
        ),
        ("on", "spec.model.cache"),
    ],
)
def test_spec_refuses_naming_the_field(cache, field):
    with pytest.raises(SpecError) as err:
        make_pool(cache)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("100Gi", "100Gi"),
        ("2048Mi", "2Gi"),
        ("1.5Gi", "1536Mi"),
        ("1000Mi", "1000Mi"),
        ("0.5Ki", "512"),
        ("20000M", "20G"),
        ("1.5G", "1500M"),
        (20_000_000_000, "20G"),
        ("1024", "1024"),
        ("1e9", "1e9"),  # exponents: left to the API server
    ],
)
def test_sizes_are_canonical_as_the_api_server_stores_them(raw, canonical):
    assert canonical_size(raw) == canonical


def _cache_schema():
    doc = yaml.safe_load(SOURCE.read_text())
    model = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "model"
    ]
    return model["properties"]["cache"]


def test_crd_defaults_rules_and_descriptions():
    schema = _cache_schema()
    props = schema["properties"]
    assert props["enabled"]["default"] is False
    assert props["accessMode"]["default"] == "ReadWriteMany"
    assert props["accessMode"]["enum"] == ["ReadWriteMany", "ReadWriteOnce"]
    assert "default" not in props["storageClassName"] and "default" not in props["size"]
    assert props["size"]["x-kubernetes-int-or-string"] is True
    (required,) = schema["x-kubernetes-validations"]
    assert required["rule"] == "!has(self.enabled) || !self.enabled || has(self.size)"
    assert required["fieldPath"] == ".size" and "spec.model.cache.size is required" in required["message"]
    (positive,) = props["size"]["x-kubernetes-validations"]
    assert "spec.model.cache.size" in positive["message"]
    # kubectl explain says what storage it needs and what ReadWriteOnce implies.
    assert "all prefill and decode pods run on one node" in props["accessMode"]["description"]
    assert "ModelCacheReady" in schema["description"] and "/var/cache/baton" in schema["description"]
    assert crd.render() == SOURCE.read_text()


def test_no_claim_and_emptydirs_without_the_cache():
    pool = make_pool()
    kinds = [c["kind"] for c in builders.build_children(pool)]
    assert "PersistentVolumeClaim" not in kinds and builders.build_model_cache_claim(pool) is None
    for build in (builders.build_prefill_statefulset, builders.build_decode_deployment):
        volumes = build(pool)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "model-cache", "emptyDir": {}} in volumes


@pytest.mark.parametrize(
    ("cache", "spec"),
    [
        (
            {"enabled": True, "size": "100Gi"},
            {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}}},
        ),
        (
            {"enabled": True, "size": "64Gi", "storageClassName": "", "accessMode": "ReadWriteOnce"},
            {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "64Gi"}},
                "storageClassName": "",
            },
        ),
    ],
)
def test_the_claim_manifest(cache, spec):
    pool = make_pool(cache)
    claim = builders.build_model_cache_claim(pool)
    assert claim == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "llama-model-cache",
            "namespace": "ml",
            "labels": builders.labels(pool, "pool"),
            "ownerReferences": [
                {
                    "apiVersion": "baton.dev/v1alpha1",
                    "kind": "InferencePool",
                    "name": "llama",
                    "uid": "u-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }
    kinds = [c["kind"] for c in builders.build_children(pool)]
    # Applied before the workloads whose pods mount it.
    assert kinds.index("PersistentVolumeClaim") < kinds.index("StatefulSet")


def test_workers_mount_the_claim_and_the_router_keeps_its_emptydir():
    pool = make_pool({"enabled": True, "size": "100Gi"})
    claim = {"name": "model-cache", "persistentVolumeClaim": {"claimName": "llama-model-cache"}}
    for build in (builders.build_prefill_statefulset, builders.build_decode_deployment):
        pod = build(pool)["spec"]["template"]["spec"]
        assert claim in pod["volumes"]
        assert {"name": "model-cache", "mountPath": "/var/cache/baton"} in pod["containers"][0][
            "volumeMounts"
        ]
    router = builders.build_router_deployment(pool)["spec"]["template"]["spec"]
    assert {"name": "model-cache", "emptyDir": {}} in router["volumes"]


def _claim(phase, **extra):
    claim = {"metadata": {"name": "llama-model-cache"}, "status": {"phase": phase}}
    claim["spec"] = {"volumeName": "pv-1"}
    if phase == "Bound":
        claim["status"]["capacity"] = {"storage": "128Gi"}
    claim["metadata"].update(extra)
    return claim


RWX = {"enabled": True, "size": "100Gi"}
CONDITION_CASES = [
    (RWX, None, False, "ClaimMissing", "model cache claim llama-model-cache does not exist yet"),
    (
        RWX,
        _claim("Pending"),
        False,
        "ClaimPending",
        "model cache claim llama-model-cache is Pending: no StorageClass provides ReadWriteMany?",
    ),
    (
        {**RWX, "storageClassName": "fast", "accessMode": "ReadWriteOnce"},
        _claim("Pending"),
        False,
        "ClaimPending",
        "model cache claim llama-model-cache is Pending: StorageClass fast is missing or provides no "
        "ReadWriteOnce volume?",
    ),
    (
        {**RWX, "storageClassName": ""},
        _claim("Pending"),
        False,
        "ClaimPending",
        "is Pending: no PersistentVolume without a class provides ReadWriteMany and 100Gi?",
    ),
    (RWX, _claim("Bound"), True, "Bound", "llama-model-cache is Bound to pv-1 (128Gi, ReadWriteMany)"),
    (RWX, _claim("Lost"), False, "ClaimLost", "is Lost: its PersistentVolume is gone"),
    (RWX, _claim("Bound", deletionTimestamp="2026-01-01T00:00:00Z"), False, "ClaimTerminating", "deleted"),
]


@pytest.mark.parametrize(("cache", "claim", "ok", "reason", "message"), CONDITION_CASES)
def test_model_cache_condition(cache, claim, ok, reason, message):
    pool = make_pool(cache)
    verdict = model_cache_verdict(pool, claim)
    assert verdict[:2] == (ok, reason) and message in verdict[2]
    status = compute_status(pool, Observed(model_cache=claim), None, "2026-01-01T00:00:00Z")
    (cond,) = [c for c in status["conditions"] if c["type"] == "ModelCacheReady"]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True" if ok else "False",
        reason,
        verdict[2],
    )


def test_no_condition_without_the_cache():
    status = compute_status(make_pool(), Observed(), None, "2026-01-01T00:00:00Z")
    assert "ModelCacheReady" not in [c["type"] for c in status["conditions"]]
