"""baton worker: engine, KV transfer, prefill/decode servers, router, bench and the `baton` CLI."""

__version__ = "0.1.0"
