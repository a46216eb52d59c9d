"""The worker's model cache fill: one filler under the lock, the others wait then hit; a crash
mid-fill leaves no marker. Real processes and threads on a tmp directory."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from baton_worker import model_cache

SOURCE = "hf://org/model"

# A worker process: materializes SOURCE with a slow fill that counts itself in fills.log.
FILLER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from baton_worker import model_cache

    root = Path(sys.argv[1])

    def fill():
        with open(root / "fills.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        out = root / "models" / "m"
        out.mkdir(parents=True, exist_ok=True)
        time.sleep(float(sys.argv[2]))
        if sys.argv[3] == "crash":
            os._exit(3)  # killed mid-fill: no config.json, no marker
        (out / "config.json").write_text("{}")
        return out

    print(model_cache.materialize(sys.argv[4], fill, root))
    """
)


def run_filler(root: Path, seconds: float = 0.0, mode: str = "ok", source: str = SOURCE):
    return subprocess.Popen(
        [sys.executable, "-c", FILLER, str(root), str(seconds), mode, source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fills(root: Path) -> int:
    log = root / "fills.log"
    return len(log.read_text().split()) if log.exists() else 0


def test_two_concurrent_processes_fill_exactly_once(tmp_path):
    first = run_filler(tmp_path, seconds=1.5)
    model_cache_lock = model_cache.lock_path(tmp_path, SOURCE)
    # The second starts while the first holds the lock.
    while not (tmp_path / "fills.log").exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = run_filler(tmp_path, seconds=1.5)
    outs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert fills(tmp_path) == 1
    assert outs[0][0] == outs[1][0] == f"{tmp_path / 'models' / 'm'}\n"
    assert f"model cache filled: {SOURCE} in " in outs[0][1]
    assert f"waiting for another worker to fill {SOURCE}" in outs[1][1]
    assert f"model cache hit: {SOURCE}" in outs[1][1]
    assert model_cache_lock.exists() and model_cache.marker_path(tmp_path, SOURCE).exists()
    # A restart later finds the marker at once.
    third = run_filler(tmp_path)
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0 and fills(tmp_path) == 1
    assert f"model cache hit: {SOURCE}" in err and "waiting" not in err


def test_threads_fill_exactly_once(tmp_path):
    calls: list[int] = []
    lock = threading.Lock()

    def fill() -> Path:
        with lock:
            calls.append(1)
        out = tmp_path / "models" / "m"
        out.mkdir(parents=True, exist_ok=True)
        threading.Event().wait(0.3)
        (out / "config.json").write_text("{}")
        return out

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(model_cache.materialize(SOURCE, fill, tmp_path)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1 and results == [tmp_path / "models" / "m"] * 4


def test_a_crash_mid_fill_leaves_no_marker_and_the_next_worker_refills(tmp_path):
    crashed = run_filler(tmp_path, seconds=0.2, mode="crash")
    _, err = crashed.communicate(timeout=60)
    assert crashed.returncode == 3
    assert not model_cache.marker_path(tmp_path, SOURCE).exists()
    retry = run_filler(tmp_path)
    _, err = retry.communicate(timeout=60)
    assert retry.returncode == 0 and fills(tmp_path) == 2
    assert f"model cache filled: {SOURCE}" in err


@pytest.mark.parametrize(
    ("marker", "hit"),
    [
        ('{"source": "hf://org/model", "path": "%s"}', True),
        ('{"source": "hf://org/other", "path": "%s"}', False),  # another source's
        ('{"source": "hf://org/model", "path": "%s/gone"}', False),  # its directory was removed
        ("{not json", False),
    ],
)
def test_a_marker_counts_only_for_its_source_and_an_existing_directory(tmp_path, marker, hit):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = model_cache.marker_path(tmp_path, SOURCE)
    path.parent.mkdir(parents=True)
    path.write_text(marker.replace("%s", str(model)))
    assert (model_cache.read_marker(tmp_path, SOURCE) == model) is hit


def test_a_builtin_marker_counts_only_for_the_same_build(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    model_cache.write_marker(tmp_path, "builtin://tiny", model, 1.0, revision="old-build")
    assert model_cache.read_marker(tmp_path, "builtin://tiny", "old-build") == model
    calls = []
    monkeypatch.setattr(model_cache, "source_revision", lambda source: "new-build")
    assert model_cache.materialize("builtin://tiny", lambda: calls.append(1) or model, tmp_path) == model
    assert calls == [1]  # a new builder: built again, and marked for the new build
    assert model_cache.read_marker(tmp_path, "builtin://tiny", "new-build") == model


@pytest.mark.parametrize("source", ["file:///models/m", "pvc://claim/m", "/models/m"])
def test_paths_are_not_cached_or_locked(tmp_path, source):
    calls = []
    assert model_cache.materialize(source, lambda: calls.append(1) or Path("/models/m"), tmp_path)
    assert model_cache.materialize(source, lambda: calls.append(1) or Path("/models/m"), tmp_path)
    assert len(calls) == 2 and not (tmp_path / "locks").exists()


def test_a_file_system_without_locks_fills_without_one(tmp_path, monkeypatch, capsys):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(model_cache.fcntl, "flock", no_locks)
    monkeypatch.setattr(model_cache, "source_revision", lambda source: "")
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert model_cache.materialize("builtin://tiny", lambda: out, tmp_path) == out
    err = capsys.readouterr().err
    assert "filling without the lock" in err and "model cache filled: builtin://tiny" in err


def test_the_revision_of_a_builtin_source_is_its_build():
    from baton_worker.engine.builtin import BUILTINS, _spec_hash

    assert model_cache.source_revision("builtin://tiny") == _spec_hash(BUILTINS["tiny"])
    assert model_cache.source_revision("builtin://no-such-model") == ""
    assert model_cache.source_revision("hf://org/model") == ""


def test_the_worker_resolves_model_sources_through_the_cache(tmp_path, monkeypatch, capsys):
    from baton_worker.engine.loader import resolve_source

    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path))
    first = resolve_source("builtin://tiny")
    assert "model cache filled: builtin://tiny in " in capsys.readouterr().err
    assert resolve_source("builtin://tiny") == first and (first / "config.json").is_file()
    assert "model cache hit: builtin://tiny" in capsys.readouterr().err
