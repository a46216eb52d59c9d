"""Model sources: which files of a checkpoint each consumer needs, and where a source's files are.

A source is ``builtin://<name>``, ``file:///abs/dir``, a plain directory, ``hf://org/name`` or
``pvc://claim/path``. The worker needs the config, the weights and the tokenizer; the router only
the tokenizer and the config, so an ``hf://`` router downloads no weights. Only ``builtin://``
imports the engine (to build the model); the other schemes resolve without torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

Consumer = Literal["worker", "router"]

# A checkpoint's files by purpose, as huggingface_hub allow/ignore patterns (fnmatch, case
# sensitive; "*" also matches "/", so "*.model" reaches into subdirectories).
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",  # sentencepiece: tokenizer.model, spiece.model
    "*.tiktoken",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.json",
    "*.jinja",  # chat_template.jinja, additional_chat_templates/*.jinja
)
# The weights the engine loads (it reads safetensors only).
ENGINE_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
# Weights in any format a Hub repo may hold: never fetched for the router.
WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.gguf",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
)


@dataclass(frozen=True)
class CheckpointFiles:
    """Which files of a checkpoint one consumer reads (patterns as ``snapshot_download`` takes them)."""

    allow: tuple[str, ...]
    ignore: tuple[str, ...] = ()

    def wants(self, path: str) -> bool:
        """Whether ``path`` (relative, "/"-separated) is fetched: the rule ``snapshot_download`` applies."""
        return any(fnmatchcase(path, p) for p in self.allow) and not any(
            fnmatchcase(path, p) for p in self.ignore
        )

    def select(self, paths: Iterable[str]) -> list[str]:
        """The files of a repository listing this consumer fetches, in listing order."""
        return [p for p in paths if self.wants(p)]


_CHECKPOINT_FILES: dict[str, CheckpointFiles] = {
    # The engine: model config, weights, tokenizer (it detokenizes) and chat templates.
    "worker": CheckpointFiles(allow=CONFIG_FILES + ENGINE_WEIGHT_FILES + TOKENIZER_FILES),
    # The router tokenizes and reads config.json (context limit, EOS ids): no weights, ever.
    "router": CheckpointFiles(allow=CONFIG_FILES + TOKENIZER_FILES, ignore=WEIGHT_PATTERNS),
}


def checkpoint_files(consumer: Consumer) -> CheckpointFiles:
    """The files of a checkpoint that ``consumer`` (``"worker"`` or ``"router"``) needs."""
    try:
        return _CHECKPOINT_FILES[consumer]
    except KeyError:
        raise ValueError(f"unknown checkpoint consumer {consumer!r} (worker, router)") from None


def checkpoint_dir(source: str, consumer: Consumer) -> Path:
    """Map a model source to a local directory holding what ``consumer`` needs.

    ``hf://org/name`` downloads only those files (huggingface_hub reads ``HF_TOKEN`` and
    ``HF_HOME``); ``builtin://`` is built by the engine, which imports torch. Other schemes are
    paths, so the router resolves them without the engine.
    """
    files = checkpoint_files(consumer)
    if source.startswith("builtin://"):
        from baton_worker.engine.builtin import ensure_builtin

        return ensure_builtin(source[len("builtin://") :])
    if source.startswith("file://"):
        return Path(source[len("file://") :])
    if source.startswith("pvc://"):
        claim, _, sub = source[len("pvc://") :].partition("/")
        if not claim:
            raise ValueError(f"model.source: {source!r} names no claim (pvc://claim/path)")
        return Path(os.environ.get("BATON_PVC_ROOT", "/models")) / claim / sub
    if source.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo = source[len("hf://") :]
        print(f"[baton] downloading {repo} ({consumer} files) from the Hugging Face Hub", file=sys.stderr)
        return Path(
            snapshot_download(
                repo, allow_patterns=list(files.allow), ignore_patterns=list(files.ignore) or None
            )
        )
    if "://" in source:
        raise ValueError(
            f"model.source: unsupported scheme in {source!r} (builtin://, file://, pvc://, hf://)"
        )
    return Path(source)
