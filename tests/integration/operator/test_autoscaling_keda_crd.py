"""KEDA mode: the ScaledObjects baton builds pass KEDA's real CRD schema on the sandbox's API server.

KEDA's CRD comes from its Go module (pinned version) in the Go module cache; the test downloads
the module through the Go module proxy when it is missing.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from baton_dev.sandbox.handle import KubectlError, Sandbox
from baton_operator.autoscaling.keda import build_scaled_objects

pytestmark = pytest.mark.sandbox

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
CRD_PATH = "config/crd/bases/keda.sh_scaledobjects.yaml"


def keda_crd() -> Path:
    """Path of KEDA's ScaledObject CRD in the Go module cache, downloading the module if needed."""
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    crd = Path(gomodcache) / f"{KEDA_MODULE}@{KEDA_VERSION}" / CRD_PATH
    if not crd.is_file():
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=os.path.expanduser("~"),
        )
        assert out.returncode == 0, (
            f"go mod download {KEDA_MODULE}@{KEDA_VERSION} failed: {out.stderr or out.stdout}"
        )
        crd = Path(json.loads(out.stdout)["Dir"]) / CRD_PATH
    assert crd.is_file(), f"{crd} missing from the KEDA module"
    return crd


@pytest.fixture(scope="module")
def keda_ns(sandbox_cluster: Sandbox) -> Iterator[str]:
    """A namespace on the sandbox with KEDA's CRD installed (baton's chart is not needed)."""
    sandbox = sandbox_cluster
    sandbox.kubectl("apply", "--server-side", "--field-manager=baton-test", "-f", str(keda_crd()))
    sandbox.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")
    name = f"keda-{uuid.uuid4().hex[:6]}"
    sandbox.kubectl("create", "namespace", name)
    yield name
    sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _pool(ns: str, autoscaling: dict) -> dict:
    return {
        "apiVersion": "baton.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "llama", "namespace": ns, "uid": str(uuid.uuid4())},
        "spec": {
            "model": {"source": "builtin://tiny"},
            "autoscaling": autoscaling,
            "prefill": {"autoscaling": {"enabled": True, "maxReplicas": 4, "targetQueueDepth": 2}},
            "decode": {"autoscaling": {"enabled": True, "minReplicas": 2, "tolerance": 0.05}},
        },
    }


def _server_dry_run(sandbox: Sandbox, obj: dict) -> dict:
    return json.loads(
        sandbox.kubectl(
            "create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-", input=json.dumps(obj)
        ).stdout
    )


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"mode": "keda", "intervalSeconds": 10},
        {"mode": "keda", "metricsUrl": "http://router.example:8000/metrics"},
        {"mode": "keda", "prometheus": {"url": "http://prometheus.monitoring.svc:9090"}},
    ],
    ids=["router-service", "metrics-url", "prometheus"],
)
def test_autoscaling_scaled_objects_pass_keda_crd(
    sandbox_cluster: Sandbox, keda_ns: str, autoscaling: dict
) -> None:
    objs = build_scaled_objects(_pool(keda_ns, autoscaling))
    assert len(objs) == 2
    for obj in objs:
        obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}}
        stored = _server_dry_run(sandbox_cluster, obj)
        # Nothing was pruned: every field baton sets survives KEDA's structural schema.
        for key, value in obj["spec"].items():
            assert stored["spec"][key] == value, key


def test_autoscaling_keda_crd_rejects_a_broken_object(sandbox_cluster: Sandbox, keda_ns: str) -> None:
    """The check above is live: the same object without a field KEDA requires is refused."""
    (obj, *_rest) = build_scaled_objects(_pool(keda_ns, {"mode": "keda"}))
    broken = copy.deepcopy({**obj, "metadata": {"name": "broken", "namespace": keda_ns}})
    del broken["spec"]["fallback"]["replicas"]
    with pytest.raises(KubectlError, match="replicas"):
        _server_dry_run(sandbox_cluster, broken)
