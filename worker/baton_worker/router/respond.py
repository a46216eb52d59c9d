"""Answering one request: its choices run over the dispatcher, their text and logprobs are
assembled, and the OpenAI response is written, whole or streamed.

A request has ``best_of`` choices (``n`` unless best_of asks for more), each its own
:class:`~baton_worker.router.dispatch.Job` with its own seed, run concurrently; streamed chunks
carry the choice's index. With best_of > n the n choices of the highest total logprob are
returned. ``echo`` puts the prompt (and its logprobs) before the output; ``max_tokens: 0``
(with echo) returns the prompt alone: the workers generate one token, which is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from baton_worker.text import TextAssembler

from . import logprobs as lps
from . import openai_format as fmt
from .decode_stream import Progress
from .dispatch import Job
from .errors import ApiError
from .params import ParsedRequest

if TYPE_CHECKING:
    from .app import Router

log = logging.getLogger("baton.router")


@dataclass
class Choice:
    """One choice of a request: what it produced so far."""

    index: int
    job: Job
    text: TextAssembler
    scored: list[lps.Scored] = field(default_factory=list)
    prompt_scored: list[lps.Scored] | None = None
    completion_tokens: int = 0
    finish: str | None = None
    last_token_at: float = 0.0  # for the inter-token latency of this choice
    cached_tokens: int = 0  # prompt tokens a worker's prefix cache held for it


class Answer:
    """The choices of one request, their metrics and their response."""

    def __init__(
        self,
        router: Router,
        parsed: ParsedRequest,
        request_id: str,
        jobs: list[Job],
        arrival: float,
        prompt_text: str,
    ) -> None:
        assert router.tokenizer is not None
        self.router = router
        self.parsed = parsed
        self.tok = router.tokenizer
        self.arrival = arrival
        self.first_token_seen = False
        self.created = int(time.time())
        self.request_id = request_id
        self.prompt_ids = jobs[0].prompt_token_ids
        self.prompt_text = prompt_text
        self.choices = [Choice(i, j, TextAssembler(self.tok.decode, parsed.stop)) for i, j in enumerate(jobs)]
        # max_tokens 0 (echo): the one token the workers generate is not part of the answer.
        self.prompt_only = parsed.max_tokens == 0

    # -- accounting ---------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        return self.tok.decode([token_id])

    def account(self, c: Choice, ev: Progress) -> tuple[str, list[lps.Scored]]:
        """Record an event of choice ``c``; return the text and the scored tokens to send now."""
        c.cached_tokens = max(c.cached_tokens, ev.cached_tokens)
        if ev.prompt_logprobs is not None and c.prompt_scored is None:
            c.prompt_scored = lps.prompt_from_pb(self.prompt_ids, ev.prompt_logprobs)
        if self.prompt_only:
            c.finish = c.finish or ("length" if ev.token_ids or ev.finish_reason else None)
            return "", []
        m = self.router.metrics
        now = time.monotonic()
        n = len(ev.token_ids)
        if n:
            if not self.first_token_seen:
                self.first_token_seen = True
                m.ttft.observe(now - self.arrival)
            gaps = n - 1 if c.completion_tokens == 0 else n  # a choice's first token has no gap
            for _ in range(gaps):
                m.itl.observe((now - (c.last_token_at or self.arrival)) / n)
            c.last_token_at = now
            c.completion_tokens += n
        scored = [lps.from_pb(lp) for lp in ev.logprobs]
        c.scored.extend(scored)
        delta = c.text.add(ev.token_ids)
        if c.text.stopped:
            c.finish = "stop"
        elif ev.finish_reason:
            c.finish = ev.finish_reason
        if c.finish:
            delta += c.text.flush()
        return delta, scored

    def _done(self) -> None:
        m = self.router.metrics
        m.e2e.observe(time.monotonic() - self.arrival)
        m.prompt_tokens.inc(len(self.prompt_ids))
        m.generation_tokens.inc(sum(c.completion_tokens for c in self.choices))

    def _usage(self) -> tuple[int, int, int]:
        """Usage of the request: every choice generated (best_of ones not returned included), and
        the prompt tokens served from a prefix cache."""
        cached = max((c.cached_tokens for c in self.choices), default=0)
        return len(self.prompt_ids), sum(c.completion_tokens for c in self.choices), cached

    # -- logprobs and echo ------------------------------------------------------------------------

    @property
    def echoed(self) -> bool:
        """Completions with echo: the prompt precedes each choice's output."""
        return self.parsed.kind == "completion" and self.parsed.echo

    def _logprobs(self, scored: list[lps.Scored], offset: int) -> dict[str, Any] | None:
        top = self.parsed.logprobs
        if top is None:
            return None
        if self.parsed.kind == "chat":
            return lps.chat_logprobs(scored, self.token_text, top)
        return lps.completion_logprobs(scored, self.token_text, top, offset)

    def _final_choice(self, c: Choice, index: int) -> dict[str, Any]:
        text = c.text.text if not self.prompt_only else ""
        scored = list(c.scored) if not self.prompt_only else []
        if self.echoed:
            text = self.prompt_text + text
            scored = [*(c.prompt_scored or []), *scored]
        return fmt.choice(self.parsed.kind, index, text, c.finish or "stop", self._logprobs(scored, 0))

    # -- running the choices ------------------------------------------------------------------

    async def _events(self, c: Choice) -> AsyncIterator[Progress]:
        async with contextlib.aclosing(self.router.dispatcher.generate(c.job)) as events:
            async for ev in events:
                yield ev
                if ev.finish_reason:
                    return

    async def collect(self) -> web.Response:
        async def run(c: Choice) -> None:
            async for ev in self._events(c):
                self.account(c, ev)
                if c.finish:
                    return

        try:
            await asyncio.gather(*(run(c) for c in self.choices))
        except ApiError as e:
            return self.router._error(e)
        self._done()
        chosen = self.choices
        if len(chosen) > self.parsed.n:  # best_of: the most likely n
            chosen = sorted(chosen, key=lambda c: lps.total(c.scored), reverse=True)[: self.parsed.n]
        body = fmt.response(
            self.parsed.kind,
            self.request_id,
            self.created,
            self.parsed.model,
            [self._final_choice(c, i) for i, c in enumerate(chosen)],
            *self._usage(),
        )
        return web.json_response(body)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[tuple[Choice, Progress] | ApiError | None] = asyncio.Queue()

        async def pump(c: Choice) -> None:
            try:
                async for ev in self._events(c):
                    await queue.put((c, ev))
            except ApiError as e:
                await queue.put(e)
            finally:
                await queue.put(None)

        tasks = {c.index: asyncio.get_running_loop().create_task(pump(c)) for c in self.choices}
        try:
            # The first event decides between an HTTP error and a 200 stream.
            first = await queue.get()
            if isinstance(first, ApiError):
                return self.router._error(first)
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Request-Id": self.request_id,
                }
            )
            await resp.prepare(request)
            try:
                await self._write_stream(resp, first, queue, tasks)
            except ConnectionResetError:
                log.info("client of %s went away; cancelling its work", self.request_id)
            return resp
        finally:
            for t in tasks.values():
                t.cancel()

    async def _write_stream(
        self, resp: web.StreamResponse, first: Any, queue: asyncio.Queue, tasks: dict[int, asyncio.Task]
    ) -> None:
        p, kind = self.parsed, self.parsed.kind

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(fmt.sse(obj))

        async def chunk(c: Choice, text: str | None, finish: str | None, **kw: Any) -> None:
            await send(
                fmt.stream_chunk(
                    kind, self.request_id, self.created, p.model, text, finish, index=c.index, **kw
                )
            )

        if kind == "chat":
            for c in self.choices:
                await chunk(c, "", None, role=True)
        echoed: set[int] = set()
        running = len(self.choices)
        item = first
        while True:
            if item is None:
                running -= 1
                if running == 0:
                    break
            elif isinstance(item, ApiError):
                # Headers are gone: report in-band, the way OpenAI streams report errors.
                self.router.metrics.errors.labels(str(item.status), item.type).inc()
                await send(item.body())
                return
            else:
                c, ev = item
                if c.finish is None:
                    delta, scored = self.account(c, ev)
                    if self.echoed and c.index not in echoed:
                        echoed.add(c.index)
                        await chunk(
                            c, self.prompt_text, None, logprobs=self._logprobs(c.prompt_scored or [], 0)
                        )
                    if delta or scored:
                        offset = len(self.prompt_text) if self.echoed else 0
                        lp = self._logprobs(scored, offset + len(c.text.text) - len(delta))
                        await chunk(c, delta, None, logprobs=lp)
                    if c.finish:
                        # A stop string ends the choice here: its work on the workers stops too.
                        tasks[c.index].cancel()
                        await chunk(c, None if kind == "chat" else "", c.finish)
            item = await queue.get()
        self._done()
        if p.include_usage:
            await send(fmt.usage_chunk(kind, self.request_id, self.created, p.model, *self._usage()))
        await resp.write(fmt.SSE_DONE)
        await resp.write_eof()
