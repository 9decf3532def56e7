"""The OpenAI wire shape, written once for every server that speaks it.

OpenAI, Groq, OPEA, OVMS ``/v3``, TGI's ``/v1`` and Ollama's ``/v1`` accept the
same chat / completions / embeddings / models JSON.  They differ in a handful of
switches (which max-tokens field, whether ``top_k`` is accepted, whether base64
embeddings are understood, which per-operation default models exist) and in
small extras (Groq's ``x_groq`` usage).  Subclasses set class flags and override
the few hooks below; they never rewrite a body or a stream parser.

The module also holds the small body/stream helpers every provider needs
(``json_object``, ``event_json``, ``usage_from_dict``, ``http_request``, ...),
so provider modules that are not OpenAI-shaped (claude.py) reuse them instead
of writing their own.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable, ClassVar, Collection, Literal, Mapping
from urllib.parse import quote

import numpy as np

from .. import errors
from ..core import limiter
from ..transport import FormField, HttpRequest, HttpResponse, SseEvent
from ..types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo,
                     OperationRequest, OperationResponse, StreamChunk, ToolCall, Usage)
from .base import Provider, Request, Result, StreamDecoder

__all__ = [
    "OpenAICompatibleProvider", "OpenAIStreamDecoder", "http_request", "json_object", "event_json",
    "op_params", "usage_from_dict", "content_text", "decode_embedding",
    "image_payload", "image_inputs", "tool_arguments", "tool_call_names", "COMMON_IMAGE_TYPES",
]

# ---------------------------------------------------------------------------
# Helpers shared by every provider module
# ---------------------------------------------------------------------------


def http_request(provider: Provider, method: str, path: str, request_id: str | None, *,
                 json_body: Any = None, form: list[FormField] | None = None,
                 params: dict[str, str] | None = None,
                 stream: bool | Literal["sse", "ndjson"] = False) -> HttpRequest:
    """One ``HttpRequest`` with the provider's auth and common headers.

    Auth goes first so that headers configured on the endpoint (a proxy's own
    Authorization, say) win.  Multipart bodies drop the JSON content type: the
    transport writes the multipart one with its boundary.  ``stream=True``
    means SSE; ``stream="ndjson"`` frames the body as newline-delimited JSON
    (Ollama's native streams).
    """
    headers = {**provider.auth_headers(), **provider.headers(request_id)}
    if json_body is None:
        headers.pop("Content-Type", None)
    framing: Literal["sse", "ndjson"] | None = None
    if stream:
        framing = "ndjson" if stream == "ndjson" else "sse"
        headers["Accept"] = "application/x-ndjson" if framing == "ndjson" else "text/event-stream"
    return HttpRequest(method=method, url=provider.url(path), headers=headers, json=json_body,
                       form=form, params=params, stream=framing)


def json_object(provider: Provider, response: HttpResponse, op: str) -> dict:
    """The body of a 2xx response as a JSON object, or a retryable ProviderError.

    A 2xx with an HTML or empty body is what a misbehaving proxy or load
    balancer sends; another attempt (maybe on another endpoint) can succeed.
    """
    body = response.json()
    if not isinstance(body, dict):
        raise errors.ProviderError(
            f"{provider.name} answered {op} with HTTP {response.status} but the body is not a JSON "
            f"object: {response.text[:200]!r}", provider=provider.name, endpoint_id=provider.endpoint.id)
    return body


def event_json(provider: Provider, event: Any) -> Any:
    """The JSON payload of one stream event (an ``SseEvent``, a data string or
    an already parsed NDJSON object); None for an empty event."""
    data = event.data if isinstance(event, SseEvent) else event
    if not isinstance(data, (str, bytes)):
        return data
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise errors.ProviderError(
            f"{provider.name} sent a stream event that is not JSON: {str(data)[:200]!r}",
            provider=provider.name, endpoint_id=provider.endpoint.id) from None


def op_params(request: Any) -> dict:
    """A copy of an OperationRequest's params (empty for other request types)."""
    return dict(request.params) if isinstance(request, OperationRequest) else {}


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, Mapping) and p.get("type") in ("text", "output_text"))
    return ""


def _first_int(data: Mapping, *keys: str) -> int | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


_COUNT_KEYS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens"})
#: nested detail counters lifted to the top of Usage.details, where pricing looks for them
_NESTED_DETAILS = (("prompt_tokens_details", "cached_tokens"), ("input_tokens_details", "cached_tokens"),
                   ("completion_tokens_details", "reasoning_tokens"),
                   ("output_tokens_details", "reasoning_tokens"))


def usage_from_dict(usage: Any) -> Usage | None:
    """Usage from either naming (``prompt/completion_tokens`` or ``input/output_tokens``).

    Every other field (cached and reasoning token details, Groq timings,
    Anthropic cache counters) is kept in ``details`` untouched; cached and
    reasoning counts are also lifted to the top of ``details``.
    """
    if not isinstance(usage, Mapping):
        return None
    details = {k: v for k, v in usage.items() if k not in _COUNT_KEYS and v is not None}
    for nested, key in _NESTED_DETAILS:
        sub = usage.get(nested)
        if isinstance(sub, Mapping) and sub.get(key) is not None:
            details.setdefault(key, sub[key])
    if usage.get("cache_read_input_tokens") is not None:
        details.setdefault("cached_tokens", usage["cache_read_input_tokens"])
    return Usage(prompt_tokens=_first_int(usage, "prompt_tokens", "input_tokens") or 0,
                 completion_tokens=_first_int(usage, "completion_tokens", "output_tokens") or 0,
                 total_tokens=_first_int(usage, "total_tokens") or 0, details=details)


def decode_embedding(value: Any) -> list[float]:
    """One embedding as floats: a JSON list as is, a base64 string decoded as
    little-endian float32 (what ``encoding_format: base64`` returns)."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        return np.frombuffer(raw, dtype="<f4").astype(float).tolist()
    if isinstance(value, list):
        return [float(x) for x in value]
    raise ValueError(f"embedding is neither a list nor a base64 string ({type(value).__name__})")


def tool_call_from_openai(value: Mapping) -> ToolCall:
    fn = value.get("function") if isinstance(value.get("function"), Mapping) else {}
    args = fn.get("arguments")
    if not isinstance(args, str):
        args = json.dumps(args if args is not None else {})
    return ToolCall(id=str(value.get("id") or ""), name=str(fn.get("name") or ""), arguments=args)


# -- images and tool calls for providers whose messages are not OpenAI-shaped -----

#: image formats every vision API takes as they are; other images are re-encoded as PNG
COMMON_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def _sniff_image(data: bytes) -> str | None:
    """The MIME type of common image bytes from their signature, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), None)


def _is_pil_image(value: Any) -> bool:
    # recognised by class, not isinstance, so text-only traffic never imports Pillow
    return any(cls.__name__ == "Image" and cls.__module__ == "PIL.Image" for cls in type(value).__mro__)


def _png_bytes(image: Any) -> bytes:
    import io  # noqa: PLC0415 - only images need it

    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):  # CMYK, YCbCr, F, ...
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_payload(provider: Provider, image: Any, *, mime_type: str | None = None,
                  accepted: Collection[str] = COMMON_IMAGE_TYPES) -> tuple[str, str]:
    """``(mime type, base64 data)`` of an image given as bytes, a PIL image or a ``data:`` URL.

    Bytes and data: URLs already in an ``accepted`` format travel unchanged:
    re-encoding costs time and, for JPEG, quality.  Every PIL image, and any
    other bytes Pillow can open (BMP, TIFF, GIF where the API refuses it), is
    sent as PNG, which is lossless and accepted by every vision API.  Remote
    URLs are refused here: providers do no I/O, and the request may run on
    another machine than the caller that named the URL.
    """
    def invalid(message: str) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(message, provider=provider.name, endpoint_id=provider.endpoint.id,
                                          code="invalid_image")

    if isinstance(image, str):
        if not image.startswith("data:"):
            raise invalid(f"{provider.name} takes images inline: pass bytes, a PIL image or a base64 "
                          f"data: URL (got a string starting {image[:24]!r})")
        header, sep, data = image[5:].partition(",")
        declared, *flags = header.split(";")
        if not sep or "base64" not in flags:
            raise invalid("image data: URLs must be base64-encoded (data:image/png;base64,...)")
        declared = declared.strip().lower()
        if declared in accepted:
            return declared, data.strip()
        try:
            image = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("the image data: URL does not hold valid base64") from None
        mime_type = mime_type or declared or None
    if isinstance(image, (bytearray, memoryview)):
        image = bytes(image)
    if isinstance(image, bytes):
        if not image:
            raise invalid("image bytes must not be empty")
        mime = _sniff_image(image) or mime_type
        if mime in accepted:
            return str(mime), base64.b64encode(image).decode("ascii")
        try:
            from PIL import Image  # noqa: PLC0415 - optional at import time
        except ImportError:  # pragma: no cover - Pillow is a dependency
            raise invalid(f"converting {mime or 'these'} image bytes needs Pillow") from None
        try:
            import io  # noqa: PLC0415
            with Image.open(io.BytesIO(image)) as opened:
                opened.load()
                return "image/png", base64.b64encode(_png_bytes(opened)).decode("ascii")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise invalid(f"the image bytes are not an image Pillow can read ({type(exc).__name__})") from None
    if _is_pil_image(image):
        return "image/png", base64.b64encode(_png_bytes(image)).decode("ascii")
    raise invalid(f"an image must be bytes, a PIL image or a data: URL, got {type(image).__name__}")


def image_inputs(value: Any) -> list[Any]:
    """A caller's ``image_data`` (one image or a list of them) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def tool_arguments(provider: Provider, call: ToolCall) -> dict:
    """A ToolCall's JSON-string arguments as the object native APIs (Gemini, Ollama) want."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise errors.InvalidRequestError(f"tool call {call.name!r} arguments must be a JSON object",
                                         provider=provider.name, endpoint_id=provider.endpoint.id,
                                         code="invalid_tool_calls")
    return arguments


def tool_call_names(messages: list[Any]) -> dict[str, str]:
    """Call id -> function name of every assistant tool call, so a tool result
    can be matched to its function on APIs that key results by name."""
    return {call.id: call.name for message in messages if getattr(message, "role", None) == "assistant"
            for call in getattr(message, "tool_calls", None) or [] if call.id}


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


#: leading bytes of common audio containers -> (file extension, MIME type); the
#: audio APIs pick the decoder from the upload's filename, so a wrong one fails
_AUDIO_MAGIC = ((b"RIFF", "wav", "audio/wav"), (b"fLaC", "flac", "audio/flac"),
                (b"OggS", "ogg", "audio/ogg"), (b"ID3", "mp3", "audio/mpeg"),
                (b"\x1aE\xdf\xa3", "webm", "audio/webm"), (b"\xff\xfb", "mp3", "audio/mpeg"),
                (b"\xff\xf3", "mp3", "audio/mpeg"), (b"\xff\xf2", "mp3", "audio/mpeg"))


def _audio_file_type(audio: bytes) -> tuple[str, str]:
    if audio[4:8] == b"ftyp":
        return "m4a", "audio/mp4"
    for magic, ext, mime in _AUDIO_MAGIC:
        if audio.startswith(magic):
            return ext, mime
    return "mp3", "audio/mpeg"


#: error type/code words -> HTTP status, for errors that arrive inside a 200 stream
_STREAM_ERROR_STATUS = (("insufficient_quota", 429), ("rate_limit", 429), ("overloaded", 529),
                        ("context_length", 400), ("invalid_request", 400), ("authentication", 401),
                        ("permission", 403), ("not_found", 404), ("timeout", 504))


def _stream_error_status(error: Any) -> int:
    if not isinstance(error, Mapping):
        return 500
    for key in ("http_status_code", "status_code", "status", "code"):
        value = error.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value < 600:
            return value
    kind = f"{error.get('type') or ''} {error.get('code') or ''}".lower()
    return next((status for word, status in _STREAM_ERROR_STATUS if word in kind), 500)


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

class OpenAIStreamDecoder(StreamDecoder):
    """Decodes ``chat.completion.chunk`` / ``text_completion`` SSE streams.

    Text deltas are emitted as they arrive.  Tool-call fragments are joined per
    (choice, tool index) and delivered whole on the final chunk, because a
    half-received JSON argument string is useless to the caller.  The final
    chunk (``done=True``) is produced by ``close`` once ``[DONE]`` was seen and
    carries finish_reason, tool calls and usage (from the include_usage chunk,
    or the provider's fallback such as Groq's ``x_groq.usage``).
    """

    def __init__(self, provider: "OpenAICompatibleProvider", text_of: Callable[[Mapping], str]) -> None:
        self._provider = provider
        self._text_of = text_of
        self._done = False
        self._closed = False
        self._model: str | None = None
        self._usage: Mapping | None = None
        self._fallback_usage: Mapping | None = None
        self._finish: dict[int, str] = {}
        self._tools: dict[tuple[int, int], dict[str, Any]] = {}
        self._last: Any = None

    def feed(self, event: Any) -> list[StreamChunk]:
        data = event.data if isinstance(event, SseEvent) else event
        if isinstance(data, str) and data.strip() == "[DONE]":
            self._done = True
            return []
        if self._done:
            return []
        obj = event_json(self._provider, event)
        if not isinstance(obj, Mapping):
            return []
        if obj.get("error") is not None:
            raise self._provider.stream_error(obj)
        self._last = obj
        self._model = obj.get("model") or self._model
        if isinstance(obj.get("usage"), Mapping):
            self._usage = obj["usage"]
        fallback = self._provider.stream_fallback_usage(obj)
        if fallback:
            self._fallback_usage = fallback
        chunks = []
        for choice in obj.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            index = int(choice.get("index") or 0)
            delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
            for position, fragment in enumerate(delta.get("tool_calls") or []):
                if isinstance(fragment, Mapping):
                    self._add_tool_fragment(index, position, fragment)
            finish = choice.get("finish_reason")
            if finish:
                self._finish[index] = finish
            text = self._text_of(choice)
            if text:
                chunks.append(StreamChunk(text=text, index=index, finish_reason=finish,
                                          model=self._model, raw=obj))
        return chunks

    def _add_tool_fragment(self, choice: int, position: int, fragment: Mapping) -> None:
        slot = self._tools.setdefault((choice, int(fragment.get("index", position) or 0)),
                                      {"id": "", "name": "", "arguments": []})
        fn = fragment.get("function") if isinstance(fragment.get("function"), Mapping) else {}
        if fragment.get("id"):
            slot["id"] = str(fragment["id"])
        if fn.get("name") and not slot["name"]:
            slot["name"] = str(fn["name"])
        arguments = fn.get("arguments")
        if arguments:
            slot["arguments"].append(arguments if isinstance(arguments, str) else json.dumps(arguments))

    def close(self) -> list[StreamChunk]:
        if self._closed:
            return []
        if not self._done:
            raise errors.ProviderError(
                f"stream ended before [DONE]: {self._provider.name} closed the response early, "
                "so the answer may be incomplete", retryable=True, provider=self._provider.name,
                endpoint_id=self._provider.endpoint.id)
        self._closed = True
        calls = [ToolCall(id=slot["id"], name=slot["name"], arguments="".join(slot["arguments"]) or "{}")
                 for (choice, _), slot in sorted(self._tools.items()) if choice == 0]
        return [StreamChunk(done=True, finish_reason=self._finish.get(0), tool_calls=calls or None,
                            usage=usage_from_dict(self._usage or self._fallback_usage),
                            model=self._model, raw=self._last)]


def _chat_delta_text(choice: Mapping) -> str:
    delta = choice.get("delta")
    return content_text(delta.get("content")) if isinstance(delta, Mapping) else ""


def _completion_text(choice: Mapping) -> str:
    text = choice.get("text")
    return text if isinstance(text, str) else ""


# ---------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------

#: body keys that ``extra`` may not override: they decide what we parse
_PROTECTED = frozenset({"model", "messages", "stream", "prompt", "input"})


class OpenAICompatibleProvider(Provider):
    """Everything OpenAI-shaped.  Not registered itself: concrete providers
    (openai, groq, ovms, opea, ...) subclass it and set the flags below."""

    name = "openai_compatible"
    operations = frozenset({"chat", "stream_chat", "complete", "stream_complete", "embed", "models",
                            "model_info"})
    description = "Any server speaking the OpenAI chat/completions/embeddings API"

    #: send the output cap as ``max_completion_tokens`` (OpenAI proper, whose reasoning
    #: models reject ``max_tokens``) rather than the ``max_tokens`` compat servers know
    uses_max_completion_tokens: ClassVar[bool] = False
    #: send ``top_k``; OpenAI rejects the unknown field, vLLM/TGI/Ollama honour it
    accepts_top_k: ClassVar[bool] = True
    #: ask for base64 embeddings when the caller named no format (a quarter of the
    #: JSON size); off by default because not every compatible server implements it
    requests_base64_embeddings: ClassVar[bool] = False
    #: send ``stream_options.include_usage`` on streams (some servers reject the field)
    sends_stream_options: ClassVar[bool] = True
    #: model used per operation when the caller names none (transcription, tts, ...)
    default_models: ClassVar[Mapping[str, str]] = {}
    #: voice used by ``speech`` when the caller names none
    default_voice: ClassVar[str | None] = None
    chat_path: ClassVar[str] = "chat/completions"
    completions_path: ClassVar[str] = "completions"
    embeddings_path: ClassVar[str] = "embeddings"
    models_path: ClassVar[str] = "models"

    # -- auth, errors, rate limits -------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        headers = super().auth_headers()
        options = getattr(self.endpoint, "options", None) or {}
        if options.get("organization"):
            headers["OpenAI-Organization"] = str(options["organization"])
        if options.get("project"):
            headers["OpenAI-Project"] = str(options["project"])
        return headers

    def error_message(self, response: HttpResponse) -> tuple[str, str | None, str | None]:
        # An upstream may echo the key it rejected; strip this endpoint's key even
        # when it has no recognisable shape and was never registered.
        message, etype, code = super().error_message(response)
        return errors.redact(message, [self.api_key or ""]), etype, code

    def stream_error(self, payload: Mapping) -> errors.GatewayError:
        """The typed error for an ``{"error": ...}`` event inside a 200 stream.

        The status comes from the event when it carries one (TGI's
        ``http_status_code``, vLLM's numeric ``code``), else from the error type.
        """
        status = _stream_error_status(payload.get("error"))
        return self.parse_error(HttpResponse(status, {}, json.dumps(payload).encode()))

    def rate_limit_headers(self, headers: Mapping[str, str]) -> limiter.RateLimitHeaders | None:
        return limiter.parse_openai_rate_headers(headers)

    # -- hooks for subclasses ------------------------------------------------
    def check_chat(self, request: ChatRequest) -> None:
        """Reject, before sending, what this server is known to refuse."""

    def stream_fallback_usage(self, chunk: Mapping) -> Mapping | None:
        """Usage a chunk carries outside ``usage`` (Groq: ``x_groq.usage``), used
        when no include_usage chunk arrives."""
        return None

    def model_info_from(self, item: Mapping) -> ModelInfo:
        """One ``/models`` entry as ModelInfo; servers name the limits differently."""
        return ModelInfo(
            id=str(item.get("id")), provider=self.name, endpoint_id=self.endpoint.id,
            owned_by=item.get("owned_by"),
            context_window=_first_int(item, "context_window", "context_length", "max_model_len",
                                      "max_context_length"),
            max_output_tokens=_first_int(item, "max_completion_tokens", "max_output_tokens"),
            description=item.get("description"), raw=dict(item))

    def resolve_model(self, op: str, request: Any, *, required: bool = True) -> str | None:
        """The model for a call: the request's, else the per-operation default,
        else the endpoint's, else the provider's."""
        model = getattr(request, "model", None) or op_params(request).get("model")
        if not model and required:
            model = (self.default_models.get(op) or getattr(self.endpoint, "default_model", None)
                     or self.default_model)
        if required and not model:
            raise errors.InvalidRequestError(f"{self.name} {op} needs a model", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_model")
        return model

    # -- build ---------------------------------------------------------------
    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op in ("chat", "stream_chat"):
            stream = op == "stream_chat"
            return http_request(self, "POST", self.chat_path, request_id,
                                json_body=self.chat_body(request, stream=stream), stream=stream)
        if op in ("complete", "stream_complete"):
            stream = op == "stream_complete"
            return http_request(self, "POST", self.completions_path, request_id,
                                json_body=self.completion_body(request, stream=stream), stream=stream)
        builder = getattr(self, f"_build_{op}", None)
        if builder is None:
            return super().build(op, request, request_id)
        return builder(request, request_id)

    def _stream_fields(self, body: dict, stream: bool, include_usage: bool) -> None:
        options = body.pop("stream_options", None)
        if not stream:
            return
        body["stream"] = True
        if include_usage and self.sends_stream_options:
            body["stream_options"] = {**(options if isinstance(options, Mapping) else {}),
                                      "include_usage": True}
        elif isinstance(options, Mapping):
            body["stream_options"] = dict(options)

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict:
        """The /chat/completions body; ``request.extra`` is passed through."""
        if not isinstance(request, ChatRequest):
            raise errors.InvalidRequestError(f"{self.name} chat needs a ChatRequest", provider=self.name,
                                             endpoint_id=self.endpoint.id)
        self.check_chat(request)
        body: dict[str, Any] = {"model": request.model,
                                "messages": [m.to_openai() for m in request.messages]}
        optional = {
            "temperature": request.temperature, "top_p": request.top_p,
            "top_k": request.top_k if self.accepts_top_k else None,
            "max_completion_tokens" if self.uses_max_completion_tokens else "max_tokens": request.max_tokens,
            "stop": request.stop or None, "seed": request.seed,
            "presence_penalty": request.presence_penalty, "frequency_penalty": request.frequency_penalty,
            "n": request.n, "tools": request.tools, "tool_choice": request.tool_choice,
            "response_format": request.response_format, "user": request.user,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        body.update((k, v) for k, v in request.extra.items() if k not in _PROTECTED and v is not None)
        self._stream_fields(body, stream, request.include_usage)
        return body

    def completion_body(self, request: OperationRequest, *, stream: bool) -> dict:
        """The legacy /completions body from an OperationRequest's params."""
        params = op_params(request)
        prompt = params.pop("prompt", None)
        if prompt is None or prompt == "":
            raise errors.InvalidRequestError(f"{self.name} complete needs a prompt", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_prompt")
        model = self.resolve_model("complete", request)
        include_usage = params.pop("include_usage", True)
        if "max_completion_tokens" in params:  # this endpoint only knows max_tokens
            params.setdefault("max_tokens", params.pop("max_completion_tokens"))
        body = {"model": model, "prompt": prompt}
        body.update((k, v) for k, v in params.items() if k not in _PROTECTED and v is not None)
        self._stream_fields(body, stream, bool(include_usage))
        return body

    def _build_embed(self, request: EmbeddingRequest, request_id: str | None) -> HttpRequest:
        body: dict[str, Any] = {"model": request.model, "input": list(request.input)}
        encoding = request.encoding_format or ("base64" if self.requests_base64_embeddings else None)
        optional = {"encoding_format": encoding, "dimensions": request.dimensions, "user": request.user}
        body.update((k, v) for k, v in optional.items() if v is not None)
        body.update((k, v) for k, v in request.extra.items() if k not in _PROTECTED and v is not None)
        return http_request(self, "POST", self.embeddings_path, request_id, json_body=body)

    def _build_models(self, request: Any, request_id: str | None) -> HttpRequest:
        return http_request(self, "GET", self.models_path, request_id)

    def _build_model_info(self, request: Any, request_id: str | None) -> HttpRequest:
        model = self.resolve_model("model_info", request, required=False) or op_params(request).get("id")
        if not model:
            raise errors.InvalidRequestError("model_info needs a model id", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_model")
        # fine-tuned ids hold ':' and Groq ids hold '/': both stay literal in the path
        return http_request(self, "GET", f"{self.models_path}/{quote(str(model), safe='/:')}", request_id)

    def _audio_form(self, op: str, request: OperationRequest, *, allow_language: bool) -> list[FormField]:
        params = op_params(request)
        audio = params.pop("file", None)
        if audio is None:
            audio = params.pop("audio", None)
        if isinstance(audio, (bytearray, memoryview)):
            audio = bytes(audio)
        if not isinstance(audio, bytes) or not audio:
            raise errors.InvalidRequestError(
                f"{self.name} {op} needs the audio as non-empty bytes in 'file' (read the file on the "
                "caller's side: the request may run on another machine)", provider=self.name,
                endpoint_id=self.endpoint.id, code="invalid_file")
        ext, mime = _audio_file_type(audio)
        filename = params.pop("filename", None) or f"audio.{ext}"
        params.pop("model", None)
        fields = [FormField("file", audio, filename=str(filename), content_type=mime),
                  FormField("model", str(self.resolve_model(op, request)))]
        if not allow_language:  # translations always produce English and take no language
            params.pop("language", None)
        for key, value in params.items():
            if value is None:
                continue
            if key in ("timestamp_granularities", "include") or key.endswith("[]"):
                name = key if key.endswith("[]") else f"{key}[]"
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    fields.append(FormField(name, str(item)))
            else:
                fields.append(FormField(key, _form_value(value)))
        return fields

    def _build_transcribe(self, request: OperationRequest, request_id: str | None) -> HttpRequest:
        return http_request(self, "POST", "audio/transcriptions", request_id,
                            form=self._audio_form("transcribe", request, allow_language=True))

    def _build_translate(self, request: OperationRequest, request_id: str | None) -> HttpRequest:
        return http_request(self, "POST", "audio/translations", request_id,
                            form=self._audio_form("translate", request, allow_language=False))

    def _build_speech(self, request: OperationRequest, request_id: str | None) -> HttpRequest:
        params = op_params(request)
        params.pop("model", None)
        text = params.pop("input", None) or params.pop("text", None)
        voice = params.pop("voice", None) or self.default_voice
        if not text or not voice:
            raise errors.InvalidRequestError(f"{self.name} speech needs 'input' text and a 'voice'",
                                             provider=self.name, endpoint_id=self.endpoint.id,
                                             code="invalid_speech_request")
        body = {"model": self.resolve_model("speech", request), "input": text, "voice": voice}
        body.update((k, v) for k, v in params.items() if v is not None)
        return http_request(self, "POST", "audio/speech", request_id, json_body=body)

    # -- parse ---------------------------------------------------------------
    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        parser = getattr(self, f"_parse_{op.removeprefix('stream_')}", None)
        if parser is None:
            return super().parse(op, request, response)
        return parser(request, response)

    def _parse_chat(self, request: ChatRequest, response: HttpResponse) -> ChatResponse:
        body = json_object(self, response, "chat")
        return self._choices_response(request, body, lambda c: (c.get("message") or {}).get("content"))

    def _parse_complete(self, request: OperationRequest, response: HttpResponse) -> ChatResponse:
        body = json_object(self, response, "complete")
        return self._choices_response(request, body, lambda c: c.get("text"))

    def _choices_response(self, request: Any, body: Mapping, content_of: Callable[[Mapping], Any]) -> ChatResponse:
        choices = sorted((c for c in body.get("choices") or [] if isinstance(c, Mapping)),
                         key=lambda c: c.get("index") or 0)
        first = choices[0] if choices else {}
        message = first.get("message") if isinstance(first.get("message"), Mapping) else {}
        calls = [tool_call_from_openai(tc) for tc in message.get("tool_calls") or [] if isinstance(tc, Mapping)]
        return ChatResponse(
            text=content_text(content_of(first)) if first else "",
            model=body.get("model") or getattr(request, "model", None) or "",
            usage=usage_from_dict(body.get("usage")) or Usage(),
            finish_reason=first.get("finish_reason"), tool_calls=calls,
            choices=[content_text(content_of(c)) for c in choices] if len(choices) > 1 else [],
            provider=self.name, endpoint_id=self.endpoint.id, raw=body)

    def _parse_embed(self, request: EmbeddingRequest, response: HttpResponse) -> EmbeddingResponse:
        body = json_object(self, response, "embed")
        items = sorted((d for d in body.get("data") or [] if isinstance(d, Mapping)),
                       key=lambda d: d.get("index") or 0)
        try:
            vectors = [decode_embedding(d.get("embedding")) for d in items]
        except (ValueError, binascii.Error) as exc:
            raise errors.ProviderError(f"{self.name} returned an unreadable embedding: {exc}",
                                       provider=self.name, endpoint_id=self.endpoint.id) from None
        if len(vectors) != len(request.input):
            # a short answer would silently shift vectors onto the wrong inputs
            raise errors.ProviderError(
                f"{self.name} returned {len(vectors)} embeddings for {len(request.input)} inputs",
                provider=self.name, endpoint_id=self.endpoint.id)
        return EmbeddingResponse(embeddings=vectors, model=body.get("model") or request.model,
                                 usage=usage_from_dict(body.get("usage")) or Usage(), provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    def _parse_models(self, request: Any, response: HttpResponse) -> list[ModelInfo]:
        body = json_object(self, response, "models")
        items = body.get("data") if isinstance(body.get("data"), list) else body.get("models") or []
        return [self.model_info_from(item) for item in items if isinstance(item, Mapping) and item.get("id")]

    def _parse_model_info(self, request: Any, response: HttpResponse) -> OperationResponse:
        body = json_object(self, response, "model_info")
        info = self.model_info_from(body)
        return OperationResponse(op="model_info", data=info, model=info.id, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    def _audio_response(self, op: str, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        fmt = op_params(request).get("response_format") or "json"
        model = self.resolve_model(op, request)
        body = response.json() if fmt not in ("text", "srt", "vtt") else None
        if not isinstance(body, Mapping):  # text/srt/vtt are plain-text bodies
            return OperationResponse(op=op, data={"text": response.text}, model=model,
                                     provider=self.name, endpoint_id=self.endpoint.id, raw=response.text)
        usage = body.get("usage")
        return OperationResponse(op=op, data=dict(body), model=model,
                                 usage=usage_from_dict(usage) if isinstance(usage, Mapping)
                                 and usage.get("type") != "duration" else None,
                                 provider=self.name, endpoint_id=self.endpoint.id, raw=body)

    def _parse_transcribe(self, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        return self._audio_response("transcribe", request, response)

    def _parse_translate(self, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        return self._audio_response("translate", request, response)

    def _parse_speech(self, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        content_type = response.header("content-type") or "application/octet-stream"
        return OperationResponse(op="speech", data=response.body, model=self.resolve_model("speech", request),
                                 provider=self.name, endpoint_id=self.endpoint.id,
                                 raw={"content_type": content_type, "bytes": len(response.body)})

    # -- stream --------------------------------------------------------------
    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        if op == "stream_chat":
            return OpenAIStreamDecoder(self, _chat_delta_text)
        if op == "stream_complete":
            return OpenAIStreamDecoder(self, _completion_text)
        return super().stream_decoder(op, request, response_headers)
