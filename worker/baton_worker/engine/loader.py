"""Model loading: HF-layout directories (Llama, Qwen2, Mistral) and builtin models.

Sources: ``builtin://<name>``, ``file:///abs/dir``, a plain directory path, ``hf://org/model``
(only the files the engine loads, downloaded with huggingface_hub) and ``pvc://claim/path`` (the
claim mounted at ``$BATON_PVC_ROOT/<claim>``, default ``/models/<claim>``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from baton_worker import model_cache
from baton_worker.engine.kv_pool import dtype_name, torch_dtype
from baton_worker.sources import checkpoint_dir
from baton_worker.text import context_limit, eos_token_ids

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class ModelShape:
    """What the engine and the KV transfer need to know about a model's shape."""

    model_type: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer; ``fingerprint`` identifies the weights for compat hashes."""

    source: str
    path: str
    hf_model: torch.nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    shape: ModelShape
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    fingerprint: str

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def config(self) -> Any:
        return self.hf_model.config


def _log(msg: str) -> None:
    print(f"[baton engine] {msg}", file=sys.stderr, flush=True)


def resolve_source(source: str) -> Path:
    """Map a model source string to a local directory (building/downloading when needed).

    hf:// downloads what the engine loads (config, safetensors, tokenizer, chat templates): the
    router's table (:func:`baton_worker.sources.checkpoint_files`) names the same files minus weights.
    hf:// and builtin:// sources are filled once per cache directory, which a pool's workers may
    share (:mod:`baton_worker.model_cache`).
    """
    return model_cache.materialize(source, lambda: checkpoint_dir(source, "worker"))


def _fingerprint(path: Path, config: dict) -> str:
    """Hash of the config and the weight files' names and sizes: cheap, and changes with the weights."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def model_shape(config: Any) -> ModelShape:
    """Extract the engine-relevant shape of an HF config; ValueError for unsupported architectures."""
    model_type = getattr(config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model: unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    heads = config.num_attention_heads
    return ModelShape(
        model_type=model_type,
        num_layers=config.num_hidden_layers,
        num_attention_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
    )


def load_model(
    source: str,
    dtype: str = "float32",
    device: str = "cpu",
    max_model_len: int | None = None,
) -> LoadedModel:
    """Load a Llama / Qwen2 / Mistral checkpoint (or a builtin) onto ``device`` in ``dtype``.

    Prints progress to stderr. Raises ValueError naming the field for a bad source, dtype,
    architecture or ``max_model_len`` above the model's position limit, FileNotFoundError when the
    directory lacks config.json.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    tdtype = torch_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but torch sees no CUDA device")
    path = resolve_source(source)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.source: {source!r} -> {path} has no config.json")
    config = AutoConfig.from_pretrained(path)
    shape = model_shape(config)
    _log(
        f"loading {source} ({shape.model_type}, {shape.num_layers} layers, hidden {shape.hidden_size}, "
        f"{shape.num_attention_heads}/{shape.num_kv_heads} heads) as {dtype} on {dev}"
    )
    fields = config.to_dict()
    limit = context_limit(fields)
    if max_model_len is not None:
        if max_model_len < 2 or max_model_len > limit:
            raise ValueError(f"max_model_len: {max_model_len} is outside [2, {limit}] for this model")
        limit = max_model_len
    tokenizer = AutoTokenizer.from_pretrained(path)
    _log(f"tokenizer loaded ({len(tokenizer)} tokens); reading weights")
    # Read on the host, then moved: a device_map would need the accelerate package.
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=tdtype, attn_implementation="sdpa")
    hf_model.to(dev).eval()
    hf_model.requires_grad_(False)
    n_params = sum(p.numel() for p in hf_model.parameters())
    _log(f"loaded {n_params / 1e6:.1f}M parameters in {time.monotonic() - t0:.1f}s")
    return LoadedModel(
        source=source,
        path=str(path),
        hf_model=hf_model,
        tokenizer=tokenizer,
        shape=shape,
        dtype=tdtype,
        device=dev,
        max_model_len=limit,
        eos_token_ids=eos_token_ids(fields.get("eos_token_id"), tokenizer.eos_token_id),
        fingerprint=_fingerprint(path, fields),
    )


def random_model(
    config_fields: dict,
    dtype: str = "bfloat16",
    device: str = "cuda",
    tokenizer_source: str = "builtin://tiny",
) -> LoadedModel:
    """A Llama with random weights built directly on ``device`` (benchmarks; nothing is written).

    The tokenizer comes from ``tokenizer_source``; its ids are a subset of the model's vocabulary.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tdtype = torch_dtype(dtype)
    dev = torch.device(device)
    config = LlamaConfig(**config_fields)
    _log(f"building a random {config.num_hidden_layers}-layer Llama ({dtype}) on {dev}")
    t0 = time.monotonic()
    with torch.device(dev):
        # Built on the device in the target dtype: an 8B model never exists in float32 anywhere.
        hf_model = LlamaForCausalLM._from_config(config, dtype=tdtype)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    hf_model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(tokenizer_source))
    _log(f"built in {time.monotonic() - t0:.1f}s")
    return LoadedModel(
        source="random://llama",
        path="",
        hf_model=hf_model,
        tokenizer=tokenizer,
        shape=model_shape(config),
        dtype=tdtype,
        device=dev,
        max_model_len=int(config.max_position_embeddings),
        eos_token_ids=(),
        fingerprint=hashlib.sha256(json.dumps(config_fields, sort_keys=True).encode()).hexdigest()[:16],
    )
