"""The one place where the sandbox's upstream versions are pinned.

Every binary the sandbox runs is built from its upstream Go module at these versions (or taken
from $BATON_K8S_BIN_DIR / PATH when a binary there reports exactly this version). Bumping
Kubernetes means changing ``KUBERNETES_VERSION`` and nothing else: the staging modules
(k8s.io/api, k8s.io/client-go, ...) are pinned to the matching v0.x release at build time.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.22.0"
# Cluster DNS of the real node; v1.14.7 builds against the same k8s.io/client-go v0.35.4.
COREDNS_VERSION = "v1.14.7"
# The oldest Go that builds every module above: helm v3.22.0 and etcd v3.6.16 declare `go 1.26.0`
# in their go.mod (Kubernetes v1.35.4 and CoreDNS v1.14.7: 1.25.0, kwok v0.7.0: 1.24.0), and the
# build runs with GOTOOLCHAIN=local, so an older Go refuses them. README.md and docs/sandbox.md
# state it (a unit test keeps them in step); raise it with the pins.
GO_MINIMUM = "1.26"


def staging_version(kubernetes_version: str) -> str:
    """``v1.35.4`` -> ``v0.35.4``: the release of the k8s.io/* staging modules cut with it."""
    major, minor, patch = kubernetes_version.lstrip("v").split(".")
    if major != "1":
        raise ValueError(f"KUBERNETES_VERSION {kubernetes_version!r}: expected v1.<minor>.<patch>")
    return f"v0.{minor}.{patch}"


@dataclass(frozen=True)
class Binary:
    """One executable: its name, the main package it is built from, how to ask its version."""

    name: str
    package: str
    version_args: tuple[str, ...]
    # The binary is the right one when its version output contains this text.
    version_text: str


@dataclass(frozen=True)
class GoComponent:
    """A Go module from which one or more sandbox binaries are built."""

    name: str
    module: str
    version: str
    binaries: tuple[Binary, ...]
    ldflags: tuple[str, ...] = ()
    # Version that the module's local (``=> ./path``) replace directives are pinned to;
    # None drops those directives (their required version is already a real release).
    local_replace_version: str | None = None
    # Source of a main package written into the wrapper module itself (a custom build of a
    # program from its library, e.g. CoreDNS with only the plugins the sandbox uses).
    main_go: str = ""


def _k8s_ldflags(version: str) -> tuple[str, ...]:
    minor = version.lstrip("v").split(".")[1]
    out: list[str] = []
    # Without these the servers report v0.0.0-master and clients refuse to compare versions.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        out += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return tuple(out)


def components() -> tuple[GoComponent, ...]:
    """Every Go component of the sandbox, at the pinned versions."""
    k8s = KUBERNETES_VERSION
    kube_bins = tuple(
        Binary(name, f"k8s.io/kubernetes/cmd/{name}", ("--version",), f"Kubernetes {k8s}")
        # kubelet and kube-proxy run the sandbox's real node (`up --real-node`).
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
    )
    kubectl = Binary("kubectl", "k8s.io/kubernetes/cmd/kubectl", ("version", "--client"), k8s)
    return (
        GoComponent(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=k8s,
            binaries=(*kube_bins, kubectl),
            ldflags=_k8s_ldflags(k8s),
            local_replace_version=staging_version(k8s),
        ),
        GoComponent(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=ETCD_VERSION,
            binaries=(
                Binary(
                    "etcd", "go.etcd.io/etcd/server/v3", ("--version",), f"etcd Version: {ETCD_VERSION[1:]}"
                ),
            ),
        ),
        GoComponent(
            name="kwok",
            module="sigs.k8s.io/kwok",
            version=KWOK_VERSION,
            binaries=(Binary("kwok", "sigs.k8s.io/kwok/cmd/kwok", ("--version",), KWOK_VERSION),),
            ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}",),
        ),
        GoComponent(
            name="helm",
            module="helm.sh/helm/v3",
            version=HELM_VERSION,
            binaries=(
                Binary(
                    "helm",
                    "helm.sh/helm/v3/cmd/helm",
                    ("version", "--template", "{{.Version}}"),
                    HELM_VERSION,
                ),
            ),
            ldflags=(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",),
        ),
        GoComponent(
            name="coredns",
            module="github.com/coredns/coredns",
            version=COREDNS_VERSION,
            binaries=(
                Binary(
                    "coredns", "baton.local/build/coredns", ("-version",), f"CoreDNS-{COREDNS_VERSION[1:]}"
                ),
            ),
            main_go=COREDNS_MAIN,
        ),
    )


# CoreDNS with the plugins the real node's cluster DNS needs and nothing else: the full build
# pulls in every cloud provider's SDK. The plugins register themselves when imported;
# dnsserver.Directives is their order in a server block.
# (The order is CoreDNS's own plugin.cfg order.)
COREDNS_PLUGINS: tuple[str, ...] = (
    "bind",
    "ready",
    "health",
    "errors",
    "log",
    "loadbalance",
    "cache",
    "kubernetes",
    "loop",
    "forward",
)
COREDNS_MAIN = (
    "// Generated by baton's sandbox build: CoreDNS with the plugins cluster DNS needs.\n"
    "package main\n\n"
    "import (\n"
    '\t"github.com/coredns/coredns/core/dnsserver"\n'
    '\t"github.com/coredns/coredns/coremain"\n'
    + "".join(f'\t_ "github.com/coredns/coredns/plugin/{p}"\n' for p in COREDNS_PLUGINS)
    + ")\n\n"
    "func main() {\n"
    f"\tdnsserver.Directives = []string{{{', '.join(f'{chr(34)}{p}{chr(34)}' for p in COREDNS_PLUGINS)}}}\n"
    "\tcoremain.Run()\n"
    "}\n"
)


def cache_key() -> str:
    """Name of the binaries' cache directory. Within it each binary carries a stamp of the
    version it was built at, so bumping etcd, kwok or helm rebuilds only that component."""
    return f"k8s-{KUBERNETES_VERSION}"


BINARY_NAMES: tuple[str, ...] = tuple(b.name for c in components() for b in c.binaries)
