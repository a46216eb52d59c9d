"""baton's wheel, built the way the images build it: it carries the wire contract and its
generated code, and nothing of the checkout beyond the production packages."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from baton_dev.sandbox.images import build_wheel, repo_root

pytestmark = pytest.mark.slow


def test_the_wheel_carries_the_proto_and_its_generated_code(tmp_path: Path) -> None:
    wheel = build_wheel(repo_root(), tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "baton_worker/proto/baton.proto",
        "baton_worker/proto/baton_pb2.py",
        "baton_worker/proto/baton_pb2_grpc.py",
        "baton_worker/rpc.py",
        "baton_operator/main.py",
    ):
        assert required in names, required
    tops = {n.split("/")[0] for n in names}
    # The development tools (baton_dev: sandbox, benchmarks, profiler) stay out of the images.
    assert tops == {"baton_worker", "baton_operator", "baton-0.1.0.dist-info"}, tops
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry_points = zipfile.ZipFile(wheel).read("baton-0.1.0.dist-info/entry_points.txt").decode()
    assert "baton = baton_worker.cli:main" in entry_points


def test_the_wheel_is_reproducible(tmp_path: Path) -> None:
    # Same tree, same bytes: an unchanged checkout rebuilds no image layer.
    first = build_wheel(repo_root(), tmp_path / "a").read_bytes()
    second = build_wheel(repo_root(), tmp_path / "b").read_bytes()
    assert first == second
