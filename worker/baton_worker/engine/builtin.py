"""Built-in models for demos and tests: small HF-layout checkpoints with fixed-seed random weights.

``builtin://tiny`` (alias ``tiny-llama``) is a Llama with 8 KV heads; ``builtin://tiny-qwen2`` is a
Qwen2 (attention biases, grouped-query attention) and ``builtin://tiny-mistral`` a Mistral (2 KV
heads) for other-architecture tests. Each is built
deterministically once, written in HF layout (config.json, model.safetensors, tokenizer files) to
``$BATON_CACHE_DIR/models/<name>-<hash>`` (default ``~/.cache/baton``) and then loaded through the
same directory path as any user checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Bump when the built artefacts change, so stale caches are not reused.
BUILDER_VERSION = 2

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A small embedded corpus for the byte-level BPE merges: enough for ~1k tokens of vocabulary.
_CORPUS = """
Disaggregated serving splits the work of a language model into two phases. Prefill reads the whole
prompt at once and is bound by compute; decode produces one token at a time and is bound by memory
bandwidth. Running them on separate pools of accelerators lets each pool use the batch size and the
parallelism that suits it, and the key value cache is handed from one pool to the other over the network.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Kubernetes schedules pods onto nodes; an operator watches custom resources and reconciles the cluster
towards the desired state. Deployments, stateful sets, services and config maps are its children.
Hello, world! How are you today? I am fine, thank you. What is the weather like in the mountains?
It was a bright cold day in April, and the clocks were striking thirteen. Call me Ishmael. Some years
ago, never mind how long precisely, having little or no money in my purse, I thought I would sail about
a little and see the watery part of the world. In the beginning the universe was created; this has made
a lot of people very angry and been widely regarded as a bad move. The router picks a prefill worker with
the least queued tokens and a decode worker with the most free memory, then streams tokens to the client.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 128 256 512 1024 2048 4096 8192.
def main(argv): return 0  # code, too: if x == 1: print("yes") else: print("no")
Once upon a time there was a little robot who loved to count tokens. Every morning it counted the
tokens in the queue, and every evening it counted them again, and it was happy.
"""


@dataclass(frozen=True)
class TinySpec:
    """The shape of a built-in model (the vocabulary comes from the tokenizer)."""

    architecture: str  # "llama" | "qwen2"
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    max_position_embeddings: int = 2048
    vocab_target: int = 1024
    seed: int = 1234
    # Wide logits keep greedy argmax far from ties, so float32 batch-shape noise never flips a token.
    lm_head_scale: float = 4.0


BUILTINS: dict[str, TinySpec] = {
    "tiny": TinySpec("llama"),
    "tiny-llama": TinySpec("llama"),
    "tiny-qwen2": TinySpec("qwen2", num_key_value_heads=4),
    "tiny-mistral": TinySpec("mistral", num_key_value_heads=2),
}


def cache_root() -> Path:
    """Where built models are cached: ``$BATON_CACHE_DIR`` or ``~/.cache/baton``."""
    return Path(os.environ.get("BATON_CACHE_DIR") or Path.home() / ".cache" / "baton")


def _spec_hash(spec: TinySpec) -> str:
    blob = json.dumps({"spec": asdict(spec), "v": BUILDER_VERSION, "corpus": _CORPUS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def builtin_revision(name: str) -> str:
    """What identifies the built artefacts of builtin model ``name`` (its directory's suffix);
    KeyError for an unknown name."""
    return _spec_hash(BUILTINS[name])


def build_tokenizer(vocab_target: int = 1024):
    """A byte-level BPE tokenizer trained on the embedded corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _init_weights(model: torch.nn.Module, spec: TinySpec, gen: torch.Generator) -> None:
    """Deterministic init: unit-scale activations through the layers, wide logits at the head."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (spec.lm_head_scale / p.shape[1] ** 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def build_model_dir(spec: TinySpec, out_dir: Path) -> None:
    """Write a complete HF-layout checkpoint for ``spec`` into ``out_dir`` (which must exist)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tokenizer = build_tokenizer(spec.vocab_target)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    if spec.architecture == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    elif spec.architecture == "qwen2":
        config, cls = Qwen2Config(**common, use_sliding_window=False), Qwen2ForCausalLM
    elif spec.architecture == "mistral":
        config, cls = MistralConfig(**common, sliding_window=None), MistralForCausalLM
    else:
        raise ValueError(f"architecture: unknown builtin architecture {spec.architecture!r}")
    config.dtype = "float32"
    torch.manual_seed(spec.seed)
    model = cls(config)
    _init_weights(model, spec, torch.Generator().manual_seed(spec.seed))
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_builtin(name: str) -> Path:
    """Return the cached directory of builtin model ``name``, building it on first use.

    Concurrent processes may race to build; each builds in a temporary directory and the first
    atomic rename wins, so a reader never sees a half-written model.
    """
    try:
        spec = BUILTINS[name]
    except KeyError:
        raise ValueError(
            f"model.source: unknown builtin model {name!r}; expected one of {', '.join(BUILTINS)}"
        ) from None
    root = cache_root() / "models"
    final = root / f"{name}-{_spec_hash(spec)}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build_model_dir(spec, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def save_builtin(name: str, out_dir: str | Path) -> Path:
    """Copy builtin model ``name`` into ``out_dir`` as a plain HF directory (for `--model DIR`)."""
    src = ensure_builtin(name)
    out = Path(out_dir)
    shutil.copytree(src, out, dirs_exist_ok=True)
    return out


# A Llama-3-8B-shaped config for benchmarks (random weights, never written to disk).
LLAMA3_8B_SHAPE = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
