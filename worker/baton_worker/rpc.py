"""Generated gRPC modules for worker/proto/baton.proto, built on first import.

The generated code is never committed: it is produced with grpc_tools into
``baton_worker/_proto`` the first time it is needed (under a file lock, since several
worker processes may start at once) and regenerated whenever the .proto changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

# Bumped on any incompatible change of the proto or the KV layout.
WIRE_VERSION = 1

_PKG_DIR = Path(__file__).resolve().parent
_OUT_DIR = _PKG_DIR / "_proto"
_PROTO_CANDIDATES = (
    _PKG_DIR.parent / "proto" / "baton.proto",  # source checkout / editable install
    _PKG_DIR / "proto" / "baton.proto",  # packaged copy
)


def proto_path() -> Path:
    """Return the path of baton.proto, or raise FileNotFoundError naming where it looked."""
    for candidate in _PROTO_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"baton.proto not found in {[str(c) for c in _PROTO_CANDIDATES]}")


def _generate(proto: Path) -> None:
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()
    stamp = _OUT_DIR / "SOURCE_SHA256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    tmp = Path(tempfile.mkdtemp(prefix="baton-proto-", dir=_PKG_DIR))
    try:
        # protoc runs in a child process: grpc_tools bundles its own libprotobuf/absl, which
        # crash when loaded into a process that already holds NIXL's copies.
        script = (
            "import sys; from pathlib import Path; from grpc_tools import protoc; "
            "inc = str(Path(protoc.__file__).parent / '_proto'); "
            "sys.exit(protoc.main(['grpc_tools.protoc', '-I' + sys.argv[1], '-I' + inc, "
            "'--python_out=' + sys.argv[2], '--grpc_python_out=' + sys.argv[2], sys.argv[3]]))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, str(proto.parent), str(tmp), str(proto)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            hint = (
                "; is grpcio-tools installed (pip install 'baton[worker]')?"
                if "grpc_tools" in proc.stderr
                else ""
            )
            raise RuntimeError(
                f"protoc failed on {proto} (exit {proc.returncode}): {proc.stderr.strip()}{hint}"
            )
        # grpc_tools writes `import baton_pb2`; make it package-relative.
        grpc_file = tmp / "baton_pb2_grpc.py"
        grpc_file.write_text(
            grpc_file.read_text().replace("import baton_pb2 as", "from . import baton_pb2 as")
        )
        (tmp / "__init__.py").write_text("")
        (tmp / "SOURCE_SHA256").write_text(digest + "\n")
        if _OUT_DIR.exists():
            shutil.rmtree(_OUT_DIR)
        os.replace(tmp, _OUT_DIR)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load() -> tuple[ModuleType, ModuleType]:
    proto = proto_path()
    lock_path = _PKG_DIR / ".proto.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _generate(proto)
    importlib.invalidate_caches()
    for name in ("baton_worker._proto.baton_pb2", "baton_worker._proto.baton_pb2_grpc"):
        sys.modules.pop(name, None)
    pb2 = importlib.import_module("baton_worker._proto.baton_pb2")
    pb2_grpc = importlib.import_module("baton_worker._proto.baton_pb2_grpc")
    return pb2, pb2_grpc


pb2, pb2_grpc = _load()

__all__ = ["WIRE_VERSION", "pb2", "pb2_grpc", "proto_path"]
