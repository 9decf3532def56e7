"""Fake Hugging Face Text Embeddings Inference server (PROTOCOLS.md section 7).

Routes: ``POST /embed`` (bare array of vectors, in input order),
``POST /rerank`` (``[{"index", "score", "text"?}]`` sorted by score),
``POST /`` and ``/invocations`` (embed or rerank, by the model type),
``GET /info`` and ``GET /health`` (open even when a key is set).

Limits behave as in TEI 1.9: more inputs than ``max_client_batch_size`` is a
422 ``Validation`` error "batch size N > maximum allowed batch size M" (set the
option ``batch_size_status`` to 413 to play a server from before 1.9.0); a body
over ``payload_limit`` bytes is a 413 from the HTTP layer with a plain-text
body; an input over ``max_input_length`` tokens is a 422 unless ``truncate`` (or
the server's ``auto_truncate``); more than ``max_concurrent_requests`` requests
in flight get 429 ``Overloaded`` at once, with no Retry-After.  Error bodies
are ``{"error", "error_type"}`` with PascalCase types, as real servers send
them.  Auth is off until ``valid_keys`` is set; then a bearer key is required
(compared exactly) and a wrong one gets a bare 401.

Server settings live in ``controls.options``: ``model_id``, ``model_type``
(``embedding`` | ``reranker`` | ``classifier``), ``dimensions`` (384),
``pooling``, ``max_client_batch_size`` (32), ``max_concurrent_requests``
(512), ``max_input_length`` (512), ``max_batch_tokens``, ``payload_limit``
(2 000 000), ``auto_truncate``, ``batch_size_status``, ``healthy``,
``prompts`` (``prompt_name`` -> prefix), ``version`` and ``processing_s``
(how long each request holds its permit).

Embeddings are deterministic (``base.embedding_vector``): unit vectors when
``normalize`` is true (the default), a text-dependent length otherwise.
Rerank scores are a sigmoid of the query/text embedding similarity (the raw
logit with ``raw_scores``).  Responses carry TEI's timing headers and
``x-compute-tokens``.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from aiohttp import web

from .base import (
    FakeControls,
    FakeError,
    FakeProtocol,
    FakeServer,
    RequestContext,
    context_of,
    decode_tokens,
    embedding_vector,
    json_bytes,
    token_ids,
)
from .hf_tgi import Permits, option

__all__ = ["DEFAULT_OPTIONS", "TEIProtocol", "make_app"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "model_id": "sentence-transformers/all-MiniLM-L6-v2",
    "model_type": "embedding",
    "dimensions": 384,
    "pooling": "mean",
    "max_client_batch_size": 32,
    "max_concurrent_requests": 512,
    "max_input_length": 512,
    "max_batch_tokens": 16384,
    "payload_limit": 2_000_000,
    "auto_truncate": False,
    "batch_size_status": 422,
    "healthy": True,
    "prompts": {},
    "tokenization_workers": 4,
    "version": "1.9.3",
    "processing_s": 0.0,
}
_OPEN_ROUTES = {("GET", "/health"), ("GET", "/info"), ("GET", "/metrics")}
_TRUNCATION_DIRECTIONS = ("Right", "Left", "right", "left")


def _opt(ctx: RequestContext, name: str) -> Any:
    return option(ctx, name, DEFAULT_OPTIONS)


def _error(status: int, message: str, error_type: str) -> FakeError:
    return FakeError(status, message, type=error_type)


def _deserialize(detail: str) -> FakeError:
    return FakeError(422, body=f"Failed to deserialize the JSON body into the target type: {detail}")


class TEIProtocol(FakeProtocol):
    """TEI's wire format (PROTOCOLS.md section 7)."""

    name = "hf_tei"
    base_path = ""
    sdk_base_path = ""
    default_stream_error_status = 424

    def __init__(self) -> None:
        self.permits = Permits("Overloaded")

    # -- hooks -------------------------------------------------------------------------
    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        return bool(controls.valid_keys) and (request.method, request.path) not in _OPEN_ROUTES

    def auth_error(self, key: str | None) -> FakeError:
        return FakeError(401, body=b"")

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        table = {400: ("Empty", "Batch is empty"), 413: ("Validation", "Batch size error"),
                 422: ("Validation", "Input validation error"), 424: ("Backend", "Inference failed"),
                 429: ("Overloaded", "Model is overloaded"), 503: ("Unhealthy", "unhealthy")}
        if status in table:
            etype, message = table[status]
        elif status >= 500:
            etype, message = "Backend", f"Inference failed ({status})"
        else:
            etype, message = "Validation", f"Request failed ({status})"
        return etype, None, message

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"error": err.message, "error_type": err.type}

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        return FakeError(exc.status, body=b"")

    def invalid_json_error(self, detail: str) -> FakeError:
        return FakeError(400, body=f"Failed to parse the request body as JSON: {detail}")

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        app.router.add_post("/embed", self.embed)
        app.router.add_post("/rerank", self.rerank)
        app.router.add_post("/", self.dispatch)
        app.router.add_post("/invocations", self.dispatch)
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)

    # -- info routes ---------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        kind = _opt(ctx, "model_type")
        model_type: dict[str, Any]
        if kind == "embedding":
            model_type = {"embedding": {"pooling": _opt(ctx, "pooling")}}
        else:
            model_type = {kind: {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        out = {"model_id": _opt(ctx, "model_id"), "model_sha": "0" * 40, "model_dtype": "float16",
               "model_type": model_type, "max_concurrent_requests": _opt(ctx, "max_concurrent_requests"),
               "max_input_length": _opt(ctx, "max_input_length"), "max_batch_tokens": _opt(ctx, "max_batch_tokens"),
               "max_batch_requests": None, "max_client_batch_size": _opt(ctx, "max_client_batch_size"),
               "auto_truncate": bool(_opt(ctx, "auto_truncate")),
               "tokenization_workers": _opt(ctx, "tokenization_workers"), "served_model_name": None,
               "version": _opt(ctx, "version"), "sha": None, "docker_label": None}
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        if not _opt(context_of(request), "healthy"):
            raise _error(503, "unhealthy", "Unhealthy")
        return web.Response(status=200)

    # -- request reading -------------------------------------------------------------------
    async def _object(self, ctx: RequestContext) -> dict[str, Any]:
        """The JSON body; over ``payload_limit`` bytes it is the HTTP layer's plain 413."""
        raw = await ctx.request.read()
        if len(raw) > int(_opt(ctx, "payload_limit")):
            raise FakeError(413, body="Failed to buffer the request body: length limit exceeded")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.invalid_json_error(str(exc)) from exc
        if not isinstance(body, dict):
            raise _deserialize("invalid type: expected a struct")
        return body

    def _check_batch(self, ctx: RequestContext, size: int, empty_message: str) -> None:
        if size == 0:
            raise _error(400, empty_message, "Empty")
        limit = int(_opt(ctx, "max_client_batch_size"))
        if size > limit:
            raise _error(int(_opt(ctx, "batch_size_status")),
                         f"batch size {size} > maximum allowed batch size {limit}", "Validation")

    def _prepare(self, ctx: RequestContext, text: str, truncate: bool, direction: str,
                 prefix: str = "") -> tuple[str, int]:
        """(text the model sees, its token count) after the prompt prefix and truncation."""
        text = prefix + text
        ids = token_ids(text) or [0]  # an empty string still costs one token
        limit = int(_opt(ctx, "max_input_length"))
        if len(ids) > limit:
            if not truncate:
                raise _error(422, f"`inputs` must have less than {limit} tokens. Given: {len(ids)}", "Validation")
            ids = ids[-limit:] if direction.lower() == "left" else ids[:limit]
            text = decode_tokens(ids)
        return text, len(ids)

    @staticmethod
    def _timing_headers(chars: int, tokens: int, started: float) -> dict[str, str]:
        ms = max(0, int((time.monotonic() - started) * 1000))
        return {"x-compute-type": "gpu+optimized", "x-compute-time": str(ms), "x-compute-characters": str(chars),
                "x-compute-tokens": str(tokens), "x-total-time": str(ms), "x-tokenization-time": "0",
                "x-queue-time": "0", "x-inference-time": str(ms)}

    async def _hold(self, ctx: RequestContext) -> None:
        delay = float(_opt(ctx, "processing_s") or 0)
        if delay > 0:
            await asyncio.sleep(delay)

    def _truncation(self, ctx: RequestContext, body: Mapping[str, Any]) -> tuple[bool, str]:
        truncate = body.get("truncate")
        if truncate is not None and not isinstance(truncate, bool):
            raise _deserialize("truncate: invalid type: expected a boolean")
        direction = body.get("truncation_direction") or "Right"
        if direction not in _TRUNCATION_DIRECTIONS:
            raise _deserialize(f"truncation_direction: unknown variant `{direction}`, expected `Left` or `Right`")
        return (bool(_opt(ctx, "auto_truncate")) if truncate is None else truncate), str(direction)

    # -- /embed ----------------------------------------------------------------------------
    def _inputs(self, raw: Any) -> list[str]:
        """``inputs`` as texts: a string, strings, token ids or lists of token ids."""
        if isinstance(raw, str):
            return [raw]
        if isinstance(raw, list):
            if all(isinstance(x, str) for x in raw):
                return list(raw)
            if raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
                return [decode_tokens(raw)]
            if all(isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
                   for x in raw):
                return [decode_tokens(x) for x in raw]
        if raw is None:
            raise _deserialize("missing field `inputs`")
        raise _deserialize("inputs: data did not match any variant of untagged enum Input")

    async def embed(self, request: web.Request) -> web.Response:
        """POST /embed (section 7.1)."""
        ctx = context_of(request)
        return await self._embed(ctx, await self._object(ctx))

    async def _embed(self, ctx: RequestContext, body: Mapping[str, Any]) -> web.Response:
        started = time.monotonic()
        texts = self._inputs(body.get("inputs"))
        normalize = body.get("normalize", True)
        if not isinstance(normalize, bool):
            raise _deserialize("normalize: invalid type: expected a boolean")
        truncate, direction = self._truncation(ctx, body)
        native = int(_opt(ctx, "dimensions"))
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 0 < dims <= native):
            raise _error(422, f"`dimensions` must be between 1 and {native}. Given: {dims}", "Validation")
        prefix = ""
        if body.get("prompt_name") is not None:
            prompts = _opt(ctx, "prompts") or {}
            if body["prompt_name"] not in prompts:
                raise _error(422, f"prompt `{body['prompt_name']}` is not in the model's prompts "
                                  f"({', '.join(sorted(prompts)) or 'none'})", "Validation")
            prefix = str(prompts[body["prompt_name"]])
        with self.permits.hold(int(_opt(ctx, "max_concurrent_requests"))):
            self._check_batch(ctx, len(texts), "Batch is empty")
            prepared = [self._prepare(ctx, t, truncate, direction, prefix) for t in texts]
            if _opt(ctx, "model_type") != "embedding":
                raise _error(424, "Backend error: Inference error: model is not an embedding model", "Backend")
            await self._hold(ctx)
            vectors = []
            for text, n_tokens in prepared:
                vec = np.asarray(embedding_vector(text, dims or native, native), dtype=np.float64)
                if not normalize:  # an unnormalized pooled vector: some text-dependent length
                    vec = vec * (1.0 + (n_tokens % 7) * 0.25)
                vectors.append([round(float(x), 7) for x in vec])
        tokens = sum(n for _, n in prepared)
        ctx.charge_tokens(tokens)
        return web.Response(body=json_bytes(vectors), content_type="application/json",
                            headers=self._timing_headers(sum(len(t) for t in texts), tokens, started))

    # -- /rerank ---------------------------------------------------------------------------
    async def rerank(self, request: web.Request) -> web.Response:
        """POST /rerank (section 7.1)."""
        ctx = context_of(request)
        return await self._rerank(ctx, await self._object(ctx))

    async def _rerank(self, ctx: RequestContext, body: Mapping[str, Any]) -> web.Response:
        started = time.monotonic()
        query, texts = body.get("query"), body.get("texts")
        if not isinstance(query, str):
            raise _deserialize("missing field `query`" if query is None else "query: invalid type: expected a string")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _deserialize("missing field `texts`" if texts is None
                               else "texts: invalid type: expected a sequence of strings")
        raw_scores, return_text = body.get("raw_scores", False), body.get("return_text", False)
        truncate, direction = self._truncation(ctx, body)
        with self.permits.hold(int(_opt(ctx, "max_concurrent_requests"))):
            if not texts:
                raise _error(400, "`texts` cannot be empty", "Empty")
            if _opt(ctx, "model_type") != "reranker":
                raise _error(424, "Backend error: Inference error: model is not a re-ranker model", "Backend")
            self._check_batch(ctx, len(texts), "`texts` cannot be empty")
            native = int(_opt(ctx, "dimensions"))
            q_text, q_tokens = self._prepare(ctx, query, truncate, direction)
            q_vec = np.asarray(embedding_vector(q_text, native), dtype=np.float64)
            await self._hold(ctx)
            ranks = []
            tokens = 0
            for index, text in enumerate(texts):
                t_text, t_tokens = self._prepare(ctx, text, truncate, direction)
                tokens += q_tokens + t_tokens
                logit = 10.0 * float(np.dot(q_vec, embedding_vector(t_text, native))) - 2.0
                score = logit if raw_scores else 1.0 / (1.0 + math.exp(-logit))
                rank: dict[str, Any] = {"index": index, "score": round(score, 7)}
                if return_text:
                    rank["text"] = text
                ranks.append(rank)
        ranks.sort(key=lambda r: -r["score"])
        ctx.charge_tokens(tokens)
        chars = len(query) * len(texts) + sum(len(t) for t in texts)
        return web.Response(body=json_bytes(ranks), content_type="application/json",
                            headers=self._timing_headers(chars, tokens, started))

    # -- POST / and /invocations -------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.Response:
        """The model-type alias: rerank for re-rankers, embed otherwise."""
        ctx = context_of(request)
        body = await self._object(ctx)
        if _opt(ctx, "model_type") == "reranker":
            return await self._rerank(ctx, body)
        return await self._embed(ctx, body)


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake TEI server as an aiohttp application."""
    return FakeServer(TEIProtocol(), controls).make_app()
