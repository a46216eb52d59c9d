"""The wire contract between router, prefill and decode workers: ``baton.proto`` and its Python code.

``baton_pb2`` and ``baton_pb2_grpc`` are generated from ``baton.proto`` by
``python -m baton_worker.proto.generate`` (grpcio-tools, a dev dependency) and committed, so an
installed package never writes into itself; a unit test fails when they are not current.
"""
