"""Regenerate ``baton_pb2.py`` and ``baton_pb2_grpc.py`` from ``baton.proto`` (dev tooling).

``python -m baton_worker.proto.generate`` rewrites them in place; ``--check`` exits 1 and names
the stale file when the committed code differs from what the .proto gives now. Needs the
dev extra's pinned grpcio-tools, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO = PROTO_DIR / "baton.proto"
GENERATED = ("baton_pb2.py", "baton_pb2_grpc.py")
SOURCE_LINE = "# baton.proto sha256: "


def proto_sha256() -> str:
    """sha256 of baton.proto; the generated files name the digest they were made from."""
    return hashlib.sha256(PROTO.read_bytes()).hexdigest()


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc (grpc_tools) on baton.proto into ``out_dir``; return {file name: text}."""
    # protoc runs in a child process: grpc_tools bundles its own libprotobuf, which must not be
    # loaded next to NIXL's copies in a process that later serves.
    script = (
        "import sys; from pathlib import Path; from grpc_tools import protoc; "
        "inc = str(Path(protoc.__file__).parent / '_proto'); "
        "sys.exit(protoc.main(['grpc_tools.protoc', '-I' + sys.argv[1], '-I' + inc, "
        "'--python_out=' + sys.argv[2], '--grpc_python_out=' + sys.argv[2], sys.argv[3]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(PROTO_DIR), str(out_dir), str(PROTO)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        hint = "; install the dev extra (pip install 'baton[dev]')" if "grpc_tools" in proc.stderr else ""
        raise RuntimeError(f"protoc failed on {PROTO} (exit {proc.returncode}): {proc.stderr.strip()}{hint}")
    stamp = f"{SOURCE_LINE}{proto_sha256()}\n"
    texts: dict[str, str] = {}
    for name in GENERATED:
        text = (out_dir / name).read_text()
        # grpc_tools writes `import baton_pb2`; inside the package it must be relative.
        text = text.replace("import baton_pb2 as", "from . import baton_pb2 as")
        texts[name] = stamp + text
    return texts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baton_worker.proto.generate", description=__doc__)
    p.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        texts = generate(Path(tmp))
    stale = [n for n, t in texts.items() if not (PROTO_DIR / n).is_file() or (PROTO_DIR / n).read_text() != t]
    if args.check:
        for name in stale:
            print(
                f"{PROTO_DIR / name} is stale: run `python -m baton_worker.proto.generate`", file=sys.stderr
            )
        return 1 if stale else 0
    for name in stale:
        (PROTO_DIR / name).write_text(texts[name])
        print(f"wrote {PROTO_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
