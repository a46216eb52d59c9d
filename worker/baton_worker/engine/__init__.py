"""baton_worker.engine: model loading, the KV block pool, the prefill runner and the decode engine.

The public API is documented in docs/engine.md; everything importable from here is stable.
"""

from baton_worker.engine.decode import DecodeEngine, validate_request
from baton_worker.engine.kv_pool import LAYOUT, KvBlockPool, PoolUsage, dtype_name, torch_dtype
from baton_worker.engine.loader import LoadedModel, ModelShape, load_model, random_model
from baton_worker.engine.loop import EngineFailedError, EngineLoop, RequestStream
from baton_worker.engine.prefill import PoolExhaustedError, PrefillRunner, PrefillStats
from baton_worker.engine.sampling import token_seed
from baton_worker.engine.types import (
    DuplicateRequestError,
    EngineError,
    EngineRequest,
    EngineStats,
    FinishReason,
    InvalidRequestError,
    Prefilled,
    PrefillResult,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)

__all__ = [
    "LAYOUT",
    "DecodeEngine",
    "DuplicateRequestError",
    "EngineError",
    "EngineFailedError",
    "EngineLoop",
    "EngineRequest",
    "EngineStats",
    "FinishReason",
    "InvalidRequestError",
    "KvBlockPool",
    "LoadedModel",
    "ModelShape",
    "PoolExhaustedError",
    "PoolUsage",
    "Prefilled",
    "PrefillResult",
    "PrefillRunner",
    "PrefillStats",
    "RequestOutput",
    "RequestStream",
    "RequestTooLongError",
    "SamplingParams",
    "dtype_name",
    "load_model",
    "random_model",
    "token_seed",
    "torch_dtype",
    "validate_request",
]
