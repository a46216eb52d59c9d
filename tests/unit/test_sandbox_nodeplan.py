"""The real node's configuration (pure): containerd, CNI, kubelet, kube-proxy, CoreDNS, and the
API server flags that make the control plane reachable from pods."""

from __future__ import annotations

import tomllib
from pathlib import Path

from baton_dev.sandbox import nodeplan
from baton_dev.sandbox.addresses import BRIDGE, NODE_IP, NODE_NAME, POD_SUBNET
from baton_dev.sandbox.certs import CLIENTS, Pki
from baton_dev.sandbox.layout import POD_CIDR, Layout, Ports, apiserver_args, server_url

PATHS = nodeplan.NodePaths(
    state_dir=Path("/home/u/.cache/baton/sandbox/some-long-state-dir-name"), cache_dir=Path("/c")
)
PORTS = nodeplan.NodePorts(10250, 10248, 10256, 10249, 8080, 8181)
PKI = Pki(Path("/s/pki"))


def test_containerd_runs_runc_on_cgroupfs_with_the_local_pause_image_and_our_cni() -> None:
    cfg = tomllib.loads(nodeplan.containerd_config(PATHS))
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "docker.io/library/baton-pause:dev"
    # Without it runc fails every pod sandbox on machines that withhold CAP_SYS_RESOURCE.
    assert cri["restrict_oom_score_adj"] is True
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": str(PATHS.cni_conf_dir), "max_conf_num": 1}
    assert cfg["root"] == "/c/containerd"  # images survive `down`
    assert cfg["grpc"]["address"] == str(PATHS.containerd_socket)


def test_sockets_live_under_a_short_path_whatever_the_state_directory() -> None:
    assert len(str(PATHS.containerd_socket) + ".ttrpc") < 100
    other = nodeplan.NodePaths(state_dir=Path("/elsewhere"), cache_dir=Path("/c"))
    assert other.runtime_dir != PATHS.runtime_dir


def test_pods_get_addresses_on_the_bridge_with_the_node_as_gateway() -> None:
    conf = nodeplan.cni_conflist(PATHS, mtu=1400)
    bridge = conf["plugins"][0]
    assert (bridge["type"], bridge["bridge"], bridge["mtu"]) == ("bridge", BRIDGE, 1400)
    assert bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]]
    assert bridge["ipam"]["dataDir"] == str(PATHS.cni_ipam_dir)  # not /var/lib/cni
    assert POD_SUBNET != POD_CIDR  # kwok's fake pod addresses


def test_kubelet_is_a_hybrid_cgroup_v1_node_with_webhook_auth_and_cluster_dns() -> None:
    cfg = nodeplan.kubelet_config(PATHS, PORTS, PKI)
    assert (cfg["cgroupDriver"], cfg["failCgroupV1"], cfg["failSwapOn"]) == ("cgroupfs", False, False)
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authentication"]["webhook"]["enabled"] is True
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["address"] == NODE_IP and cfg["clusterDNS"] == [NODE_IP]
    assert cfg["containerRuntimeEndpoint"] == f"unix://{PATHS.containerd_socket}"
    # Kubelet's host directories move under the state directory, so `down` finds them.
    assert cfg["podLogsDir"].startswith(str(PATHS.root)) and cfg["volumePluginDir"].startswith(
        str(PATHS.root)
    )
    assert cfg["imageGCHighThresholdPercent"] == 100  # imported images are never pulled again
    argv = nodeplan.kubelet_argv(Path("/bin/kubelet"), PATHS)
    assert f"--hostname-override={NODE_NAME}" in argv and f"--node-ip={NODE_IP}" in argv
    assert f"--root-dir={PATHS.kubelet_root}" in argv


def test_kube_proxy_masquerades_service_traffic_and_leaves_conntrack_alone() -> None:
    cfg = nodeplan.kube_proxy_config(PATHS, PORTS)
    assert cfg["mode"] == "iptables" and cfg["iptables"]["masqueradeAll"] is True
    assert cfg["clusterCIDR"] == POD_SUBNET and cfg["hostnameOverride"] == NODE_NAME
    assert cfg["nodePortAddresses"] == [f"{NODE_IP}/32"]
    assert cfg["conntrack"]["maxPerCore"] == 0


def test_coredns_answers_on_the_node_address_from_the_api() -> None:
    text = nodeplan.corefile(PATHS, PORTS)
    assert f"bind {NODE_IP}" in text and "kubernetes cluster.local" in text
    assert f"kubeconfig {PATHS.kubeconfig('coredns')}" in text
    users = {c.user for c in CLIENTS}
    assert nodeplan.COREDNS_USER in users and f"system:node:{NODE_NAME}" in users
    binding = nodeplan.rbac_manifests()[1]
    assert binding["subjects"][0]["name"] == nodeplan.COREDNS_USER


def test_the_api_server_moves_to_the_node_address_only_with_a_real_node() -> None:
    layout, ports = Layout(Path("/s")), Ports(1, 2, 6443, 4, 5, 6)
    kwok_only = apiserver_args(layout, ports)
    assert "--bind-address=127.0.0.1" in kwok_only and "--authorization-mode=RBAC" in kwok_only
    assert "--endpoint-reconciler-type=none" in kwok_only
    real = apiserver_args(layout, ports, real_node=True)
    assert f"--bind-address={NODE_IP}" in real and f"--advertise-address={NODE_IP}" in real
    assert "--authorization-mode=Node,RBAC" in real
    assert "--endpoint-reconciler-type=lease" in real  # the `kubernetes` Service gets an endpoint
    assert "--kubelet-preferred-address-types=InternalIP" in real
    assert server_url(ports, NODE_IP) == f"https://{NODE_IP}:6443"
