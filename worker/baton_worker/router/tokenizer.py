"""The router's tokenizer: prompts and chat messages to token ids, output ids to text.

Loaded from the same model source the workers load (``builtin://tiny``, a directory, ...),
resolved by the engine's loader so both sides agree on the files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .params import ChatMessage


@dataclass
class RouterTokenizer:
    """Encode/decode/chat-template for one model; ``max_model_len`` from its config (0: unknown)."""

    hf: Any  # transformers PreTrainedTokenizerBase
    max_model_len: int
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt (with the BOS token the model expects)."""
        return list(self.hf(text)["input_ids"])

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template, ready for the reply.

        Raises ValueError when the tokenizer has no chat template.
        """
        if not getattr(self.hf, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        text = self.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        # The template already wrote any BOS token: do not add another.
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)


def load_tokenizer(source: str) -> RouterTokenizer:
    """Load the tokenizer of ``source`` (any source the workers accept)."""
    from transformers import AutoTokenizer

    if source.startswith("file://"):
        path = Path(source[len("file://") :])
    elif "://" not in source:
        path = Path(source)
    else:
        # builtin://, hf://, pvc://: the engine's loader knows how to materialize them (and
        # imports torch to do so, which a plain directory does not need).
        from baton_worker.engine.loader import resolve_source

        path = Path(resolve_source(source))
    hf = AutoTokenizer.from_pretrained(str(path))
    max_len = 0
    eos: set[int] = set()
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        max_len = int(cfg.get("max_position_embeddings") or 0)
        value = cfg.get("eos_token_id")
        eos.update([value] if isinstance(value, int) else list(value or []))
    if isinstance(hf.eos_token_id, int):
        eos.add(hf.eos_token_id)
    return RouterTokenizer(hf=hf, max_model_len=max_len, eos_token_ids=tuple(sorted(eos)))
