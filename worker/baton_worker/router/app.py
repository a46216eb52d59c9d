"""The router's HTTP layer (aiohttp): OpenAI endpoints, /health, /metrics.

Handlers only wire things together: validation is in params, placement and failover in
dispatch, answering (choices, text, logprobs) in respond, response shapes in openai_format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from baton_worker.rpc import pb2
from baton_worker.text import RouterTokenizer, load_tokenizer

from . import openai_format as fmt
from .auth import refusal
from .dispatch import DispatchConfig, Dispatcher, Job
from .errors import ApiError, bad_param, model_not_found, overloaded, unavailable
from .metrics import RouterMetrics
from .params import ParsedRequest, parse_chat, parse_completion
from .pool import WorkerPool
from .respond import Answer

log = logging.getLogger("baton.router")
MAX_BODY_BYTES = 16 << 20


@dataclass(frozen=True)
class RouterConfig:
    model_source: str | None  # tokenizer source; None: learn it from the workers' Health
    served_model_names: tuple[str, ...] = ()  # empty: the model source is the name
    max_inflight: int = 1024  # above this, 429 with Retry-After
    max_model_len: int = 0  # 0: the smallest the decode workers report
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    api_keys: tuple[str, ...] = ()  # empty: no authentication


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
            lambda: {"prefill": prefill.snapshot(), "decode": decode.snapshot()},
            lambda: self.inflight,
            lambda: {"prefill": prefill.viewed_blocks(), "decode": decode.viewed_blocks()},
            held=lambda: {"prefill": prefill.waiting, "decode": decode.waiting},
        )
        self.dispatcher = Dispatcher(prefill, decode, cfg.dispatch, self.metrics)
        self.created = int(time.time())
        app = self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._authenticate])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_get("/health", self.health)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/metrics", self.metrics_page)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
        refused = refusal(self.cfg.api_keys, request.path, request.headers.get("Authorization"))
        if refused is not None:
            return self._error(refused)
        return await handler(request)

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
        return web.json_response(fmt.models_list(self.model_names, self.created, self.max_model_len()))

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

    async def _body(self, request: web.Request) -> dict:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None

    def _check_model(self, model: Any) -> None:
        names = self.model_names
        if model not in names and model != self.cfg.model_source:
            raise model_not_found(str(model), names)

    async def _prepare(self, request: web.Request, kind: str) -> tuple[ParsedRequest, str, list[Job], str]:
        """Validate and tokenize; returns the request, its id, one Job per choice, and the
        prompt's text (for echo)."""
        body = await self._body(request)
        parsed = parse_chat(body) if kind == "chat" else parse_completion(body)
        self._check_model(parsed.model)
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
        # A seed for every request: a failover then continues the very same sample; choice i
        # of n samples with seed + i, so n choices of a seeded request are reproducible.
        seed = parsed.seed if parsed.seed is not None else secrets.randbits(63)
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        rid = f"{prefix}-{uuid.uuid4().hex}"
        wants_logprobs = parsed.logprobs is not None or parsed.best_of > parsed.n
        jobs = []
        for i in range(parsed.best_of):
            sampling = pb2.SamplingParams(
                max_tokens=max(1, max_tokens),  # 0 (echo alone): one token is generated and dropped
                temperature=parsed.temperature,
                top_p=parsed.top_p,
                top_k=parsed.top_k,
                seed=(seed + i) % (1 << 64),
                stop_token_ids=list(parsed.stop_token_ids),
                stop=list(parsed.stop),
                ignore_eos=parsed.ignore_eos,
                presence_penalty=parsed.presence_penalty,
                frequency_penalty=parsed.frequency_penalty,
                repetition_penalty=parsed.repetition_penalty,
                min_tokens=parsed.min_tokens,
            )
            if wants_logprobs:
                sampling.logprobs = parsed.logprobs or 0
            if parsed.echo and parsed.logprobs is not None:
                sampling.prompt_logprobs = parsed.logprobs
            jobs.append(Job(rid if parsed.best_of == 1 else f"{rid}-{i}", prompt, sampling))
        if kind == "chat" or not parsed.echo:
            prompt_text = ""
        else:
            prompt_text = parsed.prompt_text if parsed.prompt_text is not None else tok.decode(prompt)
        return parsed, rid, jobs, prompt_text

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        arrival = time.monotonic()
        self.inflight += 1
        try:
            try:
                parsed, rid, jobs, prompt_text = await self._prepare(request, kind)
            except ApiError as e:
                return self._error(e)
            self.metrics.requests.labels(kind, str(parsed.stream).lower()).inc()
            answer = Answer(self, parsed, rid, jobs, arrival, prompt_text)
            if parsed.stream:
                return await answer.stream(request)
            return await answer.collect()
        finally:
            self.inflight -= 1

    # -- tokenizer endpoints (vLLM's shapes) ----------------------------------------------------

    async def _tokenizer_call(self, request: web.Request) -> tuple[dict, RouterTokenizer]:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
        self._check_model(body.get("model"))
        return body, await self.ensure_tokenizer()

    async def tokenize(self, request: web.Request) -> web.Response:
        """POST /tokenize {model, prompt | messages}: the server's own token ids."""
        try:
            body, tok = await self._tokenizer_call(request)
            if "messages" in body:
                ids = tok.encode_chat(
                    parse_chat({"model": body["model"], "messages": body["messages"]}).messages
                )
            elif isinstance(body.get("prompt"), str):
                ids = tok.encode(body["prompt"])
            else:
                raise bad_param(
                    "prompt", "'prompt' (a string) or 'messages' is required", code="invalid_type"
                )
        except ApiError as e:
            return self._error(e)
        return web.json_response({"count": len(ids), "max_model_len": self.max_model_len(), "tokens": ids})

    async def detokenize(self, request: web.Request) -> web.Response:
        """POST /detokenize {model, tokens}: their text."""
        try:
            body, tok = await self._tokenizer_call(request)
            ids = body.get("tokens")
            if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in ids
            ):
                raise bad_param("tokens", "'tokens' must be a list of token ids", code="invalid_type")
            if any(not 0 <= t < tok.vocab_size for t in ids):
                raise bad_param("tokens", f"token ids must be in [0, {tok.vocab_size})")
        except ApiError as e:
            return self._error(e)
        return web.json_response({"prompt": tok.decode(ids)})
