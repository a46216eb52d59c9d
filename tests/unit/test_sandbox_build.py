"""Wrapper go.mod generation and version pins of the sandbox build (no Go needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from baton_dev.sandbox.build import go_output_name, parse_replaces, wrapper_gomod
from baton_dev.sandbox.versions import GO_MINIMUM, KUBERNETES_VERSION, components, staging_version

REPO = Path(__file__).resolve().parents[2]

K8S_GOMOD = """module k8s.io/kubernetes

go 1.25.0

require (
\tk8s.io/api v0.0.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // staged
)
"""

ETCD_GOMOD = """module go.etcd.io/etcd/server/v3

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/pkg/v3 => ../pkg
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
replace github.com/foo/bar v1.0.0 => github.com/fork/bar v1.0.1
"""


def test_staging_version_maps_minor_and_patch() -> None:
    assert staging_version("v1.35.4") == "v0.35.4"
    assert staging_version("v1.34.0") == "v0.34.0"
    with pytest.raises(ValueError, match="KUBERNETES_VERSION"):
        staging_version("v2.0.0")


def test_parse_replaces_handles_blocks_single_lines_and_comments() -> None:
    assert parse_replaces(K8S_GOMOD) == [
        ("k8s.io/api", "./staging/src/k8s.io/api", None),
        ("k8s.io/client-go", "./staging/src/k8s.io/client-go", None),
    ]
    assert parse_replaces(ETCD_GOMOD)[-1] == ("github.com/foo/bar", "github.com/fork/bar", "v1.0.1")


def test_kubernetes_wrapper_pins_staging_modules_to_matching_release() -> None:
    k8s = next(c for c in components() if c.name == "kubernetes")
    text = wrapper_gomod(k8s, K8S_GOMOD)
    assert f"require k8s.io/kubernetes {KUBERNETES_VERSION}" in text
    assert f"\tk8s.io/api => k8s.io/api {staging_version(KUBERNETES_VERSION)}" in text
    assert f"\tk8s.io/client-go => k8s.io/client-go {staging_version(KUBERNETES_VERSION)}" in text
    assert "./staging" not in text


def test_etcd_wrapper_drops_local_replaces_and_keeps_remote_ones() -> None:
    etcd = next(c for c in components() if c.name == "etcd")
    text = wrapper_gomod(etcd, ETCD_GOMOD)
    assert "../api" not in text and "FORBIDDEN" not in text
    assert "\tgithub.com/foo/bar => github.com/fork/bar v1.0.1" in text


def test_every_binary_is_pinned_and_kubernetes_is_at_least_1_34() -> None:
    names = [b.name for c in components() for b in c.binaries]
    assert sorted(names) == sorted(
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "kubectl",
            "kwok",
            "helm",
            "coredns",
        ]
    )
    minor = int(KUBERNETES_VERSION.lstrip("v").split(".")[1])
    assert minor >= 34
    k8s = next(c for c in components() if c.name == "kubernetes")
    assert f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}" in k8s.ldflags


def test_coredns_is_built_from_a_generated_main_with_only_the_plugins_the_node_uses() -> None:
    coredns = next(c for c in components() if c.name == "coredns")
    # The binary is the wrapper module's own main package: `go build -o DIR/` names it coredns.
    assert go_output_name(coredns.binaries[0].package) == "coredns"
    assert coredns.main_go.startswith("// Generated") and "coremain.Run()" in coredns.main_go
    for plugin in ("kubernetes", "forward", "bind", "ready", "health"):
        assert f'_ "github.com/coredns/coredns/plugin/{plugin}"' in coredns.main_go
        assert f'"{plugin}"' in coredns.main_go.split("Directives")[1]
    # Cloud providers' plugins (and their SDKs) stay out.
    assert "route53" not in coredns.main_go and "azure" not in coredns.main_go


def test_go_output_name_skips_major_version_suffix() -> None:
    assert go_output_name("go.etcd.io/etcd/server/v3") == "server"
    assert go_output_name("k8s.io/kubernetes/cmd/kubectl") == "kubectl"
    assert go_output_name("helm.sh/helm/v3/cmd/helm") == "helm"


def test_missing_go_is_one_clear_line(monkeypatch, tmp_path) -> None:
    from baton_dev.sandbox import build

    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setattr(build, "GO_FALLBACKS", (str(tmp_path / "no-go"),))
    with pytest.raises(build.BuildError, match="Go is not installed") as err:
        build._go()
    assert "\n" not in str(err.value) and build.BIN_DIR_ENV in str(err.value)


def test_missing_go_names_the_oldest_go_that_builds_the_pins(monkeypatch, tmp_path) -> None:
    from baton_dev.sandbox import build

    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setattr(build, "GO_FALLBACKS", (str(tmp_path / "no-go"),))
    with pytest.raises(build.BuildError, match=rf"go >= {GO_MINIMUM} "):
        build._go()


def test_docs_state_the_go_floor_of_the_pins() -> None:
    # The user-facing requirement and the code's floor are one number.
    assert f"Go {GO_MINIMUM}+" in (REPO / "README.md").read_text()
    assert f"Go (>= {GO_MINIMUM})" in (REPO / "docs" / "sandbox.md").read_text()
