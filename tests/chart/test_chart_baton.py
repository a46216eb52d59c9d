"""The Helm chart, rendered by the sandbox's helm: lint clean, RBAC scopes, operator.enabled=false."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from baton_dev.sandbox import build, versions

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "baton"
KUBE_VERSION = "1.35.0"  # helm built from source defaults to v1.20, below the chart's kubeVersion


def helm() -> str:
    """The sandbox's helm (built by `baton sandbox build` / `make binaries`); fail loudly without it."""
    for component in versions.components():
        for binary in component.binaries:
            if binary.name == "helm":
                found = build.find_existing(binary, build.cache_dir() / "bin")
                if found:
                    return str(found[0])
    raise AssertionError("helm not found: run `baton sandbox build` (make binaries) first")


def render(*sets: str) -> list[dict]:
    args = [helm(), "template", "baton", str(CHART), "-n", "baton-system", "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints_clean():
    proc = subprocess.run(
        [helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_operator_deployment_is_hardened():
    docs = render()
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "baton-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["command"] == ["baton", "operator"]
    assert "--all-namespaces" in container["args"]
    assert any(a.startswith("--liveness=http://0.0.0.0:8080/healthz") for a in container["args"])


def test_operator_disabled_keeps_service_account_and_rbac():
    docs = render("operator.enabled=false")
    assert by_kind(docs, "Deployment") == []
    (sa,) = by_kind(docs, "ServiceAccount")
    assert sa["metadata"] == {**sa["metadata"], "name": "baton-operator", "namespace": "baton-system"}
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "baton-operator", "namespace": "baton-system"}
    ]


def rules_of(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_cluster_rbac_is_least_privilege():
    (role,) = by_kind(render(), "ClusterRole")
    rules = rules_of(role)
    assert rules[("baton.dev", "inferencepools")] == {"get", "list", "watch", "patch"}
    assert "patch" in rules[("baton.dev", "inferencepools/status")]
    assert rules[("apps", "statefulsets")] == {"get", "list", "watch", "create", "patch"}
    assert rules[("", "pods")] == {"get", "list", "watch"}
    assert rules[("", "nodes")] == {"get", "list"}  # the autoscaler's GPU capacity check
    # Only the pools' TLS Secrets, read by name and written: never listed or watched.
    assert rules[("", "secrets")] == {"get", "create", "patch"}
    # spec.model.cache: the pool's claim, deleted when the cache is turned off.
    assert rules[("", "persistentvolumeclaims")] == {"get", "list", "watch", "create", "patch", "delete"}
    assert all("*" not in verbs for verbs in rules.values())
    assert [
        (group, resource)
        for (group, resource), verbs in rules.items()
        if "delete" in verbs and group in ("apps", "", "baton.dev")
    ] == [("", "persistentvolumeclaims")]


def test_no_secret_rights_without_operator_issued_tls():
    (role,) = by_kind(render("rbac.tlsSecrets=false"), "ClusterRole")
    assert ("", "secrets") not in rules_of(role)
    docs = render("rbac.scope=namespace", "rbac.watchNamespaces={ml}", "rbac.tlsSecrets=false")
    assert all(("", "secrets") not in rules_of(r) for r in by_kind(docs, "Role"))


def test_namespace_scope_has_no_cluster_rights():
    docs = render("rbac.scope=namespace", "rbac.watchNamespaces={ml,research}")
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert {
        ("ml", "baton-operator"),
        ("research", "baton-operator"),
        ("baton-system", "baton-operator-lease"),
    } <= roles
    (deploy,) = by_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args and "--namespace=research" in args and "--all-namespaces" not in args


def test_values_schema_rejects_bad_values():
    args = [
        helm(),
        "template",
        "baton",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "rbac.scope=everywhere",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "/rbac/scope" in proc.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["operator"]["properties"]["enabled"]["type"] == "boolean"


@pytest.mark.parametrize("path", ["crds/inferencepools.baton.dev.yaml"])
def test_chart_ships_the_crd(path):
    assert (CHART / path).read_bytes() == (ROOT / "crds" / "inferencepools.baton.dev.yaml").read_bytes()
