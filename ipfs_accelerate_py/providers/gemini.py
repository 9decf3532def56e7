"""Google Gemini API, Generative Language ``v1beta`` (PROTOCOLS.md section 4).

Callers write OpenAI-style requests; this module maps them onto Gemini's
shape and back:

* messages -> ``contents`` with roles ``user``/``model``; system and developer
  turns -> ``systemInstruction``; same-role turns merge (parallel tool results
  must share one turn);
* sampling fields -> ``generationConfig`` (``n`` -> ``candidateCount``,
  ``max_tokens`` -> ``maxOutputTokens``, ``response_format`` -> ``responseMimeType``
  / ``responseSchema``), OpenAI function tools -> ``functionDeclarations``,
  ``tool_choice`` -> ``toolConfig``; tool calls and results -> ``functionCall``
  / ``functionResponse`` parts, matched by name;
* images (``image_url`` data: URLs, ``{"type": "image", "image": bytes | PIL.Image}``
  parts, and ``image_data=`` on the call) -> ``inlineData`` via Pillow;
* answers -> the normalized types with OpenAI's finish reasons; a blocked
  prompt (``promptFeedback.blockReason``, no candidates) is an empty answer
  with ``finish_reason="blocked"``, not an error.

Wire facts that shape the code: the key travels only in ``x-goog-api-key``
(never ``?key=``, which would end up in logs); streams are SSE without a
terminal marker, so an answer is complete only when a ``finishReason``
arrived; an error inside a stream is a bare JSON object (the transport
delivers it as ``SseEvent(event="raw-json")``); rate limits come with no
headers but with ``RetryInfo.retryDelay`` inside the 429 body.
"""
from __future__ import annotations

import dataclasses
import json
import mimetypes
import re
import uuid
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlsplit

from .. import errors
from ..core import backoff, tokens
from ..transport import HttpRequest, HttpResponse
from ..types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Message, ModelInfo,
                     OperationResponse, StreamChunk, ToolCall, Usage, build_chat_request)
from .base import Provider, Request, Result, StreamDecoder, register
from .openai_compat import (content_text, event_json, http_request, image_inputs, image_payload, json_object,
                            op_params, tool_arguments, tool_call_names)

__all__ = ["GeminiProvider", "GeminiStreamDecoder", "gemini_schema", "finish_reason", "gemini_usage"]

API_VERSION = "v1beta"
#: image types generateContent takes inline as they are; others are re-encoded as PNG
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
#: models pages are followed at most this far, a guard against a looping cursor
_MAX_MODEL_PAGES = 100
_MODELS_PAGE_SIZE = 1000

_FINISH_REASONS: dict[str, str | None] = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "FINISH_REASON_UNSPECIFIED": None,
}
_TOOL_MODES = {"auto": "AUTO", "required": "ANY", "any": "ANY", "none": "NONE"}
#: GenerationConfig fields a caller may pass flat through ``extra``
_GENERATION_FIELDS = frozenset({
    "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities", "responseLogprobs",
    "logprobs", "thinkingConfig", "mediaResolution", "speechConfig", "imageConfig",
    "enableEnhancedCivicAnswers", "candidateCount", "maxOutputTokens", "stopSequences", "temperature",
    "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
})
#: extra keys this module consumes itself or that have no Gemini meaning
_CONSUMED = frozenset({"image_data", "parallel_tool_calls", "contents", "model", "generationConfig"})
#: the OpenAPI subset Gemini's Schema accepts; JSON-Schema-only keywords ($schema,
#: additionalProperties, strict, ...) are rejected by the API, so they are dropped
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
    "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})
_CONTEXT_RE = re.compile(r"exceeds the maximum number of tokens|input token count|context (window|length)"
                         r"|too many tokens", re.I)
_STATUS_FOR_RPC = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                   "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409,
                   "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNKNOWN": 500,
                   "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_CAMEL = re.compile(r"_([a-z])")


def _camel(name: str) -> str:
    """snake_case -> lowerCamelCase (proto JSON accepts both; we always send camel)."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def _invalid(message: str, code: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, provider="gemini", code=code)


def _call_id() -> str:
    """Gemini function calls usually carry no id; the normalized ToolCall needs
    one that is unique across a conversation so results can be matched back."""
    return f"call_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------
# Pure mapping helpers
# ---------------------------------------------------------------------------

def gemini_schema(schema: Any, _root: Any = None, _depth: int = 0) -> Any:
    """A JSON Schema as Gemini's OpenAPI-subset ``Schema``.

    ``$ref`` into ``$defs``/``definitions`` is inlined, ``allOf`` merged, type
    lists with ``null`` become ``nullable``, ``const`` becomes a one-value
    ``enum``, types are upper-cased, and keywords outside the subset are dropped
    (Gemini answers 400 "Unknown name" for them).
    """
    root = schema if _root is None else _root
    if _depth > 32:
        raise _invalid("the JSON schema nests too deeply (or refers to itself) for Gemini", "invalid_schema")
    if not isinstance(schema, Mapping):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: Any = root if ref.startswith("#/") else None
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            raise _invalid(f"cannot resolve schema reference {ref!r}", "invalid_schema")
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return gemini_schema(merged, root, _depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged.update(part)
        return gemini_schema(merged, root, _depth + 1)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            types = [value] if isinstance(value, str) else [t for t in value or [] if isinstance(t, str)]
            real = [t for t in types if t != "null"]
            if len(real) < len(types):
                out["nullable"] = True
            if len(real) == 1:
                out["type"] = real[0].upper()
            elif len(real) > 1:
                out["anyOf"] = [{"type": t.upper()} for t in real]
        elif key == "properties" and isinstance(value, Mapping):
            out["properties"] = {name: gemini_schema(sub, root, _depth + 1) for name, sub in value.items()}
        elif key == "items":
            out["items"] = gemini_schema(value, root, _depth + 1)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            options = [v for v in value if not (isinstance(v, Mapping) and v.get("type") == "null")]
            if len(options) < len(value):
                out["nullable"] = True
            converted = [gemini_schema(v, root, _depth + 1) for v in options]
            if len(converted) == 1 and isinstance(converted[0], Mapping):
                out.update(converted[0])
            else:
                out["anyOf"] = converted
        elif key == "const":
            out["enum"] = [value]
        elif key in _SCHEMA_KEYS:
            out[key] = value
    return out


def finish_reason(reason: str | None, has_tool_calls: bool = False) -> str | None:
    """Gemini's finishReason in OpenAI's words; unknown reasons (OTHER,
    MALFORMED_FUNCTION_CALL, ...) are kept, lower-cased."""
    if not reason:
        return None
    mapped = _FINISH_REASONS.get(reason, reason.lower())
    if mapped == "stop" and has_tool_calls:
        return "tool_calls"
    return mapped


def gemini_usage(meta: Any) -> Usage | None:
    """Usage from ``usageMetadata``.  Thinking tokens are billed as output, so
    they count as completion tokens (as OpenAI's reasoning tokens do) and are
    also reported as ``reasoning_tokens``; tool-use prompt tokens count as prompt."""
    if not isinstance(meta, Mapping):
        return None

    def count(key: str) -> int:
        value = meta.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    details = {k: v for k, v in meta.items()
               if k not in ("promptTokenCount", "candidatesTokenCount", "totalTokenCount") and v is not None}
    if count("thoughtsTokenCount"):
        details["reasoning_tokens"] = count("thoughtsTokenCount")
    if count("cachedContentTokenCount"):
        details["cached_tokens"] = count("cachedContentTokenCount")
    return Usage(prompt_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
                 completion_tokens=count("candidatesTokenCount") + count("thoughtsTokenCount"),
                 total_tokens=count("totalTokenCount"), details=details)


def _candidate_parts(candidate: Mapping) -> tuple[str, list[ToolCall]]:
    """(answer text, tool calls) of one candidate; thought-summary parts are not the answer."""
    content = candidate.get("content") if isinstance(candidate.get("content"), Mapping) else {}
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in content.get("parts") or []:
        if not isinstance(part, Mapping):
            continue
        call = part.get("functionCall") or part.get("function_call")
        if isinstance(call, Mapping):
            calls.append(ToolCall(id=str(call.get("id") or _call_id()), name=str(call.get("name") or ""),
                                  arguments=json.dumps(call.get("args") or {})))
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return "".join(texts), calls


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

class GeminiStreamDecoder(StreamDecoder):
    """Decodes ``streamGenerateContent?alt=sse``.

    Every event is a partial GenerateContentResponse: text parts are emitted as
    they arrive, function calls (which Gemini never splits) are collected for
    the final chunk, ``finishReason`` and ``usageMetadata`` (the last seen wins)
    go on the final chunk.  There is no end marker, so ``close`` treats a body
    that ended without any finishReason as truncated (a blocked prompt, which
    has no candidates at all, is complete).  An error object, framed or raw,
    raises the typed error.
    """

    def __init__(self, provider: "GeminiProvider") -> None:
        self._provider = provider
        self._model: str | None = None
        self._usage: Any = None
        self._finish: dict[int, str] = {}
        self._calls: list[ToolCall] = []
        self._blocked: str | None = None
        self._last: Any = None
        self._closed = False

    def feed(self, event: Any) -> list[StreamChunk]:
        payload = event_json(self._provider, event)
        items = payload if isinstance(payload, list) else [payload]
        chunks: list[StreamChunk] = []
        for item in items:
            if not isinstance(item, Mapping):
                continue
            if item.get("error") is not None:
                raise self._provider.stream_error(item)
            chunks.extend(self._chunk(item))
        return chunks

    def _chunk(self, obj: Mapping) -> list[StreamChunk]:
        self._last = obj
        self._model = obj.get("modelVersion") or self._model
        if isinstance(obj.get("usageMetadata"), Mapping):
            self._usage = obj["usageMetadata"]
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, Mapping) and feedback.get("blockReason"):
            self._blocked = str(feedback["blockReason"])
        out = []
        for candidate in obj.get("candidates") or []:
            if not isinstance(candidate, Mapping):
                continue
            index = int(candidate.get("index") or 0)
            text, calls = _candidate_parts(candidate)
            if index == 0:
                self._calls.extend(calls)
            if candidate.get("finishReason"):
                self._finish[index] = str(candidate["finishReason"])
            if text:
                out.append(StreamChunk(text=text, index=index, model=self._model, raw=obj))
        return out

    def close(self) -> list[StreamChunk]:
        if self._closed:
            return []
        if not self._finish and self._blocked is None:
            raise errors.ProviderError(
                "stream ended without a finishReason: gemini closed the response early, so the answer "
                "may be incomplete", retryable=True, provider=self._provider.name,
                endpoint_id=self._provider.endpoint.id)
        self._closed = True
        if self._finish:
            reason = finish_reason(self._finish.get(0) or next(iter(self._finish.values())), bool(self._calls))
        else:
            reason = "blocked"
        return [StreamChunk(done=True, finish_reason=reason, tool_calls=self._calls or None,
                            usage=gemini_usage(self._usage), model=self._model, raw=self._last)]


# ---------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------

@register
class GeminiProvider(Provider):
    name = "gemini"
    default_base_url = f"https://generativelanguage.googleapis.com/{API_VERSION}"
    operations = frozenset({"chat", "stream_chat", "embed", "count_tokens", "models", "model_info"})
    model_patterns = ("gemini-*", "text-embedding-*", "embedding-*", "gemma-*")
    max_embed_batch = 100
    default_model = "gemini-2.0-flash"
    description = "Google Gemini (generateContent): chat, streaming, tools, vision, embeddings, token counting"

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        # the google-genai SDK's base_url is the host root with the version added per call;
        # accept that convention too (a proxy path, by contrast, is kept as given)
        if urlsplit(self.base_url).path in ("", "/"):
            self.base_url = f"{self.base_url}/{API_VERSION}"

    def auth_headers(self) -> dict[str, str]:
        """The key goes in ``x-goog-api-key`` only: a ``?key=`` query would be
        copied into access logs, proxies and error traces."""
        key = self.api_key
        return {"x-goog-api-key": key} if key else {}

    # -- request mapping -------------------------------------------------------
    def _error(self, message: str, code: str) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(message, provider=self.name, endpoint_id=self.endpoint.id, code=code)

    @staticmethod
    def model_path(model: str) -> str:
        """``models/{model}``; names that already carry a collection (``models/..``,
        ``tunedModels/..``) are used as they are."""
        name = model if "/" in model else f"models/{model}"
        return quote(name, safe="/-._~")

    def chat_request(self, request: Request) -> ChatRequest:
        """A ChatRequest from a ChatRequest, or from an OperationRequest's params
        (``messages``, or a plain ``text``/``prompt``), as count_tokens is called."""
        if isinstance(request, ChatRequest):
            return request
        params = op_params(request)
        named = params.pop("model", None)
        model = (getattr(request, "model", None) or named or getattr(self.endpoint, "default_model", None)
                 or self.default_model)
        messages = params.pop("messages", None)
        if messages is None:
            text = params.pop("text", None) or params.pop("prompt", None)
            messages = text if isinstance(text, str) else None
        return build_chat_request(model, messages, params)

    def _inline(self, image: Any, mime_type: str | None = None) -> dict:
        mime, data = image_payload(self, image, mime_type=mime_type, accepted=IMAGE_TYPES)
        return {"inlineData": {"mimeType": mime, "data": data}}

    def _image_url_part(self, image_url: Any) -> dict:
        url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
        if not isinstance(url, str) or not url:
            raise self._error("image_url parts need a url", "invalid_image")
        if url.startswith("data:"):
            mime = url[5:].split(";", 1)[0].split(",", 1)[0].strip().lower()
            if mime and not mime.startswith("image/"):  # documents and audio go inline untouched
                return {"inlineData": {"mimeType": mime, "data": url.partition(",")[2]}}
            return self._inline(url)
        if url.startswith(("http://", "https://", "gs://")):
            guessed = mimetypes.guess_type(urlsplit(url).path)[0] or "image/jpeg"
            return {"fileData": {"mimeType": guessed, "fileUri": url}}
        raise self._error("image_url must be a data:, http(s):// or gs:// URL", "invalid_image")

    def parts(self, content: Any) -> list[dict]:
        """Message content as Gemini parts; empty text is dropped (the API
        rejects an empty text part)."""
        if content is None:
            return []
        if isinstance(content, str):
            return [{"text": content}] if content else []
        out = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                if part.get("text"):
                    out.append({"text": str(part["text"])})
            elif kind == "image_url":
                out.append(self._image_url_part(part.get("image_url")))
            elif kind == "image":
                out.append(self._inline(part.get("image"), part.get("mime_type")))
            else:
                raise self._error(f"gemini cannot send a content part of type {kind!r}", "invalid_content")
        return out

    def _function_response(self, message: Message, names: Mapping[str, str]) -> dict:
        name = message.name or names.get(message.tool_call_id or "")
        if not name:
            raise self._error("tool messages need the function name: set 'name', or the tool_call_id of an "
                              "earlier assistant tool call", "missing_tool_name")
        text = message.content if isinstance(message.content, str) else content_text(message.content)
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        return {"functionResponse": {"name": name,
                                     "response": value if isinstance(value, dict) else {"result": value}}}

    def contents(self, messages: list[Message], extra_images: Sequence[Any] = ()) -> tuple[list[dict], str]:
        """(contents, system instruction text) of a conversation."""
        names = tool_call_names(messages)
        system: list[str] = []
        turns: list[dict] = []
        for message in messages:
            if message.role in ("system", "developer"):
                if message.text():
                    system.append(message.text())
                continue
            if message.role == "tool":
                role, parts = "user", [self._function_response(message, names)]
            elif message.role == "assistant":
                role = "model"
                parts = self.parts(message.content) + [
                    {"functionCall": {"name": call.name, "args": tool_arguments(self, call)}}
                    for call in message.tool_calls or []]
            else:
                role, parts = "user", self.parts(message.content)
            if not parts:
                continue
            if turns and turns[-1]["role"] == role:
                turns[-1]["parts"].extend(parts)
            else:
                turns.append({"role": role, "parts": parts})
        if extra_images:
            if not turns or turns[-1]["role"] != "user":
                turns.append({"role": "user", "parts": []})
            turns[-1]["parts"].extend(self._inline(image) for image in extra_images)
        if not turns:
            raise self._error("gemini needs at least one user or assistant message besides the system "
                              "prompt", "empty_messages")
        return turns, "\n\n".join(system)

    def _tools(self, tools: list[dict] | None) -> list[dict] | None:
        if not tools:
            return None
        declarations: list[dict] = []
        native: list[dict] = []
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, Mapping) else None
            if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(fn, Mapping):
                native.append(dict(tool))  # googleSearch, codeExecution, functionDeclarations, ...
                continue
            declaration: dict[str, Any] = {"name": fn.get("name")}
            if fn.get("description"):
                declaration["description"] = fn["description"]
            parameters = gemini_schema(fn.get("parameters") or {})
            # an OBJECT without properties is rejected ("should be non-empty for OBJECT type"):
            # a function without arguments is declared without parameters
            if isinstance(parameters, Mapping) and parameters.get("properties"):
                declaration["parameters"] = parameters
            declarations.append(declaration)
        return ([{"functionDeclarations": declarations}] if declarations else []) + native

    def _tool_config(self, choice: Any) -> dict | None:
        if choice is None:
            return None
        if isinstance(choice, str):
            if choice not in _TOOL_MODES:
                raise self._error(f"tool_choice must be auto, required or none, got {choice!r}",
                                  "invalid_tool_choice")
            return {"functionCallingConfig": {"mode": _TOOL_MODES[choice]}}
        if isinstance(choice, Mapping) and choice.get("type") == "function":
            fn = choice.get("function") if isinstance(choice.get("function"), Mapping) else {}
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [fn.get("name")]}}
        raise self._error("tool_choice must be a string or {'type': 'function', ...}", "invalid_tool_choice")

    def _response_format(self, response_format: Mapping | None) -> dict:
        if not response_format:
            return {}
        kind = response_format.get("type")
        if kind in (None, "text"):
            return {}
        if kind == "json_object":
            return {"responseMimeType": "application/json"}
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            out: dict[str, Any] = {"responseMimeType": "application/json"}
            if isinstance(schema, Mapping):
                out["responseSchema"] = gemini_schema(schema)
            return out
        raise self._error(f"response_format type must be text, json_object or json_schema, got {kind!r}",
                          "invalid_response_format")

    def generate_body(self, request: ChatRequest) -> dict:
        """The GenerateContentRequest body; ``extra`` may add request fields
        (``safetySettings``, ``toolConfig``, ``cachedContent``) and generation
        fields (``thinkingConfig``, a whole ``generationConfig`` to merge, ...)."""
        extra = {key: value for key, value in request.extra.items() if value is not None}
        contents, system = self.contents(request.messages, image_inputs(extra.get("image_data")))
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        generation = {"temperature": request.temperature, "topP": request.top_p, "topK": request.top_k,
                      "maxOutputTokens": request.max_tokens, "stopSequences": request.stop or None,
                      "candidateCount": request.n, "seed": request.seed,
                      "presencePenalty": request.presence_penalty,
                      "frequencyPenalty": request.frequency_penalty}
        config: dict[str, Any] = {k: v for k, v in generation.items() if v is not None}
        config.update(self._response_format(request.response_format))
        tools = self._tools(request.tools)
        if tools:
            body["tools"] = tools
        tool_config = self._tool_config(request.tool_choice)
        if tool_config:
            body["toolConfig"] = tool_config
        for key, value in extra.items():
            name = _camel(key)
            if name == "generationConfig" and isinstance(value, Mapping):
                config.update({_camel(k): v for k, v in value.items()})
            elif key in _CONSUMED or name in _CONSUMED:
                continue
            elif name in _GENERATION_FIELDS:
                config[name] = value
            else:  # request fields (safetySettings, toolConfig, ...) and anything newer: the API decides
                body[name] = value
        if config:
            body["generationConfig"] = config
        return body

    def _embed_fields(self, request: EmbeddingRequest) -> dict:
        fields = {_camel(k): v for k, v in request.extra.items() if v is not None}
        if request.dimensions is not None:
            fields["outputDimensionality"] = request.dimensions
        return fields

    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op in ("chat", "stream_chat"):
            chat = self.chat_request(request)
            stream = op == "stream_chat"
            action = "streamGenerateContent" if stream else "generateContent"
            return http_request(self, "POST", f"{self.model_path(chat.model)}:{action}", request_id,
                                json_body=self.generate_body(chat), params={"alt": "sse"} if stream else None,
                                stream=stream)
        if op == "count_tokens":
            chat = self.chat_request(request)
            body = self.generate_body(chat)
            payload = ({"contents": body["contents"]} if set(body) == {"contents"} else
                       {"generateContentRequest": {"model": self.model_path(chat.model), **body}})
            return http_request(self, "POST", f"{self.model_path(chat.model)}:countTokens", request_id,
                                json_body=payload)
        if op == "embed":
            if not isinstance(request, EmbeddingRequest):
                raise self._error("gemini embed needs an EmbeddingRequest", "invalid_request")
            path = self.model_path(request.model)
            fields = self._embed_fields(request)
            if len(request.input) == 1:
                return http_request(self, "POST", f"{path}:embedContent", request_id,
                                    json_body={"content": {"parts": [{"text": request.input[0]}]}, **fields})
            requests = [{"model": path, "content": {"parts": [{"text": text}]}, **fields} for text in request.input]
            return http_request(self, "POST", f"{path}:batchEmbedContents", request_id,
                                json_body={"requests": requests})
        if op == "models":
            return self._models_page(request_id, op_params(request).get("page_token"))
        model = getattr(request, "model", None) or op_params(request).get("model") or op_params(request).get("id")
        if not model:
            raise self._error("model_info needs a model id", "missing_model")
        return http_request(self, "GET", self.model_path(str(model)), request_id)

    def _models_page(self, request_id: str | None, page_token: str | None) -> HttpRequest:
        params = {"pageSize": str(_MODELS_PAGE_SIZE)}
        if page_token:
            params["pageToken"] = str(page_token)
        return http_request(self, "GET", "models", request_id, params=params)

    # -- responses ----------------------------------------------------------------
    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        body = json_object(self, response, op)
        if op in ("chat", "stream_chat"):
            return self.chat_response(self.chat_request(request), body)
        if op == "embed":
            return self._embeddings(request, body)
        if op == "count_tokens":
            total = body.get("totalTokens")
            return OperationResponse(op=op, data={"total_tokens": int(total or 0)},
                                     model=self.chat_request(request).model, provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        if op == "models":
            return [self.model_info_from(m) for m in body.get("models") or []
                    if isinstance(m, Mapping) and m.get("name")]
        info = self.model_info_from(body)
        return OperationResponse(op=op, data=info, model=info.id, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    def chat_response(self, request: ChatRequest, body: Mapping) -> ChatResponse:
        candidates = sorted((c for c in body.get("candidates") or [] if isinstance(c, Mapping)),
                            key=lambda c: int(c.get("index") or 0))
        usage = gemini_usage(body.get("usageMetadata")) or Usage()
        model = body.get("modelVersion") or request.model
        if not candidates:
            feedback = body.get("promptFeedback") if isinstance(body.get("promptFeedback"), Mapping) else {}
            reason = "blocked" if feedback.get("blockReason") else None
            return ChatResponse(text="", model=model, usage=usage, finish_reason=reason, provider=self.name,
                                endpoint_id=self.endpoint.id, raw=dict(body))
        answers = [_candidate_parts(c) for c in candidates]
        text, calls = answers[0]
        return ChatResponse(text=text, model=model, usage=usage,
                            finish_reason=finish_reason(candidates[0].get("finishReason"), bool(calls)),
                            tool_calls=calls, choices=[a[0] for a in answers] if len(answers) > 1 else [],
                            provider=self.name, endpoint_id=self.endpoint.id, raw=dict(body))

    def _embeddings(self, request: Request, body: Mapping) -> EmbeddingResponse:
        assert isinstance(request, EmbeddingRequest)
        items = [body["embedding"]] if isinstance(body.get("embedding"), Mapping) else body.get("embeddings") or []
        try:
            vectors = [[float(x) for x in item["values"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise errors.ProviderError("gemini returned an unreadable embedding", provider=self.name,
                                       endpoint_id=self.endpoint.id) from None
        if len(vectors) != len(request.input):
            # a short answer would silently shift vectors onto the wrong inputs
            raise errors.ProviderError(f"gemini returned {len(vectors)} embeddings for {len(request.input)} inputs",
                                       provider=self.name, endpoint_id=self.endpoint.id)
        # the embedding API reports no usage: count locally so cost and TPM stay honest
        prompt = sum(tokens.count_tokens(text, request.model) for text in request.input)
        return EmbeddingResponse(embeddings=vectors, model=request.model,
                                 usage=Usage(prompt_tokens=prompt, details={"estimated": True}),
                                 provider=self.name, endpoint_id=self.endpoint.id, raw=dict(body))

    def model_info_from(self, item: Mapping) -> ModelInfo:
        name = str(item.get("name") or "")
        methods = item.get("supportedGenerationMethods") or []
        category = "embedding" if "embedContent" in methods and "generateContent" not in methods else "chat"
        return ModelInfo(id=name.removeprefix("models/"), provider=self.name, endpoint_id=self.endpoint.id,
                         owned_by="google", context_window=item.get("inputTokenLimit"),
                         max_output_tokens=item.get("outputTokenLimit"), category=category,
                         description=item.get("displayName") or item.get("description"), raw=dict(item))

    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """The default loop, except ``models`` (follows ``nextPageToken``) and
        ``embed`` beyond the 100-input batch limit (split into several calls)."""
        if op == "models":
            return await self._all_models(request, request_id, transport)
        if op == "embed" and isinstance(request, EmbeddingRequest) and len(request.input) > self.max_embed_batch:
            size = self.max_embed_batch
            vectors: list[list[float]] = []
            prompt = 0
            headers: Mapping[str, str] = {}
            for start in range(0, len(request.input), size):
                part = dataclasses.replace(request, input=request.input[start:start + size])
                result, headers = await super().execute(op, part, request_id, transport)
                assert isinstance(result, EmbeddingResponse)
                vectors.extend(result.embeddings)
                prompt += result.usage.prompt_tokens
            return (EmbeddingResponse(embeddings=vectors, model=request.model,
                                      usage=Usage(prompt_tokens=prompt, details={"estimated": True}),
                                      provider=self.name, endpoint_id=self.endpoint.id), headers)
        return await super().execute(op, request, request_id, transport)

    async def _all_models(self, request: Request, request_id: str | None,
                          transport: Any) -> tuple[list[ModelInfo], Mapping[str, str]]:
        self.require("models")
        models: list[ModelInfo] = []
        token = op_params(request).get("page_token")
        headers: Mapping[str, str] = {}
        for _ in range(_MAX_MODEL_PAGES):
            response = await transport.send(self._models_page(request_id, token), timeout_s=self.endpoint.timeout_s)
            if response.status >= 400:
                raise self.parse_error(response)
            page = self.parse("models", request, response)
            assert isinstance(page, list)
            models.extend(page)
            headers = response.headers
            following = (response.json() or {}).get("nextPageToken")
            if not following or following == token:
                break
            token = following
        return models, headers

    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        if op != "stream_chat":
            return super().stream_decoder(op, request, response_headers)
        return GeminiStreamDecoder(self)

    # -- errors ------------------------------------------------------------------------
    def parse_error(self, response: HttpResponse) -> errors.GatewayError:
        """Map the Google RPC error shape by status word and ErrorInfo reason.

        A bad key is ``400 INVALID_ARGUMENT`` with reason ``API_KEY_INVALID`` (or a
        403 for a missing, leaked or unregistered key) and must exclude the key,
        not be reported as a bad request; ``FAILED_PRECONDITION`` (region or
        billing) is a key-level refusal too; a 429 carries its wait in
        ``RetryInfo.retryDelay``.
        """
        body = response.json()
        error_obj = body[0] if isinstance(body, list) and body else body
        error = error_obj.get("error") if isinstance(error_obj, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        message = str(error.get("message") or "").strip() or response.text[:500].strip() or f"HTTP {response.status}"
        message = errors.redact(message, [self.api_key or ""])
        rpc = str(error.get("status") or "") or None
        details = [d for d in error.get("details") or [] if isinstance(d, Mapping)]
        reasons = {str(d.get("reason")) for d in details if d.get("reason")}
        status = response.status
        lowered = message.lower()
        text = f"{self.name} returned HTTP {status}{f' {rpc}' if rpc else ''}: {message}"
        kw: dict[str, Any] = {"provider": self.name, "endpoint_id": self.endpoint.id, "status": status,
                              "code": rpc, "details": {"reasons": sorted(reasons)} if reasons else None}
        if (any(r.startswith("API_KEY") for r in reasons) or "api key not valid" in lowered
                or "api key expired" in lowered or "unregistered callers" in lowered
                or status == 401 or rpc == "UNAUTHENTICATED"):
            return errors.AuthenticationError(text, **kw)
        if status == 403 or rpc in ("PERMISSION_DENIED", "FAILED_PRECONDITION"):
            return errors.PermissionDeniedError(text, **kw)
        if status == 404 or rpc == "NOT_FOUND":
            cls = errors.UnknownModelError if "model" in lowered else errors.NotFoundError
            return cls(text, **kw)
        if status == 429 or rpc == "RESOURCE_EXHAUSTED":
            delay = backoff.retry_delay_from_google(body)
            if delay is None:
                delay = self.retry_after(response)
            return errors.RateLimitError(text, retry_after=delay, **kw)
        if status in (400, 413) and _CONTEXT_RE.search(message):
            return errors.ContextLengthError(text, **kw)
        err = errors.error_for_status(status, text, **{k: v for k, v in kw.items() if k != "status"})
        err.retry_after = self.retry_after(response)
        return err

    def stream_error(self, payload: Mapping) -> errors.GatewayError:
        """The typed error for an error object inside a 200 stream."""
        error = payload.get("error") if isinstance(payload.get("error"), Mapping) else {}
        code = error.get("code")
        if not (isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600):
            code = _STATUS_FOR_RPC.get(str(error.get("status")), 500)
        return self.parse_error(HttpResponse(code, {}, json.dumps(payload).encode()))
