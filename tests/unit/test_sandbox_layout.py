"""Command lines of the sandbox components: loopback only, TLS, RBAC, the needed controllers."""

from __future__ import annotations

from pathlib import Path

import pytest
from baton_dev.sandbox.layout import COMPONENTS, CONTROLLERS, Layout, Ports, command, server_url

PORTS = Ports(
    etcd_client=2379, etcd_peer=2380, apiserver=6443, controller_manager=10257, scheduler=10259, kwok=10247
)
LAYOUT = Layout(Path("/state"))


def _argv(name: str) -> list[str]:
    return command(name, Path(f"/bin/{name}"), LAYOUT, PORTS, "kwok.x-k8s.io/node=fake")


def _flag(argv: list[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")]
    assert len(values) == 1, f"--{flag} given {len(values)} times in {argv}"
    return values[0]


@pytest.mark.parametrize("name", COMPONENTS)
def test_nothing_listens_beyond_loopback(name: str) -> None:
    argv = _argv(name)
    joined = " ".join(argv)
    assert "0.0.0.0" not in joined and "[::]" not in joined
    assert argv[0] == f"/bin/{name}"


def test_apiserver_has_tls_client_certs_rbac_and_service_account_signing() -> None:
    argv = _argv("kube-apiserver")
    assert _flag(argv, "bind-address") == "127.0.0.1"
    assert _flag(argv, "secure-port") == "6443"
    assert _flag(argv, "authorization-mode") == "RBAC"
    assert _flag(argv, "client-ca-file") == "/state/pki/ca.crt"
    assert _flag(argv, "service-account-signing-key-file") == "/state/pki/sa.key"
    assert _flag(argv, "service-account-key-file") == "/state/pki/sa.pub"
    assert _flag(argv, "etcd-servers") == "https://127.0.0.1:2379"
    assert server_url(PORTS) == "https://127.0.0.1:6443"


def test_etcd_requires_client_certificates() -> None:
    argv = _argv("etcd")
    assert "--client-cert-auth" in argv
    assert _flag(argv, "listen-client-urls") == "https://127.0.0.1:2379"
    assert _flag(argv, "data-dir") == "/state/etcd"


def test_controller_manager_runs_the_controllers_baton_needs() -> None:
    argv = _argv("kube-controller-manager")
    enabled = set(_flag(argv, "controllers").split(","))
    assert enabled == set(CONTROLLERS)
    for needed in (
        "serviceaccount-token-controller",
        "garbage-collector-controller",
        "deployment-controller",
        "replicaset-controller",
        "statefulset-controller",
        "endpointslice-controller",
        "namespace-controller",
        "persistentvolume-binder-controller",  # spec.model.cache claims
        "persistentvolumeclaim-protection-controller",
    ):
        assert needed in enabled
    assert _flag(argv, "service-account-private-key-file") == "/state/pki/sa.key"
    assert _flag(argv, "kubeconfig") == "/state/kubeconfigs/controller-manager.kubeconfig"


def test_kwok_manages_only_annotated_nodes_and_serves_on_loopback() -> None:
    argv = _argv("kwok")
    assert _flag(argv, "manage-all-nodes") == "false"
    assert _flag(argv, "manage-nodes-with-annotation-selector") == "kwok.x-k8s.io/node=fake"
    assert _flag(argv, "server-address") == "127.0.0.1:10247"


def test_unknown_component_is_an_error() -> None:
    with pytest.raises(ValueError, match="kubelet"):
        command("kubelet", Path("/bin/kubelet"), LAYOUT, PORTS, "")
