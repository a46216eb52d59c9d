"""spec.model.cache on the sandbox, with the operator under the chart's RBAC: the pool gets its
claim (owned by the pool), the worker templates mount it (the router keeps its emptyDir),
ModelCacheReady says Pending until a PersistentVolume binds it and True after, turning the cache
off deletes the claim and brings the emptyDir back; a cache without a size is refused at apply time.

kwok runs no containers: the fill-once protocol is tested with real processes
(tests/unit/test_model_cache_fill.py).
"""

from __future__ import annotations

import pytest
from operator_helpers import READY_TIMEOUT_S, apply, condition, get, is_ready, pool_status, tiny_pool
from polling import wait_until

pytestmark = pytest.mark.sandbox

STORAGE_CLASS = "baton-test-manual"  # no StorageClass object: only a PV of this class binds the claim
WORKERS = (("statefulset", "mc-prefill"), ("deployment", "mc-decode"))
MODEL = {"name": "tiny", "source": "builtin://tiny", "dtype": "float32"}


def _cache_volume(sandbox, namespace: str, kind: str, name: str) -> dict | None:
    live = get(sandbox, kind, namespace, name)
    if live is None:
        return None
    return next(v for v in live["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-cache")


def _model_cache_condition(sandbox, namespace: str) -> dict:
    return condition(pool_status(sandbox, namespace, "mc"), "ModelCacheReady")


def test_model_cache_claim_is_mounted_bound_and_pruned(sandbox, operator_process, namespace):
    cache = {"enabled": True, "size": "1Gi", "storageClassName": STORAGE_CLASS}
    apply(sandbox, tiny_pool("mc", namespace, model={**MODEL, "cache": cache}))
    claim = wait_until(
        lambda: get(sandbox, "persistentvolumeclaim", namespace, "mc-model-cache"),
        timeout=30,
        what="the model cache claim",
        interval=0.25,
    )
    uid = get(sandbox, "inferencepool", namespace, "mc")["metadata"]["uid"]
    (owner,) = claim["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferencePool", uid, True)
    assert claim["metadata"]["labels"]["baton.dev/pool"] == "mc"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == STORAGE_CLASS
    for kind, name in WORKERS:
        volume = wait_until(
            lambda kind=kind, name=name: _cache_volume(sandbox, namespace, kind, name),
            timeout=30,
            what=f"{name}'s template",
            interval=0.25,
        )
        assert volume == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "mc-model-cache"}}
    assert _cache_volume(sandbox, namespace, "deployment", "mc-router") == {
        "name": "model-cache",
        "emptyDir": {},
    }

    pending = wait_until(
        lambda: (c := _model_cache_condition(sandbox, namespace)).get("reason") == "ClaimPending" and c,
        timeout=30,
        what="ModelCacheReady ClaimPending",
        interval=0.25,
    )
    assert pending["status"] == "False"
    assert pending["message"].startswith(
        f"model cache claim mc-model-cache is Pending: StorageClass {STORAGE_CLASS}"
    )
    assert not is_ready(sandbox, namespace, "mc")  # the workers cannot be scheduled without it

    pv_name = f"baton-test-{namespace}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"baton.dev/test": "model-cache"}},
        "spec": {
            "capacity": {"storage": "2Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/tmp/{pv_name}"},
            # Only this test's claim may take it (other tests share the sandbox).
            "claimRef": {"namespace": namespace, "name": "mc-model-cache"},
        },
    }
    try:
        sandbox.apply([pv], field_manager="baton-tests")
        bound = wait_until(
            lambda: (c := _model_cache_condition(sandbox, namespace)).get("status") == "True" and c,
            timeout=60,
            what="ModelCacheReady True",
            interval=0.25,
        )
        assert bound["reason"] == "Bound"
        assert (
            bound["message"] == f"model cache claim mc-model-cache is Bound to {pv_name} (2Gi, ReadWriteMany)"
        )
        wait_until(
            lambda: is_ready(sandbox, namespace, "mc"),
            timeout=READY_TIMEOUT_S,
            what="pool mc Ready",
            interval=0.25,
        )

        # Off: the claim goes (once no pod mounts it) and the workers get their emptyDir back.
        apply(sandbox, tiny_pool("mc", namespace, model={**MODEL, "cache": {**cache, "enabled": False}}))
        for kind, name in WORKERS:
            wait_until(
                lambda kind=kind, name=name: (
                    _cache_volume(sandbox, namespace, kind, name) == {"name": "model-cache", "emptyDir": {}}
                ),
                timeout=30,
                what=f"{name}'s emptyDir back",
                interval=0.25,
            )
        wait_until(
            lambda: get(sandbox, "persistentvolumeclaim", namespace, "mc-model-cache") is None,
            timeout=60,
            what="the model cache claim deleted",
            interval=0.5,
        )
        wait_until(
            lambda: _model_cache_condition(sandbox, namespace) == {},
            timeout=30,
            what="ModelCacheReady gone",
            interval=0.25,
        )
        assert "Forbidden" not in operator_process.log_tail(200)
    finally:
        sandbox.kubectl(
            "delete", "persistentvolume", pv_name, "--wait=false", "--ignore-not-found", check=False
        )


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"enabled": True}, "spec.model.cache.size is required when spec.model.cache.enabled is true"),
        ({"enabled": True, "size": "0Gi"}, "spec.model.cache.size must be greater than zero"),
        ({"enabled": True, "size": 0}, "spec.model.cache.size must be greater than zero"),
        ({"enabled": True, "size": "lots"}, "spec.model.cache.size"),
        ({"enabled": True, "size": "1Gi", "accessMode": "ReadOnlyMany"}, "spec.model.cache.accessMode"),
        (
            {"enabled": True, "size": "1Gi", "storageClassName": "Fast_NFS"},
            "spec.model.cache.storageClassName",
        ),
    ],
)
def test_model_cache_bad_spec_is_refused_naming_the_field(sandbox, namespace, cache, message):
    proc = apply(sandbox, tiny_pool("bad", namespace, model={**MODEL, "cache": cache}), check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
    assert get(sandbox, "inferencepool", namespace, "bad") is None
