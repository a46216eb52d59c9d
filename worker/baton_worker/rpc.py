"""The generated gRPC modules of ``baton_worker/proto/baton.proto``, and the wire version.

The code is generated ahead of time and ships in the package (see ``baton_worker.proto``):
importing this module never runs protoc nor writes a file, so it works from a read-only
install as any user.
"""

from __future__ import annotations

from baton_worker.proto import baton_pb2 as pb2
from baton_worker.proto import baton_pb2_grpc as pb2_grpc

# Bumped on any incompatible change of the proto or the KV layout.
WIRE_VERSION = 1

__all__ = ["WIRE_VERSION", "pb2", "pb2_grpc"]
