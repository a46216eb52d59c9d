"""The router's HTTP layer (aiohttp): OpenAI endpoints, /health, /metrics.

Handlers only wire things together: validation is in params, placement and failover in
dispatch, text in text, response shapes in openai_format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from baton_worker.rpc import pb2

from . import openai_format as fmt
from .dispatch import DispatchConfig, Dispatcher, Job, Progress
from .errors import ApiError, bad_param, model_not_found, overloaded, unavailable
from .metrics import RouterMetrics
from .params import ParsedRequest, parse_chat, parse_completion
from .pool import WorkerPool
from .text import TextAssembler
from .tokenizer import RouterTokenizer, load_tokenizer

log = logging.getLogger("baton.router")
MAX_BODY_BYTES = 16 << 20


@dataclass(frozen=True)
class RouterConfig:
    model_source: str | None  # tokenizer source; None: learn it from the workers' Health
    served_model_names: tuple[str, ...] = ()  # empty: the model source is the name
    max_inflight: int = 1024  # above this, 429 with Retry-After
    max_model_len: int = 0  # 0: the smallest the decode workers report
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)


class Router:
    """One router: the pools, the dispatcher, the tokenizer and the aiohttp application."""

    def __init__(self, cfg: RouterConfig, prefill: WorkerPool, decode: WorkerPool) -> None:
        self.cfg = cfg
        self.prefill = prefill
        self.decode = decode
        self.inflight = 0
        self.tokenizer: RouterTokenizer | None = None
        self._tokenizer_lock = asyncio.Lock()
        self.metrics = RouterMetrics(
            lambda: {"prefill": prefill.snapshot(), "decode": decode.snapshot()}, lambda: self.inflight
        )
        self.dispatcher = Dispatcher(prefill, decode, cfg.dispatch, self.metrics)
        self.created = int(time.time())
        app = self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/metrics", self.metrics_page)

    # -- model and tokenizer ------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        if self.cfg.served_model_names:
            return list(self.cfg.served_model_names)
        source = self.cfg.model_source or self._source_from_workers()
        return [source] if source else []

    def _source_from_workers(self) -> str | None:
        for pool in (self.decode, self.prefill):
            for w in pool.workers.values():
                if w.health is not None and w.health.model:
                    return w.health.model
        return None

    async def ensure_tokenizer(self) -> RouterTokenizer:
        """Load the tokenizer once (off the event loop); 503 while the model is unknown."""
        if self.tokenizer is not None:
            return self.tokenizer
        async with self._tokenizer_lock:
            if self.tokenizer is None:
                source = self.cfg.model_source or self._source_from_workers()
                if not source:
                    raise unavailable("the model is not known yet: no worker has answered Health")
                try:
                    self.tokenizer = await asyncio.to_thread(load_tokenizer, source)
                except (OSError, ValueError) as e:
                    raise unavailable(f"cannot load the tokenizer of model {source!r}: {e}", 10.0) from None
                log.info("tokenizer of %s loaded", source)
        return self.tokenizer

    def max_model_len(self) -> int:
        if self.cfg.max_model_len:
            return self.cfg.max_model_len
        reported = self.decode.max_model_len()
        return reported or (self.tokenizer.max_model_len if self.tokenizer else 0)

    # -- endpoints ----------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(fmt.models_list(self.model_names, self.created))

    async def health(self, request: web.Request) -> web.Response:
        body = {
            "model": self.model_names,
            "tokenizer_loaded": self.tokenizer is not None,
            "prefill": {"usable": self.prefill.usable_count(), "known": len(self.prefill.workers)},
            "decode": {"usable": self.decode.usable_count(), "known": len(self.decode.workers)},
        }
        ok = self.tokenizer is not None and body["decode"]["usable"] > 0
        body["status"] = "ok" if ok else "unavailable"
        return web.json_response(body, status=200 if ok else 503)

    async def livez(self, request: web.Request) -> web.Response:
        # Liveness only: /health is readiness and fails while no decode worker is usable, which
        # must not restart the router (it would drop the requests waiting for a worker).
        return web.json_response({"status": "alive"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    # -- the request path ---------------------------------------------------------------------

    def _error(self, e: ApiError) -> web.Response:
        self.metrics.errors.labels(str(e.status), e.type).inc()
        return web.json_response(e.body(), status=e.status, headers=e.headers())

    async def _prepare(self, request: web.Request, kind: str) -> tuple[ParsedRequest, Job]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None
        parsed = parse_chat(body) if kind == "chat" else parse_completion(body)
        names = self.model_names
        if parsed.model not in names and parsed.model != self.cfg.model_source:
            raise model_not_found(parsed.model, names)
        if self.inflight > self.cfg.max_inflight:  # self.inflight counts this request too
            raise overloaded(f"the router is serving {self.inflight} requests, its limit; retry later")
        tok = await self.ensure_tokenizer()
        if kind == "chat":
            try:
                prompt = tok.encode_chat(parsed.messages)
            except ValueError as e:
                raise bad_param("messages", str(e)) from None
        elif parsed.prompt_token_ids is not None:
            prompt = list(parsed.prompt_token_ids)
            if max(prompt) >= tok.vocab_size:
                raise bad_param(
                    "prompt", f"token id {max(prompt)} is outside the vocabulary (size {tok.vocab_size})"
                )
        else:
            prompt = tok.encode(parsed.prompt_text or "")
        if not prompt:
            raise bad_param("prompt", "the prompt encodes to no tokens")
        ctx = self.max_model_len()
        where = "messages" if kind == "chat" else "prompt"
        if ctx and len(prompt) >= ctx:
            raise ApiError(
                400,
                f"This model's maximum context length is {ctx} tokens; the prompt has {len(prompt)} tokens",
                param=where,
                code="context_length_exceeded",
            )
        max_tokens = parsed.max_tokens if parsed.max_tokens is not None else max(1, ctx - len(prompt))
        if ctx and len(prompt) + max_tokens > ctx:
            raise ApiError(
                400,
                f"This model's maximum context length is {ctx} tokens; you requested {len(prompt) + max_tokens} "
                f"({len(prompt)} in the prompt, {max_tokens} for the completion)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        # A seed for every request: a failover then continues the very same sample.
        seed = parsed.seed if parsed.seed is not None else secrets.randbits(63)
        sampling = pb2.SamplingParams(
            max_tokens=max_tokens,
            temperature=parsed.temperature,
            top_p=parsed.top_p,
            top_k=parsed.top_k,
            seed=seed,
            stop_token_ids=list(parsed.stop_token_ids),
            stop=list(parsed.stop),
            ignore_eos=parsed.ignore_eos,
        )
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return parsed, Job(f"{prefix}-{uuid.uuid4().hex}", prompt, sampling)

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        arrival = time.monotonic()
        self.inflight += 1
        try:
            try:
                parsed, job = await self._prepare(request, kind)
            except ApiError as e:
                return self._error(e)
            self.metrics.requests.labels(kind, str(parsed.stream).lower()).inc()
            run = _Run(self, parsed, job, arrival)
            async with contextlib.aclosing(self.dispatcher.generate(job)) as events:
                try:
                    first = await run.first_event(events)
                except ApiError as e:
                    return self._error(e)
                if parsed.stream:
                    return await run.stream(request, events, first)
                return await run.collect(events, first)
        finally:
            self.inflight -= 1


class _Run:
    """One request being answered: text assembly, timing metrics, response writing."""

    def __init__(self, router: Router, parsed: ParsedRequest, job: Job, arrival: float) -> None:
        assert router.tokenizer is not None
        self.router = router
        self.parsed = parsed
        self.job = job
        self.arrival = arrival
        self.last = arrival
        self.text = TextAssembler(router.tokenizer.decode, parsed.stop)
        self.completion_tokens = 0
        self.finish: str | None = None
        self.created = int(time.time())

    def _account(self, ev: Progress) -> str:
        """Record an event's tokens and timing; return the text that may be sent now."""
        m = self.router.metrics
        now = time.monotonic()
        n = len(ev.token_ids)
        if n:
            if self.completion_tokens == 0:
                m.ttft.observe(now - self.arrival)
                n_itl = n - 1
            else:
                n_itl = n
            for _ in range(n_itl):
                m.itl.observe((now - self.last) / n)
            self.last = now
            self.completion_tokens += n
        delta = self.text.add(ev.token_ids)
        if self.text.stopped:
            self.finish = "stop"
        elif ev.finish_reason:
            self.finish = ev.finish_reason
        if self.finish:
            delta += self.text.flush()
        return delta

    async def first_event(self, events) -> Progress:  # type: ignore[no-untyped-def]
        async for ev in events:
            return ev
        raise ApiError(500, "the request ended without output", type="server_error")

    def _done(self) -> None:
        m = self.router.metrics
        m.e2e.observe(time.monotonic() - self.arrival)
        m.prompt_tokens.inc(len(self.job.prompt_token_ids))
        m.generation_tokens.inc(self.completion_tokens)

    async def collect(self, events, first: Progress) -> web.Response:  # type: ignore[no-untyped-def]
        self._account(first)
        if not self.finish:
            try:
                async for ev in events:
                    self._account(ev)
                    if self.finish:
                        break
            except ApiError as e:
                return self.router._error(e)
        self._done()
        body = fmt.full_response(
            self.parsed.kind,
            self.job.request_id,
            self.created,
            self.parsed.model,
            self.text.text,
            self.finish or "stop",
            len(self.job.prompt_token_ids),
            self.completion_tokens,
        )
        return web.json_response(body)

    async def stream(self, request: web.Request, events, first: Progress) -> web.StreamResponse:  # type: ignore[no-untyped-def]
        p, rid, kind = self.parsed, self.job.request_id, self.parsed.kind
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Request-Id": rid}
        )
        await resp.prepare(request)
        try:
            if kind == "chat":
                await resp.write(
                    fmt.sse(fmt.stream_chunk(kind, rid, self.created, p.model, "", None, role=True))
                )
            delta = self._account(first)
            if delta:
                await resp.write(fmt.sse(fmt.stream_chunk(kind, rid, self.created, p.model, delta, None)))
            if not self.finish:
                try:
                    async for ev in events:
                        delta = self._account(ev)
                        if delta:
                            await resp.write(
                                fmt.sse(fmt.stream_chunk(kind, rid, self.created, p.model, delta, None))
                            )
                        if self.finish:
                            break
                except ApiError as e:
                    # Headers are gone: report in-band, the way OpenAI streams report errors.
                    self.router.metrics.errors.labels(str(e.status), e.type).inc()
                    await resp.write(fmt.sse(e.body()))
                    return resp
            self._done()
            await resp.write(
                fmt.sse(
                    fmt.stream_chunk(
                        kind,
                        rid,
                        self.created,
                        p.model,
                        None if kind == "chat" else "",
                        self.finish or "stop",
                    )
                )
            )
            if p.include_usage:
                await resp.write(
                    fmt.sse(
                        fmt.usage_chunk(
                            kind,
                            rid,
                            self.created,
                            p.model,
                            len(self.job.prompt_token_ids),
                            self.completion_tokens,
                        )
                    )
                )
            await resp.write(fmt.SSE_DONE)
            await resp.write_eof()
        except ConnectionResetError:
            log.info("client of %s went away; cancelling its work", rid)
        return resp
