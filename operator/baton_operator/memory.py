"""Memory requests of worker pods, from the model's size when the operator knows it (pure).

What a worker holds in host memory: the model's weights as it reads them (the worker reads a
checkpoint on the host and then moves it to its device; with tensor parallelism every rank
process reads the whole checkpoint before keeping its shard), the KV block pool when it computes
on the CPU (on GPUs the pool is in GPU memory), and its runtime: Python, torch and the tokenizer,
plus the CUDA context and NIXL/UCX's pinned buffers on GPUs.

The operator knows the size of the builtin:// models. hf://, pvc:// and file:// checkpoints are
read only by the workers, so the operator cannot size them at reconcile time: they get a
documented default, and ``spec.<role>.resources`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

from baton_operator.spec import Pool, RoleSpec

MIB = 1024**2
GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The worker's KV pool: --kv-blocks 512 of --block-size 16 tokens, its defaults (the operator
# passes neither flag).
WORKER_KV_TOKENS = 512 * 16
# Per worker process: Python, torch, transformers, gRPC (the sandbox's real node serves the CPU
# example, two workers, the router and the operator, in 1.68 GB of pods: docs/benchmarks.md); on
# GPUs also the CUDA context, torch's CUDA libraries and NIXL/UCX's registered buffers.
RUNTIME_BYTES = {"cpu": 1 * GIB, "cuda": 4 * GIB}
# A checkpoint whose size the operator cannot know (hf://, pvc://, file://), per process: an
# 8B-class model in bfloat16 (16 GB) on GPUs, a 1.5B-class one (3 GB, its KV pool included)
# on the CPU. Set spec.<role>.resources.requests.memory for anything larger.
UNKNOWN_MODEL_BYTES = {"cpu": 3 * GIB, "cuda": 16 * GIB}
ROUND_TO = 64 * MIB


@dataclass(frozen=True)
class ModelSize:
    """What sizes a model's memory: its parameters and the shape of its KV cache."""

    parameters: int
    layers: int
    kv_heads: int
    head_dim: int

    def weight_bytes(self, dtype: str) -> int:
        return self.parameters * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str) -> int:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype]


# The models of worker/baton_worker/engine/builtin.py (4 layers, hidden 256, 841 tokens, untied
# head); tests/unit/test_operator_memory.py checks these numbers against the worker's specs.
BUILTIN_MODELS: dict[str, ModelSize] = {
    "tiny": ModelSize(parameters=3_054_336, layers=4, kv_heads=8, head_dim=32),
    "tiny-llama": ModelSize(parameters=3_054_336, layers=4, kv_heads=8, head_dim=32),
    "tiny-qwen2": ModelSize(parameters=2_794_240, layers=4, kv_heads=4, head_dim=32),
    "tiny-mistral": ModelSize(parameters=2_661_120, layers=4, kv_heads=2, head_dim=32),
}


def model_size(source: str) -> ModelSize | None:
    """The size of the model at ``source`` when the operator knows it (builtin:// only)."""
    if source.startswith("builtin://"):
        return BUILTIN_MODELS.get(source[len("builtin://") :])
    return None


def worker_memory_bytes(size: ModelSize | None, dtype: str, device: str, tensor_parallel_size: int) -> int:
    """Host memory one worker pod needs, before rounding.

    cpu: weights + KV pool + runtime (one process; a CPU role has no tensor parallelism).
    cuda: tensorParallelSize x (weights + runtime): every rank reads the whole checkpoint.
    An unknown model counts as UNKNOWN_MODEL_BYTES of weights (and KV pool, on the CPU).
    """
    if size is None:
        model = UNKNOWN_MODEL_BYTES[device]
    else:
        model = size.weight_bytes(dtype)
        if device == "cpu":
            model += WORKER_KV_TOKENS * size.kv_bytes_per_token(dtype)
    if device == "cpu":
        return model + RUNTIME_BYTES["cpu"]
    return tensor_parallel_size * (model + RUNTIME_BYTES["cuda"])


def quantity(n_bytes: int) -> str:
    """``n_bytes`` rounded up to 64 MiB, in the canonical form the API server returns.

    The API server rewrites "1024Mi" as "1Gi"; a no-op resync compares strings, so the operator
    writes what it would read back.
    """
    rounded = -(-n_bytes // ROUND_TO) * ROUND_TO
    for suffix, unit in (("Ti", 1024 * GIB), ("Gi", GIB)):
        if rounded % unit == 0:
            return f"{rounded // unit}{suffix}"
    return f"{rounded // MIB}Mi"


def worker_memory_request(pool: Pool, role: RoleSpec) -> str | None:
    """``resources.requests.memory`` of the role's worker container; None when the user sized it.

    A memory request or limit in ``spec.<role>.resources`` switches the computed request off:
    the user's request wins, and a user's limit alone becomes the request (Kubernetes' default)
    rather than meeting a computed request above it.
    """
    user = {**(role.resources.get("requests") or {}), **(role.resources.get("limits") or {})}
    if "memory" in user:
        return None
    size = model_size(pool.spec.model.source)
    return quantity(worker_memory_bytes(size, pool.spec.model.dtype, role.device, role.tensor_parallel_size))
