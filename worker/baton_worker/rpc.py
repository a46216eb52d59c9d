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
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("grpcio-tools is needed to build the gRPC stubs: pip install 'baton[worker]'") from exc
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()
    stamp = _OUT_DIR / "SOURCE_SHA256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    tmp = Path(tempfile.mkdtemp(prefix="baton-proto-", dir=_PKG_DIR))
    try:
        include = Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto.parent}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(proto),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        # grpc_tools writes `import baton_pb2`; make it package-relative.
        grpc_file = tmp / "baton_pb2_grpc.py"
        grpc_file.write_text(grpc_file.read_text().replace("import baton_pb2 as", "from . import baton_pb2 as"))
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
