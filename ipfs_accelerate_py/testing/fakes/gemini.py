"""Fake Google Gemini API (Generative Language), wire-compatible with the ``google-genai`` SDK.

Routes, under ``/v1beta`` and ``/v1`` (the SDK's ``api_version``):
``POST models/{model}:generateContent``, ``:streamGenerateContent`` (SSE with
``?alt=sse``, else one JSON array), ``:countTokens``, ``:embedContent``,
``:batchEmbedContents``; ``GET models`` (``pageSize``/``pageToken``) and
``GET models/{model}``.  The key comes from ``x-goog-api-key`` or ``?key=``.

Fidelity that matters to clients:

* request bodies are parsed like proto3 JSON: camelCase or snake_case names,
  an unknown field is a 400 ``Invalid JSON payload received. Unknown name ...``,
  enums (roles, safety categories, thresholds, task types, schema types) are
  checked, and JSON-Schema-only keywords in a ``Schema`` are refused;
* errors use the Google RPC shape; a bad key is ``400 INVALID_ARGUMENT`` with
  ErrorInfo reason ``API_KEY_INVALID``, a missing key ``403 PERMISSION_DENIED``;
  a 429 carries ``RetryInfo.retryDelay`` in the body and **no** rate-limit or
  Retry-After headers (the limiter's wait, or a ``status`` fault's ``retry_after``);
* streams are ``data: {chunk}\\r\\n\\r\\n`` with no terminal marker: the last chunk
  carries ``finishReason`` and the final ``usageMetadata``; an ``error_mid_stream``
  fault writes a bare, pretty-printed JSON error object (no ``data:``), as Google does.

Replies are deterministic: ``"Echo: <last user text>"`` plus ``" [<mime>: <n> bytes]"``
for every inline blob of the last user turn (so a client can check what
arrived), cut by ``stopSequences`` and ``maxOutputTokens``; JSON mode answers
``{"echo": ...}`` or an instance of ``responseSchema``; function calls when a
declared function is named in the prompt (or the mode forces one); the
functionResponse content is echoed after a tool turn.  A prompt containing
``BLOCK_PROMPT`` is blocked (``promptFeedback.blockReason``, no candidates).
``countTokens`` reports exactly the ``promptTokenCount`` generateContent would.
Thinking models (2.5) report ``thoughtsTokenCount`` unless ``thinkingBudget`` is 0.
Models are the table below plus ``controls.extra_models`` (attributes:
``kind`` chat|embedding, ``input_limit``, ``output_limit``, ``dimensions``,
``display_name``, ``thinking``).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any
from collections.abc import Mapping, Sequence

from aiohttp import web

from .base import (
    FakeError,
    FakeProtocol,
    FakeServer,
    LimitSnapshot,
    RequestContext,
    ToolSpec,
    choose_tool_calls,
    context_of,
    count_tokens,
    echo_reply,
    embedding_vector,
    instance_from_schema,
    json_bytes,
    random_id,
    split_chunks,
    truncate_tokens,
)

__all__ = ["GEMINI_MODELS", "GeminiModel", "GeminiProtocol", "make_app"]

API_VERSIONS = ("v1beta", "v1")
#: flat prompt cost of one inline image / file part (Gemini bills 258 tokens per image)
IMAGE_TOKENS = 258
BLOCK_TRIGGER = "BLOCK_PROMPT"
_MAX_BATCH = 100
_PAGE_DEFAULT, _PAGE_MAX = 50, 1000


@dataclass(frozen=True)
class GeminiModel:
    """One model the fake serves; ``kind`` decides which methods it supports."""

    id: str
    display_name: str
    input_limit: int = 1_048_576
    output_limit: int = 8_192
    kind: str = "chat"
    dimensions: int | None = None
    thinking: bool = False
    version: str = "001"

    @property
    def methods(self) -> list[str]:
        if self.kind == "embedding":
            return ["embedContent", "batchEmbedContents"]
        return ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]


GEMINI_MODELS: tuple[GeminiModel, ...] = (
    GeminiModel("gemini-2.5-pro", "Gemini 2.5 Pro", output_limit=65_536, thinking=True),
    GeminiModel("gemini-2.5-flash", "Gemini 2.5 Flash", output_limit=65_536, thinking=True),
    GeminiModel("gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", output_limit=65_536, thinking=True),
    GeminiModel("gemini-2.0-flash", "Gemini 2.0 Flash"),
    GeminiModel("gemini-2.0-flash-lite", "Gemini 2.0 Flash-Lite"),
    GeminiModel("gemini-1.5-pro", "Gemini 1.5 Pro", input_limit=2_097_152, version="002"),
    GeminiModel("gemini-1.5-flash", "Gemini 1.5 Flash", version="002"),
    GeminiModel("gemma-3-27b-it", "Gemma 3 27B", input_limit=131_072),
    GeminiModel("text-embedding-004", "Text Embedding 004", input_limit=2_048, output_limit=1, kind="embedding",
                dimensions=768, version="004"),
    GeminiModel("gemini-embedding-001", "Gemini Embedding 001", input_limit=2_048, output_limit=1,
                kind="embedding", dimensions=3_072),
    GeminiModel("embedding-001", "Embedding 001", input_limit=2_048, output_limit=1, kind="embedding",
                dimensions=768),
    GeminiModel("tiny-context", "Tiny Context (fake)", input_limit=8_192, output_limit=4_096),
)

# -- proto field tables (camelCase; snake_case spellings are accepted too) ----------------
_REQUEST = {"contents", "systemInstruction", "generationConfig", "safetySettings", "tools", "toolConfig",
            "cachedContent", "model"}
_GENERATION = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
               "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
               "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
               "thinkingConfig", "mediaResolution", "imageConfig"}
_CONTENT = {"role", "parts"}
_PART = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
         "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata"}
_PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult")
_BLOB = {"mimeType", "data"}
_FILE = {"mimeType", "fileUri"}
_SAFETY = {"category", "threshold", "method"}
_TOOL = {"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"}
_DECLARATION = {"name", "description", "parameters", "parametersJsonSchema", "response", "behavior"}
_TOOL_CONFIG = {"functionCallingConfig"}
_CALLING = {"mode", "allowedFunctionNames"}
_THINKING = {"thinkingBudget", "includeThoughts"}
_EMBED = {"content", "taskType", "title", "outputDimensionality", "model"}
_COUNT = {"contents", "generateContentRequest"}
_SCHEMA = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
           "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
           "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
_SCHEMA_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_CATEGORIES = {"HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_SEXUALLY_EXPLICIT",
               "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_CIVIC_INTEGRITY"}
_THRESHOLDS = {"HARM_BLOCK_THRESHOLD_UNSPECIFIED", "BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE",
               "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF"}
_TASK_TYPES = {"TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
               "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"}
_MIME_TYPES = {"text/plain", "application/json", "text/x.enum"}
_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}$")
_CAMEL = re.compile(r"_([a-z])")
_QUOTA_HELP = "https://ai.google.dev/gemini-api/docs/rate-limits"


def _bad(message: str) -> FakeError:
    return FakeError(400, message, type="INVALID_ARGUMENT")


def _unknown_field(name: str, where: str) -> FakeError:
    at = f" at '{where}'" if where else ""
    return _bad(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _fields(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """A proto message object with its keys normalised to camelCase; unknown names are a 400."""
    if not isinstance(obj, dict):
        kind = "list" if isinstance(obj, list) else type(obj).__name__
        raise _bad(f"Invalid JSON payload received. Expected an object at '{where or 'request'}', got {kind}.")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _CAMEL.sub(lambda m: m.group(1).upper(), key)
        if name not in allowed:
            raise _unknown_field(key, where)
        out[name] = value
    return out


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None,
            integer: bool = False) -> float | None:
    if value is None:
        return None
    # proto3 JSON takes any integral number for an int32 (the SDK sends topK as 20.0)
    ok = isinstance(value, (int, float)) and (not integer or float(value).is_integer())
    if isinstance(value, bool) or not ok:
        kind = "TYPE_INT32" if integer else "TYPE_FLOAT"
        raise _bad(f"Invalid value at '{where}' ({kind}), {json.dumps(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f"in the range [{lo}, {hi}]" if hi is not None else f"at least {lo}"
        raise _bad(f"* {where}: must be {bound}, got {value}")
    return value


def _enum(value: Any, allowed: set[str], where: str, type_name: str) -> str:
    if not isinstance(value, str) or value.upper() not in allowed:
        raise _bad(f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage.v1beta."
                   f"{type_name}), {json.dumps(value)}")
    return value.upper()


def _check_schema(schema: Any, where: str, depth: int = 0) -> dict[str, Any]:
    """Validate a Gemini ``Schema`` (OpenAPI subset); returns it as JSON Schema for instance building."""
    if depth > 24:
        raise _bad(f"* GenerateContentRequest.{where}: schema nesting depth exceeds the limit")
    fields = _fields(schema, _SCHEMA, where)
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "type":
            out["type"] = _enum(value, _SCHEMA_TYPES, f"{where}.type", "Type").lower()
        elif key == "properties":
            if not isinstance(value, dict):
                raise _bad(f"Invalid JSON payload received. Expected an object at '{where}.properties'.")
            out["properties"] = {name: _check_schema(sub, f"{where}.properties[{name}]", depth + 1)
                                 for name, sub in value.items()}
        elif key == "items":
            out["items"] = _check_schema(value, f"{where}.items", depth + 1)
        elif key == "anyOf":
            if not isinstance(value, list):
                raise _bad(f"Invalid JSON payload received. Expected a list at '{where}.any_of'.")
            out["anyOf"] = [_check_schema(sub, f"{where}.any_of[{i}]", depth + 1) for i, sub in enumerate(value)]
        else:
            out[key] = value
    return out


def _decode_blob(blob: Any, where: str) -> tuple[str, int]:
    fields = _fields(blob, _BLOB, where)
    mime = fields.get("mimeType")
    data = fields.get("data")
    if not isinstance(mime, str) or not mime:
        raise _bad(f"* GenerateContentRequest.{where}.mime_type: required field is not set")
    if not isinstance(data, str):
        raise _bad(f"* GenerateContentRequest.{where}.data: required field is not set")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"Invalid value at '{where}.data' (TYPE_BYTES), Base64 decoding failed for "
                   f"\"{data[:20]}\"") from None
    return mime, len(raw)


@dataclass
class _Generate:
    """A validated GenerateContentRequest."""

    prompt: str
    prompt_tokens: int
    text_tokens: int
    media_tokens: int
    blobs: list[tuple[str, int]]
    answers_tool_result: bool
    tools: list[ToolSpec]
    tool_mode: str
    forced: str | None
    candidates: int
    max_tokens: int | None
    stops: list[str]
    mime_type: str
    schema: dict[str, Any] | None
    thinking_budget: int | None
    include_thoughts: bool
    blocked: bool


class GeminiProtocol(FakeProtocol):
    """Google's Generative Language wire format (PROTOCOLS.md section 4)."""

    name = "gemini"
    base_path = "/v1beta"
    sdk_base_path = "/v1beta"
    default_stream_error_status = 503
    request_id_header = "x-request-id"

    def __init__(self) -> None:
        self.models: dict[str, GeminiModel] = {m.id: m for m in GEMINI_MODELS}

    # -- hooks ---------------------------------------------------------------------------
    def extract_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key") or None

    def new_request_id(self, request: web.Request) -> str:
        return random_id("", 16)

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        table: dict[int, tuple[str, str]] = {
            400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
            401: ("UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access "
                                     "token, login cookie or other valid authentication credential."),
            403: ("PERMISSION_DENIED", "The caller does not have permission"),
            404: ("NOT_FOUND", "Requested entity was not found."),
            409: ("ABORTED", "The operation was aborted."),
            429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
            499: ("CANCELLED", "The operation was cancelled."),
            500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                              "https://developers.generativeai.google/guide/troubleshooting"),
            503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
            504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
        }
        if status in table:
            rpc, message = table[status]
        elif status >= 500:
            rpc, message = "INTERNAL", f"Internal error ({status})."
        else:
            rpc, message = "FAILED_PRECONDITION", f"Precondition check failed ({status})."
        return rpc, None, message

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        error: dict[str, Any] = {"code": err.status, "message": err.message, "status": err.type}
        details = list(err.extra.get("details") or [])
        fault = ctx.fault
        if fault is not None and fault.retry_after is not None and not details:
            # Google says how long to wait in the body, never in a header
            details = self._quota_details(fault.retry_after, 0)
        if details:
            error["details"] = details
        return {"error": error}

    def stream_error_frame(self, err: FakeError, ctx: RequestContext) -> bytes:
        """A bare, pretty-printed JSON object with no ``data:`` prefix, as Google
        writes an error into a stream that has already started."""
        ctx.server.complete_error(err)
        payload = err.body if err.body is not None else self.error_payload(err, ctx)
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=2)
        return text.encode() + b"\n"

    def auth_error(self, key: str | None) -> FakeError:
        if key is None:
            return FakeError(403, "Method doesn't allow unregistered callers (callers without established "
                                  "identity). Please use API Key or other form of API consumer identity to call "
                                  "this API.", type="PERMISSION_DENIED")
        message = "API key not valid. Please pass a valid API key."
        return FakeError(400, message, type="INVALID_ARGUMENT", extra={"details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message}]})

    @staticmethod
    def _quota_details(retry_after: float, per_minute: int) -> list[dict[str, Any]]:
        delay = f"{int(retry_after)}s" if float(retry_after).is_integer() else f"{retry_after:g}s"
        violation: dict[str, Any] = {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"}}
        if per_minute:
            violation["quotaValue"] = str(per_minute)
        return [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
                {"@type": "type.googleapis.com/google.rpc.Help",
                 "links": [{"description": "Learn more about Gemini API quotas", "url": _QUOTA_HELP}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]

    def rate_limit_error(self, snap: LimitSnapshot, ctx: RequestContext) -> FakeError:
        wait = max(1, math.ceil(snap.retry_after_s))
        return FakeError(429, "You exceeded your current quota, please check your plan and billing details. "
                              f"For more information on this error, head to: {_QUOTA_HELP}. "
                              f"Please retry in {snap.retry_after_s:.6f}s.",
                         type="RESOURCE_EXHAUSTED",
                         extra={"details": self._quota_details(wait, snap.requests_per_minute)})

    def throttle_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        return {}  # no Retry-After, no rate-limit headers: the wait is in the body

    def fault_retry_headers(self, retry_after: float) -> dict[str, str]:
        return {}  # error_payload puts the fault's retry_after into RetryInfo instead

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        if exc.status == 405:
            return FakeError(405, f"Method {request.method} is not allowed for {request.path}.",
                             type="INVALID_ARGUMENT")
        return FakeError(404, f"The requested URL {request.path} was not found on this server.", type="NOT_FOUND")

    def invalid_json_error(self, detail: str) -> FakeError:
        return _bad(f"Invalid JSON payload received. {detail}")

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        for version in API_VERSIONS:
            app.router.add_get(f"/{version}/models", self.list_models)
            app.router.add_get(f"/{version}/models/{{target}}", self.get_model)
            app.router.add_post(f"/{version}/models/{{target}}", self.model_method)

    # -- models ----------------------------------------------------------------------------
    def model_info(self, ctx: RequestContext, model_id: str) -> GeminiModel | None:
        extra = ctx.controls.extra_models.get(model_id)
        base = self.models.get(model_id)
        if extra is not None:
            fields = {k: v for k, v in extra.items()
                      if k in ("display_name", "input_limit", "output_limit", "kind", "dimensions", "thinking")}
            return replace(base or GeminiModel(model_id, model_id), **fields)
        return base

    def _all_models(self, ctx: RequestContext) -> list[GeminiModel]:
        ids = [m.id for m in GEMINI_MODELS] + [m for m in ctx.controls.extra_models if m not in self.models]
        return [m for m in (self.model_info(ctx, i) for i in ids) if m is not None]

    @staticmethod
    def _model_object(m: GeminiModel) -> dict[str, Any]:
        out: dict[str, Any] = {"name": f"models/{m.id}", "version": m.version, "displayName": m.display_name,
                               "description": f"{m.display_name} (fake)", "inputTokenLimit": m.input_limit,
                               "outputTokenLimit": m.output_limit, "supportedGenerationMethods": m.methods}
        if m.kind == "chat":
            out.update(temperature=1.0, topP=0.95, topK=64, maxTemperature=2.0)
            if m.thinking:
                out["thinking"] = True
        return out

    def _require_model(self, ctx: RequestContext, model_id: str, method: str, version: str) -> GeminiModel:
        info = self.model_info(ctx, model_id)
        if info is None or method not in info.methods + ["streamGenerateContent"] or (
                method == "streamGenerateContent" and info.kind != "chat"):
            raise FakeError(404, f"models/{model_id} is not found for API version {version}, or is not supported "
                                 f"for {method}. Call ListModels to see the list of available models and their "
                                 "supported methods.", type="NOT_FOUND")
        return info

    async def list_models(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        query = request.query
        try:
            size = int(query.get("pageSize", _PAGE_DEFAULT))
        except ValueError:
            raise _bad(f"Invalid value at 'page_size' (TYPE_INT32), \"{query.get('pageSize')}\"") from None
        size = _PAGE_DEFAULT if size <= 0 else min(size, _PAGE_MAX)
        start = 0
        token = query.get("pageToken")
        if token:
            try:
                start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:"))
            except (ValueError, binascii.Error):
                raise _bad("Invalid page token.") from None
        models = self._all_models(ctx)
        page = models[start:start + size]
        out: dict[str, Any] = {"models": [self._model_object(m) for m in page]}
        if start + size < len(models):
            out["nextPageToken"] = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode()
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def get_model(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        target = request.match_info["target"]
        if ":" in target:
            raise self.route_error(request, web.HTTPMethodNotAllowed(request.method, ["POST"]))
        info = self.model_info(ctx, target)
        if info is None:
            raise FakeError(404, f"models/{target} is not found for API version {request.path.split('/')[1]}.",
                            type="NOT_FOUND")
        return web.Response(body=json_bytes(self._model_object(info)), content_type="application/json")

    async def model_method(self, request: web.Request) -> web.StreamResponse:
        """POST models/{model}:{method}."""
        ctx = context_of(request)
        model_id, sep, method = request.match_info["target"].rpartition(":")
        handlers = {"generateContent": self._generate, "streamGenerateContent": self._generate,
                    "countTokens": self._count_tokens, "embedContent": self._embed_content,
                    "batchEmbedContents": self._batch_embed}
        if not sep or method not in handlers:
            raise self.route_error(request, web.HTTPNotFound())
        version = request.path.split("/")[1]
        info = self._require_model(ctx, model_id, method, version)
        body = await ctx.read_json()
        return await handlers[method](ctx, info, body, method)

    # -- request validation -------------------------------------------------------------------
    def _parse_generate(self, info: GeminiModel, raw: Any, where: str = "") -> _Generate:
        body = _fields(raw, _REQUEST, where)
        prefix = f"{where}." if where else ""
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _bad(f"* GenerateContentRequest.{prefix}contents: contents is not specified")
        system_text = ""
        tokens = 0
        media = 0
        if body.get("systemInstruction") is not None:
            system = _fields(body["systemInstruction"], _CONTENT, f"{prefix}system_instruction")
            texts, _, _ = self._parts(system.get("parts"), f"{prefix}system_instruction", "user")
            system_text = "\n".join(texts)
            tokens += count_tokens(system_text)
        prompt, blobs, answers_tool_result = "", [], False
        for i, content in enumerate(contents):
            turn = _fields(content, _CONTENT, f"{prefix}contents[{i}]")
            role = turn.get("role", "user")
            if role not in ("user", "model", "function"):
                raise _bad("Please use a valid role: user, model.")
            texts, turn_blobs, results = self._parts(turn.get("parts"), f"{prefix}contents[{i}]", role)
            tokens += sum(count_tokens(t) for t in texts)
            media += IMAGE_TOKENS * len(turn_blobs)
            if role in ("user", "function"):
                answers_tool_result = bool(results)
                prompt = "\n".join(results) if results else "\n".join(t for t in texts)
                blobs = turn_blobs
        generation = _fields(body.get("generationConfig") or {}, _GENERATION, f"{prefix}generation_config")
        g = f"{prefix}generation_config"
        _number(generation.get("temperature"), f"{g}.temperature", 0.0, 2.0)
        _number(generation.get("topP"), f"{g}.top_p", 0.0, 1.0)
        _number(generation.get("topK"), f"{g}.top_k", 1, None, integer=True)
        _number(generation.get("seed"), f"{g}.seed", integer=True)
        _number(generation.get("presencePenalty"), f"{g}.presence_penalty")
        _number(generation.get("frequencyPenalty"), f"{g}.frequency_penalty")
        candidates = int(_number(generation.get("candidateCount"), f"{g}.candidate_count", 1, 8, True) or 1)
        max_tokens = _number(generation.get("maxOutputTokens"), f"{g}.max_output_tokens", 1, None, True)
        if max_tokens is not None and max_tokens > info.output_limit:
            raise _bad(f"The maximum number of output tokens for {info.id} is {info.output_limit}; "
                       f"max_output_tokens {max_tokens} is out of range.")
        stops = generation.get("stopSequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad(f"Invalid value at '{g}.stop_sequences' (TYPE_STRING)")
        if len(stops) > 5:
            raise _bad(f"* GenerateContentRequest.{g}.stop_sequences: at most 5 stop sequences are allowed")
        mime = generation.get("responseMimeType") or "text/plain"
        if mime not in _MIME_TYPES:
            raise _bad(f"* GenerateContentRequest.{g}.response_mime_type: allowed mimetypes are "
                       "`text/plain`, `application/json`, `application/xml`, `application/yaml` and `text/x.enum`.")
        schema = None
        if generation.get("responseSchema") is not None:
            if mime == "text/plain":
                raise _bad(f"* GenerateContentRequest.{g}.response_mime_type: you must set a compatible "
                           "response_mime_type when response_schema is set")
            schema = _check_schema(generation["responseSchema"], f"{g}.response_schema")
        elif isinstance(generation.get("responseJsonSchema"), dict):
            schema = dict(generation["responseJsonSchema"])
        thinking = _fields(generation.get("thinkingConfig") or {}, _THINKING, f"{g}.thinking_config")
        budget = _number(thinking.get("thinkingBudget"), f"{g}.thinking_config.thinking_budget", -1, None, True)
        if budget not in (None, 0) and not info.thinking:
            raise _bad("Thinking is not enabled for this model.")
        for i, setting in enumerate(body.get("safetySettings") or []):
            s = _fields(setting, _SAFETY, f"{prefix}safety_settings[{i}]")
            _enum(s.get("category"), _CATEGORIES, f"{prefix}safety_settings[{i}].category", "HarmCategory")
            _enum(s.get("threshold"), _THRESHOLDS, f"{prefix}safety_settings[{i}].threshold",
                  "SafetySetting.HarmBlockThreshold")
        tools = self._tools(body.get("tools"), prefix)
        if body.get("tools"):
            tokens += count_tokens(json.dumps(body["tools"], separators=(",", ":")))
        mode, forced = self._tool_config(body.get("toolConfig"), tools, prefix)
        blocked = BLOCK_TRIGGER in prompt or BLOCK_TRIGGER in system_text
        return _Generate(prompt=prompt, prompt_tokens=tokens + media, text_tokens=tokens, media_tokens=media,
                         blobs=blobs, answers_tool_result=answers_tool_result, tools=tools, tool_mode=mode,
                         forced=forced, candidates=candidates, max_tokens=max_tokens and int(max_tokens),
                         stops=stops, mime_type=mime, schema=schema, thinking_budget=budget and int(budget),
                         include_thoughts=bool(thinking.get("includeThoughts")), blocked=blocked)

    def _parts(self, parts: Any, where: str, role: str) -> tuple[list[str], list[tuple[str, int]], list[str]]:
        """(texts, inline blobs as (mime, size), function-response texts) of one content."""
        if not isinstance(parts, list) or not parts:
            raise _bad(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
        texts: list[str] = []
        blobs: list[tuple[str, int]] = []
        results: list[str] = []
        for j, raw in enumerate(parts):
            here = f"{where}.parts[{j}]"
            part = _fields(raw, _PART, here)
            present = [k for k in _PART_DATA if k in part]
            if len(present) != 1:
                raise _bad(f"* GenerateContentRequest.{here}.data: required oneof field 'data' must have one "
                           "initialized field")
            kind = present[0]
            if kind == "text":
                if not isinstance(part["text"], str) or not part["text"]:
                    raise _bad("Unable to submit request because it has an empty text parameter. Add a value to "
                               "the parameter and try again.")
                texts.append(part["text"])
            elif kind == "inlineData":
                blobs.append(_decode_blob(part["inlineData"], f"{here}.inline_data"))
            elif kind == "fileData":
                data = _fields(part["fileData"], _FILE, f"{here}.file_data")
                if not isinstance(data.get("fileUri"), str) or not data["fileUri"]:
                    raise _bad(f"* GenerateContentRequest.{here}.file_data.file_uri: required field is not set")
                blobs.append((str(data.get("mimeType") or "application/octet-stream"), 0))
            elif kind == "functionCall":
                call = part["functionCall"]
                if role != "model" or not isinstance(call, dict) or not isinstance(call.get("name"), str):
                    raise _bad(f"* GenerateContentRequest.{here}.function_call: function calls belong to model "
                               "turns and need a name")
                if not isinstance(call.get("args", {}), dict):
                    raise _bad(f"Invalid JSON payload received. Expected an object at '{here}.function_call.args'.")
                texts.append(call["name"] + json.dumps(call.get("args") or {}))
            elif kind == "functionResponse":
                response = part["functionResponse"]
                if not isinstance(response, dict) or not isinstance(response.get("name"), str):
                    raise _bad(f"* GenerateContentRequest.{here}.function_response.name: name is not specified")
                if not isinstance(response.get("response"), dict):
                    raise _bad(f"Invalid JSON payload received. Expected an object at "
                               f"'{here}.function_response.response'.")
                results.append(json.dumps(response["response"]))
                texts.append(response["name"] + json.dumps(response["response"]))
        return texts, blobs, results

    def _tools(self, raw: Any, prefix: str) -> list[ToolSpec]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise _bad(f"Invalid JSON payload received. Expected a list at '{prefix}tools'.")
        specs: list[ToolSpec] = []
        for i, entry in enumerate(raw):
            tool = _fields(entry, _TOOL, f"{prefix}tools[{i}]")
            for j, decl_raw in enumerate(tool.get("functionDeclarations") or []):
                here = f"{prefix}tools[{i}].function_declarations[{j}]"
                decl = _fields(decl_raw, _DECLARATION, here)
                name = decl.get("name")
                if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                    raise _bad(f"* GenerateContentRequest.{here}.name: Invalid function name. Must start with a "
                               "letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots "
                               "(.), colons (:), or dashes (-), with a maximum length of 64.")
                parameters: dict[str, Any] = {"type": "object", "properties": {}}
                if decl.get("parameters") is not None:
                    parameters = _check_schema(decl["parameters"], f"{here}.parameters")
                    if parameters.get("type") == "object" and not parameters.get("properties"):
                        raise _bad(f"* GenerateContentRequest.{here}.parameters.properties: should be non-empty "
                                   "for OBJECT type")
                elif isinstance(decl.get("parametersJsonSchema"), dict):
                    parameters = dict(decl["parametersJsonSchema"])
                specs.append(ToolSpec(name, parameters))
        return specs

    @staticmethod
    def _tool_config(raw: Any, tools: Sequence[ToolSpec], prefix: str) -> tuple[str, str | None]:
        if raw is None:
            return "auto", None
        config = _fields(raw, _TOOL_CONFIG, f"{prefix}tool_config")
        calling = _fields(config.get("functionCallingConfig") or {}, _CALLING,
                          f"{prefix}tool_config.function_calling_config")
        mode = _enum(calling.get("mode", "AUTO"), set(_MODES), f"{prefix}tool_config.function_calling_config.mode",
                     "FunctionCallingConfig.Mode")
        allowed = calling.get("allowedFunctionNames") or []
        if allowed and mode != "ANY":
            raise _bad("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                       "allowed_function_names may be set only when the mode is ANY.")
        unknown = [n for n in allowed if n not in {t.name for t in tools}]
        if unknown:
            raise _bad(f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                       f"function {unknown[0]!r} is not declared.")
        return _MODES[mode], allowed[0] if len(allowed) == 1 else None

    def _check_context(self, info: GeminiModel, req: _Generate) -> None:
        if req.prompt_tokens > info.input_limit:
            raise _bad(f"The input token count ({req.prompt_tokens}) exceeds the maximum number of tokens allowed "
                       f"({info.input_limit}).")

    # -- generateContent ---------------------------------------------------------------------
    def _answer(self, info: GeminiModel, req: _Generate) -> tuple[list[dict[str, Any]], str, int, int]:
        """(parts, finishReason, candidate tokens, thought tokens) of the deterministic answer."""
        thoughts = 0
        thought_parts: list[dict[str, Any]] = []
        if info.thinking and req.thinking_budget != 0:
            thought = f"The user wrote: {req.prompt.strip()[:200]}. I will answer deterministically."
            thoughts = count_tokens(thought)
            if req.include_thoughts:
                thought_parts.append({"text": thought, "thought": True})
        calls = [] if req.answers_tool_result else choose_tool_calls(
            req.tools, req.prompt, mode=req.tool_mode, forced=req.forced)
        if calls:
            parts = [{"functionCall": {"name": name, "args": args}} for name, args in calls]
            used = sum(3 + count_tokens(name) + count_tokens(json.dumps(args)) for name, args in calls)
            return thought_parts + parts, "STOP", used, thoughts
        if req.mime_type == "application/json":
            text = json.dumps(instance_from_schema(req.schema, req.prompt) if req.schema else {"echo": req.prompt})
        elif req.mime_type == "text/x.enum":
            options = (req.schema or {}).get("enum") or [req.prompt]
            text = str(options[0])
        else:
            text = echo_reply(req.prompt) + "".join(f" [{mime}: {size} bytes]" for mime, size in req.blobs)
        finish = "STOP"
        cut = min((i for i in (text.find(s) for s in req.stops if s) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        text, truncated = truncate_tokens(text, req.max_tokens)
        if truncated:
            finish = "MAX_TOKENS"
        parts = [{"text": text}] if text else []
        return thought_parts + parts, finish, count_tokens(text), thoughts

    @staticmethod
    def _usage(req: _Generate, candidates: int = 0, thoughts: int = 0) -> dict[str, Any]:
        details = [{"modality": "TEXT", "tokenCount": req.text_tokens}]
        if req.media_tokens:
            details.append({"modality": "IMAGE", "tokenCount": req.media_tokens})
        usage: dict[str, Any] = {"promptTokenCount": req.prompt_tokens}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = req.prompt_tokens + candidates + thoughts
        usage["promptTokensDetails"] = details
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    async def _generate(self, ctx: RequestContext, info: GeminiModel, body: Any, method: str) -> web.StreamResponse:
        req = self._parse_generate(info, body)
        self._check_context(info, req)
        base = {"modelVersion": info.id, "responseId": random_id("", 22)}
        stream = method == "streamGenerateContent"
        if req.blocked:
            ctx.charge_tokens(req.prompt_tokens)
            blocked = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                "usageMetadata": self._usage(req), **base}
            if stream:
                return await self._stream(ctx, [blocked])
            return web.Response(body=json_bytes(blocked), content_type="application/json")
        parts, finish, used, thoughts = self._answer(info, req)
        ctx.charge_tokens(req.prompt_tokens + (used + thoughts) * req.candidates)
        usage = self._usage(req, used * req.candidates, thoughts * req.candidates)
        if not stream:
            candidates = [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": i}
                          for i in range(req.candidates)]
            out = {"candidates": candidates, "usageMetadata": usage, **base}
            return web.Response(body=json_bytes(out), content_type="application/json")
        chunks = self._stream_chunks(ctx, parts, finish, req, usage, base)
        if ctx.request.query.get("alt") == "sse":
            return await self._stream(ctx, chunks)
        # without alt=sse the endpoint answers one JSON array of the same chunks
        return web.Response(body=json_bytes(chunks), content_type="application/json")

    def _stream_chunks(self, ctx: RequestContext, parts: list[dict[str, Any]], finish: str, req: _Generate,
                       usage: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
        """The answer as streamed chunks: text split into ``stream_chunks`` pieces,
        other parts whole; the last chunk carries finishReason and the full usage."""
        pieces: list[list[dict[str, Any]]] = []
        for part in parts:
            if "text" in part and not part.get("thought"):
                pieces.extend([{"text": p}] for p in split_chunks(part["text"], ctx.controls.stream_chunks))
            else:
                pieces.append([part])
        if not pieces:
            pieces = [[]]
        prompt_only = {"promptTokenCount": req.prompt_tokens, "totalTokenCount": req.prompt_tokens,
                       "promptTokensDetails": usage["promptTokensDetails"]}
        chunks = []
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            candidates = []
            for i in range(req.candidates):
                candidate: dict[str, Any] = {"content": {"parts": piece, "role": "model"}, "index": i}
                if last:
                    candidate["finishReason"] = finish
                candidates.append(candidate)
            chunks.append({"candidates": candidates, "usageMetadata": usage if last else prompt_only, **base})
        return chunks

    @staticmethod
    async def _stream(ctx: RequestContext, chunks: Sequence[Mapping[str, Any]]) -> web.StreamResponse:
        stream = await ctx.sse()
        for chunk in chunks:
            await stream.send_raw(b"data: " + json_bytes(chunk) + b"\r\n\r\n")
        return await stream.close()

    # -- countTokens -----------------------------------------------------------------------------
    async def _count_tokens(self, ctx: RequestContext, info: GeminiModel, body: Any, method: str) -> web.Response:
        fields = _fields(body, _COUNT, "")
        if ("contents" in fields) == ("generateContentRequest" in fields):
            raise _bad("* CountTokensRequest: exactly one of contents and generate_content_request must be set")
        if "contents" in fields:
            req = self._parse_generate(info, {"contents": fields["contents"]})
        else:
            inner = fields["generateContentRequest"]
            model = inner.get("model") if isinstance(inner, dict) else None
            if model is None:
                raise _bad("* CountTokensRequest.generate_content_request.model: required field is not set")
            if model not in (info.id, f"models/{info.id}"):
                raise _bad(f"* CountTokensRequest.generate_content_request.model: {model} does not match the "
                           f"model in the URL (models/{info.id})")
            req = self._parse_generate(info, inner, "generate_content_request")
        out: dict[str, Any] = {"totalTokens": req.prompt_tokens,
                               "promptTokensDetails": self._usage(req)["promptTokensDetails"]}
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- embeddings ------------------------------------------------------------------------------
    def _embedding(self, info: GeminiModel, raw: Any, where: str) -> tuple[list[float], int]:
        request = _fields(raw, _EMBED, where)
        content = _fields(request.get("content"), _CONTENT, f"{where}.content" if where else "content")
        texts, blobs, _ = self._parts(content.get("parts"), f"{where}.content" if where else "content", "user")
        if blobs:
            raise _bad(f"* EmbedContentRequest.{where or ''}content: only text parts can be embedded")
        task = request.get("taskType")
        if task is not None:
            task = _enum(task, _TASK_TYPES, f"{where}.task_type" if where else "task_type", "TaskType")
        if request.get("title") is not None and task != "RETRIEVAL_DOCUMENT":
            raise _bad("* EmbedContentRequest.title: Title is only applicable when task_type is "
                       "RETRIEVAL_DOCUMENT.")
        native = int(info.dimensions or 768)
        dims = _number(request.get("outputDimensionality"), "output_dimensionality", 1, native, integer=True)
        text, _ = truncate_tokens("\n".join(texts), info.input_limit)  # Gemini truncates long input silently
        vector = embedding_vector(text, int(dims or native), native)
        return [float(x) for x in vector], count_tokens(text)

    async def _embed_content(self, ctx: RequestContext, info: GeminiModel, body: Any, method: str) -> web.Response:
        if isinstance(body, dict) and body.get("model") not in (None, info.id, f"models/{info.id}"):
            raise _bad("* EmbedContentRequest.model: the model in the body does not match the model in the URL")
        values, used = self._embedding(info, body, "")
        ctx.charge_tokens(used)
        return web.Response(body=json_bytes({"embedding": {"values": values}}), content_type="application/json")

    async def _batch_embed(self, ctx: RequestContext, info: GeminiModel, body: Any, method: str) -> web.Response:
        fields = _fields(body, {"requests"}, "")
        requests = fields.get("requests")
        if not isinstance(requests, list) or not requests:
            raise _bad("* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > _MAX_BATCH:
            raise _bad(f"* BatchEmbedContentsRequest.requests: at most {_MAX_BATCH} requests can be in one batch")
        embeddings, total = [], 0
        for i, item in enumerate(requests):
            model = item.get("model") if isinstance(item, dict) else None
            if model != f"models/{info.id}":
                raise _bad(f"* BatchEmbedContentsRequest.requests[{i}].model: Model names in the batch request "
                           f"must match the model in the URL (models/{info.id}), got {model!r}.")
            values, used = self._embedding(info, item, f"requests[{i}]")
            embeddings.append({"values": values})
            total += used
        ctx.charge_tokens(total)
        return web.Response(body=json_bytes({"embeddings": embeddings}), content_type="application/json")


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake Gemini API as an aiohttp application."""
    return FakeServer(GeminiProtocol(), controls).make_app()
