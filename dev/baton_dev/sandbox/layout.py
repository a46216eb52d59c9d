"""Where the sandbox keeps its state, and the command line of each component (pure functions).

Every component listens on 127.0.0.1 only, on ports picked when the sandbox comes up; etcd and
kube-apiserver speak TLS with client-certificate authentication; the API server authorizes with
RBAC and signs ServiceAccount tokens.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .addresses import NODE_IP
from .certs import Pki

STATE_DIR_ENV = "BATON_SANDBOX_DIR"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
# Started in this order, stopped in the reverse one.
COMPONENTS: tuple[str, ...] = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# The controllers a real cluster needs for what baton creates (Deployments, StatefulSets,
# Services, ServiceAccount tokens) and for garbage collection. node-lifecycle lifts the
# not-ready taint that admission puts on every new Node once kwok reports it Ready (and would
# taint nodes whose kwok heartbeats stop, as in a real cluster). The volume controllers bind
# claims (spec.model.cache) to PersistentVolumes and lift the protection finalizers, so a claim
# or volume no pod uses can be deleted.
CONTROLLERS: tuple[str, ...] = (
    "node-lifecycle-controller",
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "endpointslice-controller",
    "endpoints-controller",
    "namespace-controller",
    "job-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
    "resourcequota-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
)


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def default_state_dir() -> Path:
    """``$BATON_SANDBOX_DIR``, else ``~/.cache/baton/sandbox/state``."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton" / "sandbox" / "state"


REAL_STATE_DIR_ENV = "BATON_REAL_SANDBOX_DIR"


def real_node_state_dir() -> Path:
    """Where the real-node tests and benchmark keep their sandbox: ``$BATON_REAL_SANDBOX_DIR``,
    else ``~/.cache/baton/sandbox/real`` (apart from the kwok-only sandbox of the other tests)."""
    env = os.environ.get(REAL_STATE_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton" / "sandbox" / "real"


@dataclass(frozen=True)
class Layout:
    """The files of one sandbox under its state directory."""

    state_dir: Path

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    @property
    def etcd_data(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfigs(self) -> Path:
        return self.state_dir / "kubeconfigs"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "sandbox.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir.parent / f".{self.state_dir.name}.lock"

    def component_kubeconfig(self, stem: str) -> Path:
        return self.kubeconfigs / f"{stem}.kubeconfig"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def api_host(real_node: bool) -> str:
    """Where the API server listens: loopback, or the real node's bridge address (reachable from
    pods, and only from this machine)."""
    return NODE_IP if real_node else "127.0.0.1"


def server_url(ports: Ports, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{ports.apiserver}"


def etcd_args(layout: Layout, ports: Ports) -> list[str]:
    pki = layout.pki
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    client = f"https://127.0.0.1:{ports.etcd_client}"
    return [
        "--name=sandbox",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        # Single member: the peer listener is required but only ever sees loopback.
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=sandbox={peer}",
        f"--cert-file={pki.server_cert}",
        f"--key-file={pki.server_key}",
        f"--trusted-ca-file={pki.ca_cert}",
        "--client-cert-auth",
        # A throwaway cluster: skipping fsync makes every API write several times faster.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(layout: Layout, ports: Ports, real_node: bool = False) -> list[str]:
    pki = layout.pki
    host = api_host(real_node)
    args = [
        f"--etcd-servers=https://127.0.0.1:{ports.etcd_client}",
        f"--etcd-cafile={pki.ca_cert}",
        f"--etcd-certfile={pki.client_cert('apiserver-etcd-client')}",
        f"--etcd-keyfile={pki.client_key('apiserver-etcd-client')}",
        f"--bind-address={host}",
        f"--advertise-address={host}",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.server_cert}",
        f"--tls-private-key-file={pki.server_key}",
        f"--client-ca-file={pki.ca_cert}",
        # Front-proxy settings the controller-manager and scheduler read for delegated authn.
        f"--requestheader-client-ca-file={pki.ca_cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.client_cert('front-proxy-client')}",
        f"--proxy-client-key-file={pki.client_key('front-proxy-client')}",
        f"--authorization-mode={'Node,RBAC' if real_node else 'RBAC'}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=0",
    ]
    if not real_node:
        # The `kubernetes` Service cannot point at a loopback address; with kwok only, nothing
        # in-cluster needs it.
        return [*args, "--endpoint-reconciler-type=none"]
    return [
        *args,
        # Pods (the operator, routers) reach the API server through the `kubernetes` Service.
        "--endpoint-reconciler-type=lease",
        # logs, exec and port-forward: the API server calls the kubelet at its InternalIP.
        f"--kubelet-client-certificate={pki.client_cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.client_key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca_cert}",
        "--kubelet-preferred-address-types=InternalIP",
    ]


def _secure_serving(layout: Layout, stem: str, port: int) -> list[str]:
    kc = layout.component_kubeconfig(stem)
    return [
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={layout.state_dir / 'serving' / stem}",
        "--leader-elect=false",
        # Sandbox tests create many objects quickly; client-go's default 5 QPS would throttle them.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--v=0",
    ]


def controller_manager_args(layout: Layout, ports: Ports) -> list[str]:
    pki = layout.pki
    return [
        *_secure_serving(layout, "controller-manager", ports.controller_manager),
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        "--use-service-account-credentials=true",
        f"--cluster-cidr={POD_CIDR}",
        # kwok renews node leases every ~10 s; a node is NotReady 40 s after they stop.
        "--node-monitor-period=2s",
        "--node-monitor-grace-period=40s",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ]


def scheduler_args(layout: Layout, ports: Ports) -> list[str]:
    return _secure_serving(layout, "scheduler", ports.scheduler)


def kwok_args(layout: Layout, ports: Ports, annotation: str) -> list[str]:
    return [
        f"--kubeconfig={layout.component_kubeconfig('kwok')}",
        f"--config={layout.state_dir / 'kwok.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={annotation}",
        f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1",
        "--node-lease-duration-seconds=40",
        # kwok's own server (healthz, logs, exec) would otherwise listen on every interface.
        f"--server-address=127.0.0.1:{ports.kwok}",
    ]


def command(
    name: str, binary: Path, layout: Layout, ports: Ports, kwok_annotation: str, real_node: bool = False
) -> list[str]:
    """Full argv of component ``name``."""
    if name == "kube-apiserver":
        return [str(binary), *apiserver_args(layout, ports, real_node)]
    builders = {
        "etcd": etcd_args,
        "kube-controller-manager": controller_manager_args,
        "kube-scheduler": scheduler_args,
    }
    if name == "kwok":
        return [str(binary), *kwok_args(layout, ports, kwok_annotation)]
    if name not in builders:
        raise ValueError(f"unknown sandbox component {name!r}")
    return [str(binary), *builders[name](layout, ports)]
