"""constraints.txt, the lock `make install` and `make images` install from, matches pyproject.toml
and the environment the tests run in."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)$")


def lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = PIN.match(line.strip())
        assert m, f"constraints.txt: {line!r} is not name==version"
        pins[canonicalize_name(m["name"])] = Version(m["version"])
    return pins


def requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("worker", "dev"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    env = {"platform_system": "Linux", "sys_platform": "linux"}
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize("req", requirements(), ids=str)
def test_the_lock_pins_every_requirement_within_its_range(req: Requirement) -> None:
    pins = lock()
    name = canonicalize_name(req.name)
    assert name in pins, f"constraints.txt lacks {req.name}: run tools/lock.py"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {req}: run tools/lock.py --upgrade"
    )


def test_the_environment_was_installed_from_the_lock() -> None:
    # make install passes -c constraints.txt; a drifted environment would test other versions
    # than the images carry.
    drift = []
    for name, version in lock().items():
        try:
            have = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # another platform's or Python's dependency
        if have != version:
            drift.append(f"{name} {have} (lock {version})")
    assert not drift, f"installed versions differ from constraints.txt (run make install): {drift}"
