"""Incremental detokenization with stop strings.

Decoding a window of recent tokens (not the whole output) keeps each step O(1); starting the
window a few tokens back preserves leading spaces and merges that depend on the previous token,
and a trailing U+FFFD (an incomplete UTF-8 sequence) is held until the next token completes it.
With stop strings, the last ``max(len(stop)) - 1`` characters are held back, so text that turns
out to begin a stop string is never sent; the text returned always ends before the stop string.
"""

from __future__ import annotations

from typing import Any

# Tokens of earlier context decoded together with new ones (for spaces and byte merges).
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Turns output token ids into text deltas, trimming at the first stop string."""

    def __init__(
        self, tokenizer: Any, context_ids: tuple[int, ...] | list[int], stop: tuple[str, ...] = ()
    ) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(context_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._text = ""
        self._emitted = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _next_piece(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            # Keep the window bounded: only the context of the last emitted piece matters.
            if self._prefix_offset > 64:
                drop = self._prefix_offset
                self._ids = self._ids[drop:]
                self._prefix_offset -= drop
                self._read_offset -= drop
            return piece
        return ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one output token; return (text that may be sent now, whether a stop string was hit).

        After a stop string is hit the returned text ends right before it and nothing more
        should be pushed."""
        before = len(self._text)
        self._text += self._next_piece(token_id)
        if self._stop and len(self._text) > before:
            start = max(0, before - self._hold)
            hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self._text = self._text[: min(hits)]
                return self.flush(), True
        upto = len(self._text) - self._hold
        if upto > self._emitted:
            delta = self._text[self._emitted : upto]
            self._emitted = upto
            return delta, False
        return "", False

    def flush(self) -> str:
        """Everything not yet returned (call when the request finishes), including tokens held
        back as an incomplete UTF-8 sequence (they come out as U+FFFD)."""
        if self._read_offset < len(self._ids):
            prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
            new_text = self._decode(self._ids[self._prefix_offset :])
            self._text += new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset = len(self._ids)
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta

    @property
    def text(self) -> str:
        """All output text so far (stop-trimmed), sent or held."""
        return self._text
