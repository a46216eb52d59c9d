"""The sandbox's real node: where its files live and how each of its parts is configured (pure).

`baton sandbox up --real-node` runs one real Kubernetes node on this machine beside the kwok
pools: containerd (with runc) as the CRI runtime, CNI bridge networking, kubelet, kube-proxy in
iptables mode and CoreDNS. This module only computes configuration files and command lines;
realnode.py runs them.

Networking: pods get addresses in ``POD_SUBNET`` on the bridge ``BRIDGE``, whose gateway address
``NODE_IP`` is also the node's InternalIP, where the API server listens (so pods reach it through
the ``kubernetes`` Service) and where CoreDNS answers (the pods' cluster DNS).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from baton_operator.names import NODE_POOL_LABEL, REAL_NODE_LABEL

from .addresses import BRIDGE, NODE_IP, NODE_NAME, POD_SUBNET
from .certs import KUBELET_SERVING, Pki
from .imageplan import PAUSE_IMAGE

NODE_POOL = "real"
CLUSTER_DOMAIN = "cluster.local"
CNI_NETWORK = "baton-sandbox"
# Processes of the real node, in start order (stopped in reverse).
NODE_COMPONENTS: tuple[str, ...] = ("containerd", "kubelet", "kube-proxy", "coredns")
# RBAC of CoreDNS's client certificate user (kubeadm ships the same rules as system:coredns).
COREDNS_USER = "baton-sandbox-coredns"  # the CN of certs.CLIENTS' "coredns"


@dataclass(frozen=True)
class NodePorts:
    """Ports of the real node's servers (picked free at `up`)."""

    kubelet: int
    kubelet_healthz: int
    kube_proxy_healthz: int
    kube_proxy_metrics: int
    coredns_health: int
    coredns_ready: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class NodePaths:
    """Files of the real node: configuration and data under the state directory, the image store
    in a cache that outlives `down` (images are imported once), sockets under /run."""

    state_dir: Path
    cache_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "node"

    @property
    def runtime_dir(self) -> Path:
        # Unix socket paths are limited to 107 bytes: a short path, unique per state directory.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        return Path("/run") / f"baton-sandbox-{digest}"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_root(self) -> Path:
        return self.cache_dir / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.runtime_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.runtime_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni-ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def volume_plugins(self) -> Path:
        return self.root / "volume-plugins"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def corefile(self) -> Path:
        return self.root / "Corefile"

    def kubeconfig(self, component: str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{component}.kubeconfig"


def containerd_config(paths: NodePaths) -> str:
    """containerd 1.6 configuration (version 2) for the CRI plugin kubelet talks to."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f'root = "{paths.containerd_root}"',
        f'state = "{paths.containerd_state}"',
        # Only the CRI runtime: no other snapshotters or plugins that probe the host.
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", '
        '"io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
        "",
        # Installed "opt" content would otherwise go to /opt/containerd.
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{paths.containerd_root / "opt"}"',
        "",
        "[grpc]",
        f'  address = "{paths.containerd_socket}"',
        "",
        "[ttrpc]",
        f'  address = "{paths.containerd_socket}.ttrpc"',
        "",
        f"[{cri}]",
        f'  sandbox_image = "{PAUSE_IMAGE}"',
        # This machine withholds CAP_SYS_RESOURCE even from root: runc cannot give a container a
        # lower oom_score_adj than containerd's own, and fails every sandbox without this.
        "  restrict_oom_score_adj = true",
        "  enable_selinux = false",
        "  max_container_log_line_size = 16384",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        # cgroupfs, as kubelet's cgroupDriver (the machine's cgroups are a v1/v2 hybrid).
        "  SystemdCgroup = false",
        f'  Root = "{paths.runtime_dir / "runc"}"',
        f"[{cri}.cni]",
        '  bin_dir = "/usr/lib/cni"',
        f'  conf_dir = "{paths.cni_conf_dir}"',
        "  max_conf_num = 1",
        "",
    ]
    return "\n".join(lines)


def cni_conflist(paths: NodePaths, mtu: int) -> dict[str, Any]:
    """The pod network: a bridge with the node as gateway, NAT for traffic leaving the node,
    host-local addresses (kept under the state directory), port mappings."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, ports: NodePorts, pki: Pki) -> dict[str, Any]:
    """KubeletConfiguration of the real node."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        # The API server authenticates with its kubelet client certificate; everyone else is
        # checked with the API server (TokenReview / SubjectAccessReview), as in a real cluster.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki.client_cert(KUBELET_SERVING)),
        "tlsPrivateKeyFile": str(pki.client_key(KUBELET_SERVING)),
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        # The machine's cgroups are a v1/v2 hybrid: kubelet 1.35 refuses v1 unless told.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.volume_plugins),
        "serializeImagePulls": False,
        # Images are imported, never pulled: never garbage-collect them for disk space, and
        # evict pods only when the machine is really out of memory or disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "200Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "maxPods": 32,
        "nodeStatusUpdateFrequency": "5s",
        "protectKernelDefaults": False,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
    }


def node_labels() -> dict[str, str]:
    return {NODE_POOL_LABEL: NODE_POOL, REAL_NODE_LABEL: "true"}


def kubelet_argv(binary: Path, paths: NodePaths) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in node_labels().items())
    return [
        str(binary),
        f"--config={paths.kubelet_config}",
        f"--kubeconfig={paths.kubeconfig('kubelet')}",
        f"--root-dir={paths.kubelet_root}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def kube_proxy_config(paths: NodePaths, ports: NodePorts) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode, Service traffic masqueraded so replies of a pod
    reached through a ClusterIP on the same bridge come back the way they left."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{ports.kube_proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.kube_proxy_metrics}",
        # NodePorts only on the pod bridge, never on the machine's own network.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {
            "masqueradeAll": True,
            "localhostNodePorts": False,
            "syncPeriod": "30s",
            "minSyncPeriod": "0s",
        },
        # Leave the machine's conntrack settings alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def kube_proxy_argv(binary: Path, paths: NodePaths) -> list[str]:
    return [str(binary), f"--config={paths.kube_proxy_config}", "--v=1"]


def corefile(paths: NodePaths, ports: NodePorts) -> str:
    """CoreDNS answering the pods' queries on the node address: cluster names from the API,
    everything else forwarded to the machine's own resolver."""
    return (
        ".:53 {\n"
        f"    bind {NODE_IP}\n"
        f"    ready 127.0.0.1:{ports.coredns_ready}\n"
        f"    health 127.0.0.1:{ports.coredns_health}\n"
        "    errors\n"
        "    loadbalance\n"
        "    cache 5\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {paths.kubeconfig('coredns')}\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 5\n"
        "    }\n"
        "    loop\n"
        "    forward . /etc/resolv.conf\n"
        "}\n"
    )


def coredns_argv(binary: Path, paths: NodePaths) -> list[str]:
    return [str(binary), f"-conf={paths.corefile}"]


def containerd_argv(binary: Path, paths: NodePaths) -> list[str]:
    return [binary.as_posix(), f"--config={paths.containerd_config}", "--log-level=warn"]


def rbac_manifests() -> list[dict[str, Any]]:
    """What the real node's components need beyond the built-in roles: CoreDNS's read access
    (kubelet is authorized by the Node authorizer, kube-proxy by system:node-proxier)."""
    name = "baton-sandbox:coredns"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
        },
    ]


def yaml_text(doc: dict[str, Any]) -> str:
    """A configuration document as kubelet and kube-proxy read it (JSON is YAML)."""
    return json.dumps(doc, indent=1) + "\n"
