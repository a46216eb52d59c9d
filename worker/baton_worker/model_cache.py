"""Fill the model cache once: one worker downloads or builds a model source, the others wait.

With ``spec.model.cache`` every worker pod of a pool mounts one claim at the cache directory
(``$BATON_CACHE_DIR``), and they all start together. The fill of a source (hf:// download,
builtin:// build) runs under an exclusive ``flock`` on ``<cache>/locks/<sha>.lock`` and ends by
writing the completion marker ``<cache>/filled/<sha>.json`` (the directory it filled). A worker
that finds the marker skips the fill; one that finds the lock held waits, then finds the marker.
The kernel drops a crashed filler's lock and it wrote no marker, so the next worker refills
(huggingface_hub resumes partial downloads; builtin builds start over in a fresh directory).

flock works across nodes on NFSv4 and CephFS (the usual ReadWriteMany volumes). Where the file
system refuses locks, workers fill without one, as they would on separate emptyDirs.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

# Sources the worker materializes into the cache directory; the others are paths already.
CACHED_SCHEMES = ("hf://", "builtin://")
WAIT_POLL_S = 0.5
WAIT_LOG_EVERY_S = 60.0


def _log(msg: str) -> None:
    print(f"[baton] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The cache directory: ``$BATON_CACHE_DIR`` or ``~/.cache/baton`` (as builtin.cache_root)."""
    return Path(os.environ.get("BATON_CACHE_DIR") or Path.home() / ".cache" / "baton")


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def lock_path(root: Path, source: str) -> Path:
    return root / "locks" / f"{source_key(source)}.lock"


def marker_path(root: Path, source: str) -> Path:
    return root / "filled" / f"{source_key(source)}.json"


def source_revision(source: str) -> str:
    """What else identifies a fill of ``source``: a builtin model's build (a new builder makes a
    new directory, which the old marker must not stand for). hf:// sources: "" (the revision
    downloaded first is kept; a new one needs a new cache)."""
    if not source.startswith("builtin://"):
        return ""
    from baton_worker.engine.builtin import builtin_revision

    try:
        return builtin_revision(source[len("builtin://") :])
    except KeyError:
        return ""  # the fill raises the error naming the known models


def read_marker(root: Path, source: str, revision: str = "") -> Path | None:
    """The directory a completed fill of ``source`` at ``revision`` left, None when there is no
    usable marker (none, unreadable, another source's or revision's, or its directory gone)."""
    try:
        data = json.loads(marker_path(root, source).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("source") != source or data.get("revision", "") != revision:
        return None
    path = Path(str(data.get("path") or ""))
    return path if path.is_absolute() and (path / "config.json").is_file() else None


def write_marker(root: Path, source: str, path: Path, seconds: float, revision: str = "") -> None:
    """Written last and atomically (rename), so a marker always describes a finished fill."""
    marker = marker_path(root, source)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    body = {
        "source": source,
        "revision": revision,
        "path": str(path.resolve()),
        "seconds": round(seconds, 3),
        "at": time.time(),
    }
    with open(tmp, "w") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)


def _lock(f: IO[str], source: str, lock: Path) -> bool:
    """Take the exclusive lock, waiting (and saying so) while another worker holds it. False when
    the file system does not support locks."""
    started = time.monotonic()
    next_log = 0.0
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                _log(f"model cache: {lock} cannot be locked ({e.strerror}); filling without the lock")
                return False
            raise
        waited = time.monotonic() - started
        if waited >= next_log:
            _log(f"model cache: waiting for another worker to fill {source} ({waited:.0f} s)")
            next_log = waited + WAIT_LOG_EVERY_S
        time.sleep(WAIT_POLL_S)


def materialize(source: str, fill: Callable[[], Path], root: Path | None = None) -> Path:
    """The local directory of ``source``: from the cache's marker when a fill completed, else
    from ``fill()`` run by one process at a time, which then marks the cache filled.

    Sources other than hf:// and builtin:// are paths already: ``fill()`` is returned as is.
    """
    if not source.startswith(CACHED_SCHEMES):
        return fill()
    root = root or cache_dir()
    revision = source_revision(source)
    hit = read_marker(root, source, revision)
    if hit is not None:
        _log(f"model cache hit: {source}")
        return hit
    lock = lock_path(root, source)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        locked = _lock(f, source, lock)
        try:
            # The worker that held the lock may have filled it while this one waited.
            hit = read_marker(root, source, revision)
            if hit is not None:
                _log(f"model cache hit: {source}")
                return hit
            started = time.monotonic()
            path = fill()
            seconds = time.monotonic() - started
            write_marker(root, source, path, seconds, revision)
            _log(f"model cache filled: {source} in {seconds:.0f} s")
            return path
        finally:
            if locked:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
