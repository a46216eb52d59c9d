"""Find or build the sandbox's binaries (`baton sandbox build`).

Resolution order for each binary: ``$BATON_K8S_BIN_DIR``, the version-keyed cache
(``~/.cache/baton/k8s-<version>/bin``), then PATH; a binary is only taken when it reports the
pinned version. What is still missing is built from its upstream Go module: a small wrapper
module (generated in the cache) requires the upstream module and pins what its local
``replace`` directives point at, then ``go build`` writes the binaries into the cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .versions import GO_MINIMUM, Binary, GoComponent, cache_key, components

BIN_DIR_ENV = "BATON_K8S_BIN_DIR"
# Generous: a cold build of kubernetes on two busy cores takes tens of minutes.
BUILD_TIMEOUT_S = 3 * 3600
VERSION_TIMEOUT_S = 20


class BuildError(RuntimeError):
    """A binary could not be found or built; the message is one line saying why."""


@dataclass(frozen=True)
class Resolved:
    """Where each sandbox binary lives and where it came from (env, cache, path, built)."""

    paths: dict[str, Path]
    sources: dict[str, str]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/baton`` (default ``~/.cache/baton``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "baton"


def cache_dir() -> Path:
    """The version-keyed directory holding ``bin/``, the wrapper modules and build logs."""
    return cache_root() / cache_key()


_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")


def parse_replaces(gomod: str) -> list[tuple[str, str, str | None]]:
    """The replace directives of a go.mod text as ``(old_path, new_path, new_version)``."""
    out: list[tuple[str, str, str | None]] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        stripped = line.strip()
        if stripped.startswith("replace ("):
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if in_block or stripped.startswith("replace "):
            m = _REPLACE_LINE.match(stripped)
            if m:
                out.append((m.group(1), m.group(2), m.group(3)))
    return out


def wrapper_gomod(component: GoComponent, upstream_gomod: str) -> str:
    """go.mod of the wrapper module that builds ``component`` outside its own repository.

    Replace directives of the upstream module do not apply to a module that depends on it, so
    they are re-stated here: local ones (``=> ./staging/...``) pinned to
    ``component.local_replace_version`` (or dropped when that is None), remote ones copied.
    """
    lines = [f"module baton.local/build/{component.name}", "", "go 1.25.0", ""]
    lines.append(f"require {component.module} {component.version}")
    replaces: list[str] = []
    for old, new, new_version in parse_replaces(upstream_gomod):
        if new.startswith("."):
            if component.local_replace_version is not None:
                replaces.append(f"\t{old} => {old} {component.local_replace_version}")
        else:
            target = f"{new} {new_version}" if new_version else new
            replaces.append(f"\t{old} => {target}")
    if replaces:
        lines += ["", "replace (", *replaces, ")"]
    return "\n".join(lines) + "\n"


def go_output_name(package: str) -> str:
    """File name `go build -o DIR/` gives a main package: its last path element, skipping a
    major-version suffix (``go.etcd.io/etcd/server/v3`` -> ``server``)."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def reports_version(path: Path, binary: Binary) -> bool:
    """Whether the executable at ``path`` reports the pinned version of ``binary``."""
    try:
        proc = subprocess.run(
            [str(path), *binary.version_args],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return binary.version_text in (proc.stdout + proc.stderr)


def _stamp_path(bin_dir: Path) -> Path:
    return bin_dir / ".stamps.json"


def _read_stamps(bin_dir: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads(_stamp_path(bin_dir).read_text())
    except (OSError, ValueError):
        return {}


def _stamp_of(path: Path, binary: Binary) -> dict[str, object]:
    st = path.stat()
    return {"version": binary.version_text, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached(bin_dir: Path, binary: Binary, stamps: dict[str, dict[str, object]]) -> Path | None:
    # A stamp (version + size + mtime) written after a build saves running every binary.
    path = bin_dir / binary.name
    if not path.is_file() or binary.name not in stamps:
        return None
    return path if stamps[binary.name] == _stamp_of(path, binary) else None


def find_existing(binary: Binary, bin_dir: Path) -> tuple[Path, str] | None:
    """A usable binary already on this machine, and where it came from; None if none."""
    env_dir = os.environ.get(BIN_DIR_ENV)
    if env_dir:
        candidate = Path(env_dir) / binary.name
        if candidate.is_file() and reports_version(candidate, binary):
            return candidate, "env"
    stamps = _read_stamps(bin_dir)
    cached = _cached(bin_dir, binary, stamps)
    if cached is not None:
        return cached, "cache"
    in_cache = bin_dir / binary.name
    if in_cache.is_file() and reports_version(in_cache, binary):
        # Built without a stamp (an interrupted run, or by hand): adopt it.
        stamps[binary.name] = _stamp_of(in_cache, binary)
        _stamp_path(bin_dir).write_text(json.dumps(stamps, indent=1, sort_keys=True))
        return in_cache, "cache"
    on_path = shutil.which(binary.name)
    if on_path and Path(on_path).parent != bin_dir and reports_version(Path(on_path), binary):
        return Path(on_path), "path"
    return None


@contextmanager
def _lock(directory: Path) -> Iterator[None]:
    # Two `make test` runs at once must not write the same binaries.
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Where Go's official installer puts it, for shells whose PATH lacks it.
GO_FALLBACKS: tuple[str, ...] = ("/usr/local/go/bin/go",)


def _go() -> str:
    go = shutil.which("go") or next((g for g in GO_FALLBACKS if Path(g).is_file()), None)
    if go is None:
        raise BuildError(
            f"Go is not installed (need go >= {GO_MINIMUM} on PATH to build the sandbox binaries); "
            f"install Go or point ${BIN_DIR_ENV} at a directory holding them"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never let a go.mod's toolchain line download another Go; -mod=mod lets go.sum be written.
    env.update(GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    return env


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("go: downloading")]
    return lines[-1] if lines else "no output"


def build_component(component: GoComponent, binaries: tuple[Binary, ...], log: Callable[[str], None]) -> None:
    """Build ``binaries`` of ``component`` into the cache's bin/; raises BuildError naming the module."""
    go, env, root = _go(), _go_env(), cache_dir()
    src, bin_dir, logs = root / "src" / component.name, root / "bin", root / "logs"
    for d in (src, bin_dir, logs):
        d.mkdir(parents=True, exist_ok=True)
    what = f"{component.module} {component.version}"
    log_path = logs / f"build-{component.name}.log"
    dl = subprocess.run(
        [go, "mod", "download", "-json", f"{component.module}@{component.version}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
        timeout=1800,
        check=False,
    )
    try:
        gomod_path = json.loads(dl.stdout)["GoMod"]
    except (ValueError, KeyError):
        raise BuildError(f"cannot download {what}: {_last_error_line(dl.stdout + dl.stderr)}") from None
    text = wrapper_gomod(component, Path(gomod_path).read_text())
    # `go build -mod=mod` may rewrite go.mod (e.g. its go line), so compare what we generated
    # last time, kept aside, and only start over (dropping go.sum) when that changed.
    generated, gomod = src / "go.mod.generated", src / "go.mod"
    if not gomod.exists() or not generated.exists() or generated.read_text() != text:
        gomod.write_text(text)
        generated.write_text(text)
        (src / "go.sum").unlink(missing_ok=True)
    if component.main_go:
        (src / "main.go").write_text(component.main_go)
    tmp_out = bin_dir / f".tmp-{component.name}"
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir()
    ldflags = " ".join(("-s", "-w", *component.ldflags))
    cmd = [
        go,
        "build",
        "-trimpath",
        f"-ldflags={ldflags}",
        "-o",
        f"{tmp_out}/",
        *(b.package for b in binaries),
    ]
    names = ", ".join(b.name for b in binaries)
    log(f"building {names} from {what} (log: {log_path})")
    start = time.monotonic()
    with open(log_path, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=src, timeout=BUILD_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"building {what} took over {BUILD_TIMEOUT_S} s; log: {log_path}") from None
    if proc.returncode != 0:
        raise BuildError(
            f"module {what} failed to build: {_last_error_line(log_path.read_text())} (log: {log_path})"
        )
    stamps = _read_stamps(bin_dir)
    for b in binaries:
        built = tmp_out / go_output_name(b.package)
        if not built.exists():
            raise BuildError(f"module {what}: go build produced no {built.name} (log: {log_path})")
        os.replace(built, bin_dir / b.name)
        stamps[b.name] = _stamp_of(bin_dir / b.name, b)
    _stamp_path(bin_dir).write_text(json.dumps(stamps, indent=1, sort_keys=True))
    shutil.rmtree(tmp_out, ignore_errors=True)
    log(f"built {names} in {time.monotonic() - start:.0f} s")


def resolve(build_missing: bool = True, log: Callable[[str], None] = print) -> Resolved:
    """Every sandbox binary's path, building what is missing (idempotent; instant when cached).

    Raises BuildError when a binary is missing and ``build_missing`` is False, or a build fails.
    """
    bin_dir = cache_dir() / "bin"
    paths: dict[str, Path] = {}
    sources: dict[str, str] = {}
    with _lock(cache_dir()):
        for component in components():
            missing: list[Binary] = []
            for b in component.binaries:
                found = find_existing(b, bin_dir)
                if found is None:
                    missing.append(b)
                else:
                    paths[b.name], sources[b.name] = found
            if missing and not build_missing:
                names = ", ".join(b.name for b in missing)
                raise BuildError(f"missing sandbox binaries ({names}): run `baton sandbox build` first")
            if missing:
                build_component(component, tuple(missing), log)
                for b in missing:
                    paths[b.name], sources[b.name] = bin_dir / b.name, "built"
    return Resolved(paths=paths, sources=sources)
