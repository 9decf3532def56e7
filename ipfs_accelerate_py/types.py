"""Normalized requests and responses shared by every provider.

Plain dataclasses: they cross Ray process boundaries on every call, so they
stay small, picklable and free of behaviour beyond conversion helpers.
Providers translate between these and their wire formats; nothing above the
providers layer ever sees a wire format (except in ``raw``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Literal, Mapping

from .errors import InvalidRequestError

Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES = ("system", "developer", "user", "assistant", "tool")

#: operations the router knows how to route; providers declare the subset they support
OPERATIONS = (
    "chat", "stream_chat", "complete", "stream_complete", "embed", "models",
    "count_tokens", "images", "transcribe", "translate", "speech", "moderate",
    "rerank", "infer", "model_info", "health", "chatqna", "stream_chatqna",
    "s3_put", "s3_get", "s3_head", "s3_list", "s3_delete", "s3_upload", "s3_download",
    "s3_presign", "running_models",
)
STREAMING_OPERATIONS = ("stream_chat", "stream_complete", "stream_chatqna")


@dataclass
class ToolCall:
    """One function call requested by the model; ``arguments`` is a JSON string (OpenAI's convention)."""
    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments or "{}")

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Message:
    """One chat turn.  ``content`` is a string or a list of OpenAI-style parts
    (``{"type": "text", ...}``, ``{"type": "image_url", ...}``)."""
    role: str
    content: Any = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @classmethod
    def coerce(cls, value: Any) -> "Message":
        if isinstance(value, Message):
            return value
        if not isinstance(value, Mapping):
            raise InvalidRequestError(
                f"each message must be a dict with 'role' and 'content', got {type(value).__name__}",
                code="invalid_message")
        role = value.get("role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"message role must be one of {', '.join(ROLES)}, got {role!r}", code="invalid_role")
        content = value.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(
                f"message content must be a string or a list of parts, got {type(content).__name__}",
                code="invalid_content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise InvalidRequestError("each content part must be a dict with a 'type'",
                                              code="invalid_content")
        raw_calls = value.get("tool_calls")
        calls = None
        if raw_calls:
            if not isinstance(raw_calls, list):
                raise InvalidRequestError("tool_calls must be a list", code="invalid_tool_calls")
            calls = [_coerce_tool_call(c) for c in raw_calls]
        name = value.get("name")
        tool_call_id = value.get("tool_call_id")
        return cls(role=role, content=content, name=name if isinstance(name, str) else None,
                   tool_calls=calls, tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None)

    def text(self) -> str:
        """The message's text with non-text parts left out."""
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content
                           if isinstance(p, Mapping) and p.get("type") == "text")
        return ""

    def to_openai(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


def _coerce_tool_call(value: Any) -> ToolCall:
    if isinstance(value, ToolCall):
        return value
    if not isinstance(value, Mapping):
        raise InvalidRequestError("each tool call must be a dict", code="invalid_tool_calls")
    fn = value.get("function") if isinstance(value.get("function"), Mapping) else value
    args = fn.get("arguments", "{}")
    if not isinstance(args, str):
        args = json.dumps(args)
    return ToolCall(id=str(value.get("id") or ""), name=str(fn.get("name") or ""), arguments=args)


def coerce_messages(messages: Any) -> list[Message]:
    """Validate and normalize what a caller passed as ``messages``.

    Accepts a list of dicts/Messages or a bare string (one user turn), the two
    shapes seed code uses.
    """
    if isinstance(messages, str):
        if not messages.strip():
            raise InvalidRequestError("the prompt must not be empty", code="empty_messages")
        return [Message(role="user", content=messages)]
    if not isinstance(messages, (list, tuple)):
        raise InvalidRequestError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}",
            code="invalid_messages")
    if not messages:
        raise InvalidRequestError("messages must not be empty", code="empty_messages")
    return [Message.coerce(m) for m in messages]


class _DictAccess:
    """``response["text"]`` and ``response.get("usage")`` for seed-style code,
    which treated every response as a dict."""

    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default



@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: provider-specific extras kept as-is (Groq timings, cached tokens, ...)
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.total_tokens:
            self.total_tokens = (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def to_openai(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


#: request fields every provider understands in some form; anything else goes in ``extra``
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed",
                   "presence_penalty", "frequency_penalty", "n")


@dataclass
class ChatRequest:
    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    response_format: dict | None = None
    user: str | None = None
    stream: bool = False
    include_usage: bool = True
    #: provider-specific fields passed through untouched (logit_bias, options, safetySettings, ...)
    extra: dict = field(default_factory=dict)

    def system_prompt(self) -> str:
        return "\n".join(m.text() for m in self.messages if m.role in ("system", "developer"))

    def sampling(self) -> dict:
        return {k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k) is not None}


@dataclass
class ChatResponse(_DictAccess):
    text: str = ""
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    cost_usd: float | None = None
    request_id: str | None = None
    endpoint_id: str | None = None
    provider: str | None = None
    latency_s: float | None = None
    cached: bool = False
    #: further choices when n > 1 (text of each); ``text`` is choice 0
    choices: list[str] = field(default_factory=list)
    raw: Any = None

    def __getitem__(self, key: str) -> Any:
        if key == "usage":
            return asdict(self.usage)
        return super().__getitem__(key)


    @property
    def truncated(self) -> bool:
        return self.finish_reason in ("length", "max_tokens", "MAX_TOKENS")


@dataclass
class StreamChunk(_DictAccess):
    """One piece of a streamed answer.  The last chunk has ``done=True`` and,
    when the provider reports it, ``usage``; ``text`` of all chunks joined is the answer."""
    text: str = ""
    index: int = 0
    finish_reason: str | None = None
    tool_calls: list[ToolCall] | None = None
    usage: Usage | None = None
    done: bool = False
    model: str | None = None
    request_id: str | None = None
    endpoint_id: str | None = None
    cost_usd: float | None = None
    cached: bool = False
    raw: Any = None



@dataclass
class EmbeddingRequest:
    model: str
    input: list[str]
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None
    extra: dict = field(default_factory=dict)

    @staticmethod
    def coerce_input(value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise InvalidRequestError("embedding input must be a non-empty string or list of strings",
                                      code="invalid_input")
        for item in value:
            if not isinstance(item, str):
                raise InvalidRequestError(
                    f"embedding inputs must be strings, got {type(item).__name__}", code="invalid_input")
            if not item:
                raise InvalidRequestError("embedding inputs must not be empty strings", code="invalid_input")
        return list(value)


@dataclass
class EmbeddingResponse(_DictAccess):
    embeddings: list[list[float]] = field(default_factory=list)
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    request_id: str | None = None
    endpoint_id: str | None = None
    provider: str | None = None
    latency_s: float | None = None
    cached: bool = False
    raw: Any = None

    def __getitem__(self, key: str) -> Any:
        if key == "embedding":
            return self.embeddings[0] if self.embeddings else []
        return super().__getitem__(key)



@dataclass
class ModelInfo(_DictAccess):
    id: str
    provider: str | None = None
    endpoint_id: str | None = None
    owned_by: str | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    category: str | None = None
    description: str | None = None
    raw: Any = None



@dataclass
class OperationRequest:
    """Any operation other than chat/embed: ``params`` are the operation's own
    keyword arguments (prompt, size, file bytes, bucket/key, ...)."""
    op: str
    model: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class OperationResponse(_DictAccess):
    """Result of a non-chat operation.  ``data`` is the operation's natural
    value: a list of image URLs, audio bytes, moderation results, rerank scores,
    an S3 object's bytes, a presigned URL, ..."""
    op: str
    data: Any = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    request_id: str | None = None
    endpoint_id: str | None = None
    provider: str | None = None
    latency_s: float | None = None
    raw: Any = None

    def __getitem__(self, key: str) -> Any:
        if isinstance(self.data, Mapping) and key in self.data and key not in {f.name for f in fields(self)}:
            return self.data[key]
        return super().__getitem__(key)



PRIORITIES = ("HIGH", "NORMAL", "LOW")


def build_chat_request(model: Any, messages: Any, params: Mapping[str, Any]) -> ChatRequest:
    """Validate caller kwargs into a ChatRequest; unknown keys go to ``extra``."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("model must be a non-empty string", code="invalid_model")
    req = ChatRequest(model=model, messages=coerce_messages(messages))
    known = {f.name for f in fields(ChatRequest)} - {"model", "messages", "extra"}
    extra = _extra(params)
    for key, value in params.items():
        if key == "extra" or value is None:
            continue
        if key == "max_completion_tokens":
            key = "max_tokens"
        if key == "stream_options" and isinstance(value, Mapping):
            req.include_usage = bool(value.get("include_usage", True))
            continue
        if key in known:
            setattr(req, key, value)
        else:
            extra[key] = value
    req.extra = extra
    _validate_sampling(req)
    for name in ("tools", "tool_choice", "response_format", "extra", "stop", "user"):
        check_wire_value(getattr(req, name), name)
    for i, m in enumerate(req.messages):
        check_wire_value(m.content, f"messages[{i}].content")
    return req


#: deeper request structures than this are refused (pickle and providers choke long before)
MAX_NESTING = 64


def check_wire_value(value: Any, path: str, depth: int = 0) -> None:
    """Refuse what cannot go on the wire as JSON: non-UTF-8 text (lone
    surrogates), NaN/Infinity, non-JSON types, absurd nesting.  Checked before
    routing, so bad input is the caller's typed 400, never a provider 5xx
    counted against a key's circuit."""
    if depth > MAX_NESTING:
        raise InvalidRequestError(f"{path} is nested more than {MAX_NESTING} levels deep", code="too_deep")
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"{path} must be a finite number", code="invalid_number")
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(f"{path} is not valid Unicode text (lone surrogate)",
                                      code="invalid_unicode") from None
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_wire_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequestError(f"{path} has a non-string key {key!r}", code="invalid_key")
            check_wire_value(item, f"{path}.{key}", depth + 1)
        return
    if "image" in path and (isinstance(value, (bytes, bytearray)) or hasattr(value, "save")):
        return  # raw image bytes / PIL images: the provider encodes them
    raise InvalidRequestError(f"{path} has a value of type {type(value).__name__}, which JSON cannot carry",
                              code="invalid_type")


def _extra(params: Mapping[str, Any]) -> dict:
    extra = params.get("extra")
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise InvalidRequestError(f"extra must be an object of provider-specific fields, got {type(extra).__name__}",
                                  code="invalid_extra")
    return dict(extra)


def validate_sampling_params(params: Mapping[str, Any]) -> None:
    """Check sampling keyword arguments (temperature, max_tokens, ...) on their own,
    for operations such as legacy completions that have no ChatRequest."""
    req = ChatRequest(model="-", messages=[])
    for key in SAMPLING_FIELDS:
        value = params.get("max_completion_tokens" if key == "max_tokens" and "max_tokens" not in params
                           else key)
        if value is not None:
            setattr(req, key, value)
    if params.get("stop") is not None:
        req.stop = params["stop"]
    _validate_sampling(req)


def _validate_sampling(req: ChatRequest) -> None:
    def number(name: str, lo: float | None = None, hi: float | None = None, integer: bool = False) -> None:
        value = getattr(req, name)
        if value is None:
            return
        ok_type = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise InvalidRequestError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}",
                                      code=f"invalid_{name}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise InvalidRequestError(f"{name} must be between {lo} and {hi}, got {value!r}",
                                      code=f"invalid_{name}")

    number("temperature", 0, 2)
    number("top_p", 0, 1)
    number("top_k", 0, None, integer=True)
    number("max_tokens", 1, None, integer=True)
    number("n", 1, 128, integer=True)
    number("seed", None, None, integer=True)
    number("presence_penalty", -2, 2)
    number("frequency_penalty", -2, 2)
    if req.stop is not None:
        if isinstance(req.stop, str):
            req.stop = [req.stop]
        if not isinstance(req.stop, list) or not all(isinstance(s, str) for s in req.stop):
            raise InvalidRequestError("stop must be a string or a list of strings", code="invalid_stop")
    if req.tools is not None and not isinstance(req.tools, list):
        raise InvalidRequestError("tools must be a list", code="invalid_tools")
    if req.response_format is not None and not isinstance(req.response_format, Mapping):
        raise InvalidRequestError("response_format must be an object", code="invalid_response_format")


def build_embedding_request(model: Any, input: Any, params: Mapping[str, Any]) -> EmbeddingRequest:
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("model must be a non-empty string", code="invalid_model")
    req = EmbeddingRequest(model=model, input=EmbeddingRequest.coerce_input(input))
    extra = _extra(params)
    for key, value in params.items():
        if key == "extra" or value is None:
            continue
        if key in ("encoding_format", "dimensions", "user"):
            setattr(req, key, value)
        else:
            extra[key] = value
    check_wire_value(req.input, "input")
    check_wire_value(extra, "extra")
    if req.encoding_format not in (None, "float", "base64"):
        raise InvalidRequestError("encoding_format must be 'float' or 'base64'", code="invalid_encoding_format")
    req.extra = extra
    return req


def join_stream(chunks: Iterable[StreamChunk]) -> str:
    return "".join(c.text for c in chunks)
