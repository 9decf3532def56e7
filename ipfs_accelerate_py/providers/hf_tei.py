"""Hugging Face Text Embeddings Inference (PROTOCOLS.md section 7).

``/embed`` takes at most ``--max-client-batch-size`` inputs per request
(default 32) and answers with a bare array of vectors and no token usage.  So
``embed`` here is a multi-call operation: it splits the inputs into batches of
the server's limit (the endpoint's ``options["max_client_batch_size"]``, else
learned once from ``GET /info``), sends them one after another, and rejoins
the vectors in input order.  A server that still says "batch size N >
maximum allowed batch size M" (422 since TEI 1.9, 413 before) or refuses the
body as too large (a plain-text 413 from the HTTP layer) gets that batch again
in smaller pieces.

Usage: TEI's bodies carry no token counts, but its responses have an
``x-compute-tokens`` header; when every batch reported it, usage is that sum,
otherwise it is estimated locally and marked ``Usage.details["estimated"]``.

``rerank`` (cross-encoders) is split the same way: each (query, text) pair is
scored on its own, so scores from several calls merge exactly, and the merged
list is sorted by score like one call's would be.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from .. import errors
from ..core import tokens
from ..transport import HttpRequest, HttpResponse
from ..types import EmbeddingRequest, EmbeddingResponse, ModelInfo, OperationRequest, OperationResponse, Usage
from .base import Provider, Request, Result, register
from .hf_tgi import hf_error
from .openai_compat import http_request, json_object, op_params

__all__ = ["TEIProvider", "similarity"]

#: TEI's default --max-client-batch-size, used when neither the endpoint nor /info says otherwise
DEFAULT_CLIENT_BATCH_SIZE = 32
_BATCH_LIMIT_RE = re.compile(r"batch size (\d+) > maximum allowed batch size (\d+)", re.I)
#: /embed fields a caller may set through ``extra`` (anything else passes through too)
_PROTECTED = frozenset({"inputs", "model"})
_RERANK_FIELDS = ("raw_scores", "return_text", "truncate", "truncation_direction")


def similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two embeddings (the seed API's ``calculate_similarity``).

    Zero vectors have no direction, so their similarity is 0.0 rather than NaN.
    """
    va = np.asarray(a, dtype=np.float64).ravel()
    vb = np.asarray(b, dtype=np.float64).ravel()
    if va.shape != vb.shape:
        raise errors.InvalidRequestError(
            f"cannot compare embeddings of different sizes ({va.size} and {vb.size})", code="dimension_mismatch")
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
    if norm == 0.0:
        return 0.0
    return float(np.dot(va, vb) / norm)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


class _Batches:
    """What the calls of one batched operation reported: how many were made, the
    last response's headers, and the server's token counts (``x-compute-tokens``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.headers: Mapping[str, str] = {}
        self.tokens: int | None = 0

    def add(self, headers: Mapping[str, str]) -> None:
        self.headers = headers
        reported = _positive_int(_header_int(headers.get("x-compute-tokens")))
        # one batch without the header makes the total unknown: estimate it all instead
        self.tokens = None if reported is None or self.tokens is None else self.tokens + reported

    def usage(self, estimate: Callable[[], int]) -> Usage:
        if self.tokens:
            return Usage(prompt_tokens=self.tokens)
        return Usage(prompt_tokens=estimate(), details={"estimated": True})


def _header_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@register
class TEIProvider(Provider):
    name = "hf_tei"
    default_base_url = "http://localhost:8080"
    operations = frozenset({"embed", "rerank", "model_info", "health"})
    #: TEI's default client batch limit; the live value comes from the endpoint or /info
    max_embed_batch = DEFAULT_CLIENT_BATCH_SIZE
    description = "Hugging Face Text Embeddings Inference: batched /embed, /rerank, /info"

    #: the server-description route (batch limit, model type, input length)
    info_path: ClassVar[str] = "info"

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        options = getattr(endpoint, "options", None) or {}
        configured = options.get("max_client_batch_size")
        if configured is not None and _positive_int(configured) is None:
            raise errors.ConfigError(f"endpoint {endpoint.id!r}: options.max_client_batch_size must be a "
                                     f"positive integer, got {configured!r}")
        #: the server's per-request input limit once known (configured, read from /info, or
        #: learned from a "batch size" rejection)
        self._client_batch_size: int | None = _positive_int(configured)
        self._info_locks: dict[int, asyncio.Lock] = {}

    # -- batch limit -------------------------------------------------------------
    @property
    def client_batch_size(self) -> int | None:
        """The batch limit this instance knows of, or None before /info was read."""
        return self._client_batch_size

    async def batch_size(self, transport: Any, request_id: str | None) -> int:
        """The server's ``max_client_batch_size``: configured, else ``GET /info`` once.

        Concurrent first calls share one /info request.  An HTTP error there
        (an older server, a proxy that hides /info) means the default for good;
        a network error propagates, since /embed would fail the same way.
        """
        if self._client_batch_size is not None:
            return self._client_batch_size
        loop_key = id(asyncio.get_running_loop())
        lock = self._info_locks.setdefault(loop_key, asyncio.Lock())
        async with lock:
            if self._client_batch_size is None:
                response = await transport.send(http_request(self, "GET", self.info_path, request_id),
                                                timeout_s=self.endpoint.timeout_s)
                body = response.json() if response.status < 400 else None
                learned = _positive_int(body.get("max_client_batch_size")) if isinstance(body, Mapping) else None
                self._client_batch_size = learned or DEFAULT_CLIENT_BATCH_SIZE
        self._info_locks.pop(loop_key, None)
        return self._client_batch_size

    def smaller_batch(self, response: HttpResponse, size: int) -> int | None:
        """The batch size to retry with after ``response`` refused a batch of
        ``size`` inputs, or None when splitting cannot help.

        "batch size N > maximum allowed batch size M" (422, or 413 before TEI
        1.9) names the limit, which is remembered for later calls; a plain 413
        (body over ``--payload-limit``) halves the batch for this call only.
        """
        if size <= 1 or response.status not in (413, 422):
            return None
        message = self.error_message(response)[0]
        limit = _BATCH_LIMIT_RE.search(message)
        if limit is not None:
            allowed = max(1, int(limit.group(2)))
            if allowed < size:
                self._client_batch_size = allowed
                return allowed
            return size // 2
        if response.status == 413:
            return size // 2
        return None

    async def _batched(self, items: Sequence[Any], make_request: Callable[[Sequence[Any]], HttpRequest],
                       read: Callable[[HttpResponse, Sequence[Any], int], list[Any]], transport: Any,
                       request_id: str | None) -> tuple[list[Any], "_Batches"]:
        """Send ``items`` in consecutive batches; returns the results in input order
        and what the calls reported.

        Sequential on purpose: the endpoint actor counts this operation as one
        request against the key's concurrency limit, so it must not fan out.
        """
        size = await self.batch_size(transport, request_id)
        results: list[Any] = []
        report = _Batches()
        start = 0
        while start < len(items):
            batch = items[start:start + size]
            response = await transport.send(make_request(batch), timeout_s=self.endpoint.timeout_s)
            report.calls += 1
            if response.status >= 400:
                smaller = self.smaller_batch(response, len(batch))
                if smaller is None:
                    raise self.parse_error(response)
                size = smaller
                continue
            results.extend(read(response, batch, start))
            report.add(response.headers)
            start += len(batch)
        return results, report

    # -- embed ---------------------------------------------------------------------
    def embed_body(self, request: EmbeddingRequest, inputs: Sequence[str]) -> dict:
        """The /embed body for one batch; ``normalize`` defaults to true as on the server."""
        body: dict[str, Any] = {"inputs": list(inputs), "normalize": True}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        body.update((k, v) for k, v in request.extra.items() if k not in _PROTECTED and v is not None)
        return body

    def _read_vectors(self, response: HttpResponse, batch: Sequence[str], start: int) -> list[list[float]]:
        body = response.json()
        if not isinstance(body, list) or len(body) != len(batch) or not all(
                isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                  for x in v) for v in body):
            count = len(body) if isinstance(body, list) else "no"
            raise errors.ProviderError(
                f"{self.name} answered /embed for {len(batch)} inputs with {count} usable vectors "
                f"(inputs {start}..{start + len(batch) - 1})", provider=self.name, endpoint_id=self.endpoint.id)
        return [[float(x) for x in vector] for vector in body]

    async def _embed(self, request: EmbeddingRequest, request_id: str | None,
                     transport: Any) -> tuple[EmbeddingResponse, Mapping[str, str]]:
        vectors, report = await self._batched(
            request.input, lambda batch: http_request(self, "POST", "embed", request_id,
                                                      json_body=self.embed_body(request, batch)),
            self._read_vectors, transport, request_id)
        usage = report.usage(lambda: sum(tokens.count_tokens(text, request.model) for text in request.input))
        return EmbeddingResponse(
            embeddings=vectors, model=request.model, usage=usage, provider=self.name,
            endpoint_id=self.endpoint.id,
            raw={"upstream_calls": report.calls, "max_client_batch_size": self._client_batch_size}), report.headers

    # -- rerank ----------------------------------------------------------------------
    def _rerank_args(self, request: OperationRequest) -> tuple[str, list[str], dict]:
        params = op_params(request)
        query, texts = params.pop("query", None), params.pop("texts", None)
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(query, str) or not query:
            raise errors.InvalidRequestError(f"{self.name} rerank needs a non-empty query string",
                                             provider=self.name, endpoint_id=self.endpoint.id, code="invalid_query")
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise errors.InvalidRequestError(f"{self.name} rerank needs texts: a non-empty list of non-empty "
                                             "strings", provider=self.name, endpoint_id=self.endpoint.id,
                                             code="invalid_texts")
        params.pop("model", None)
        options = {k: v for k, v in params.items() if v is not None}
        return query, list(texts), options

    def _read_ranks(self, response: HttpResponse, batch: Sequence[str], start: int) -> list[dict]:
        body = response.json()
        if not isinstance(body, list):
            raise errors.ProviderError(f"{self.name} answered /rerank with {response.text[:200]!r}",
                                       provider=self.name, endpoint_id=self.endpoint.id)
        ranks = []
        for item in body:
            index, score = (item.get("index"), item.get("score")) if isinstance(item, Mapping) else (None, None)
            if not isinstance(index, int) or not 0 <= index < len(batch) or not isinstance(score, (int, float)):
                raise errors.ProviderError(f"{self.name} answered /rerank with an unusable entry {item!r}",
                                           provider=self.name, endpoint_id=self.endpoint.id)
            rank = {"index": start + index, "score": float(score)}
            if item.get("text") is not None:
                rank["text"] = item["text"]
            ranks.append(rank)
        return ranks

    async def _rerank(self, request: OperationRequest, request_id: str | None,
                      transport: Any) -> tuple[OperationResponse, Mapping[str, str]]:
        query, texts, options = self._rerank_args(request)
        ranks, report = await self._batched(
            texts, lambda batch: http_request(self, "POST", "rerank", request_id,
                                              json_body={"query": query, "texts": list(batch), **options}),
            self._read_ranks, transport, request_id)
        ranks.sort(key=lambda r: (-r["score"], r["index"]))
        usage = report.usage(lambda: self.estimate_tokens("rerank", request))
        return OperationResponse(op="rerank", data=ranks, model=request.model, usage=usage, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw={"upstream_calls": report.calls}), report.headers

    # -- single-call operations ----------------------------------------------------------
    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op == "model_info":
            return http_request(self, "GET", self.info_path, request_id)
        return super().build(op, request, request_id)

    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        if op != "model_info":
            return super().parse(op, request, response)
        body = json_object(self, response, op)
        learned = _positive_int(body.get("max_client_batch_size"))
        if learned is not None and self._client_batch_size is None:
            self._client_batch_size = learned
        kinds = body.get("model_type") if isinstance(body.get("model_type"), Mapping) else {}
        category = next(iter(kinds), None)
        detail = kinds.get(category) if category else None
        pooling = detail.get("pooling") if isinstance(detail, Mapping) else None
        info = ModelInfo(id=str(body.get("model_id") or getattr(request, "model", None) or ""),
                         provider=self.name, endpoint_id=self.endpoint.id, owned_by=body.get("model_id"),
                         context_window=_positive_int(body.get("max_input_length")), category=category,
                         description=f"pooling: {pooling}" if pooling else None, raw=body)
        return OperationResponse(op=op, data=info, model=info.id, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """``embed`` and ``rerank`` are split into batches; the rest is one call."""
        self.require(op)
        if op == "embed":
            if not isinstance(request, EmbeddingRequest):
                raise errors.InvalidRequestError(f"{self.name} embed needs an EmbeddingRequest",
                                                 provider=self.name, endpoint_id=self.endpoint.id)
            return await self._embed(request, request_id, transport)
        if op == "rerank":
            return await self._rerank(request, request_id, transport)
        if op == "health":
            return await self.probe_health("health", request_id, transport)
        return await super().execute(op, request, request_id, transport)

    @classmethod
    def estimate_tokens(cls, op: str, request: Request) -> int:
        if op == "rerank" and isinstance(request, OperationRequest):
            query = request.params.get("query")
            texts = request.params.get("texts")
            if isinstance(query, str) and isinstance(texts, list):
                q = tokens.count_tokens(query, request.model)
                return sum(q + tokens.count_tokens(t, request.model) for t in texts if isinstance(t, str))
        return super().estimate_tokens(op, request)

    # -- errors ------------------------------------------------------------------------
    def parse_error(self, response: HttpResponse) -> errors.GatewayError:
        return hf_error(self, response)
