"""baton operator: reconciles InferencePool objects into prefill/decode/router workloads."""

__version__ = "0.1.0"
