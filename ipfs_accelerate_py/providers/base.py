"""Provider interface, capability flags and the registry.

A provider translates between the normalized types (``types.py``) and one wire
protocol.  It owns no sockets and no state beyond its endpoint's settings: the
endpoint actor hands it a ``Transport`` and does the counting, limiting and
retrying.  A provider module should read like a table: which operations, which
paths, how fields map.  Everything two providers would otherwise both write
(error-body parsing, Retry-After, the default execute/stream loops) is here once.
"""
from __future__ import annotations

import abc
import fnmatch
import importlib
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar, Iterable, Mapping

from .. import errors
from ..core import backoff
from ..core.limiter import RateLimitHeaders
from ..transport import HttpRequest, HttpResponse, SseEvent
from ..types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo,
                     OperationRequest, OperationResponse, StreamChunk)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import EndpointConfig
    from ..transport import Transport

Request = ChatRequest | EmbeddingRequest | OperationRequest
Result = ChatResponse | EmbeddingResponse | OperationResponse | list[ModelInfo]


class StreamDecoder(abc.ABC):
    """Turns a provider's stream events into StreamChunks.

    ``feed`` gets one framed event (an ``SseEvent`` for SSE, a parsed object
    for NDJSON) and returns zero or more chunks; it raises a GatewayError for an
    error event inside the stream.  ``close`` is called when the body ends: it
    returns the final ``done=True`` chunk, or raises ``ProviderError`` if the
    stream ended before the protocol's end marker (a truncated answer must
    never look complete).
    """

    @abc.abstractmethod
    def feed(self, event: Any) -> list[StreamChunk]:
        """Chunks for one framed event."""

    @abc.abstractmethod
    def close(self) -> list[StreamChunk]:
        """The final chunk(s) at the end of the body."""


class Provider:
    #: registry name, also the ``provider/`` prefix of model names
    name: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    #: operations this provider implements (see types.OPERATIONS)
    operations: ClassVar[frozenset[str]] = frozenset()
    #: fnmatch patterns of model ids this provider serves, used to route bare
    #: model names to endpoints configured without an explicit model list
    model_patterns: ClassVar[tuple[str, ...]] = ()
    #: largest number of inputs one upstream embedding call may carry
    max_embed_batch: ClassVar[int | None] = None
    #: send the request id upstream as X-Request-ID
    sends_request_id: ClassVar[bool] = True
    #: model used when a caller names none (seed-style calls)
    default_model: ClassVar[str | None] = None
    #: one line for the README capability matrix
    description: ClassVar[str] = ""

    def __init__(self, endpoint: "EndpointConfig") -> None:
        self.endpoint = endpoint
        self.base_url = (endpoint.base_url or self.default_base_url).rstrip("/")

    # -- capabilities ------------------------------------------------------
    @classmethod
    def supports(cls, op: str) -> bool:
        return op in cls.operations

    @classmethod
    def claims_model(cls, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in cls.model_patterns)

    def require(self, op: str) -> None:
        if not self.supports(op):
            raise errors.UnsupportedOperationError(
                f"provider {self.name!r} does not support {op!r}; it supports "
                f"{', '.join(sorted(self.operations))}", provider=self.name,
                endpoint_id=self.endpoint.id)

    # -- helpers for subclasses --------------------------------------------
    @property
    def api_key(self) -> str | None:
        return self.endpoint.api_key.get() if self.endpoint.api_key else None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        """Common headers: content type, request id, the endpoint's extra headers."""
        h = {"Content-Type": "application/json"}
        if request_id and self.sends_request_id:
            h["X-Request-ID"] = request_id
        h.update(self.endpoint.headers or {})
        return h

    def auth_headers(self) -> dict[str, str]:
        """Bearer auth by default; providers with another scheme override."""
        key = self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- translation: subclasses implement what they support ----------------
    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        """The HTTP request for one operation."""
        raise errors.UnsupportedOperationError(
            f"provider {self.name!r} cannot build {op!r}", provider=self.name)

    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        """The normalized result of a successful (2xx) response."""
        raise errors.UnsupportedOperationError(
            f"provider {self.name!r} cannot parse {op!r}", provider=self.name)

    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        raise errors.UnsupportedOperationError(
            f"provider {self.name!r} does not stream {op!r}", provider=self.name)

    # -- errors and rate limits ---------------------------------------------
    def error_message(self, response: HttpResponse) -> tuple[str, str | None, str | None]:
        """(message, error type, error code) from the common error-body shapes."""
        body = response.json()
        message, etype, code = "", None, None
        if isinstance(body, Mapping):
            err = body.get("error", body)
            if isinstance(err, Mapping):
                message = str(err.get("message") or err.get("msg") or err.get("detail") or "")
                etype = err.get("type") or err.get("status") or err.get("error_type")
                code = err.get("code")
            elif isinstance(err, str):
                message = err
                etype = body.get("error_type") or body.get("type")
            if not message and "detail" in body:
                message = str(body["detail"])
            if not message and "message" in body:
                message = str(body["message"])
        if not message:
            message = response.text[:500] or f"HTTP {response.status}"
        # an upstream may echo the key it rejected; strip this endpoint's key even
        # when it has no recognisable shape and was never registered as a secret
        message = errors.redact(message, [self.api_key or ""])
        return message, (str(etype) if etype is not None else None), (str(code) if code is not None else None)

    def parse_error(self, response: HttpResponse) -> errors.GatewayError:
        """The typed error for a non-2xx response.  Subclasses refine the
        mapping (Anthropic's 529, Gemini's retryDelay, TEI's 413-as-split)."""
        message, etype, code = self.error_message(response)
        status = response.status
        text = f"{self.name} returned HTTP {status}: {message}"
        kw: dict[str, Any] = {"provider": self.name, "endpoint_id": self.endpoint.id,
                              "code": code or etype}
        lowered = f"{code or ''} {etype or ''} {message}".lower()
        if status in (400, 413, 422) and ("context_length" in lowered or "context length" in lowered
                                          or "maximum context" in lowered or "too many tokens" in lowered):
            err: errors.GatewayError = errors.ContextLengthError(text, status=status, **kw)
        elif status == 404 and ("model" in lowered):
            err = errors.UnknownModelError(text, status=404, **kw)
        elif status == 429 and (code == "insufficient_quota" or "insufficient_quota" in lowered):
            # a billing problem, not a rate: retrying the same key cannot help
            err = errors.RateLimitError(text, status=429, retryable=False, **kw)
        elif status == 529 or (etype and "overloaded" in str(etype).lower()) and status >= 500:
            err = errors.ProviderOverloadedError(text, status=status, **kw)
        else:
            err = errors.error_for_status(status, text, **kw)
        err.retry_after = self.retry_after(response)
        should = response.header("x-should-retry")
        if should in ("true", "false"):
            err.retryable = should == "true"
        return err

    def retry_after(self, response: HttpResponse) -> float | None:
        return backoff.retry_after_from_headers(response.headers)

    def rate_limit_headers(self, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """Rate-limit state the provider reported; None when it sends none."""
        return None

    def usage_of(self, result: Result) -> tuple[int, int]:
        usage = getattr(result, "usage", None)
        if usage is None:
            return 0, 0
        return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)

    # -- execution: the default single-request loops -------------------------
    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: "Transport") -> tuple[Result, Mapping[str, str]]:
        """Run one non-streaming operation; returns (result, response headers).

        Multi-call operations (TEI batch splitting, LLVM chat over inference,
        S3 through boto3) override this.
        """
        self.require(op)
        http_request = self.build(op, request, request_id)
        response = await transport.send(http_request, timeout_s=self.endpoint.timeout_s)
        if response.status >= 400:
            raise self.parse_error(response)
        return self.parse(op, request, response), response.headers

    async def stream(self, op: str, request: Request, request_id: str | None,
                     transport: "Transport", on_headers=None) -> AsyncIterator[StreamChunk]:
        """Run one streaming operation, yielding chunks; the last has done=True.

        ``on_headers`` (optional callable) receives the response headers as soon
        as they arrive, so the caller can update rate-limit state early.
        """
        self.require(op)
        http_request = self.build(op, request, request_id)
        async with transport.stream(http_request, timeout_s=self.endpoint.timeout_s,
                                    stall_timeout_s=self.endpoint.stream_timeout_s) as response:
            if response.status >= 400:
                body = await response.read()
                raise self.parse_error(HttpResponse(response.status, response.headers, body))
            if on_headers is not None:
                on_headers(response.headers)
            decoder = self.stream_decoder(op, request, response.headers)
            async for event in response.events():
                for chunk in decoder.feed(event):
                    yield chunk
            for chunk in decoder.close():
                yield chunk

    async def probe_health(self, path: str, request_id: str | None,
                           transport: "Transport") -> tuple[OperationResponse, Mapping[str, str]]:
        """The ``health`` operation of self-hosted servers: GET ``path``.

        ``data`` is True on 2xx and False on 5xx: a server that answers "I am
        unhealthy" (TGI/TEI ``/health`` 503) gave a real answer, so it is
        reported rather than retried as a failure.  4xx statuses raise, since a
        wrong key or URL is a configuration problem the caller must see, and so
        do network errors (nothing answered at all).
        """
        headers = {**self.auth_headers(), **self.headers(request_id)}
        headers.pop("Content-Type", None)
        response = await transport.send(HttpRequest("GET", self.url(path), headers=headers),
                                        timeout_s=self.endpoint.timeout_s)
        if 400 <= response.status < 500:
            raise self.parse_error(response)
        healthy = response.status < 400
        detail: dict[str, Any] = {"status": response.status}
        if not healthy:
            detail["error"] = self.error_message(response)[0]
        return (OperationResponse(op="health", data=healthy, provider=self.name, endpoint_id=self.endpoint.id,
                                  raw=detail), response.headers)

    @classmethod
    def estimate_tokens(cls, op: str, request: Request) -> int:
        """Tokens to reserve at admission (prompt estimate + expected output).

        A classmethod: the router estimates before it knows which key will run
        the request, so the estimate may depend on the request only."""
        from ..core import tokens
        if isinstance(request, ChatRequest):
            prompt = tokens.count_message_tokens([m.to_openai() for m in request.messages], request.model)
            return prompt + (request.max_tokens or tokens.DEFAULT_COMPLETION_ESTIMATE)
        if isinstance(request, EmbeddingRequest):
            return sum(tokens.count_tokens(t, request.model) for t in request.input)
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} endpoint={self.endpoint.id!r} base_url={self.base_url!r}>"


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

#: provider name -> module that defines it (imported on first use)
PROVIDER_MODULES: dict[str, str] = {
    "openai": "openai", "groq": "groq", "claude": "claude", "gemini": "gemini",
    "ollama": "ollama", "hf_tgi": "hf_tgi", "hf_tei": "hf_tei", "llvm": "llvm",
    "ovms": "ovms", "opea": "opea", "s3": "s3",
}
#: other spellings users write
PROVIDER_ALIASES: dict[str, str] = {
    "anthropic": "claude", "openai_api": "openai", "google": "gemini", "tgi": "hf_tgi",
    "tei": "hf_tei", "s3_kit": "s3", "openvino": "ovms",
}
_REGISTRY: dict[str, type[Provider]] = {}


def register(cls: type[Provider]) -> type[Provider]:
    _REGISTRY[cls.name] = cls
    return cls


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def get_provider_class(name: str) -> type[Provider]:
    key = canonical_name(name)
    if key not in _REGISTRY:
        module = PROVIDER_MODULES.get(key)
        if module is None:
            raise errors.ConfigError(
                f"unknown provider {name!r}; known providers: {', '.join(sorted(PROVIDER_MODULES))}")
        importlib.import_module(f"{__package__}.{module}")
    if key not in _REGISTRY:
        raise errors.ConfigError(f"provider {name!r} is not available (its module did not register it)")
    return _REGISTRY[key]


def available_providers() -> list[str]:
    return sorted(PROVIDER_MODULES)


def all_provider_classes() -> Iterable[type[Provider]]:
    for name in available_providers():
        try:
            yield get_provider_class(name)
        except errors.ConfigError:
            continue
