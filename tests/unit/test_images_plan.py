"""The image build plan (pure): names, pins, wheel selection, command lines, layer order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from baton_dev.sandbox import imageplan
from baton_dev.sandbox.imageplan import Pin
from baton_operator import __version__
from baton_operator.images import (
    DEFAULT_OPERATOR_IMAGE,
    DEFAULT_WORKER_IMAGE,
    OPERATOR,
    REGISTRY,
    WORKER,
    dev_image,
    qualified,
)
from baton_operator.runtime import Options

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("baton-worker:dev", "docker.io/library/baton-worker:dev"),
        ("baton-worker", "docker.io/library/baton-worker:latest"),
        ("org/x:1", "docker.io/org/x:1"),
        ("ghcr.io/baton-dev/baton-worker:0.1.0", "ghcr.io/baton-dev/baton-worker:0.1.0"),
        ("localhost/baton-base:bookworm-abc", "localhost/baton-base:bookworm-abc"),
        ("registry:5000/x", "registry:5000/x:latest"),
        ("x@sha256:" + "a" * 64, "docker.io/library/x@sha256:" + "a" * 64),
    ],
)
def test_qualified_matches_how_container_runtimes_store_a_reference(ref: str, want: str) -> None:
    assert qualified(ref) == want


def test_one_place_defines_the_image_names_and_the_chart_the_operator_and_readme_agree() -> None:
    assert DEFAULT_WORKER_IMAGE == f"{REGISTRY}/{WORKER}:{__version__}"
    assert DEFAULT_OPERATOR_IMAGE == f"{REGISTRY}/{OPERATOR}:{__version__}"
    assert Options().default_image == DEFAULT_WORKER_IMAGE
    values = yaml.safe_load((ROOT / "charts/baton/values.yaml").read_text())["operator"]
    chart = yaml.safe_load((ROOT / "charts/baton/Chart.yaml").read_text())
    assert values["image"]["repository"] == f"{REGISTRY}/{OPERATOR}"
    assert values["image"]["tag"] in ("", chart["appVersion"])  # "" is the chart's appVersion
    assert chart["appVersion"] == __version__
    assert values["workerImage"] == DEFAULT_WORKER_IMAGE
    readme = (ROOT / "README.md").read_text()
    assert "make images" in readme
    for ref in (dev_image(OPERATOR), dev_image(WORKER)):
        assert ref in readme
    assert imageplan.OPERATOR_IMAGE == qualified(dev_image(OPERATOR))
    assert imageplan.WORKER_IMAGE == qualified(dev_image(WORKER))


def test_pins_come_from_pips_report_without_baton_normalized_and_sorted() -> None:
    report = {
        "install": [
            {"metadata": {"name": "baton", "version": "0.1.0"}},
            {"metadata": {"name": "PyYAML", "version": "6.0.2"}},
            {"metadata": {"name": "nvidia_cublas", "version": "13.4.1.3"}},
            {"metadata": {"name": "aiohttp", "version": "3.14.5"}},
        ]
    }
    pins = imageplan.pins_from_report(report)
    assert pins == [Pin("aiohttp", "3.14.5"), Pin("nvidia-cublas", "13.4.1.3"), Pin("pyyaml", "6.0.2")]
    assert imageplan.requirements_text(pins) == "aiohttp==3.14.5\nnvidia-cublas==13.4.1.3\npyyaml==6.0.2\n"


def test_the_accelerator_stack_is_pinned_apart_from_the_other_dependencies() -> None:
    pins = [
        Pin("torch", "2.15.0"),
        Pin("nvidia-cublas", "13.4.1.3"),
        Pin("cuda-bindings", "13.5.0"),
        Pin("triton", "3.9.0"),
        Pin("nixl-cu12", "1.5.1"),
        Pin("transformers", "5.25.0"),
        Pin("torchvision-extra", "1.0"),
        Pin("numpy", "2.4.6"),
    ]
    accelerator, rest = imageplan.split_pins(pins)
    assert [p.name for p in accelerator] == ["cuda-bindings", "nixl-cu12", "nvidia-cublas", "torch", "triton"]
    assert [p.name for p in rest] == ["numpy", "torchvision-extra", "transformers"]


@pytest.mark.parametrize(
    ("name", "pin"),
    [
        ("torch-2.15.0-cp311-cp311-manylinux_2_28_x86_64.whl", Pin("torch", "2.15.0")),
        ("nvidia_cublas-13.4.1.3-py3-none-manylinux_2_27_x86_64.whl", Pin("nvidia-cublas", "13.4.1.3")),
        ("PyYAML-6.0.2-1-cp311-cp311-manylinux_2_17_x86_64.whl", Pin("pyyaml", "6.0.2")),
        ("six-1.17.0.tar.gz", None),
        ("README", None),
    ],
)
def test_wheel_file_names_give_their_pin(name: str, pin: Pin | None) -> None:
    assert imageplan.wheel_pin(name) == pin


def test_wheels_for_picks_every_matching_file_and_names_the_missing_pins() -> None:
    files = [
        "torch-2.15.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.15.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "torch-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "six-1.17.0-py2.py3-none-any.whl",
    ]
    chosen, missing = imageplan.wheels_for([Pin("torch", "2.15.0"), Pin("numpy", "2.3.0")], files)
    assert chosen == files[:2]
    assert missing == [Pin("numpy", "2.3.0")]


def test_constraints_pin_what_is_installed_here_except_baton() -> None:
    text = imageplan.constraints_text({"torch": "2.15.0", "baton": "0.1.0", "six": "1.17.0"})
    assert text == "six==1.17.0\ntorch==2.15.0\n"


def test_cpu_builds_use_no_registry_and_no_network_the_cuda_variant_pulls_its_base() -> None:
    recipe = imageplan.RECIPES["worker"]
    cpu = imageplan.build_argv(
        "podman", recipe, imageplan.VARIANTS["cpu"], Path("/ctx"), "localhost/baton-base:x", "0.1.0", "abc"
    )
    assert cpu[:3] == ["podman", "build", "--layers"]
    assert "--tag=docker.io/library/baton-worker:dev" in cpu
    assert {"--pull=never", "--network=none", "--build-arg=BASE=localhost/baton-base:x"} <= set(cpu)
    assert {"--build-arg=VERSION=0.1.0", "--build-arg=REVISION=abc"} <= set(cpu)
    cuda_variant = imageplan.VARIANTS["cuda"]
    cuda = imageplan.build_argv(
        "podman", recipe, cuda_variant, Path("/ctx"), cuda_variant.base, "0.1.0", "abc"
    )
    assert "--tag=docker.io/library/baton-worker:dev-cuda" in cuda
    assert "--pull=never" not in cuda and f"--build-arg=BASE={cuda_variant.base}" in cuda


def test_wheels_are_fetched_for_the_bases_python() -> None:
    native = imageplan.pip_fetch_argv("py", Path("r.txt"), Path("/wh"), imageplan.VARIANTS["cpu"])
    assert native[:4] == ["py", "-m", "pip", "wheel"] and "--no-deps" in native
    cross = imageplan.pip_fetch_argv("py", Path("r.txt"), Path("/wh"), imageplan.VARIANTS["cuda"])
    assert cross[:4] == ["py", "-m", "pip", "download"]
    assert {"--python-version=3.12", "--only-binary=:all:", "--platform=manylinux_2_28_x86_64"} <= set(cross)
    # Ubuntu 24.04's glibc down to manylinux2014: pip does not widen an explicit platform itself.
    assert {"--platform=manylinux_2_39_x86_64", "--platform=manylinux2014_x86_64"} <= set(cross)
    assert imageplan.wheelhouse_name(imageplan.VARIANTS["cuda"], "3.11") == "py3.12"
    assert imageplan.wheelhouse_name(imageplan.VARIANTS["cpu"], "3.11") == "py3.11"
    resolve = imageplan.pip_resolve_argv(
        "py", "/d/baton.whl[worker]", Path("r.json"), Path("c.txt"), Path("/wh"), imageplan.VARIANTS["cpu"]
    )
    assert {"--dry-run", "--ignore-installed", "--report=r.json", "--constraint=c.txt"} <= set(resolve)
    assert resolve[-1] == "/d/baton.whl[worker]"


def test_the_debian_base_is_keyed_by_what_it_contains() -> None:
    argv = imageplan.mmdebstrap_argv(Path("/out.tar"))
    assert argv[0] == "mmdebstrap" and argv[-2:] == [imageplan.DEBIAN_SUITE, "/out.tar"]
    assert "--include=python3,python3-venv,ca-certificates" in argv
    assert f"--hook-dir={imageplan.MMDEBSTRAP_HOOK_DIR}" in argv
    assert imageplan.base_key() == imageplan.base_key()
    assert imageplan.base_key(packages=("python3",)) != imageplan.base_key()
    assert imageplan.base_key(suite="trixie") != imageplan.base_key()


def _steps(containerfile: str) -> list[str]:
    text = (ROOT / "images" / containerfile).read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("containerfile", ["operator.Containerfile", "worker.Containerfile"])
def test_layers_are_ordered_so_a_code_change_rebuilds_only_the_top_layer(containerfile: str) -> None:
    steps = _steps(containerfile)
    index = {name: next(i for i, s in enumerate(steps) if s.startswith(name)) for name in ("FROM",)}
    deps = next(i for i, s in enumerate(steps) if s.startswith("COPY requirements.txt"))
    deps_run = next(
        i for i, s in enumerate(steps) if i > deps and s.startswith("RUN --mount=type=bind,source=wheels")
    )
    code = next(i for i, s in enumerate(steps) if s.startswith("COPY dist/"))
    assert index["FROM"] < deps < deps_run < code
    # Wheels are bind-mounted while installing, never copied into a layer.
    assert not any(s.startswith("COPY") and "wheels" in s for s in steps)
    # Nothing after baton's own layer installs anything; the revision (new at every commit) comes
    # last, so it invalidates no layer.
    assert all(not s.startswith("RUN") for s in steps[code + 2 :])
    revision = next(i for i, s in enumerate(steps) if s.startswith("ARG REVISION"))
    assert revision > max(i for i, s in enumerate(steps) if s.startswith(("RUN", "COPY")))
    assert "USER 65532:65532" in steps
    if containerfile == "worker.Containerfile":
        # torch's layer comes first: a new release of another dependency leaves its 5 GB cached.
        accel = next(i for i, s in enumerate(steps) if s.startswith("COPY requirements-accelerator.txt"))
        assert index["FROM"] < accel < deps
    assert any(s.startswith("LABEL") and "org.opencontainers.image.revision" in s for s in steps)


CTR_LS_HEADER = "REF TYPE DIGEST SIZE PLATFORMS LABELS"


@pytest.mark.parametrize(
    ("rows", "stale"),
    [
        ([], []),
        (
            # the tag and the CRI's id name of one image: nothing to remove
            [
                "docker.io/library/baton-worker:dev application/vnd.oci.image.manifest.v1+json sha256:m1 6.5GiB linux/amd64 -",
                "sha256:c1 application/vnd.oci.image.manifest.v1+json sha256:m1 6.5GiB linux/amd64 -",
            ],
            [],
        ),
        (
            # the tag moved to a new import: the old image's id name (and digest name) are stale
            [
                "docker.io/library/baton-worker:dev application/vnd.oci.image.manifest.v1+json sha256:m2 6.5GiB linux/amd64 -",
                "docker.io/library/baton-worker@sha256:m1 application/vnd.oci.image.manifest.v1+json sha256:m1 6.5GiB linux/amd64 -",
                "sha256:c1 application/vnd.oci.image.manifest.v1+json sha256:m1 6.5GiB linux/amd64 -",
                "sha256:c2 application/vnd.oci.image.manifest.v1+json sha256:m2 6.5GiB linux/amd64 -",
                "docker.io/library/baton-pause:dev application/vnd.oci.image.manifest.v1+json sha256:p 600KiB linux/amd64 -",
            ],
            ["docker.io/library/baton-worker@sha256:m1", "sha256:c1"],
        ),
    ],
)
def test_stale_images(rows: list[str], stale: list[str]) -> None:
    from baton_dev.sandbox.node_images import stale_images

    assert stale_images("\n".join([CTR_LS_HEADER, *rows])) == stale
