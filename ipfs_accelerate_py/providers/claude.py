"""Anthropic Messages API (PROTOCOLS.md section 2).

Callers write OpenAI-style messages; this module maps them to Anthropic's
shape: system turns become the top-level ``system``, same-role turns merge
(the API wants alternating roles), image_url parts become image blocks, tool
calls and tool results become ``tool_use`` / ``tool_result`` blocks.  Answers
map back to the normalized types with OpenAI's finish reasons, so nothing
above this layer knows which vendor answered.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from .. import errors
from ..core import limiter
from ..transport import HttpRequest, HttpResponse, SseEvent
from ..types import (ChatRequest, ChatResponse, Message, ModelInfo, OperationRequest, OperationResponse,
                     StreamChunk, ToolCall, Usage, build_chat_request)
from .base import Provider, Request, Result, StreamDecoder, register
from .openai_compat import content_text, event_json, http_request, json_object, op_params, usage_from_dict

ANTHROPIC_VERSION = "2023-06-01"
#: the API requires max_tokens; every Claude model can produce at least this many
DEFAULT_MAX_TOKENS = 4096
#: models pages are followed at most this far, a guard against a looping cursor
_MAX_MODEL_PAGES = 100

_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "any": {"type": "any"},
                 "none": {"type": "none"}}
#: fields /v1/messages/count_tokens accepts (no max_tokens, stream or sampling)
_COUNT_TOKENS_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
_PROTECTED = frozenset({"model", "messages", "stream"})
#: Anthropic error type -> (error class, the status it comes with); the status
#: is used for the same error arriving as a stream event inside a 200 response
_ERRORS: dict[str, tuple[type[errors.GatewayError], int]] = {
    "invalid_request_error": (errors.InvalidRequestError, 400),
    "authentication_error": (errors.AuthenticationError, 401),
    "billing_error": (errors.PermissionDeniedError, 402),
    "permission_error": (errors.PermissionDeniedError, 403),
    "not_found_error": (errors.NotFoundError, 404),
    "request_too_large": (errors.InvalidRequestError, 413),
    "rate_limit_error": (errors.RateLimitError, 429),
    "api_error": (errors.ProviderError, 500),
    "timeout_error": (errors.TimeoutError, 504),
    "overloaded_error": (errors.ProviderOverloadedError, 529),
}
_CONTEXT_RE = re.compile(r"prompt is too long|context (window|limit|length)|too many (input )?tokens", re.I)


# ---------------------------------------------------------------------------
# Request mapping (pure functions: OpenAI-style in, Anthropic-style out)
# ---------------------------------------------------------------------------

def _invalid(message: str, code: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, provider="claude", code=code)


def image_block(image_url: Any) -> dict:
    """An OpenAI ``image_url`` (string or {"url": ...}) as an Anthropic image block."""
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        raise _invalid("image_url parts need a url", "invalid_image")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, *flags = header.split(";")
        if not sep or "base64" not in flags:
            raise _invalid("image data: URLs must be base64-encoded (data:image/png;base64,...)", "invalid_image")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type or "image/png",
                                            "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid("image_url must be an http(s) URL or a data: URL", "invalid_image")


def content_blocks(content: Any) -> list[dict]:
    """Message content as Anthropic blocks.  Empty text is dropped (the API
    rejects empty text blocks); blocks already in Anthropic form pass through."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(image_block(part.get("image_url")))
        else:
            blocks.append(dict(part))
    return blocks


def tool_use_block(call: ToolCall) -> dict:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        raise _invalid(f"tool call {call.name!r} has arguments that are not JSON", "invalid_tool_calls") from None
    if not isinstance(arguments, dict):
        raise _invalid(f"tool call {call.name!r} arguments must be a JSON object", "invalid_tool_calls")
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def tool_result_block(message: Message) -> dict:
    if not message.tool_call_id:
        raise _invalid("tool messages need the tool_call_id of the call they answer", "missing_tool_call_id")
    content = message.content if isinstance(message.content, str) else content_blocks(message.content)
    return {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content or ""}


def to_anthropic_messages(messages: list[Message]) -> list[dict]:
    """Non-system turns as alternating user/assistant turns of blocks."""
    turns: list[dict] = []
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        if message.role == "tool":
            role, blocks = "user", [tool_result_block(message)]
        elif message.role == "assistant":
            role = "assistant"
            blocks = content_blocks(message.content) + [tool_use_block(c) for c in message.tool_calls or []]
        else:
            role, blocks = "user", content_blocks(message.content)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a lone text block is sent as the plain string it came from
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0].get("type") == "text" and set(blocks[0]) == {"type", "text"}:
            turn["content"] = blocks[0]["text"]
    return turns


def tool_to_anthropic(tool: Mapping) -> dict:
    """An OpenAI function tool as an Anthropic tool; Anthropic-native tools pass through."""
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, Mapping):
        return dict(tool)
    out = {"name": fn.get("name"), "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def tool_choice_to_anthropic(choice: Any) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise _invalid(f"tool_choice must be auto, required or none, got {choice!r}", "invalid_tool_choice")
        return dict(_TOOL_CHOICES[choice])
    if isinstance(choice, Mapping):
        if choice.get("type") == "function":
            fn = choice.get("function") if isinstance(choice.get("function"), Mapping) else {}
            return {"type": "tool", "name": fn.get("name")}
        return dict(choice)
    raise _invalid("tool_choice must be a string or an object", "invalid_tool_choice")


def finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's stop_reason in OpenAI's words; unknown reasons (pause_turn, refusal) kept."""
    return _FINISH_REASONS.get(stop_reason, stop_reason) if stop_reason else None


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

class ClaudeStreamDecoder(StreamDecoder):
    """Decodes the Messages event stream (message_start ... message_stop).

    Text deltas are emitted at once; tool-input JSON fragments are joined per
    content-block index and delivered on the final chunk.  Usage is merged
    from message_start (input side) and message_delta (cumulative output).
    """

    def __init__(self, provider: "ClaudeProvider") -> None:
        self._provider = provider
        self._model: str | None = None
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._tools: dict[int, dict[str, Any]] = {}
        self._done = False
        self._closed = False

    def feed(self, event: Any) -> list[StreamChunk]:
        obj = event_json(self._provider, event)
        if not isinstance(obj, Mapping) or self._done:
            return []
        kind = obj.get("type") or (event.event if isinstance(event, SseEvent) else None)
        if kind == "error":
            raise self._provider.stream_error(obj)
        if kind == "message_start":
            message = obj.get("message") if isinstance(obj.get("message"), Mapping) else {}
            self._model = message.get("model") or self._model
            self._merge_usage(message.get("usage"))
        elif kind == "content_block_start":
            block = obj.get("content_block") if isinstance(obj.get("content_block"), Mapping) else {}
            index = int(obj.get("index") or 0)
            if block.get("type") == "tool_use":
                start = block.get("input")
                self._tools[index] = {"id": str(block.get("id") or ""), "name": str(block.get("name") or ""),
                                      "parts": [json.dumps(start)] if start else []}
            elif block.get("type") == "text" and block.get("text"):
                return [self._text(block["text"], obj)]
        elif kind == "content_block_delta":
            delta = obj.get("delta") if isinstance(obj.get("delta"), Mapping) else {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._text(delta["text"], obj)]
            if delta.get("type") == "input_json_delta":
                slot = self._tools.setdefault(int(obj.get("index") or 0), {"id": "", "name": "", "parts": []})
                slot["parts"].append(str(delta.get("partial_json") or ""))
        elif kind == "message_delta":
            delta = obj.get("delta") if isinstance(obj.get("delta"), Mapping) else {}
            self._stop_reason = delta.get("stop_reason") or self._stop_reason
            self._merge_usage(obj.get("usage"))
        elif kind == "message_stop":
            self._done = True
        # ping, content_block_stop, thinking/signature/citations deltas and future
        # event types carry nothing the normalized stream needs
        return []

    def _text(self, text: str, raw: Mapping) -> StreamChunk:
        return StreamChunk(text=text, model=self._model, raw=raw)

    def _merge_usage(self, usage: Any) -> None:
        if isinstance(usage, Mapping):  # counts are cumulative: the latest value wins
            self._usage.update((k, v) for k, v in usage.items() if v is not None)

    def close(self) -> list[StreamChunk]:
        if self._closed:
            return []
        if not self._done:
            raise errors.ProviderError(
                "stream ended before message_stop: claude closed the response early, so the answer "
                "may be incomplete", retryable=True, provider=self._provider.name,
                endpoint_id=self._provider.endpoint.id)
        self._closed = True
        calls = [ToolCall(id=slot["id"], name=slot["name"], arguments="".join(slot["parts"]) or "{}")
                 for _, slot in sorted(self._tools.items())]
        return [StreamChunk(done=True, finish_reason=finish_reason(self._stop_reason), tool_calls=calls or None,
                            usage=usage_from_dict(self._usage) if self._usage else None, model=self._model)]


# ---------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------

@register
class ClaudeProvider(Provider):
    name = "claude"
    default_base_url = "https://api.anthropic.com"
    operations = frozenset({"chat", "stream_chat", "count_tokens", "models", "model_info"})
    model_patterns = ("claude-*",)
    default_model = "claude-sonnet-4-5"
    description = "Anthropic Claude (Messages API): chat, streaming, tools, vision, token counting"

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        # Anthropic's base URL has no /v1 (paths carry it); accept the OpenAI habit of including it
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]

    @property
    def _options(self) -> Mapping[str, Any]:
        return getattr(self.endpoint, "options", None) or {}

    def auth_headers(self) -> dict[str, str]:
        """x-api-key plus the version header every call needs (OAuth tokens go as Bearer)."""
        options = self._options
        headers = {"anthropic-version": str(options.get("anthropic_version") or ANTHROPIC_VERSION)}
        beta = options.get("anthropic_beta")
        if beta:
            headers["anthropic-beta"] = beta if isinstance(beta, str) else ",".join(beta)
        key = self.api_key
        if key:
            if options.get("auth_scheme") == "bearer" or key.startswith("sk-ant-oat"):
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers["x-api-key"] = key
        return headers

    # -- request bodies ------------------------------------------------------
    def chat_request(self, request: Request) -> ChatRequest:
        """A ChatRequest from either a ChatRequest or an OperationRequest's params
        (count_tokens is usually called with the latter)."""
        if isinstance(request, ChatRequest):
            return request
        params = op_params(request)
        named = params.pop("model", None)
        model = (getattr(request, "model", None) or named or getattr(self.endpoint, "default_model", None)
                 or self.default_model)
        return build_chat_request(model, params.pop("messages", None), params)

    def messages_body(self, request: ChatRequest, *, stream: bool) -> dict:
        """The /v1/messages body.  seed, penalties and response_format have no
        Anthropic equivalent and are left out rather than failing portable callers."""
        if request.n is not None and request.n > 1:
            raise errors.InvalidRequestError(f"claude returns one answer per call; n must be 1, got {request.n}",
                                             provider=self.name, endpoint_id=self.endpoint.id, code="invalid_n")
        system = "\n\n".join(t for t in (m.text() for m in request.messages if m.role in ("system", "developer"))
                             if t)
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or int(self._options.get("max_tokens") or DEFAULT_MAX_TOKENS),
            "messages": to_anthropic_messages(request.messages)}
        optional = {"system": system or None, "temperature": request.temperature, "top_p": request.top_p,
                    "top_k": request.top_k, "stop_sequences": request.stop or None,
                    "tools": [tool_to_anthropic(t) for t in request.tools] if request.tools else None,
                    "tool_choice": tool_choice_to_anthropic(request.tool_choice)}
        body.update((k, v) for k, v in optional.items() if v is not None)
        extra = dict(request.extra)
        if extra.pop("parallel_tool_calls", None) is False and request.tools:
            body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
        if request.user:
            metadata = extra.pop("metadata", None)
            body["metadata"] = {**(metadata if isinstance(metadata, Mapping) else {}), "user_id": request.user}
        body.update((k, v) for k, v in extra.items() if k not in _PROTECTED and v is not None)
        if stream:
            body["stream"] = True
        return body

    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op in ("chat", "stream_chat"):
            stream = op == "stream_chat"
            return http_request(self, "POST", "v1/messages", request_id,
                                json_body=self.messages_body(self.chat_request(request), stream=stream),
                                stream=stream)
        if op == "count_tokens":
            body = self.messages_body(self.chat_request(request), stream=False)
            return http_request(self, "POST", "v1/messages/count_tokens", request_id,
                                json_body={k: v for k, v in body.items() if k in _COUNT_TOKENS_FIELDS})
        if op == "models":
            return self._models_page(request_id, op_params(request).get("after_id"))
        model = getattr(request, "model", None) or op_params(request).get("model")
        if not model:
            raise errors.InvalidRequestError("model_info needs a model id", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_model")
        return http_request(self, "GET", f"v1/models/{model}", request_id)

    def _models_page(self, request_id: str | None, after_id: str | None) -> HttpRequest:
        params = {"limit": "1000"}
        if after_id:
            params["after_id"] = str(after_id)
        return http_request(self, "GET", "v1/models", request_id, params=params)

    # -- responses -----------------------------------------------------------
    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        body = json_object(self, response, op)
        if op == "count_tokens":
            return OperationResponse(op=op, data={"input_tokens": int(body.get("input_tokens") or 0)},
                                     model=getattr(request, "model", None), provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        if op == "models":
            return [self._model_info(m) for m in body.get("data") or [] if isinstance(m, Mapping) and m.get("id")]
        if op == "model_info":
            info = self._model_info(body)
            return OperationResponse(op=op, data=info, model=info.id, provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        blocks = [b for b in body.get("content") or [] if isinstance(b, Mapping)]
        return ChatResponse(
            text=content_text([b for b in blocks if b.get("type") == "text"]),
            model=body.get("model") or getattr(request, "model", "") or "",
            usage=usage_from_dict(body.get("usage")) or Usage(),
            finish_reason=finish_reason(body.get("stop_reason")),
            tool_calls=[ToolCall(id=str(b.get("id") or ""), name=str(b.get("name") or ""),
                                 arguments=json.dumps(b.get("input") or {}))
                        for b in blocks if b.get("type") == "tool_use"],
            provider=self.name, endpoint_id=self.endpoint.id, raw=body)

    def _model_info(self, item: Mapping) -> ModelInfo:
        return ModelInfo(id=str(item["id"]), provider=self.name, endpoint_id=self.endpoint.id,
                         owned_by="anthropic", context_window=item.get("max_input_tokens"),
                         max_output_tokens=item.get("max_tokens"), description=item.get("display_name"),
                         raw=dict(item))

    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """The default loop, except ``models``, which follows ``after_id`` pages
        until ``has_more`` is false."""
        if op != "models":
            return await super().execute(op, request, request_id, transport)
        self.require(op)
        models: list[ModelInfo] = []
        after = op_params(request).get("after_id")
        headers: Mapping[str, str] = {}
        for _ in range(_MAX_MODEL_PAGES):
            page = self._models_page(request_id, after)
            response = await transport.send(page, timeout_s=self.endpoint.timeout_s)
            if response.status >= 400:
                raise self.parse_error(response)
            models.extend(self.parse(op, request, response))
            headers = response.headers
            body = response.json() or {}
            last = body.get("last_id")
            if not body.get("has_more") or not last or last == after:
                break
            after = last
        return models, headers

    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        if op != "stream_chat":
            return super().stream_decoder(op, request, response_headers)
        return ClaudeStreamDecoder(self)

    # -- errors and rate limits ----------------------------------------------
    def error_message(self, response: HttpResponse) -> tuple[str, str | None, str | None]:
        # strip this endpoint's key even when it has no recognisable shape
        message, etype, code = super().error_message(response)
        return errors.redact(message, [self.api_key or ""]), etype, code

    def parse_error(self, response: HttpResponse) -> errors.GatewayError:
        """Map by Anthropic's error type (it says more than the status: 529 vs
        500, billing vs permission); bodies without one (an edge proxy's 413 or
        502 page) fall back to the status mapping."""
        message, etype, _ = self.error_message(response)
        known = _ERRORS.get(etype or "")
        if known is None:
            return super().parse_error(response)
        cls = known[0]
        if cls is errors.NotFoundError and "model" in message.lower():
            cls = errors.UnknownModelError
        elif cls is errors.InvalidRequestError and _CONTEXT_RE.search(message):
            cls = errors.ContextLengthError
        should_retry = response.header("x-should-retry")
        body = response.json()
        upstream_id = ((body.get("request_id") if isinstance(body, Mapping) else None)
                       or response.header("request-id"))
        return cls(f"{self.name} returned HTTP {response.status}: {message}", provider=self.name,
                   endpoint_id=self.endpoint.id, status=response.status, code=etype,
                   retryable=should_retry == "true" if should_retry in ("true", "false") else None,
                   retry_after=self.retry_after(response),
                   details={"upstream_request_id": upstream_id} if upstream_id else None)

    def stream_error(self, payload: Mapping) -> errors.GatewayError:
        """The typed error for an ``error`` event inside a 200 stream."""
        error = payload.get("error") if isinstance(payload.get("error"), Mapping) else {}
        status = _ERRORS.get(str(error.get("type")), (None, 500))[1]
        return self.parse_error(HttpResponse(status, {}, json.dumps(payload).encode()))

    def rate_limit_headers(self, headers: Mapping[str, str]) -> limiter.RateLimitHeaders | None:
        return limiter.parse_anthropic_rate_headers(headers)
