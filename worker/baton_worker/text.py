"""A model's output text: token ids to text deltas, stop strings, EOS ids and the context length.

Shared by the engine (a text delta with every token chunk it streams) and the router (the text
its clients get). Both hand out deltas by the same rules (:class:`StopText`): a delta never ends
inside an incomplete UTF-8 character (which a decoder yields as U+FFFD), never holds the start of
what may become a stop string, and all deltas together are the decoded output cut before the
first stop string.

The router decodes all output ids of a request each time (:class:`TextAssembler`): it holds
every output token, so its text stays exact across a failover to another decode worker and the
streamed text is by construction the non-streamed text. The engine decodes a short window of
recent ids (:class:`IncrementalDetokenizer`), which keeps each step O(1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from baton_worker.sources import checkpoint_dir

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence

# Tokens of earlier context decoded together with new ones (for spaces and byte merges).
_CONTEXT_TOKENS = 6
# Decoded ids the engine's window keeps before dropping those whose text was emitted.
_WINDOW_TRIM = 64


def held_back(text: str, stops: Sequence[str], end: int | None = None) -> int:
    """Length of the longest suffix of ``text[:end]`` that is a proper prefix of a stop string."""
    end = len(text) if end is None else end
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), best, -1):
            if text.endswith(stop[:k], 0, end):
                best = k
                break
    return best


def sendable_end(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` may be sent: not a trailing incomplete character, nor what may start
    a stop string."""
    end = len(text)
    while end and text[end - 1] == REPLACEMENT:
        end -= 1
    return end - held_back(text, stops, end)


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in ``text`` at or after ``start``; -1 when none is."""
    return min((i for i in (text.find(s, start) for s in stops) if i >= 0), default=-1)


class StopText:
    """The output text as it is decoded, cut at the first stop string; hands out the deltas that
    are safe to send."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stop = tuple(stop)
        self._longest = max((len(s) for s in self._stop), default=0)
        self._text = ""
        self._sent = 0
        self.stopped = False  # a stop string appeared: generation must end

    @property
    def text(self) -> str:
        """The text so far, sent or held (cut at a stop string when one appeared)."""
        return self._text

    def update(self, decoded: str) -> str:
        """Take the whole output decoded so far; return the text that may be sent now (maybe "").

        Only a trailing U+FFFD of the previous call may have changed (completed to a character)."""
        if self.stopped:
            return ""
        # Search only where a new stop string can start: earlier text was already checked.
        cut = find_stop(decoded, self._stop, max(0, self._sent - self._longest))
        if cut >= 0:
            self.stopped = True
            self._text = decoded[:cut]
            return self._take(cut)
        self._text = decoded
        return self._take(sendable_end(decoded, self._stop))

    def append(self, piece: str) -> str:
        """:meth:`update` with newly decoded text added at the end."""
        return self.update(self._text + piece) if piece else ""

    def flush(self) -> str:
        """At the end of generation: whatever was held back (trailing bytes, partial stop)."""
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        if end <= self._sent:
            return ""
        delta = self._text[self._sent : end]
        self._sent = end
        return delta


class TextAssembler:
    """The router's output text: accumulates output token ids and decodes all of them each time."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._out = StopText(stop)

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    @property
    def text(self) -> str:
        """The final text so far (cut at a stop string when one appeared)."""
        return self._out.text

    @property
    def stopped(self) -> bool:
        """A stop string appeared: generation must end."""
        return self._out.stopped

    def add(self, token_ids: Sequence[int]) -> str:
        """Add output tokens; return the text that may be sent now (possibly "")."""
        if self.stopped or not token_ids:
            return ""
        self._ids.extend(token_ids)
        return self._out.update(self._decode(self._ids))

    def flush(self) -> str:
        """At the end of generation: whatever was held back (trailing bytes, partial stop)."""
        return self._out.flush()


class IncrementalDetokenizer:
    """The engine's output text: decodes a window of recent ids per token.

    Starting the window a few tokens back preserves leading spaces and merges that depend on the
    previous token; ids whose text ends in U+FFFD (an incomplete UTF-8 sequence) stay in the
    window until the next token completes them.
    """

    def __init__(
        self, tokenizer: Any, context_ids: tuple[int, ...] | list[int], stop: Sequence[str] = ()
    ) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(context_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._out = StopText(stop)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _unread_text(self) -> str:
        """Text of the ids past the read offset, given the window before them."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        return new_text[len(prefix_text) :]

    def _mark_read(self) -> None:
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        # Keep the window bounded: only the context of the last emitted piece matters.
        if self._prefix_offset > _WINDOW_TRIM:
            drop = self._prefix_offset
            self._ids = self._ids[drop:]
            self._prefix_offset -= drop
            self._read_offset -= drop

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one output token; return (text that may be sent now, whether a stop string was hit).

        After a stop string is hit the returned text ends right before it and nothing more
        should be pushed."""
        self._ids.append(token_id)
        piece = self._unread_text()
        if not piece or piece.endswith(REPLACEMENT):
            return "", False
        self._mark_read()
        delta = self._out.append(piece)
        return delta, self._out.stopped

    def flush(self) -> str:
        """Everything not yet returned (call when the request finishes), including tokens held
        back as an incomplete UTF-8 sequence (they come out as U+FFFD)."""
        if self._read_offset < len(self._ids):
            self._out.append(self._unread_text())
            self._prefix_offset = self._read_offset = len(self._ids)
        return self._out.flush()

    @property
    def text(self) -> str:
        """All output text so far (stop-trimmed), sent or held."""
        return self._out.text


def eos_token_ids(*values: Any) -> tuple[int, ...]:
    """The EOS ids named by any of ``values`` (each an id, a list of ids or None), sorted: a
    checkpoint's config and its tokenizer may each name some."""
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return tuple(sorted(ids))


def context_limit(config: Mapping[str, Any]) -> int:
    """Longest sequence (prompt and output) a checkpoint's config allows; 0 when it names none."""
    limit = int(config.get("max_position_embeddings") or 0)
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True) and config.get("model_type") == "mistral":
        # The paged attention has no sliding window: stay inside it so results stay exact.
        limit = min(limit, int(window))
    return limit


class ChatTurn(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


@dataclass
class RouterTokenizer:
    """Encode/decode/chat-template for one model; ``max_model_len`` from its config (0: unknown)."""

    hf: Any  # transformers PreTrainedTokenizerBase
    max_model_len: int
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt (with the BOS token the model expects)."""
        return list(self.hf(text)["input_ids"])

    def encode_chat(self, messages: Sequence[ChatTurn]) -> list[int]:
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
    """Load the tokenizer of ``source`` (any source the workers accept) for the router.

    Fetches only tokenizer and config files (never weights) and, except for ``builtin://``, does
    not import the engine.
    """
    from transformers import AutoTokenizer

    path = checkpoint_dir(source, "router")
    hf = AutoTokenizer.from_pretrained(str(path))
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    return RouterTokenizer(
        hf=hf,
        max_model_len=context_limit(cfg),
        eos_token_ids=eos_token_ids(cfg.get("eos_token_id"), hf.eos_token_id),
    )
