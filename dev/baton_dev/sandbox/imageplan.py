"""What `baton sandbox images` builds, and the command lines it runs (pure functions).

Two images, one Containerfile each (``images/*.Containerfile``), built with podman/buildah from
a context this module describes: pinned third-party wheels, baton's own wheel, and a base image.
The CPU base is a Debian rootfs made from Debian packages with mmdebstrap (no registry is
needed); the CUDA variant of the worker starts from an NVIDIA CUDA base instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton_operator.images import OPERATOR, WORKER, dev_image, qualified


@dataclass(frozen=True)
class Recipe:
    """One image: its name, its Containerfile (relative to the repository) and baton's extras."""

    key: str
    name: str
    containerfile: str
    extras: tuple[str, ...]


RECIPES: dict[str, Recipe] = {
    "operator": Recipe("operator", OPERATOR, "images/operator.Containerfile", ()),
    "worker": Recipe("worker", WORKER, "images/worker.Containerfile", ("worker",)),
}


@dataclass(frozen=True)
class Variant:
    """Where an image starts from: the Debian CPU base made here, or an NVIDIA CUDA base."""

    name: str
    # None: the Debian rootfs built with mmdebstrap; else a base image reference to pull.
    base: str | None
    # Python of the base (the wheels must match it); None: the Python running this build.
    python_version: str | None
    tag_suffix: str


VARIANTS: dict[str, Variant] = {
    "cpu": Variant("cpu", None, None, ""),
    # torch's wheels bring their own CUDA libraries; the base adds the NVIDIA container
    # toolkit's environment and Ubuntu's Python 3.12.
    "cuda": Variant("cuda", "docker.io/nvidia/cuda:12.8.1-base-ubuntu24.04", "3.12", "-cuda"),
}

# The real node's pod sandbox image (images/pause.Containerfile).
PAUSE_IMAGE = qualified(dev_image("baton-pause"))
# The local CPU images, as the node's containerd and podman store them.
OPERATOR_IMAGE = qualified(dev_image(OPERATOR))
WORKER_IMAGE = qualified(dev_image(WORKER))

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
# Documentation, manual pages and translations are dropped from the base (copyright files kept).
DPKG_PATH_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# Merged /usr set up by mmdebstrap's own hook instead of the usrmerge package (which pulls in
# 50 MB of perl).
MMDEBSTRAP_HOOK_DIR = "/usr/share/mmdebstrap/hooks/merged-usr"
# Fixed timestamps make the base tarball and baton's wheel byte-for-byte reproducible, so an
# unchanged tree rebuilds nothing (1980-01-01, the earliest date a zip file can hold).
SOURCE_DATE_EPOCH = "315532800"
# What baton's wheel is built from; everything else in the checkout stays out of the image.
WHEEL_SOURCES: tuple[str, ...] = ("pyproject.toml", "README.md", "operator", "worker")
WHEEL_SOURCE_SKIP: tuple[str, ...] = ("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
# Platform tags for wheels of another Python (the CUDA base's, Ubuntu 24.04: glibc 2.39). pip does
# not widen an explicit --platform to older glibc versions, so every one is listed.
CROSS_PLATFORMS: tuple[str, ...] = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)),
    "manylinux2014_x86_64",
)


def base_key(suite: str = DEBIAN_SUITE, packages: Iterable[str] = BASE_PACKAGES) -> str:
    """Short hash naming a Debian base: a change of suite, packages or excludes makes a new one."""
    text = "\n".join([suite, *sorted(packages), *DPKG_PATH_EXCLUDES, MMDEBSTRAP_HOOK_DIR, SOURCE_DATE_EPOCH])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_reference(key: str) -> str:
    """Local name of the Debian base image with key ``key``."""
    return f"localhost/baton-base:{DEBIAN_SUITE}-{key}"


def mmdebstrap_argv(
    out: Path, suite: str = DEBIAN_SUITE, packages: Iterable[str] = BASE_PACKAGES
) -> list[str]:
    """mmdebstrap writing a minimal Debian rootfs with ``packages`` as a tarball to ``out``."""
    argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", "--format=tar"]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_PATH_EXCLUDES]
    argv.append(f"--hook-dir={MMDEBSTRAP_HOOK_DIR}")
    return [*argv, suite, str(out)]


def image_reference(recipe: Recipe, variant: Variant) -> str:
    """The name the image is built under: ``docker.io/library/baton-worker:dev`` (CPU) or
    ``...:dev-cuda``, the fully qualified form that pods saying ``baton-worker:dev`` resolve to."""
    return qualified(dev_image(recipe.name) + variant.tag_suffix)


def requirement(recipe: Recipe, wheel: Path) -> str:
    """The pip requirement for baton's wheel with the recipe's extras, e.g. ``/x/baton.whl[worker]``."""
    return f"{wheel}[{','.join(recipe.extras)}]" if recipe.extras else str(wheel)


@dataclass(frozen=True, order=True)
class Pin:
    """One third-party distribution at an exact version."""

    name: str
    version: str


def canonical(name: str) -> str:
    """PEP 503 normalized distribution name (``Foo_bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_from_report(report: Mapping[str, Any], exclude: Iterable[str] = ("baton",)) -> list[Pin]:
    """The distributions pip's ``--report`` says it would install, minus ``exclude``, sorted."""
    skip = {canonical(n) for n in exclude}
    pins = {
        Pin(canonical(item["metadata"]["name"]), item["metadata"]["version"])
        for item in report.get("install", [])
    }
    return sorted(p for p in pins if p.name not in skip)


# The accelerator stack: torch and the CUDA libraries its wheels bring, triton and NIXL. Over
# 5 GB of the worker image, and it changes only with torch's version, so it gets a layer of its
# own that a new release of any other dependency leaves cached (and unwritten: podman and the
# node's containerd each hold every distinct layer once more).
ACCELERATOR_NAMES: tuple[str, ...] = ("torch", "triton")
ACCELERATOR_PREFIXES: tuple[str, ...] = ("nvidia-", "cuda-", "nixl")


def is_accelerator(pin: Pin) -> bool:
    """Whether ``pin`` belongs to the accelerator stack's layer (see ACCELERATOR_NAMES)."""
    return pin.name in ACCELERATOR_NAMES or pin.name.startswith(ACCELERATOR_PREFIXES)


def split_pins(pins: Iterable[Pin]) -> tuple[list[Pin], list[Pin]]:
    """``pins`` as (the accelerator stack, everything else), each sorted."""
    ordered = sorted(pins)
    return [p for p in ordered if is_accelerator(p)], [p for p in ordered if not is_accelerator(p)]


def requirements_text(pins: Iterable[Pin]) -> str:
    """requirements.txt of the image: one ``name==version`` per line (it keys the layer cache)."""
    return "".join(f"{p.name}=={p.version}\n" for p in sorted(pins))


_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def wheel_pin(filename: str) -> Pin | None:
    """The distribution and version a wheel file name carries; None for anything else."""
    m = _WHEEL_NAME.match(filename)
    return Pin(canonical(m.group("name")), m.group("version")) if m else None


def wheels_for(pins: Iterable[Pin], filenames: Iterable[str]) -> tuple[list[str], list[Pin]]:
    """Wheel files (of ``filenames``) that provide ``pins``, and the pins none provides."""
    wanted = set(pins)
    chosen = sorted(f for f in filenames if wheel_pin(f) in wanted)
    found = {wheel_pin(f) for f in chosen}
    return chosen, sorted(wanted - found)


def constraints_text(installed: Mapping[str, str], exclude: Iterable[str] = ("baton",)) -> str:
    """Constraints pinning each distribution installed here, so the images carry the versions
    this checkout was tested with (a version the image's Python cannot use is re-resolved)."""
    skip = {canonical(n) for n in exclude}
    return "".join(f"{n}=={v}\n" for n, v in sorted(installed.items()) if canonical(n) not in skip)


def build_argv(
    podman: str,
    recipe: Recipe,
    variant: Variant,
    context: Path,
    base: str,
    version: str,
    revision: str,
) -> list[str]:
    """``podman build`` of one image from its prepared context."""
    argv = [
        podman,
        "build",
        "--layers",
        "--format=oci",
        f"--file={context / 'Containerfile'}",
        f"--tag={image_reference(recipe, variant)}",
        f"--build-arg=BASE={base}",
        f"--build-arg=VERSION={version}",
        f"--build-arg=REVISION={revision}",
    ]
    if variant.base is None:
        # Everything comes from the context and the local base: no registry, no network.
        argv += ["--pull=never", "--network=none"]
    return [*argv, str(context)]


def pip_resolve_argv(
    python: str, requirement_spec: str, report: Path, constraints: Path, wheelhouse: Path, variant: Variant
) -> list[str]:
    """pip resolving baton's dependencies for the image without installing anything."""
    argv = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    argv += [f"--report={report}", f"--constraint={constraints}", f"--find-links={wheelhouse}"]
    argv += _cross_args(variant)
    return [*argv, requirement_spec]


def wheelhouse_name(variant: Variant, running_python: str) -> str:
    """The wheelhouse of the base's Python (``py3.12``): wheels of other Pythons never mix in."""
    return f"py{variant.python_version or running_python}"


def pip_fetch_argv(python: str, requirements: Path, wheelhouse: Path, variant: Variant) -> list[str]:
    """pip putting a wheel of every pinned distribution into ``wheelhouse`` (present ones are kept).

    For the Python running the build, ``pip wheel`` (it also builds wheels from sdists); for
    another Python, ``pip download`` of binary wheels for that Python.
    """
    common = ["--no-deps", f"--find-links={wheelhouse}", "--quiet", "-r", str(requirements)]
    if variant.python_version is None:
        return [python, "-m", "pip", "wheel", f"--wheel-dir={wheelhouse}", *common]
    return [python, "-m", "pip", "download", f"--dest={wheelhouse}", *_cross_args(variant), *common]


def _cross_args(variant: Variant) -> list[str]:
    if variant.python_version is None:
        return []
    args = [f"--python-version={variant.python_version}", "--only-binary=:all:"]
    return args + [f"--platform={p}" for p in CROSS_PLATFORMS]
