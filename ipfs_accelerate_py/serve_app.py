"""The HTTP gateway: an OpenAI-compatible (and Anthropic-compatible) API on Ray Serve.

One FastAPI-ingress deployment holds a handle on the gateway's router actor and
speaks the OpenAI wire format::

    POST /v1/chat/completions   (SSE when "stream": true, stream_options.include_usage)
    POST /v1/completions        (SSE when "stream": true)
    POST /v1/embeddings
    GET  /v1/models, GET /v1/models/{id}
    POST /v1/messages           (Anthropic Messages format, SSE when "stream": true)
    GET  /health, GET /stats

Run it with ``serve run serve_config.yaml``, ``ipfs-accelerate serve --config
gateway.yaml`` or from Python::

    from ipfs_accelerate_py import serve_app
    serve_app.run("gateway.yaml", port=8000)

Every replica attaches to the *same* named router (``Gateway.start`` finds the
one already running under the config's name and namespace), so the per-key rate
limits, circuit breakers and the bounded priority queue hold for all replicas,
and the router's queue -- not Serve's -- is what pushes back (429 + Retry-After).

Requests are authenticated with the config's ``gateway_keys`` (``Authorization:
Bearer <token>`` or ``x-api-key``); errors are the library's typed errors
rendered as OpenAI error JSON (Anthropic error JSON on ``/v1/messages``).
Malformed input is always a 4xx, never a 500.
"""
# No `from __future__ import annotations`: FastAPI must see the real `Request`
# annotations of the class-based routes (Serve rewrites their signatures).
import asyncio
import difflib
import json
import logging
import math
import os
import struct
import time
import types as _pytypes
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Mapping, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import errors
from .config import GatewayConfig, load_config
from .types import ChatResponse, EmbeddingResponse, ModelInfo, StreamChunk, Usage

log = logging.getLogger(__name__)

__all__ = ["run", "build_app", "app_builder", "GatewayIngress", "fastapi_app", "DEFAULT_MAX_BODY_BYTES",
           "DEFAULT_MAX_ONGOING_REQUESTS", "DEFAULT_APP_NAME"]

#: requests with a larger body are refused with 413 (Content-Length and while reading)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: high on purpose: the router's bounded queue applies backpressure, not Serve's
DEFAULT_MAX_ONGOING_REQUESTS = 1000
DEFAULT_APP_NAME = "ipfs_accelerate"
#: JSON nested deeper than this is refused (before it meets recursion limits in pickling or providers)
MAX_JSON_DEPTH = 64
MAX_REQUEST_ID_LEN = 256
#: top-level integer fields where an integral float (``2.0``) is taken as the integer
_INTEGER_FIELDS = ("n", "max_tokens", "max_completion_tokens", "seed", "top_k", "dimensions")
PRIORITIES = {"high": "HIGH", "normal": "NORMAL", "low": "LOW"}

# Body keys that are router keyword arguments or positional parameters: a client
# must not be able to set them through the JSON body (priority is a header).
_RESERVED = frozenset({"priority", "request_id", "endpoint_id", "timeout_s", "provider", "extra", "self",
                       "op", "model", "messages", "prompt", "input", "stream", "stream_options"})


# ---------------------------------------------------------------------------
# Request bodies (validation and the OpenAPI schema)
# ---------------------------------------------------------------------------

class _Body(BaseModel):
    # strict: "0.5" is not a number and 1.0 is not an integer, as with OpenAI;
    # extra fields are allowed and passed through to the provider
    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())


class ContentPart(_Body):
    type: str = Field(min_length=1)


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class StreamOptions(_Body):
    include_usage: Optional[bool] = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[dict[str, Any]] = None


class _Sampling(_Body):
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    n: Optional[int] = Field(None, ge=1, le=128)
    max_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    user: Optional[str] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None


class ChatCompletionRequest(_Sampling):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    response_format: Optional[ResponseFormat] = None


class CompletionRequest(_Sampling):
    model: str = Field(min_length=1)
    prompt: Union[str, list[str]] = Field(min_length=1)
    echo: Optional[bool] = None
    suffix: Optional[str] = None


class EmbeddingsRequest(_Body):
    model: str = Field(min_length=1)
    input: Union[str, list[str]] = Field(min_length=1)
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


class AnthropicMessage(_Body):
    role: Literal["user", "assistant"]
    content: Union[str, list[dict[str, Any]]]


class AnthropicMessagesRequest(_Body):
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Union[str, list[dict[str, Any]], None] = None
    stop_sequences: Optional[list[str]] = None
    temperature: Optional[float] = Field(None, ge=0, le=1)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    stream: Optional[bool] = None
    metadata: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[dict[str, Any]] = None


_BODY_MODELS = (ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, AnthropicMessagesRequest)


def _body_spec(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


# ---------------------------------------------------------------------------
# JSON, errors and responses
# ---------------------------------------------------------------------------

class _HTTPError(Exception):
    """An error raised by the ingress itself (before the router is involved)."""

    def __init__(self, err: errors.GatewayError, status: int | None = None) -> None:
        super().__init__(str(err))
        self.err = err
        self.status = status


def _plain(value: Any) -> Any:
    """JSON-safe copy: dataclasses as dicts, non-finite floats as None, bytes as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def _dumps(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = json.dumps(_plain(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates the client sent us (valid JSON escapes)
        return json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _http_status(err: errors.GatewayError) -> int:
    """The HTTP status an error is sent with: 4xx as the error says, upstream
    failures folded into 502 (bad gateway), 503 (unavailable) and 504 (timeout)."""
    if isinstance(err, (errors.QueueFullError, errors.RateLimitError)):
        return 429
    if isinstance(err, errors.TimeoutError):
        return 504
    if isinstance(err, (errors.CircuitOpenError, errors.ProviderOverloadedError)):
        return 503
    if isinstance(err, (errors.ProviderError, errors.ConnectionError)):
        return 502
    status = err.status
    if isinstance(status, int) and 400 <= status < 500:
        return status
    if isinstance(status, int) and status in (502, 503, 504):
        return status
    if isinstance(err, (errors.InvalidRequestError, errors.UnsupportedOperationError)):
        return 400
    return 500


_DEFAULT_CODES: tuple[tuple[type, str], ...] = (
    (errors.QueueFullError, "queue_full"), (errors.RateLimitError, "rate_limit_exceeded"),
    (errors.UnknownModelError, "model_not_found"), (errors.AuthenticationError, "invalid_api_key"),
    (errors.TimeoutError, "timeout"), (errors.CircuitOpenError, "circuit_open"),
    (errors.StreamInterruptedError, "stream_interrupted"),
)

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}


def _error_code(err: errors.GatewayError) -> str | None:
    if err.code:
        return str(err.code)
    return next((code for cls, code in _DEFAULT_CODES if isinstance(err, cls)), None)


def openai_error(err: errors.GatewayError) -> dict:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    param = err.details.get("param") if isinstance(err.details, Mapping) else None
    return {"error": {"message": err.message, "type": err.openai_type, "param": param,
                      "code": _error_code(err)}}


def anthropic_error(err: errors.GatewayError, status: int) -> dict:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"),
                                       "message": err.message}}


def _as_gateway_error(exc: BaseException) -> errors.GatewayError:
    if isinstance(exc, errors.GatewayError):
        return exc
    log.exception("unexpected error in the HTTP gateway", exc_info=exc)
    return errors.GatewayError(f"internal error ({type(exc).__name__}): {errors.redact(exc)[:300]}",
                               code="internal_error")


def _retry_headers(err: errors.GatewayError, status: int) -> dict[str, str]:
    if status not in (429, 503):
        return {}
    retry = err.retry_after
    if retry is None or not isinstance(retry, (int, float)) or not math.isfinite(retry) or retry < 0:
        if status == 503:
            return {}
        retry = 1.0
    retry = min(float(retry), 3600.0)
    return {"Retry-After": str(max(1, math.ceil(retry))), "retry-after-ms": str(int(retry * 1000))}


def _request_id(request: Request) -> str:
    """The request's id.  Serve's proxy puts X-Request-ID on every request (the
    client's, or a new UUID) and echoes it on every response, so the id we hand
    the router is the one the client sees in the response headers."""
    rid = getattr(request.state, "request_id", None)
    if not rid:
        rid = (request.headers.get("x-request-id") or "").strip()
        if not _valid_request_id(rid):
            rid = f"req_{uuid.uuid4().hex[:24]}"
        request.state.request_id = rid
    return rid


def _valid_request_id(rid: str) -> bool:
    return bool(rid) and len(rid) <= MAX_REQUEST_ID_LEN and rid.isprintable()


def check_gateway_token(keys: list, headers: Mapping[str, str]) -> None:
    """Raise AuthenticationError unless ``headers`` carry one of ``keys`` (no keys: no auth).

    The token is ``Authorization: Bearer <token>`` (OpenAI SDKs) or ``x-api-key``
    (Anthropic SDKs).  Every key is compared, each in constant time, so the
    answer's timing tells nothing about which key came close."""
    if not keys:
        return
    token = None
    auth = headers.get("authorization")
    if auth:
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() == "bearer":
            token = rest.strip()
    if not token:
        token = headers.get("x-api-key")
    if not token:
        raise _HTTPError(errors.AuthenticationError(
            "missing gateway token: send 'Authorization: Bearer <token>'", code="missing_api_key"))
    ok = False
    for key in keys:
        ok |= key.matches(token)
    if not ok:
        raise _HTTPError(errors.AuthenticationError("invalid gateway token", code="invalid_api_key"))


def _json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def error_response(request: Request, exc: BaseException, *, anthropic: bool | None = None) -> Response:
    """Render any exception as the error JSON of the route's wire format."""
    status = None
    if isinstance(exc, _HTTPError):
        status, exc = exc.status, exc.err
    err = _as_gateway_error(exc)
    status = status or _http_status(err)
    if anthropic is None:
        anthropic = request.url.path.rstrip("/").endswith("/v1/messages")
    body = anthropic_error(err, status) if anthropic else openai_error(err)
    headers = _retry_headers(err, status)
    if anthropic:
        body["request_id"] = _request_id(request)
    return _json_response(body, status, headers)


def _invalid(message: str, *, param: str | None = None, code: str | None = None,
             status: int | None = None) -> _HTTPError:
    details = {"param": param} if param else None
    return _HTTPError(errors.InvalidRequestError(message, code=code, details=details), status)


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    problems = exc.errors()
    if not problems:
        return "the request body is invalid", None
    first = problems[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    text = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return text, param


def _json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finish_reason(reason: str | None, default: str = "stop") -> str:
    """A provider's finish reason in OpenAI's vocabulary."""
    if not reason:
        return default
    r = str(reason).lower()
    if r in ("length", "max_tokens", "max_output_tokens", "model_length"):
        return "length"
    if r in ("tool_calls", "tool_use", "function_call"):
        return "tool_calls"
    if r in ("content_filter", "safety", "recitation", "blocklist", "prohibited_content", "refusal"):
        return "content_filter"
    return "stop"


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                   "content_filter": "refusal"}


def _usage(usage: Usage | None) -> dict:
    u = usage or Usage()
    return {"prompt_tokens": int(u.prompt_tokens or 0), "completion_tokens": int(u.completion_tokens or 0),
            "total_tokens": int(u.total_tokens or 0)}


# ---------------------------------------------------------------------------
# Wire conversions (pure functions, unit-testable without Ray)
# ---------------------------------------------------------------------------

def chat_completion_json(resp: ChatResponse, *, completion_id: str, model: str, created: int) -> dict:
    """A ChatResponse as OpenAI's ``chat.completion`` object."""
    texts = resp.choices or [resp.text]
    choices = []
    for i, text in enumerate(texts):
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if i == 0 and resp.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in resp.tool_calls]
            if not text:
                message["content"] = None
        finish = resp.finish_reason if i == 0 else None
        if i == 0 and resp.tool_calls and not finish:
            finish = "tool_calls"
        choices.append({"index": i, "message": message, "logprobs": None,
                        "finish_reason": _finish_reason(finish)})
    return {"id": completion_id, "object": "chat.completion", "created": created,
            "model": resp.model or model, "system_fingerprint": None, "choices": choices,
            "usage": _usage(resp.usage)}


def text_completion_json(resp: ChatResponse, *, completion_id: str, model: str, created: int) -> dict:
    texts = resp.choices or [resp.text]
    choices = [{"text": text, "index": i, "logprobs": None,
                "finish_reason": _finish_reason(resp.finish_reason if i == 0 else None)}
               for i, text in enumerate(texts)]
    return {"id": completion_id, "object": "text_completion", "created": created,
            "model": resp.model or model, "system_fingerprint": None, "choices": choices,
            "usage": _usage(resp.usage)}


def embeddings_json(resp: EmbeddingResponse, *, model: str, encoding_format: str | None) -> dict:
    data = []
    for i, vector in enumerate(resp.embeddings):
        if encoding_format == "base64":
            import base64
            value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        else:
            value = [float(x) for x in vector]
        data.append({"object": "embedding", "index": i, "embedding": value})
    u = resp.usage or Usage()
    return {"object": "list", "data": data, "model": resp.model or model,
            "usage": {"prompt_tokens": int(u.prompt_tokens or 0),
                      "total_tokens": int(u.total_tokens or u.prompt_tokens or 0)}}


def model_json(info: ModelInfo) -> dict:
    return {"id": info.id, "object": "model", "created": 0,
            "owned_by": info.owned_by or info.provider or "ipfs_accelerate"}


def _text_of_blocks(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise _invalid(f"{where} must be a string or a list of content blocks", param=where)
    out = []
    for i, block in enumerate(content):
        if not isinstance(block, Mapping) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _invalid(f"{where}[{i}] must be a text block", param=f"{where}.{i}")
        out.append(block["text"])
    return "\n".join(out)


def anthropic_to_chat(body: Mapping[str, Any]) -> tuple[list[dict], dict]:
    """An Anthropic Messages request as (OpenAI-style messages, chat kwargs)."""
    messages: list[dict] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of_blocks(system, "system")})
    for i, msg in enumerate(body.get("messages") or []):
        role, content = msg.get("role"), msg.get("content")
        where = f"messages.{i}.content"
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict] = []
        calls: list[dict] = []
        results: list[dict] = []
        for j, block in enumerate(content or []):
            kind = block.get("type") if isinstance(block, Mapping) else None
            spot = f"{where}.{j}"
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image" and isinstance(block.get("source"), Mapping):
                source = block["source"]
                if source.get("type") == "base64" and isinstance(source.get("data"), str):
                    url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
                elif source.get("type") == "url" and isinstance(source.get("url"), str):
                    url = source["url"]
                else:
                    raise _invalid(f"{spot}: image source must be base64 data or a url", param=spot)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_use" and role == "assistant" and isinstance(block.get("name"), str):
                calls.append({"id": str(block.get("id") or f"toolu_{j}"), "type": "function",
                              "function": {"name": block["name"],
                                           "arguments": json.dumps(block.get("input") or {})}})
            elif kind == "tool_result" and role == "user" and isinstance(block.get("tool_use_id"), str):
                results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                                "content": _text_of_blocks(block.get("content"), f"{spot}.content")})
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue
            else:
                raise _invalid(f"{spot}: unsupported content block {kind!r} for role {role!r}", param=spot)
        messages.extend(results)
        if calls:
            text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
            messages.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        elif parts or not results:
            messages.append({"role": role, "content": parts})
    kwargs: dict[str, Any] = {"max_tokens": body.get("max_tokens")}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                     ("stop_sequences", "stop")):
        if body.get(src) is not None:
            kwargs[dst] = body[src]
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        kwargs["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        converted = []
        for i, tool in enumerate(tools):
            if not isinstance(tool.get("name"), str) or not tool.get("name"):
                raise _invalid(f"tools.{i}.name must be a non-empty string", param=f"tools.{i}.name")
            fn: dict[str, Any] = {"name": tool["name"],
                                  "parameters": tool.get("input_schema") or {"type": "object"}}
            if isinstance(tool.get("description"), str):
                fn["description"] = tool["description"]
            converted.append({"type": "function", "function": fn})
        kwargs["tools"] = converted
    choice = body.get("tool_choice")
    if choice:
        kind = choice.get("type")
        if kind == "auto":
            kwargs["tool_choice"] = "auto"
        elif kind == "any":
            kwargs["tool_choice"] = "required"
        elif kind == "none":
            kwargs["tool_choice"] = "none"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            kwargs["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise _invalid("tool_choice.type must be auto, any, none or tool (with a name)", param="tool_choice")
    return messages, kwargs


def _tool_input(arguments: str) -> Any:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def anthropic_message_json(resp: ChatResponse, *, message_id: str, model: str) -> dict:
    content: list[dict] = []
    if resp.text or not resp.tool_calls:
        content.append({"type": "text", "text": resp.text})
    for call in resp.tool_calls:
        content.append({"type": "tool_use", "id": call.id or f"toolu_{uuid.uuid4().hex[:20]}",
                        "name": call.name, "input": _tool_input(call.arguments)})
    finish = _finish_reason(resp.finish_reason, "tool_calls" if resp.tool_calls else "stop")
    u = resp.usage or Usage()
    return {"id": message_id, "type": "message", "role": "assistant", "model": resp.model or model,
            "content": content, "stop_reason": _ANTHROPIC_STOP.get(finish, "end_turn"), "stop_sequence": None,
            "usage": {"input_tokens": int(u.prompt_tokens or 0), "output_tokens": int(u.completion_tokens or 0)}}


# ---------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------

def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + _dumps(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


async def _iterate(first: StreamChunk | None, rest: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


async def _close(agen: Any) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing a stream the client left
            pass


async def _guarded(events: AsyncIterator[bytes], rest: Any) -> AsyncIterator[bytes]:
    """Close the router stream however the response ends (a client that goes
    away cancels us mid-stream; the upstream request must not linger)."""
    try:
        async for event in events:
            yield event
    finally:
        await _close(rest)


def _stream_error_event(exc: BaseException, request_id: str) -> dict:
    err = _as_gateway_error(exc)
    err.with_context(request_id=request_id)
    return openai_error(err)


async def chat_sse(first: StreamChunk | None, rest: AsyncIterator[StreamChunk], *, completion_id: str,
                   model: str, created: int, include_usage: bool, request_id: str) -> AsyncIterator[bytes]:
    """OpenAI ``chat.completion.chunk`` events: the role delta, content deltas,
    the finish_reason chunk, the usage chunk (``choices: []``) when asked, ``[DONE]``.
    An error after the first byte is sent as ``data: {"error": ...}`` and the
    stream ends without ``[DONE]``: a client never mistakes it for a whole answer."""
    name = (first.model if first is not None and first.model else None) or model

    def event(choices: list, usage: Any = None) -> bytes:
        obj: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                               "model": name, "system_fingerprint": None, "choices": choices}
        if include_usage:
            obj["usage"] = usage
        return _sse(obj)

    def delta(index: int, d: dict, finish: str | None = None) -> dict:
        return {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}

    seen = {0}
    finish: dict[int, str | None] = {}
    tool_calls = None
    usage: Usage | None = None
    try:
        yield event([delta(0, {"role": "assistant", "content": ""})])
        async for chunk in _iterate(first, rest):
            if chunk.text:
                if chunk.index not in seen:
                    seen.add(chunk.index)
                    yield event([delta(chunk.index, {"role": "assistant", "content": ""})])
                yield event([delta(chunk.index, {"content": chunk.text})])
            if chunk.finish_reason and not chunk.done:
                finish[chunk.index] = chunk.finish_reason
            if chunk.done:
                if chunk.finish_reason:
                    finish[0] = chunk.finish_reason
                tool_calls = chunk.tool_calls or tool_calls
                usage = chunk.usage or usage
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the stream, never a silent truncation
        yield _sse(_stream_error_event(exc, request_id))
        await _close(rest)
        return
    if tool_calls:
        yield event([delta(0, {"tool_calls": [{"index": i, **c.to_openai()} for i, c in enumerate(tool_calls)]})])
    for index in sorted(seen):
        reason = finish.get(index) or ("tool_calls" if index == 0 and tool_calls else None)
        yield event([delta(index, {}, _finish_reason(reason))])
    if include_usage:
        yield event([], _usage(usage))
    yield _DONE


async def completion_sse(first: StreamChunk | None, rest: AsyncIterator[StreamChunk], *, completion_id: str,
                         model: str, created: int, include_usage: bool, request_id: str) -> AsyncIterator[bytes]:
    """OpenAI ``text_completion`` stream events (no role chunk), then usage and ``[DONE]``."""
    name = (first.model if first is not None and first.model else None) or model

    def event(choices: list, usage: Any = None) -> bytes:
        obj: dict[str, Any] = {"id": completion_id, "object": "text_completion", "created": created,
                               "model": name, "system_fingerprint": None, "choices": choices}
        if include_usage:
            obj["usage"] = usage
        return _sse(obj)

    seen = {0}
    finish: dict[int, str | None] = {}
    usage: Usage | None = None
    try:
        async for chunk in _iterate(first, rest):
            if chunk.text:
                seen.add(chunk.index)
                yield event([{"text": chunk.text, "index": chunk.index, "logprobs": None, "finish_reason": None}])
            if chunk.finish_reason:
                finish[0 if chunk.done else chunk.index] = chunk.finish_reason
            if chunk.done:
                usage = chunk.usage or usage
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        yield _sse(_stream_error_event(exc, request_id))
        await _close(rest)
        return
    for index in sorted(seen):
        yield event([{"text": "", "index": index, "logprobs": None,
                      "finish_reason": _finish_reason(finish.get(index))}])
    if include_usage:
        yield event([], _usage(usage))
    yield _DONE


async def anthropic_sse(first: StreamChunk | None, rest: AsyncIterator[StreamChunk], *, message_id: str,
                        model: str, request_id: str) -> AsyncIterator[bytes]:
    """Anthropic's event sequence: message_start, content blocks (start/delta/stop),
    message_delta (stop_reason, usage), message_stop; ``event: error`` on failure."""
    name = (first.model if first is not None and first.model else None) or model
    block = -1
    text_open = False
    tool_calls = None
    usage: Usage | None = None
    reason = None
    try:
        yield _sse({"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": name, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}},
            "message_start")
        yield _sse({"type": "ping"}, "ping")
        async for chunk in _iterate(first, rest):
            if chunk.text and chunk.index == 0:
                if not text_open:
                    block += 1
                    text_open = True
                    yield _sse({"type": "content_block_start", "index": block,
                                "content_block": {"type": "text", "text": ""}}, "content_block_start")
                yield _sse({"type": "content_block_delta", "index": block,
                            "delta": {"type": "text_delta", "text": chunk.text}}, "content_block_delta")
            if chunk.done:
                reason = chunk.finish_reason or reason
                tool_calls = chunk.tool_calls or tool_calls
                usage = chunk.usage or usage
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        err = _as_gateway_error(exc)
        yield _sse({"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(_http_status(err), "api_error"),
                                               "message": err.message}}, "error")
        await _close(rest)
        return
    if not text_open and not tool_calls:
        block += 1
        text_open = True
        yield _sse({"type": "content_block_start", "index": block,
                    "content_block": {"type": "text", "text": ""}}, "content_block_start")
    if text_open:
        yield _sse({"type": "content_block_stop", "index": block}, "content_block_stop")
    for call in tool_calls or []:
        block += 1
        yield _sse({"type": "content_block_start", "index": block, "content_block": {
            "type": "tool_use", "id": call.id or f"toolu_{uuid.uuid4().hex[:20]}", "name": call.name,
            "input": {}}}, "content_block_start")
        yield _sse({"type": "content_block_delta", "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": call.arguments or "{}"}},
                   "content_block_delta")
        yield _sse({"type": "content_block_stop", "index": block}, "content_block_stop")
    finish = _finish_reason(reason, "tool_calls" if tool_calls else "stop")
    u = usage or Usage()
    yield _sse({"type": "message_delta",
                "delta": {"stop_reason": _ANTHROPIC_STOP.get(finish, "end_turn"), "stop_sequence": None},
                "usage": {"input_tokens": int(u.prompt_tokens or 0),
                          "output_tokens": int(u.completion_tokens or 0)}}, "message_delta")
    yield _sse({"type": "message_stop"}, "message_stop")


def _scrub(value: Any) -> Any:
    """JSON-safe and with every string passed through ``errors.redact``: no key can leak."""
    value = _plain(value)
    if isinstance(value, str):
        return errors.redact(value)
    if isinstance(value, dict):
        return {errors.redact(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---------------------------------------------------------------------------
# The FastAPI app and the Serve deployment
# ---------------------------------------------------------------------------

fastapi_app = FastAPI(
    title="ipfs_accelerate_py gateway",
    version="0.1.0",
    description="OpenAI-compatible (and Anthropic Messages) HTTP API over the ipfs_accelerate_py router: "
                "per-key rate limits, retries, failover and priority queues for many LLM providers.",
)


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in _BODY_MODELS],
                                 ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                    "description": "one of the config's gateway_keys"}}
    app.openapi_schema = schema
    return schema


fastapi_app.openapi = _pytypes.MethodType(_openapi, fastapi_app)  # type: ignore[method-assign]


@fastapi_app.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    text, param = _validation_message(exc)
    return error_response(request, _invalid(text, param=param))


@fastapi_app.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code if 400 <= exc.status_code < 600 else 500
    if status == 404:
        err: errors.GatewayError = errors.NotFoundError(
            f"no route {request.method} {request.url.path}; see /docs for the API", code="unknown_url")
    elif status == 405:
        err = errors.InvalidRequestError(f"method {request.method} is not allowed on {request.url.path}",
                                         code="method_not_allowed")
    else:
        err = errors.InvalidRequestError(str(exc.detail))
    return error_response(request, _HTTPError(err, status), anthropic=False)


@fastapi_app.exception_handler(Exception)
async def _on_unexpected(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


# NOTE: serve.ingress freezes the app (a cloudpickle round trip) while this class
# is being defined, so the route methods are pickled by value with the module
# globals that exist *at this point*: every helper they use must be defined above.
@serve.deployment(name="IpfsAccelerateGateway", ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS)
@serve.ingress(fastapi_app)
class GatewayIngress:
    """The Serve replica: a Gateway (router handle) plus the HTTP routes."""

    async def __init__(self, config: Mapping[str, Any] | None = None, *,
                       max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        from .gateway import Gateway
        # Gateway.start attaches to the router already running under this name
        # and namespace (or creates it); ray.get inside must not block the loop
        self.gw = await asyncio.to_thread(Gateway.start, dict(config or {}))
        self.keys = list(self.gw.config.gateway_keys) if self.gw.config is not None else []
        self.max_body_bytes = int(max_body_bytes)

    # -- plumbing ----------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        check_gateway_token(self.keys, request.headers)

    async def _read_json(self, request: Request) -> dict:
        limit = self.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise _invalid("Content-Length must be a non-negative integer")
            if int(length) > limit:
                raise _invalid(f"request body of {int(length)} bytes is larger than the limit of {limit} bytes",
                               code="request_too_large", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _invalid(f"request body is larger than the limit of {limit} bytes",
                               code="request_too_large", status=413)
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise _invalid("the request body is empty; send a JSON object", code="invalid_json")
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except RecursionError:
            raise _invalid("the request body is nested too deeply", code="invalid_json") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _invalid(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise _invalid(f"the request body must be a JSON object, got {type(data).__name__}",
                           code="invalid_json")
        if not _json_depth_ok(data):
            raise _invalid(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
        return data

    async def _body(self, request: Request, model: type[BaseModel]) -> dict:
        self._authorize(request)
        data = await self._read_json(request)
        for name in _INTEGER_FIELDS:  # JSON has one number type: 2.0 is the integer 2
            value = data.get(name)
            if isinstance(value, float) and value.is_integer():
                data[name] = int(value)
        try:
            model.model_validate(data)
        except ValidationError as exc:
            text, param = _validation_message(exc)
            raise _invalid(text, param=param) from None
        return data

    @staticmethod
    def _route_kwargs(request: Request) -> dict:
        given = request.headers.get("x-request-id")
        if given is not None and not _valid_request_id(given.strip()):
            raise _invalid(f"X-Request-ID must be 1 to {MAX_REQUEST_ID_LEN} printable characters",
                           param="X-Request-ID", code="invalid_request_id")
        rid = _request_id(request)
        kwargs: dict[str, Any] = {"request_id": rid}
        raw = request.headers.get("x-priority")
        if raw is not None:
            priority = PRIORITIES.get(raw.strip().lower())
            if priority is None:
                raise _invalid(f"X-Priority must be high, normal or low, got {raw[:40]!r}", param="X-Priority",
                               code="invalid_priority")
            kwargs["priority"] = priority
        return kwargs

    @staticmethod
    def _passthrough(data: Mapping[str, Any]) -> dict:
        bad = sorted(k for k in data if k in ("priority", "request_id", "endpoint_id", "timeout_s", "provider",
                                              "extra", "self", "op"))
        if bad:
            raise _invalid(f"unrecognized request argument supplied: {bad[0]}"
                           + (" (use the X-Priority header)" if bad[0] == "priority" else ""), param=bad[0])
        return {k: v for k, v in data.items() if k not in _RESERVED and v is not None}

    async def _prefetch(self, agen: AsyncIterator[StreamChunk]) -> StreamChunk | None:
        """The first chunk, so an error before any output is a proper HTTP status."""
        try:
            return await agen.__anext__()
        except StopAsyncIteration:
            return None

    # -- OpenAI routes ---------------------------------------------------------------
    @fastapi_app.post("/v1/chat/completions", openapi_extra=_body_spec(ChatCompletionRequest),
                      tags=["openai"], summary="Chat completion (SSE when stream is true)")
    async def chat_completions(self, request: Request) -> Response:
        try:
            data = await self._body(request, ChatCompletionRequest)
            kwargs = {**self._passthrough(data), **self._route_kwargs(request)}
            rid, model, created = kwargs["request_id"], data["model"], int(time.time())
            if data.get("stream"):
                include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
                agen = self.gw.astream_chat(model, data["messages"], stream_options={"include_usage": True},
                                            **kwargs)
                first = await self._prefetch(agen)
                return StreamingResponse(_guarded(
                    chat_sse(first, agen, completion_id=f"chatcmpl-{rid}", model=model, created=created,
                             include_usage=include_usage, request_id=rid), agen),
                    media_type="text/event-stream", headers=_SSE_HEADERS)
            resp = await self.gw.achat(model, data["messages"], **kwargs)
            return _json_response(chat_completion_json(resp, completion_id=f"chatcmpl-{rid}", model=model,
                                                       created=created))
        except Exception as exc:  # noqa: BLE001 - every failure is a typed error response
            return error_response(request, exc)

    @fastapi_app.post("/v1/completions", openapi_extra=_body_spec(CompletionRequest),
                      tags=["openai"], summary="Legacy text completion (SSE when stream is true)")
    async def completions(self, request: Request) -> Response:
        try:
            data = await self._body(request, CompletionRequest)
            kwargs = {**self._passthrough(data), **self._route_kwargs(request)}
            rid, model, created = kwargs["request_id"], data["model"], int(time.time())
            if data.get("stream"):
                include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
                agen = self.gw.astream_complete(model, data["prompt"], include_usage=True, **kwargs)
                first = await self._prefetch(agen)
                return StreamingResponse(_guarded(
                    completion_sse(first, agen, completion_id=f"cmpl-{rid}", model=model, created=created,
                                   include_usage=include_usage, request_id=rid), agen),
                    media_type="text/event-stream", headers=_SSE_HEADERS)
            resp = await self.gw.acomplete(model, data["prompt"], **kwargs)
            return _json_response(text_completion_json(resp, completion_id=f"cmpl-{rid}", model=model,
                                                       created=created))
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc)

    @fastapi_app.post("/v1/embeddings", openapi_extra=_body_spec(EmbeddingsRequest), tags=["openai"],
                      summary="Embeddings (float or base64)")
    async def embeddings(self, request: Request) -> Response:
        try:
            data = await self._body(request, EmbeddingsRequest)
            kwargs = {**self._passthrough(data), **self._route_kwargs(request)}
            # vectors come back as floats from every provider; base64 is encoded here
            fmt = kwargs.pop("encoding_format", None)
            resp = await self.gw.aembed(data["model"], data["input"], **kwargs)
            return _json_response(embeddings_json(resp, model=data["model"], encoding_format=fmt))
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc)

    @fastapi_app.get("/v1/models", tags=["openai"], summary="Models the gateway routes")
    async def list_models(self, request: Request) -> Response:
        try:
            self._authorize(request)
            infos = await self.gw.alist_models(False)
            unique: dict[str, dict] = {}
            for info in infos:
                unique.setdefault(info.id, model_json(info))
            return _json_response({"object": "list", "data": list(unique.values())})
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc)

    @fastapi_app.get("/v1/models/{model_id:path}", tags=["openai"], summary="One model")
    async def retrieve_model(self, model_id: str, request: Request) -> Response:
        try:
            self._authorize(request)
            infos = await self.gw.alist_models(False)
            for info in infos:
                if info.id == model_id:
                    return _json_response(model_json(info))
            known = sorted({i.id for i in infos})
            close = difflib.get_close_matches(model_id, known, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise errors.UnknownModelError(f"the gateway serves no model {model_id!r}{hint}", suggestions=close,
                                           details={"param": "model"})
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc)

    # -- Anthropic route --------------------------------------------------------------
    @fastapi_app.post("/v1/messages", openapi_extra=_body_spec(AnthropicMessagesRequest), tags=["anthropic"],
                      summary="Anthropic Messages API (SSE when stream is true)")
    async def messages(self, request: Request) -> Response:
        try:
            data = await self._body(request, AnthropicMessagesRequest)
            messages, params = anthropic_to_chat(data)
            kwargs = {**params, **self._route_kwargs(request)}
            rid, model = kwargs["request_id"], data["model"]
            if data.get("stream"):
                agen = self.gw.astream_chat(model, messages, stream_options={"include_usage": True}, **kwargs)
                first = await self._prefetch(agen)
                return StreamingResponse(_guarded(anthropic_sse(first, agen, message_id=f"msg_{rid}", model=model,
                                                                request_id=rid), agen),
                                         media_type="text/event-stream", headers=_SSE_HEADERS)
            resp = await self.gw.achat(model, messages, **kwargs)
            return _json_response(anthropic_message_json(resp, message_id=f"msg_{rid}", model=model))
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc, anthropic=True)

    # -- operations -----------------------------------------------------------------
    @fastapi_app.get("/health", tags=["operations"], summary="Liveness and endpoint circuits (no token needed)")
    async def health(self, request: Request) -> Response:
        try:
            report = await self.gw.ahealth()
            return _json_response(_scrub(report))
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc)

    @fastapi_app.get("/stats", tags=["operations"], summary="Usage counters per endpoint (no secrets)")
    async def stats(self, request: Request) -> Response:
        try:
            self._authorize(request)
            report = await self.gw.astats(None)
            queue = await self.gw.aqueue_info()
            return _json_response(_scrub({**report, "queue_info": queue}))
        except Exception as exc:  # noqa: BLE001
            return error_response(request, exc)


# ---------------------------------------------------------------------------
# Building and running the application
# ---------------------------------------------------------------------------

def _config_dict(config: Any) -> dict:
    """The config as plain data for the replicas: loaded (and validated) here,
    once, so every replica runs exactly the same endpoints."""
    if isinstance(config, GatewayConfig):
        cfg = config
    elif config is None or isinstance(config, (str, os.PathLike, Mapping)):
        cfg = load_config(config)
    else:
        raise errors.ConfigError(f"config must be a YAML path, a mapping, a GatewayConfig or None, "
                                 f"got {type(config).__name__}")
    data = cfg.to_dict(redact=False)
    data["discover_env"] = False  # endpoints are resolved already; replicas must not add their own
    return data


def build_app(config: Any = None, *, num_replicas: int | str | None = None,
              max_body_bytes: int | None = None, max_ongoing_requests: int | None = None) -> serve.Application:
    """The Serve application for ``config`` (a YAML path, a mapping, a GatewayConfig,
    or None for environment discovery)."""
    options: dict[str, Any] = {}
    if num_replicas is not None:
        options["num_replicas"] = num_replicas if num_replicas == "auto" else int(num_replicas)
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = int(max_ongoing_requests)
    limit = DEFAULT_MAX_BODY_BYTES if max_body_bytes is None else int(max_body_bytes)
    if limit < 1:
        raise errors.ConfigError(f"max_body_bytes must be positive, got {limit}")
    deployment = GatewayIngress.options(**options) if options else GatewayIngress
    return deployment.bind(_config_dict(config), max_body_bytes=limit)


def _find_config(path: Path) -> Path:
    """A relative config path: the working directory first, then $IPFS_ACCELERATE_CONFIG_DIR."""
    if path.is_absolute() or path.exists():
        return path
    tried = [str(Path.cwd() / path)]
    base = os.environ.get("IPFS_ACCELERATE_CONFIG_DIR")
    if base:
        candidate = Path(base).expanduser() / path
        if candidate.exists():
            return candidate
        tried.append(str(candidate))
    raise errors.ConfigError(f"gateway config {str(path)!r} not found (looked at {', '.join(tried)}); "
                             "copy examples/gateway.yaml there, give an absolute path, or set "
                             "$IPFS_ACCELERATE_CONFIG_DIR")


_BUILDER_ARGS = ("config", "num_replicas", "max_body_bytes", "max_ongoing_requests")


def app_builder(args: Mapping[str, Any] | None = None) -> serve.Application:
    """Application builder for ``serve run`` / serve_config.yaml::

        import_path: ipfs_accelerate_py.serve_app:app_builder
        args: {config: gateway.yaml, num_replicas: 2, max_body_bytes: 8388608}

    ``config`` falls back to $IPFS_ACCELERATE_CONFIG, then to environment discovery.
    A relative path is tried from the working directory, then from $IPFS_ACCELERATE_CONFIG_DIR."""
    args = dict(args or {})
    unknown = sorted(set(args) - set(_BUILDER_ARGS))
    if unknown:
        raise errors.ConfigError(f"unknown serve_app argument(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(_BUILDER_ARGS)}")
    config = args.get("config") or os.environ.get("IPFS_ACCELERATE_CONFIG") or None
    if isinstance(config, (str, os.PathLike)):
        config = str(_find_config(Path(config).expanduser()))
    return build_app(config, num_replicas=args.get("num_replicas"), max_body_bytes=args.get("max_body_bytes"),
                     max_ongoing_requests=args.get("max_ongoing_requests"))


def run(config: Any = None, *, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/",
        blocking: bool = True, name: str = DEFAULT_APP_NAME, num_replicas: int | str | None = None,
        max_body_bytes: int | None = None) -> None:
    """Start Ray (or join $RAY_ADDRESS), Serve's HTTP proxy on ``host:port``, and
    the gateway application.  ``blocking`` waits until Ctrl-C, then removes the
    application (the router and endpoint actors stay: they are detached)."""
    from .actors import runtime
    app = build_app(config, num_replicas=num_replicas, max_body_bytes=max_body_bytes)
    runtime.ensure_ray()
    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    if not blocking:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("shutting down the %s application", name)
        try:
            serve.delete(name)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
