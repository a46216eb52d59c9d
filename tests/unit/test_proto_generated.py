"""The committed gRPC code is what baton.proto gives now; importing it writes nothing."""

from __future__ import annotations

import subprocess
import sys

from baton_worker.proto import generate


def test_generated_files_name_the_proto_they_were_made_from() -> None:
    digest = generate.proto_sha256()
    for name in generate.GENERATED:
        first = (generate.PROTO_DIR / name).read_text().splitlines()[0]
        assert first == f"{generate.SOURCE_LINE}{digest}", (
            f"{name} is stale: run python -m baton_worker.proto.generate"
        )


def test_generated_code_is_byte_for_byte_current() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "baton_worker.proto.generate", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_rpc_imports_the_packaged_code() -> None:
    from baton_worker import rpc

    assert rpc.pb2.__name__ == "baton_worker.proto.baton_pb2"
    assert rpc.pb2_grpc.__name__ == "baton_worker.proto.baton_pb2_grpc"
    assert hasattr(rpc.pb2_grpc, "PrefillWorkerStub")
