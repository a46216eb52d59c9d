"""Output text from output token ids, with stop strings (pure).

The router turns token ids into text itself instead of concatenating the workers' text deltas:
it holds every output token of a request, so the text stays exact across a failover to another
decode worker (no duplicated or missing characters at the seam), and the streamed text is by
construction the same as the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class TextAssembler:
    """Accumulates output token ids and hands out text deltas that are safe to send.

    A delta never ends inside an incomplete UTF-8 character, never contains the start of
    what may become a stop string, and the concatenation of all deltas equals
    :attr:`text`: the decoded output cut before the first stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._full = ""
        self._sent = 0
        self.stopped = False  # a stop string appeared: generation must end

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    @property
    def text(self) -> str:
        """The final text so far (cut at a stop string when one appeared)."""
        return self._full

    def add(self, token_ids: Sequence[int]) -> str:
        """Add output tokens; return the text that may be sent now (possibly "")."""
        if self.stopped or not token_ids:
            return ""
        self._ids.extend(token_ids)
        full = self._decode(self._ids)
        # Search only where a new stop string can start: earlier text was already checked.
        longest = max((len(s) for s in self._stop), default=0)
        start = max(0, self._sent - longest)
        cut = min((i for i in (full.find(s, start) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._full = full[:cut]
            return self._take(len(self._full))
        self._full = full
        safe = len(full.rstrip(REPLACEMENT))
        safe -= _held_back(full[:safe], self._stop)
        return self._take(safe)

    def flush(self) -> str:
        """At the end of generation: whatever was held back (trailing bytes, partial stop)."""
        return self._take(len(self._full))

    def _take(self, end: int) -> str:
        if end <= self._sent:
            return ""
        delta = self._full[self._sent : end]
        self._sent = end
        return delta
