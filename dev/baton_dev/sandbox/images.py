"""`baton sandbox images` (`make images`): build baton-operator:dev and baton-worker:dev here.

No Docker engine and no registry are needed: the CPU base is a Debian rootfs that mmdebstrap
makes from Debian packages, imported into podman's storage once; third-party wheels are fetched
on the host into a wheelhouse (``~/.cache/baton/images/wheelhouse``) and bind-mounted into the
build; podman (buildah) builds each image from its Containerfile in ``images/`` with layer caching,
so a change of baton's own code rebuilds only the small top layer. What each step runs is decided
in imageplan.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from baton_operator import __version__

from .build import cache_root
from .imageplan import (
    PAUSE_IMAGE,
    RECIPES,
    SOURCE_DATE_EPOCH,
    VARIANTS,
    WHEEL_SOURCE_SKIP,
    WHEEL_SOURCES,
    Pin,
    Recipe,
    Variant,
    base_key,
    base_reference,
    build_argv,
    constraints_text,
    image_reference,
    mmdebstrap_argv,
    pins_from_report,
    pip_fetch_argv,
    pip_resolve_argv,
    requirement,
    requirements_text,
    split_pins,
    wheelhouse_name,
    wheels_for,
)

# Debian package that provides each tool, for the error message when it is missing.
TOOL_PACKAGES = {"podman": "podman", "mmdebstrap": "mmdebstrap"}
STEP_TIMEOUT_S = 3600


class ImageError(RuntimeError):
    """An image could not be built; the message says which step failed and why."""


@dataclass
class BuiltImage:
    """One built image, as `baton sandbox images --json` reports it."""

    image: str
    reference: str
    variant: str
    base: str
    build_seconds: float
    size_bytes: int = 0
    layers: list[dict[str, object]] = field(default_factory=list)
    context: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def repo_root() -> Path:
    """The checkout holding ``images/`` and ``pyproject.toml`` (images build from source)."""
    here = Path(__file__).resolve()
    for root in (*here.parents, Path.cwd(), *Path.cwd().parents):
        if (root / "images" / "worker.Containerfile").is_file() and (root / "pyproject.toml").is_file():
            return root
    raise ImageError("images build from a baton checkout: run from the repository (images/*.Containerfile)")


def images_dir() -> Path:
    """``~/.cache/baton/images``: the base tarballs, the wheelhouse and the build contexts."""
    return cache_root() / "images"


def tool(name: str) -> str:
    """Path of ``name`` on PATH; ImageError naming the Debian package when it is missing."""
    found = shutil.which(name)
    if found is None:
        raise ImageError(f"{name} not found: install it (apt-get install {TOOL_PACKAGES.get(name, name)})")
    return found


def _run(argv: Sequence[str], what: str, *, env: dict[str, str] | None = None, **kw: object) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=env, timeout=STEP_TIMEOUT_S, check=False, **kw
        )
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: took over {STEP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise ImageError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def image_exists(podman: str, reference: str) -> bool:
    return subprocess.run([podman, "image", "exists", reference], check=False).returncode == 0


def ensure_base(podman: str, log: Callable[[str], None]) -> str:
    """The Debian base in podman's storage, made with mmdebstrap on first use; its reference."""
    key = base_key()
    ref = base_reference(key)
    if image_exists(podman, ref):
        return ref
    tarball = images_dir() / f"base-{key}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        tmp = tarball.with_suffix(".tmp")
        log(f"making the Debian base rootfs with mmdebstrap ({tarball})")
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        _run([tool("mmdebstrap"), *mmdebstrap_argv(tmp)[1:]], "mmdebstrap (Debian base rootfs)", env=env)
        tmp.replace(tarball)
    _run([podman, "import", str(tarball), ref], f"podman import of {tarball}")
    return ref


def _ignore(_dir: str, names: list[str]) -> set[str]:
    import fnmatch

    return {n for n in names for pat in WHEEL_SOURCE_SKIP if fnmatch.fnmatch(n, pat)}


def build_wheel(root: Path, out_dir: Path) -> Path:
    """baton's wheel from a clean copy of the sources (reproducible: same tree, same bytes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="baton-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            path = root / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=_ignore)
            else:
                shutil.copy2(path, src / name)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", f"--wheel-dir={out_dir}"]
        if _setuptools_is_new_enough():
            # The build backend is already here: no download, works offline.
            argv.append("--no-build-isolation")
        _run([*argv, str(src)], "building baton's wheel", env=env)
    wheels = sorted(out_dir.glob("baton-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"building baton's wheel produced {[w.name for w in wheels]} in {out_dir}")
    return wheels[0]


def _setuptools_is_new_enough() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
        importlib.metadata.version("wheel")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77


def _installed() -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def resolve_pins(recipe: Recipe, variant: Variant, wheel: Path, workdir: Path, wheelhouse: Path) -> list[Pin]:
    """Third-party distributions the image installs, pinned to what this environment has."""
    constraints = workdir / "constraints.txt"
    constraints.write_text(constraints_text(_installed()))
    report = workdir / "pip-report.json"
    argv = pip_resolve_argv(
        sys.executable, requirement(recipe, wheel), report, constraints, wheelhouse, variant
    )
    try:
        _run(argv, f"resolving the dependencies of {recipe.name}")
    except ImageError:
        # A pinned version this Python cannot use (another variant's Python): resolve freely.
        constraints.write_text("")
        _run(argv, f"resolving the dependencies of {recipe.name}")
    return pins_from_report(json.loads(report.read_text()))


def fetch_wheels(pins: list[Pin], variant: Variant, wheelhouse: Path, workdir: Path) -> list[Path]:
    """A wheel of every pin in the wheelhouse (downloading only what is missing); their paths."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    chosen, missing = wheels_for(pins, os.listdir(wheelhouse))
    if missing:
        reqs = workdir / "missing.txt"
        reqs.write_text(requirements_text(missing))
        _run(pip_fetch_argv(sys.executable, reqs, wheelhouse, variant), "fetching wheels into the wheelhouse")
        chosen, missing = wheels_for(pins, os.listdir(wheelhouse))
    if missing:
        names = ", ".join(f"{p.name}=={p.version}" for p in missing)
        raise ImageError(f"no wheel in {wheelhouse} for {names}")
    return [wheelhouse / f for f in chosen]


def prepare_context(
    root: Path, recipe: Recipe, variant: Variant, context: Path, log: Callable[[str], None]
) -> Path:
    """Write the build context of one image: Containerfile, requirements-accelerator.txt (torch,
    its CUDA libraries, triton, NIXL), requirements.txt (the other dependencies), wheels/, dist/."""
    shutil.rmtree(context, ignore_errors=True)
    (context / "wheels").mkdir(parents=True)
    wheel = build_wheel(root, context / "dist")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheelhouse = images_dir() / "wheelhouse" / wheelhouse_name(variant, running)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="baton-pip-") as tmp:
        pins = resolve_pins(recipe, variant, wheel, Path(tmp), wheelhouse)
        files = fetch_wheels(pins, variant, wheelhouse, Path(tmp))
    for f in files:
        target = context / "wheels" / f.name
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    accelerator, rest = split_pins(pins)
    (context / "requirements-accelerator.txt").write_text(requirements_text(accelerator))
    (context / "requirements.txt").write_text(requirements_text(rest))
    shutil.copy2(root / recipe.containerfile, context / "Containerfile")
    log(f"  {recipe.name}: context {context} ({len(pins)} pinned dependencies, {wheel.name})")
    return context


def revision(root: Path) -> str:
    """The checkout's commit (``-dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def image_layers(podman: str, reference: str) -> list[dict[str, object]]:
    """The image's layers, newest first: the step that made each and its size."""
    out = _run([podman, "history", "--format=json", reference], f"podman history {reference}")
    rows = json.loads(out or "[]")
    return [
        {
            "created_by": (r.get("CreatedBy") or r.get("created_by") or "")[:120],
            "size_bytes": int(r.get("size", 0)),
        }
        for r in rows
    ]


def image_size(podman: str, reference: str) -> int:
    out = _run([podman, "image", "inspect", "--format={{.Size}}", reference], f"podman inspect {reference}")
    return int(out.strip() or 0)


def build_pause(root: Path, podman: str, log: Callable[[str], None]) -> BuiltImage:
    """The real node's pod sandbox image: images/pause/pause.c compiled statically, FROM scratch."""
    t0 = time.monotonic()
    context = images_dir() / "contexts" / "pause"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ImageError("no C compiler to build the pause image (apt-get install gcc libc6-dev)")
    _run(
        [
            cc,
            "-static",
            "-O2",
            "-s",
            "-o",
            str(context / "pause"),
            str(root / "images" / "pause" / "pause.c"),
        ],
        "compiling images/pause/pause.c",
    )
    shutil.copy2(root / "images" / "pause.Containerfile", context / "Containerfile")
    argv = [podman, "build", "--layers", "--format=oci", "--pull=never", "--network=none"]
    _run([*argv, f"--tag={PAUSE_IMAGE}", str(context)], "podman build of the pause image")
    log(f"  baton-pause: {PAUSE_IMAGE}")
    return BuiltImage(
        image="baton-pause",
        reference=PAUSE_IMAGE,
        variant="cpu",
        base="scratch",
        build_seconds=round(time.monotonic() - t0, 1),
        size_bytes=image_size(podman, PAUSE_IMAGE),
        context=str(context),
    )


def disk_hint(podman: str) -> str:
    """What to free when a build ran out of disk: podman's storage and its temporary directory
    each hold a new dependency layer once (the worker's accelerator layer is over 5 GB)."""
    root = subprocess.run(
        [podman, "info", "--format={{.Store.GraphRoot}}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    places = [p for p in (root or "/var/lib/containers", os.environ.get("TMPDIR") or "/var/tmp") if p]
    free = ", ".join(
        f"{p}: {shutil.disk_usage(p).free / 1e9:.1f} GB free" for p in places if Path(p).exists()
    )
    return (
        f"out of disk ({free}); a new worker dependency layer needs about 15 GB while it is built. "
        "Free space: `podman system prune --all` drops every image and build cache (the next "
        "`make images` rebuilds them), or point TMPDIR at a larger file system."
    )


def build_images(
    which: Sequence[str] = ("operator", "worker"),
    *,
    variant: str = "cpu",
    context_only: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[BuiltImage]:
    """Build the images in ``which`` (``operator``, ``worker``, ``pause``) for ``variant``.

    With ``context_only`` the build contexts are written under that directory and nothing is
    built (for docker/buildah elsewhere). Raises ImageError naming the step that failed.
    """
    unknown = [w for w in which if w not in RECIPES and w != "pause"]
    if unknown or variant not in VARIANTS:
        raise ImageError(
            f"unknown image {unknown} or variant {variant!r}: images {list(RECIPES)}, variants {list(VARIANTS)}"
        )
    var = VARIANTS[variant]
    root = repo_root()
    podman = None if context_only else tool("podman")
    base = var.base
    if base is None:
        base = ensure_base(podman, log) if podman else base_reference(base_key())
    contexts = Path(context_only) if context_only else images_dir() / "contexts"
    rev = revision(root)
    if podman is not None:
        # Images an earlier build untagged still hold their layers: drop them before this build
        # needs the space.
        _run([podman, "image", "prune", "--force"], "podman image prune")
    built: list[BuiltImage] = []
    for key in which:
        if key == "pause":
            if podman is not None:
                built.append(build_pause(root, podman, log))
            continue
        recipe = RECIPES[key]
        if variant == "cuda" and key == "operator":
            raise ImageError("the operator image has no CUDA variant (it never loads a model)")
        t0 = time.monotonic()
        context = prepare_context(root, recipe, var, contexts / f"{key}{var.tag_suffix}", log)
        argv = build_argv(podman or "podman", recipe, var, context, base, __version__, rev)
        ref = image_reference(recipe, var)
        if podman is None:
            log(f"  {recipe.name}: context ready; build with: {' '.join(argv)}")
            built.append(BuiltImage(recipe.name, ref, variant, base, 0.0, context=str(context)))
            continue
        log(f"  {recipe.name}: podman build -> {ref}")
        try:
            _run(argv, f"podman build of {recipe.name} ({recipe.containerfile})")
        except ImageError as exc:
            if "no space left on device" in str(exc):
                raise ImageError(f"{exc}\n{disk_hint(podman)}") from None
            raise
        image = BuiltImage(
            image=recipe.name,
            reference=ref,
            variant=variant,
            base=base,
            build_seconds=round(time.monotonic() - t0, 1),
            size_bytes=image_size(podman, ref),
            layers=image_layers(podman, ref),
            context=str(context),
        )
        log(f"  {recipe.name}: {image.size_bytes / 1e6:.0f} MB in {image.build_seconds:.1f} s")
        built.append(image)
    if podman is not None and built:
        # Earlier builds' final images, untagged by this one, still hold their layers (the
        # worker's dependencies are 6 GB): drop them. The layers of this build's steps stay
        # cached.
        _run([podman, "image", "prune", "--force"], "podman image prune")
    return built
