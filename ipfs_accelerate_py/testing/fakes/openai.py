"""Fake OpenAI API server (and its Groq flavour), wire-compatible with the official SDKs.

``make_app()`` serves the OpenAI surface under ``/v1``; ``make_app(flavor="groq")``
serves Groq's OpenAI-compatible surface under ``/openai/v1`` with Groq's
differences (timing fields in ``usage``, ``x_groq`` on stream chunks and bodies,
richer model objects, ``n`` must be 1, requests-per-day limit header, its own
404 and 401 wording, no images/moderations/legacy completions).

Replies are deterministic (see ``base.echo_reply``): the answer to a chat is
``"Echo: <last user message>"`` cut to ``max_completion_tokens``/``max_tokens``;
with ``tools`` and a prompt that names a tool (or ``tool_choice`` requiring one)
the answer is a tool call whose arguments instantiate the tool's schema; with
``response_format`` ``json_object`` it is ``{"echo": <prompt>}`` and with
``json_schema`` an instance of the schema.  Models are a fixed table per flavour
plus ``controls.extra_models`` (attributes: ``kind`` chat|completion|embedding|
image|transcription|tts|moderation, ``context_window``, ``dimensions``,
``max_completion_tokens``, ``owned_by``).  The model ``tiny-context`` has an
8192-token window so context-length errors are cheap to provoke.
"""
from __future__ import annotations

import base64
import json
import math
import secrets
import struct
import time
from dataclasses import dataclass, replace
from typing import Any
from collections.abc import Mapping, Sequence

from aiohttp import web
from aiohttp.web_request import FileField

from .base import (
    FakeError,
    FakeProtocol,
    FakeServer,
    LimitSnapshot,
    RequestContext,
    ToolSpec,
    choose_tool_calls,
    color_for,
    context_of,
    count_tokens,
    decode_tokens,
    echo_reply,
    embedding_base64,
    embedding_vector,
    fingerprint,
    go_duration,
    instance_from_schema,
    json_bytes,
    random_id,
    split_chunks,
    stable_hash,
    tiny_png,
    token_ids,
    token_pieces,
    truncate_tokens,
)

__all__ = ["GROQ_MODELS", "ModelInfo", "OPENAI_MODELS", "OpenAIProtocol", "make_app"]


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    """One model the fake serves.  ``kind`` decides which endpoints accept it."""

    id: str
    kind: str = "chat"
    context_window: int = 128_000
    created: int = 1_700_000_000
    owned_by: str = "system"
    dimensions: int | None = None
    max_completion_tokens: int | None = None
    #: reasoning models reject ``max_tokens`` and non-default ``temperature``
    reasoning: bool = False
    active: bool = True


OPENAI_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("gpt-4o", created=1715367049, max_completion_tokens=16_384),
    ModelInfo("gpt-4o-mini", created=1721172741, max_completion_tokens=16_384),
    ModelInfo("gpt-4.1", context_window=1_047_576, created=1744316542, max_completion_tokens=32_768),
    ModelInfo("gpt-4.1-mini", context_window=1_047_576, created=1744318173, max_completion_tokens=32_768),
    ModelInfo("gpt-4.1-nano", context_window=1_047_576, created=1744321707, max_completion_tokens=32_768),
    ModelInfo("gpt-4-turbo", created=1712361441, max_completion_tokens=4_096),
    ModelInfo("gpt-3.5-turbo", context_window=16_385, created=1677610602, owned_by="openai",
              max_completion_tokens=4_096),
    ModelInfo("o3-mini", context_window=200_000, created=1737146383, max_completion_tokens=100_000,
              reasoning=True),
    ModelInfo("o4-mini", context_window=200_000, created=1744225351, max_completion_tokens=100_000,
              reasoning=True),
    ModelInfo("tiny-context", context_window=8_192, created=1700000000, owned_by="fake",
              max_completion_tokens=4_096),
    ModelInfo("gpt-3.5-turbo-instruct", kind="completion", context_window=4_096, created=1692901427),
    ModelInfo("davinci-002", kind="completion", context_window=16_384, created=1692634301),
    ModelInfo("babbage-002", kind="completion", context_window=16_384, created=1692634615),
    ModelInfo("text-embedding-3-small", kind="embedding", context_window=8_191, created=1705948997,
              dimensions=1536),
    ModelInfo("text-embedding-3-large", kind="embedding", context_window=8_191, created=1705953180,
              dimensions=3072),
    ModelInfo("text-embedding-ada-002", kind="embedding", context_window=8_191, created=1671217299,
              owned_by="openai-internal", dimensions=1536),
    ModelInfo("dall-e-2", kind="image", created=1698798177),
    ModelInfo("dall-e-3", kind="image", created=1698785189),
    ModelInfo("gpt-image-1", kind="image", created=1745517030),
    ModelInfo("whisper-1", kind="transcription", created=1677532384, owned_by="openai-internal"),
    ModelInfo("gpt-4o-transcribe", kind="transcription", created=1742068463),
    ModelInfo("gpt-4o-mini-transcribe", kind="transcription", created=1742068596),
    ModelInfo("tts-1", kind="tts", created=1681940951, owned_by="openai-internal"),
    ModelInfo("tts-1-hd", kind="tts", created=1699046015),
    ModelInfo("gpt-4o-mini-tts", kind="tts", created=1742403959),
    ModelInfo("omni-moderation-latest", kind="moderation", created=1731689265),
    ModelInfo("text-moderation-latest", kind="moderation", created=1677610602),
)

GROQ_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("llama-3.3-70b-versatile", context_window=131_072, created=1733447754, owned_by="Meta",
              max_completion_tokens=32_768),
    ModelInfo("llama-3.1-8b-instant", context_window=131_072, created=1693721698, owned_by="Meta",
              max_completion_tokens=131_072),
    ModelInfo("openai/gpt-oss-120b", context_window=131_072, created=1754408224, owned_by="OpenAI",
              max_completion_tokens=65_536),
    ModelInfo("openai/gpt-oss-20b", context_window=131_072, created=1754407957, owned_by="OpenAI",
              max_completion_tokens=65_536),
    ModelInfo("meta-llama/llama-4-scout-17b-16e-instruct", context_window=131_072, created=1743874824,
              owned_by="Meta", max_completion_tokens=8_192),
    ModelInfo("qwen/qwen3-32b", context_window=131_072, created=1748396646, owned_by="Alibaba Cloud",
              max_completion_tokens=40_960),
    ModelInfo("meta-llama/llama-guard-4-12b", context_window=131_072, created=1746743847, owned_by="Meta",
              max_completion_tokens=1_024),
    ModelInfo("tiny-context", context_window=8_192, created=1700000000, owned_by="Fake",
              max_completion_tokens=4_096),
    ModelInfo("nomic-embed-text-v1_5", kind="embedding", context_window=8_192, created=1712782345,
              owned_by="Nomic", dimensions=768),
    ModelInfo("whisper-large-v3", kind="transcription", context_window=448, created=1693721698,
              owned_by="OpenAI"),
    ModelInfo("whisper-large-v3-turbo", kind="transcription", context_window=448, created=1728413088,
              owned_by="OpenAI"),
    ModelInfo("playai-tts", kind="tts", context_window=8_192, created=1740682771, owned_by="PlayAI"),
)

_CHAT_KINDS = ("chat", "completion")
_IMAGE_SIZES = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("1024x1024", "1536x1024", "1024x1536", "auto"),
}
_OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                  "shimmer", "verse", "marin", "cedar")
_SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
_AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_LANGUAGES = {"en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian",
              "pt": "portuguese", "nl": "dutch", "ja": "japanese", "zh": "chinese", "ru": "russian"}
MODERATION_CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("idiot", "loser", "stupid"),
    "harassment/threatening": ("i will hurt you", "you will regret"),
    "hate": ("i hate all",),
    "hate/threatening": ("exterminate",),
    "illicit": ("steal", "hack into", "launder"),
    "illicit/violent": ("make a bomb", "build a weapon"),
    "self-harm": ("hurt myself", "self-harm"),
    "self-harm/intent": ("want to die", "end my life"),
    "self-harm/instructions": ("how to self-harm",),
    "sexual": ("explicit sex", "nude"),
    "sexual/minors": ("underage",),
    "violence": ("kill", "murder", "attack"),
    "violence/graphic": ("gore", "dismember"),
}
#: categories the omni model also scores for images
_IMAGE_CATEGORIES = frozenset({"self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                               "violence", "violence/graphic"})
_IMAGE_PART_TOKENS = 85
_NOMINAL_RPM = 10_000
_NOMINAL_TPM = 30_000_000

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               dict: "object", type(None): "null"}


def _type_name(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- parameter checks


def _missing(name: str) -> FakeError:
    return FakeError(400, f"Missing required parameter: '{name}'.", type="invalid_request_error",
                     param=name, code="missing_required_parameter")


def _invalid_type(name: str, expected: str, value: Any) -> FakeError:
    return FakeError(400, f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
                     type="invalid_request_error", param=name, code="invalid_type")


def _invalid_value(name: str, value: Any, allowed: Sequence[Any]) -> FakeError:
    shown = ", ".join(f"'{a}'" for a in allowed)
    return FakeError(400, f"Invalid value: '{value}'. Supported values are: {shown}.",
                     type="invalid_request_error", param=name, code="invalid_value")


def _opt(body: Mapping[str, Any], name: str, types: tuple[type, ...], expected: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in types:
        raise _invalid_type(name, expected, value)
    if not isinstance(value, types):
        raise _invalid_type(name, expected, value)
    return value


def _int(body: Mapping[str, Any], name: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = _opt(body, name, (int,), "an integer")
    if value is None:
        return None
    if lo is not None and value < lo:
        raise FakeError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, "
                             f"but got {value} instead.", type="invalid_request_error", param=name,
                        code="integer_below_min_value")
    if hi is not None and value > hi:
        raise FakeError(400, f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, "
                             f"but got {value} instead.", type="invalid_request_error", param=name,
                        code="integer_above_max_value")
    return value


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = _opt(body, name, (int, float), "a decimal")
    if value is None:
        return None
    if value < lo:
        raise FakeError(400, f"Invalid '{name}': decimal below minimum value. Expected a value >= {lo:g}, "
                             f"but got {value} instead.", type="invalid_request_error", param=name,
                        code="decimal_below_min_value")
    if value > hi:
        raise FakeError(400, f"Invalid '{name}': decimal above maximum value. Expected a value <= {hi:g}, "
                             f"but got {value} instead.", type="invalid_request_error", param=name,
                        code="decimal_above_max_value")
    return float(value)


def _str(body: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = _opt(body, name, (str,), "a string")
    if value is None and required:
        raise _missing(name)
    return value


def _bool(body: Mapping[str, Any], name: str) -> bool:
    return bool(_opt(body, name, (bool,), "a boolean"))


def _stop_list(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _invalid_type("stop", "a string or an array of strings", stop)
    if len(stop) > 4:
        raise FakeError(400, f"Invalid 'stop': array too long. Expected an array with maximum length 4, "
                             f"but got an array with length {len(stop)} instead.",
                        type="invalid_request_error", param="stop", code="array_above_max_length")
    return stop


def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _logit_bias(body: Mapping[str, Any]) -> None:
    bias = body.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise _invalid_type("logit_bias", "an object", bias)
    for token, value in bias.items():
        if not str(token).isdigit():
            raise FakeError(400, f"Invalid key in 'logit_bias': {token}. You should only be submitting "
                                 "non-negative integers.", type="invalid_request_error", param="logit_bias",
                            code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise FakeError(400, f"Invalid value for 'logit_bias': {value!r}. Bias values must be between "
                                 "-100 and 100.", type="invalid_request_error", param="logit_bias",
                            code="invalid_value")


# --------------------------------------------------------------------------- message helpers


def _content_text(content: Any) -> tuple[str, int]:
    """Text of a message's content and the count of image parts in it."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts, images = [], 0
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            images += 1
    return "\n".join(texts), images


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate ``messages`` like the real API (types, roles, parts, tool answers); return them."""
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise FakeError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                             "but got an empty array instead.", type="invalid_request_error",
                        param="messages", code="empty_array")
    roles = ("system", "assistant", "user", "function", "tool", "developer")
    open_calls: set[str] = set()
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _invalid_type(where, "an object", msg)
        role = msg.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in roles:
            raise _invalid_value(f"{where}.role", role, roles)
        content = msg.get("content")
        if role in ("system", "developer", "user", "tool") and content is None:
            raise _missing(f"{where}.content")
        if content is not None and not isinstance(content, (str, list)):
            raise _invalid_type(f"{where}.content", "one of a string or an array of objects", content)
        if isinstance(content, list):
            for j, part in enumerate(content):
                pwhere = f"{where}.content[{j}]"
                if not isinstance(part, dict):
                    raise _invalid_type(pwhere, "an object", part)
                ptype = part.get("type")
                if ptype == "text":
                    if not isinstance(part.get("text"), str):
                        raise _missing(f"{pwhere}.text")
                elif ptype == "image_url":
                    url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) \
                        else None
                    if not isinstance(url, str) or not url:
                        raise _missing(f"{pwhere}.image_url.url")
                elif ptype not in ("input_audio", "file", "refusal"):
                    raise _invalid_value(f"{pwhere}.type", ptype,
                                         ("text", "image_url", "input_audio", "refusal", "file"))
        if role == "assistant":
            for call in msg.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    open_calls.add(call["id"])
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise _missing(f"{where}.tool_call_id")
            if call_id not in open_calls:
                raise FakeError(400, "Invalid parameter: messages with role 'tool' must be a response to a "
                                     "preceeding message with 'tool_calls'.", type="invalid_request_error",
                                param=f"{where}.role", code=None)
    return messages


def _prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> int:
    """OpenAI's documented chat accounting: 3 per message + contents + 3 to prime the reply."""
    total = 3
    for msg in messages:
        text, images = _content_text(msg.get("content"))
        total += 3 + count_tokens(text) + count_tokens(str(msg.get("role", ""))) + images * _IMAGE_PART_TOKENS
        if msg.get("name"):
            total += 1 + count_tokens(str(msg["name"]))
        for call in msg.get("tool_calls") or []:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            total += 3 + count_tokens(str(fn.get("name", ""))) + count_tokens(str(fn.get("arguments", "")))
    if tools:
        total += 9 + count_tokens(json.dumps(tools, separators=(",", ":")))
    return total


def _last_input(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``(role, text)`` of the latest user or tool message: what the fake answers."""
    for msg in reversed(messages):
        if msg.get("role") in ("user", "tool"):
            return msg["role"], _content_text(msg.get("content"))[0]
    return "", ""


def _mentions_json(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any("json" in _content_text(m.get("content"))[0].lower() for m in messages)


def _logprobs_content(text: str, top: int) -> list[dict[str, Any]]:
    out = []
    for tid, tok, raw in token_pieces(text):
        lp = -round(0.001 * (1 + tid % 97), 6)
        alts = [{"token": tok, "logprob": lp, "bytes": list(raw)}]
        for j in range(1, top):
            alt = decode_tokens([(tid + j * 7919) % 100_000])
            alts.append({"token": alt, "logprob": round(lp - 2.0 * j, 6), "bytes": list(alt.encode())})
        out.append({"token": tok, "logprob": lp, "bytes": list(raw), "top_logprobs": alts[:top]})
    return out


# --------------------------------------------------------------------------- the protocol


class OpenAIProtocol(FakeProtocol):
    """OpenAI's wire format; ``flavor="groq"`` switches to Groq's variant of it."""

    name = "openai"

    def __init__(self, flavor: str = "openai") -> None:
        if flavor not in ("openai", "groq"):
            raise ValueError(f"unknown flavor {flavor!r}; expected 'openai' or 'groq'")
        self.flavor = flavor
        self.groq = flavor == "groq"
        self.name = flavor
        self.base_path = "/openai/v1" if self.groq else "/v1"
        self.sdk_base_path = self.base_path
        self.models: dict[str, ModelInfo] = {m.id: m for m in (GROQ_MODELS if self.groq else OPENAI_MODELS)}

    # -- hooks ----------------------------------------------------------------
    def new_request_id(self, request: web.Request) -> str:
        given = request.headers.get("X-Request-ID")
        if given:
            return given[:200]
        if self.groq:
            return "req_" + random_id("", 26).lower()
        return "req_" + secrets.token_hex(16)

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        table: dict[int, tuple[str, str | None, str]] = {
            400: ("invalid_request_error", None, "Bad request."),
            401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
            403: ("invalid_request_error", "unsupported_country_region_territory",
                  "Country, region, or territory not supported"),
            404: ("invalid_request_error", None, "Not found."),
            409: ("invalid_request_error", None, "The request conflicts with the current state of the resource."),
            413: ("invalid_request_error", "request_too_large", "Request Entity Too Large"),
            422: ("invalid_request_error", None, "Unprocessable entity."),
            429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
            500: ("server_error", None,
                  "The server had an error while processing your request. Sorry about that!"),
            502: ("server_error", None, "Bad gateway."),
            503: ("server_error", None, "The engine is currently overloaded, please try again later."),
            504: ("server_error", None, "Gateway timeout."),
        }
        if status in table:
            return table[status]
        if status >= 500:
            return "server_error", None, f"Server error ({status})."
        return "invalid_request_error", None, f"Request failed ({status})."

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        error: dict[str, Any] = {"message": err.message, "type": err.type}
        if not self.groq or err.param is not None:
            error["param"] = err.param
        error["code"] = err.code
        error.update(err.extra)
        return {"error": error}

    def auth_error(self, key: str | None) -> FakeError:
        if self.groq:
            return FakeError(401, "Invalid API Key", type="invalid_request_error", code="invalid_api_key")
        if key is None:
            return FakeError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
                "username) if you're accessing the API from your browser and are prompted for a username and "
                "password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                type="invalid_request_error", code=None)
        return FakeError(401, f"Incorrect API key provided: {fingerprint(key)}. You can find your API key at "
                              "https://platform.openai.com/account/api-keys.",
                         type="invalid_request_error", code="invalid_api_key")

    def rate_limit_error(self, snap: LimitSnapshot, ctx: RequestContext) -> FakeError:
        if snap.reason == "tokens":
            what, limit = "tokens per min (TPM)", int(snap.tpm or 0)
        elif self.groq:
            what, limit = "requests per day (RPD)", max(1, round(snap.rps * 86_400))
        else:
            what, limit = "requests per min (RPM)", snap.requests_per_minute
        return FakeError(
            429,
            f"Rate limit reached for key {ctx.fp} on {what}: Limit {limit}, Remaining 0. "
            f"Please try again in {go_duration(snap.retry_after_s)}.",
            type="rate_limit_error", code="rate_limit_exceeded")

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        if self.groq:
            return FakeError(404, f"Unknown request URL: {request.method} {request.path}. Please check the URL "
                                  "for typos, or see the docs at https://console.groq.com/docs/",
                             type="invalid_request_error", code="unknown_url")
        return FakeError(404, f"Invalid URL ({request.method} {request.path})", type="invalid_request_error")

    def invalid_json_error(self, detail: str) -> FakeError:
        return FakeError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
            "JSON. If you have trouble figuring out how to fix this, please contact us through our help center "
            "at help.openai.com.)",
            type="invalid_request_error")

    def _limit_headers(self, snap: LimitSnapshot, tokens_exhausted: bool = False) -> dict[str, str]:
        if not snap.limited:
            return {
                "x-ratelimit-limit-requests": str(_NOMINAL_RPM),
                "x-ratelimit-limit-tokens": str(_NOMINAL_TPM),
                "x-ratelimit-remaining-requests": str(_NOMINAL_RPM - 1),
                "x-ratelimit-remaining-tokens": str(_NOMINAL_TPM),
                "x-ratelimit-reset-requests": "6ms",
                "x-ratelimit-reset-tokens": "0s",
            }
        limit_requests = max(1, round(snap.rps * 86_400)) if self.groq else snap.requests_per_minute
        tpm = int(snap.tpm) if snap.tpm else _NOMINAL_TPM
        remaining_tokens = 0 if tokens_exhausted else (int(snap.remaining_tokens) if snap.tpm else tpm)
        return {
            "x-ratelimit-limit-requests": str(limit_requests),
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-requests": str(int(snap.remaining_requests)),
            "x-ratelimit-remaining-tokens": str(remaining_tokens),
            "x-ratelimit-reset-requests": go_duration(snap.reset_requests_s),
            "x-ratelimit-reset-tokens": go_duration(snap.reset_tokens_s),
        }

    def success_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        headers = self._limit_headers(snap)
        if not self.groq:
            headers["openai-version"] = "2020-10-01"
            headers["openai-organization"] = "user-fake"
            headers["openai-processing-ms"] = str(int((time.monotonic() - ctx.started) * 1000))
        return headers

    def throttle_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        headers = self._limit_headers(snap, tokens_exhausted=snap.reason == "tokens")
        headers["retry-after"] = str(max(1, math.ceil(snap.retry_after_s)))
        if not self.groq:
            headers["retry-after-ms"] = str(max(1, math.ceil(snap.retry_after_s * 1000)))
        return headers

    def fault_retry_headers(self, retry_after: float) -> dict[str, str]:
        headers = super().fault_retry_headers(retry_after)
        if not self.groq:
            headers["retry-after-ms"] = str(int(round(retry_after * 1000)))
        return headers

    # -- routes ---------------------------------------------------------------
    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        base = self.base_path
        r = app.router
        r.add_post(f"{base}/chat/completions", self.chat_completions)
        r.add_post(f"{base}/embeddings", self.embeddings)
        r.add_get(f"{base}/models", self.list_models)
        r.add_get(f"{base}/models/{{model:.+}}", self.retrieve_model)
        r.add_delete(f"{base}/models/{{model:.+}}", self.delete_model)
        r.add_post(f"{base}/audio/transcriptions", self.transcriptions)
        r.add_post(f"{base}/audio/translations", self.translations)
        r.add_post(f"{base}/audio/speech", self.speech)
        if not self.groq:
            r.add_post(f"{base}/completions", self.completions)
            r.add_post(f"{base}/images/generations", self.images)
            r.add_post(f"{base}/moderations", self.moderations)

    # -- model lookup -----------------------------------------------------------
    def model_info(self, ctx: RequestContext, model_id: str) -> ModelInfo | None:
        extra = ctx.controls.extra_models.get(model_id)
        if extra is not None:
            base = self.models.get(model_id) or ModelInfo(model_id, owned_by="fake")
            fields = {k: v for k, v in extra.items() if k in ModelInfo.__dataclass_fields__ and k != "id"}
            return replace(base, **fields)
        return self.models.get(model_id)

    def _require_model(self, ctx: RequestContext, body: Mapping[str, Any], kinds: Sequence[str],
                       default: str | None = None) -> ModelInfo:
        model_id = body.get("model", default)
        if model_id is None:
            raise _missing("model")
        if not isinstance(model_id, str):
            raise _invalid_type("model", "a string", model_id)
        info = self.model_info(ctx, model_id)
        if info is None:
            if self.groq:
                raise FakeError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                                type="invalid_request_error", code="model_not_found")
            raise FakeError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                            type="invalid_request_error", param="model", code="model_not_found")
        if info.kind not in kinds:
            raise FakeError(400, f"The model `{model_id}` does not support this endpoint ({info.kind} model).",
                            type="invalid_request_error", param="model", code="model_not_supported")
        return info

    async def _json_object(self, ctx: RequestContext) -> dict[str, Any]:
        body = await ctx.read_json()
        if not isinstance(body, dict):
            raise FakeError(400, "The request body must be a JSON object.", type="invalid_request_error")
        return body

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        if self.groq:
            prompt_time = round(prompt * 0.00002, 6)
            completion_time = round(completion * 0.002, 6)
            return {
                "queue_time": 0.000123, "prompt_tokens": prompt, "prompt_time": prompt_time,
                "completion_tokens": completion, "completion_time": completion_time,
                "total_tokens": prompt + completion, "total_time": round(prompt_time + completion_time, 6),
            }
        return {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    def _check_context(self, info: ModelInfo, prompt_tokens: int, max_tokens: int | None,
                       param: str) -> None:
        if max_tokens is not None and info.max_completion_tokens and max_tokens > info.max_completion_tokens:
            raise FakeError(400, f"max_tokens is too large: {max_tokens}. This model supports at most "
                                 f"{info.max_completion_tokens} completion tokens, whereas you provided "
                                 f"{max_tokens}.", type="invalid_request_error", param="max_tokens",
                            code="invalid_value")
        window = info.context_window
        if prompt_tokens + (max_tokens or 0) <= window:
            return
        if max_tokens:
            detail = (f"However, you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                      f"messages, {max_tokens} in the completion). Please reduce the length of the messages "
                      "or completion.")
        else:
            detail = (f"However, your messages resulted in {prompt_tokens} tokens. Please reduce the length "
                      "of the messages.")
        raise FakeError(400, f"This model's maximum context length is {window} tokens. {detail}",
                        type="invalid_request_error", param=param, code="context_length_exceeded")

    # -- chat -------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /chat/completions: see PROTOCOLS.md section 1.1 (and 3 for Groq)."""
        ctx = context_of(request)
        body = await self._json_object(ctx)
        info = self._require_model(ctx, body, _CHAT_KINDS)
        messages = _check_messages(body.get("messages"))
        n = _int(body, "n", 1, 128) or 1
        if self.groq and n != 1:
            raise FakeError(400, "'n' : number must be at most 1", type="invalid_request_error", param="n")
        temperature = _number(body, "temperature", 0, 2)
        _number(body, "top_p", 0, 1)
        _number(body, "presence_penalty", -2, 2)
        _number(body, "frequency_penalty", -2, 2)
        _int(body, "seed")
        _str(body, "user")
        _logit_bias(body)
        stops = _stop_list(body)
        if info.reasoning and body.get("max_tokens") is not None:
            raise FakeError(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                 "'max_completion_tokens' instead.", type="invalid_request_error",
                            param="max_tokens", code="unsupported_parameter")
        if info.reasoning and temperature not in (None, 1.0):
            raise FakeError(400, f"Unsupported value: 'temperature' does not support {body['temperature']} with "
                                 "this model. Only the default (1) value is supported.",
                            type="invalid_request_error", param="temperature", code="unsupported_value")
        max_tokens = _int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _int(body, "max_tokens", 1)
        logprobs = _bool(body, "logprobs")
        top_logprobs = _int(body, "top_logprobs", 0, 20)
        if top_logprobs is not None and not logprobs:
            raise FakeError(400, "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                                 "'top_logprobs' is specified.", type="invalid_request_error",
                            param="top_logprobs", code="invalid_value")
        stream = _bool(body, "stream")
        stream_options = _opt(body, "stream_options", (dict,), "an object")
        if stream_options is not None and not stream:
            raise FakeError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                            type="invalid_request_error", param="stream_options")
        include_usage = bool(stream_options and stream_options.get("include_usage"))
        tools, mode, forced = self._tools(body)
        parallel = body.get("parallel_tool_calls", True) is not False
        response_format = self._response_format(body, messages)

        prompt_tokens = _prompt_tokens(messages, body.get("tools"))
        self._check_context(info, prompt_tokens, max_tokens, "messages")

        role, prompt = _last_input(messages)
        calls = choose_tool_calls(tools, prompt, mode=mode, forced=forced, parallel=parallel) \
            if role == "user" else []
        tool_calls: list[dict[str, Any]] = []
        if calls:
            tool_calls = [{"id": random_id("call_", 24), "type": "function",
                           "function": {"name": name, "arguments": json.dumps(args)}} for name, args in calls]
            content: str | None = None
            finish = "tool_calls"
            completion_each = sum(3 + count_tokens(c["function"]["name"]) + count_tokens(c["function"]["arguments"])
                                  for c in tool_calls)
        else:
            if response_format["type"] == "json_object":
                text = json.dumps({"echo": prompt})
            elif response_format["type"] == "json_schema":
                schema = response_format.get("json_schema", {}).get("schema") or {}
                text = json.dumps(instance_from_schema(schema, prompt))
            else:
                text = echo_reply(prompt)
            text, stopped = _apply_stop(text, stops)
            text, cut = truncate_tokens(text, max_tokens)
            content = text
            finish = "length" if cut else "stop"
            completion_each = count_tokens(text)
        completion_tokens = completion_each * n
        usage = self._usage(prompt_tokens, completion_tokens)
        ctx.charge_tokens(prompt_tokens + completion_tokens)

        base = {
            "id": random_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": info.id,
        }
        if self.groq:
            base["system_fingerprint"] = "fp_fake0groq"
        else:
            base["service_tier"] = "default"
            base["system_fingerprint"] = "fp_fake0001"
        top = top_logprobs or 0
        lp = {"content": _logprobs_content(content, top), "refusal": None} if (logprobs and content) else None
        if stream:
            return await self._stream_chat(ctx, base, n, content, tool_calls, finish,
                                           top if logprobs else None, usage, include_usage)
        choices = []
        for i in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if not self.groq:
                message["refusal"] = None
                message["annotations"] = []
            if tool_calls:
                message["tool_calls"] = [dict(c, id=random_id("call_", 24)) if i else c for c in tool_calls]
            choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
        out = dict(base, object="chat.completion", choices=choices, usage=usage)
        if self.groq:
            out["x_groq"] = {"id": ctx.request_id}
            out["service_tier"] = "on_demand"
        return web.Response(body=json_bytes(out), content_type="application/json")

    def _tools(self, body: Mapping[str, Any]) -> tuple[list[ToolSpec], str, str | None]:
        raw = body.get("tools")
        choice = body.get("tool_choice")
        if raw is None:
            if choice is not None and choice != "none":
                raise FakeError(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                                     "'tools' are specified.", type="invalid_request_error",
                                param="tool_choice")
            return [], "none", None
        if not isinstance(raw, list):
            raise _invalid_type("tools", "an array", raw)
        tools: list[ToolSpec] = []
        for i, tool in enumerate(raw):
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(
                    tool.get("function"), dict):
                raise _invalid_value(f"tools[{i}].type", (tool or {}).get("type") if isinstance(tool, dict)
                                     else tool, ("function",))
            fn = tool["function"]
            name = fn.get("name")
            if not isinstance(name, str):
                raise _missing(f"tools[{i}].function.name")
            if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
                raise FakeError(400, f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                                     "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                                type="invalid_request_error", param=f"tools[{i}].function.name",
                                code="invalid_value")
            params = fn.get("parameters") or {"type": "object", "properties": {}}
            if not isinstance(params, dict):
                raise _invalid_type(f"tools[{i}].function.parameters", "an object", params)
            tools.append(ToolSpec(name, params))
        if choice is None or choice == "auto":
            return tools, "auto", None
        if choice in ("none", "required"):
            return tools, choice, None
        if isinstance(choice, dict) and choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            if not any(t.name == name for t in tools):
                raise FakeError(400, f"Invalid value for 'tool_choice': tool '{name}' is not found in 'tools'.",
                                type="invalid_request_error", param="tool_choice", code="invalid_value")
            return tools, "required", name
        raise _invalid_value("tool_choice", choice, ("none", "auto", "required"))

    def _response_format(self, body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        fmt = body.get("response_format")
        if fmt is None:
            return {"type": "text"}
        if not isinstance(fmt, dict):
            raise _invalid_type("response_format", "an object", fmt)
        kind = fmt.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise _invalid_value("response_format.type", kind, ("text", "json_object", "json_schema"))
        if kind == "json_object" and not _mentions_json(messages):
            raise FakeError(400, "'messages' must contain the word 'json' in some form, to use 'response_format' "
                                 "of type 'json_object'.", type="invalid_request_error", param="messages")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict):
                raise _missing("response_format.json_schema")
            if not isinstance(spec.get("name"), str):
                raise _missing("response_format.json_schema.name")
        return fmt

    async def _stream_chat(self, ctx: RequestContext, base: dict[str, Any], n: int, content: str | None,
                           tool_calls: list[dict[str, Any]], finish: str, top_logprobs: int | None,
                           usage: dict[str, Any], include_usage: bool) -> web.StreamResponse:
        """Section 1.1 streaming: role delta, content (or tool_call) deltas, finish, usage, [DONE]."""
        base = dict(base, object="chat.completion.chunk")
        pieces = ctx.controls.stream_chunks
        stream = await ctx.sse()

        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None,
                  logprobs: Any = None) -> dict[str, Any]:
            c = dict(base, choices=[{"index": index, "delta": delta, "logprobs": logprobs,
                                     "finish_reason": finish_reason}])
            if include_usage:
                c["usage"] = None
            return c

        for i in range(n):
            first_delta: dict[str, Any] = {"role": "assistant", "content": ""}
            if not self.groq:
                first_delta["refusal"] = None
            first = chunk(i, first_delta)
            if self.groq:
                first["x_groq"] = {"id": ctx.request_id}
            await stream.send(first)
            if tool_calls:
                for j, call in enumerate(tool_calls):
                    await stream.send(chunk(i, {"tool_calls": [{
                        "index": j, "id": call["id"] if i == 0 else random_id("call_", 24), "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}]}))
                    for frag in split_chunks(call["function"]["arguments"], pieces):
                        await stream.send(chunk(i, {"tool_calls": [{"index": j, "function": {"arguments": frag}}]}))
            else:
                for piece in split_chunks(content or "", pieces):
                    piece_lp = ({"content": _logprobs_content(piece, top_logprobs), "refusal": None}
                                if top_logprobs is not None else None)
                    await stream.send(chunk(i, {"content": piece}, logprobs=piece_lp))
            last = chunk(i, {}, finish)
            if self.groq and i == n - 1:
                last["x_groq"] = {"id": ctx.request_id, "usage": usage}
            await stream.send(last)
        if include_usage:
            await stream.send(dict(base, choices=[], usage=usage))
        await stream.send("[DONE]")
        return await stream.close()

    # -- legacy completions --------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /completions (legacy text completions, section 1.2)."""
        ctx = context_of(request)
        body = await self._json_object(ctx)
        info = self._require_model(ctx, body, _CHAT_KINDS)
        prompts = self._prompts(body.get("prompt", "<|endoftext|>"))
        n = _int(body, "n", 1, 128) or 1
        best_of = _int(body, "best_of", 1, 20)
        if best_of is not None and best_of < n:
            raise FakeError(400, "best_of must be greater than or equal to n.", type="invalid_request_error",
                            param="best_of")
        max_tokens = _int(body, "max_tokens", 0)
        if max_tokens is None:
            max_tokens = 16
        _number(body, "temperature", 0, 2)
        _number(body, "top_p", 0, 1)
        _logit_bias(body)
        _str(body, "suffix")
        logprobs = _int(body, "logprobs", 0, 5)
        echo = _bool(body, "echo")
        stops = _stop_list(body)
        stream = _bool(body, "stream")
        stream_options = _opt(body, "stream_options", (dict,), "an object")
        if stream_options is not None and not stream:
            raise FakeError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                            type="invalid_request_error", param="stream_options")
        include_usage = bool(stream_options and stream_options.get("include_usage"))
        prompt_tokens = sum(count_tokens(p) for p in prompts)
        for p in prompts:
            self._check_context(info, count_tokens(p), max_tokens, "prompt")

        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        for pi, prompt in enumerate(prompts):
            text, _ = _apply_stop(echo_reply(prompt), stops)
            text, cut = truncate_tokens(text, max_tokens)
            completion_tokens += count_tokens(text) * n
            full = (prompt + text) if echo else text
            for j in range(n):
                lp = None
                if logprobs is not None:
                    lp = self._completion_logprobs(full, logprobs)
                choices.append({"text": full, "index": pi * n + j, "logprobs": lp,
                                "finish_reason": "length" if cut else "stop"})
        usage = self._usage(prompt_tokens, completion_tokens)
        ctx.charge_tokens(prompt_tokens + completion_tokens)
        base = {"id": random_id("cmpl-", 29), "object": "text_completion", "created": int(time.time()),
                "model": info.id, "system_fingerprint": "fp_fake0001"}
        if not stream:
            out = dict(base, choices=choices, usage=usage)
            return web.Response(body=json_bytes(out), content_type="application/json")
        s = await ctx.sse()
        for choice in choices:
            for piece in split_chunks(choice["text"], ctx.controls.stream_chunks):
                c = dict(base, choices=[{"text": piece, "index": choice["index"], "logprobs": None,
                                         "finish_reason": None}])
                if include_usage:
                    c["usage"] = None
                await s.send(c)
            c = dict(base, choices=[{"text": "", "index": choice["index"], "logprobs": None,
                                     "finish_reason": choice["finish_reason"]}])
            if include_usage:
                c["usage"] = None
            await s.send(c)
        if include_usage:
            await s.send(dict(base, choices=[], usage=usage))
        await s.send("[DONE]")
        return await s.close()

    @staticmethod
    def _prompts(prompt: Any) -> list[str]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return list(prompt)
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
                return [decode_tokens(prompt)]
            if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
                return [decode_tokens(p) for p in prompt]
        raise _invalid_type("prompt", "a string, an array of strings, an array of tokens or an array of token "
                                      "arrays", prompt)

    @staticmethod
    def _completion_logprobs(text: str, top: int) -> dict[str, Any]:
        tokens, lps, tops, offsets, pos = [], [], [], [], 0
        for tid, tok, _raw in token_pieces(text):
            lp = -round(0.001 * (1 + tid % 97), 6)
            tokens.append(tok)
            lps.append(lp)
            tops.append({tok: lp} if top else {})
            offsets.append(pos)
            pos += len(tok)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    # -- embeddings ---------------------------------------------------------------
    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /embeddings: float or base64 (little-endian float32) vectors (section 1.3)."""
        ctx = context_of(request)
        body = await self._json_object(ctx)
        info = self._require_model(ctx, body, ("embedding",))
        raw = body.get("input")
        if raw is None:
            raise _missing("input")
        texts = self._embedding_inputs(raw)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise _invalid_value("encoding_format", fmt, ("float", "base64"))
        native = info.dimensions or 1536
        dims = _int(body, "dimensions", 1)
        if dims is not None:
            if not info.id.startswith("text-embedding-3") and "dimensions" not in ctx.controls.extra_models.get(
                    info.id, {}):
                raise FakeError(400, "This model does not support specifying dimensions.",
                                type="invalid_request_error", param="dimensions")
            if dims > native:
                raise FakeError(400, f"Invalid 'dimensions': integer above maximum value. Expected a value <= "
                                     f"{native}, but got {dims} instead.", type="invalid_request_error",
                                param="dimensions", code="integer_above_max_value")
        _str(body, "user")
        total = 0
        data = []
        for i, text in enumerate(texts):
            tokens = count_tokens(text)
            if tokens > info.context_window:
                raise FakeError(400, f"This model's maximum context length is {info.context_window} tokens, "
                                     f"however you requested {tokens} tokens ({tokens} in your prompt; 0 for the "
                                     "completion). Please reduce your prompt; or completion length.",
                                type="invalid_request_error", param=None, code="context_length_exceeded")
            total += tokens
            vec = embedding_vector(text, dims or native, native)
            emb: Any = embedding_base64(vec) if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if total > 300_000:
            raise FakeError(400, f"Requested {total} tokens, max 300000 tokens per request",
                            type="invalid_request_error", param=None, code="max_tokens_per_request")
        ctx.charge_tokens(total)
        out = {"object": "list", "data": data, "model": info.id,
               "usage": {"prompt_tokens": total, "total_tokens": total}}
        return web.Response(body=json_bytes(out), content_type="application/json")

    @staticmethod
    def _embedding_inputs(raw: Any) -> list[str]:
        def invalid() -> FakeError:
            return FakeError(400, "'$.input' is invalid. Please check the API reference: "
                                  "https://platform.openai.com/docs/api-reference.",
                             type="invalid_request_error", param=None)

        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw:
            if len(raw) > 2048:
                raise FakeError(400, f"Invalid 'input': array too long. Expected an array with maximum length "
                                     f"2048, but got an array with length {len(raw)} instead.",
                                type="invalid_request_error", param="input", code="array_above_max_length")
            if all(isinstance(t, str) for t in raw):
                texts = list(raw)
            elif all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
                texts = [decode_tokens(raw)]
            elif all(isinstance(t, list) and t and all(isinstance(x, int) for x in t) for t in raw):
                texts = [decode_tokens(t) for t in raw]
            else:
                raise invalid()
        else:
            raise invalid()
        if any(t == "" for t in texts):
            raise invalid()
        return texts

    # -- models -------------------------------------------------------------------
    def _model_object(self, info: ModelInfo) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": info.id, "object": "model", "created": info.created,
                               "owned_by": info.owned_by}
        if self.groq:
            obj.update(active=info.active, context_window=info.context_window, public_apps=None,
                       max_completion_tokens=info.max_completion_tokens or info.context_window)
        return obj

    def _all_models(self, ctx: RequestContext) -> list[ModelInfo]:
        ids = list(self.models) + [m for m in ctx.controls.extra_models if m not in self.models]
        return [info for info in (self.model_info(ctx, m) for m in ids) if info is not None]

    async def list_models(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        out = {"object": "list", "data": [self._model_object(m) for m in self._all_models(ctx)]}
        return web.Response(body=json_bytes(out), content_type="application/json")

    def _model_not_found(self, model_id: str) -> FakeError:
        return FakeError(404, f"The model '{model_id}' does not exist", type="invalid_request_error",
                         param="model", code="model_not_found")

    async def retrieve_model(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        model_id = request.match_info["model"]
        info = self.model_info(ctx, model_id)
        if info is None:
            raise self._model_not_found(model_id)
        return web.Response(body=json_bytes(self._model_object(info)), content_type="application/json")

    async def delete_model(self, request: web.Request) -> web.Response:
        """DELETE /models/{id}: only fine-tuned (``ft:``) models from ``extra_models`` can go."""
        ctx = context_of(request)
        model_id = request.match_info["model"]
        if self.model_info(ctx, model_id) is None:
            raise self._model_not_found(model_id)
        if not model_id.startswith("ft:") or model_id not in ctx.controls.extra_models:
            raise FakeError(403, "You have insufficient permissions for this operation.",
                            type="invalid_request_error", code="insufficient_permissions")
        del ctx.controls.extra_models[model_id]
        out = {"id": model_id, "object": "model", "deleted": True}
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- images ---------------------------------------------------------------------
    async def images(self, request: web.Request) -> web.Response:
        """POST /images/generations: tiny real PNGs, as URLs (served by the fake) or b64_json."""
        ctx = context_of(request)
        body = await self._json_object(ctx)
        info = self._require_model(ctx, body, ("image",), default="dall-e-2")
        prompt = _str(body, "prompt", required=True) or ""
        limit = {"dall-e-2": 1000, "dall-e-3": 4000}.get(info.id, 32000)
        if len(prompt) > limit:
            raise FakeError(400, f"Invalid 'prompt': string too long. Expected a string with maximum length "
                                 f"{limit}, but got a string with length {len(prompt)} instead.",
                            type="invalid_request_error", param="prompt", code="string_above_max_length")
        n = _int(body, "n", 1, 10) or 1
        if info.id == "dall-e-3" and n != 1:
            raise FakeError(400, "Invalid 'n': integer above maximum value. Expected a value <= 1, but got "
                                 f"{n} instead.", type="invalid_request_error", param="n",
                            code="integer_above_max_value")
        size = body.get("size")
        sizes = _IMAGE_SIZES.get(info.id)
        if size is not None and sizes and size not in sizes:
            raise _invalid_value("size", size, sizes)
        fmt = body.get("response_format") or "url"
        if fmt not in ("url", "b64_json"):
            raise _invalid_value("response_format", fmt, ("url", "b64_json"))
        if info.id == "gpt-image-1":
            fmt = "b64_json"
        style = body.get("style")
        if style is not None and style not in ("vivid", "natural"):
            raise _invalid_value("style", style, ("vivid", "natural"))
        rgb = color_for(prompt)
        png = tiny_png(rgb)
        data = []
        for _ in range(n):
            item: dict[str, Any]
            if fmt == "b64_json":
                item = {"b64_json": base64.b64encode(png).decode()}
            else:
                name = f"{bytes(rgb).hex()}-{random_id('', 12).lower()}.png"
                item = {"url": f"{request.scheme}://{request.host}/_fake/images/{name}"}
            if info.id == "dall-e-3":
                item["revised_prompt"] = prompt
            data.append(item)
        out: dict[str, Any] = {"created": int(time.time()), "data": data}
        if info.id == "gpt-image-1":
            text_tokens = count_tokens(prompt)
            out["usage"] = {"input_tokens": text_tokens, "output_tokens": 272 * n,
                            "total_tokens": text_tokens + 272 * n,
                            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0}}
        ctx.charge_tokens(count_tokens(prompt))
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- audio ------------------------------------------------------------------------
    async def transcriptions(self, request: web.Request) -> web.Response:
        """POST /audio/transcriptions (multipart)."""
        return await self._audio(request, translate=False)

    async def translations(self, request: web.Request) -> web.Response:
        """POST /audio/translations (multipart); always English text."""
        return await self._audio(request, translate=True)

    async def _audio(self, request: web.Request, translate: bool) -> web.Response:
        ctx = context_of(request)
        if not request.content_type.startswith("multipart/"):
            raise FakeError(400, "Invalid Content-Type header (" + (request.content_type or "none") + "), "
                                 "expected multipart/form-data.", type="invalid_request_error")
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge as exc:
            raise FakeError(413, "Maximum content size limit (26214400) exceeded.",
                            type="invalid_request_error") from exc
        upload = form.get("file")
        if not isinstance(upload, FileField):
            raise _missing("file")
        filename = getattr(upload, "filename", "") or ""
        audio = upload.file.read()
        if len(audio) > 25 * 1024 * 1024:
            raise FakeError(413, f"Maximum content size limit (26214400) exceeded ({len(audio)} bytes read)",
                            type="invalid_request_error")
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if ext not in _AUDIO_EXTENSIONS:
            raise FakeError(400, f"Invalid file format. Supported formats: {list(_AUDIO_EXTENSIONS)}",
                            type="invalid_request_error", param="file")
        info = self._require_model(ctx, {"model": form.get("model")}, ("transcription",))
        fmt = str(form.get("response_format") or "json")
        formats = ("json", "text", "srt", "verbose_json", "vtt")
        if fmt not in formats:
            raise _invalid_value("response_format", fmt, formats)
        language = "en" if translate else str(form.get("language") or "en")
        duration = max(0.1, round(len(audio) / 32_000, 2))
        verb = "translation" if translate else "transcription"
        text = f"This is a fake {verb} of {filename} with {len(audio)} bytes of audio."
        usage_seconds = max(1, math.ceil(duration))
        ctx.charge_tokens(count_tokens(text))
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt in ("srt", "vtt"):
            end = _timestamp(duration, "," if fmt == "srt" else ".")
            start = _timestamp(0, "," if fmt == "srt" else ".")
            cue = f"{start} --> {end}\n{text}\n\n"
            body = f"1\n{cue}" if fmt == "srt" else f"WEBVTT\n\n{cue}"
            return web.Response(text=body, content_type="text/plain")
        out: dict[str, Any] = {"text": text}
        if fmt == "verbose_json":
            granularities = form.getall("timestamp_granularities[]", []) or ["segment"]
            out = {"task": "translate" if translate else "transcribe",
                   "language": _LANGUAGES.get(language, language), "duration": duration, "text": text}
            if "segment" in granularities:
                out["segments"] = [{
                    "id": 0, "seek": 0, "start": 0.0, "end": duration, "text": " " + text,
                    "tokens": token_ids(" " + text), "temperature": 0.0, "avg_logprob": -0.2,
                    "compression_ratio": 1.0, "no_speech_prob": 0.01}]
            if "word" in granularities:
                words = text.split()
                step = duration / max(1, len(words))
                out["words"] = [{"word": w, "start": round(i * step, 2), "end": round((i + 1) * step, 2)}
                                for i, w in enumerate(words)]
        if info.id.startswith("gpt-4o") and fmt == "json":
            tokens = count_tokens(text)
            out["usage"] = {"type": "tokens", "input_tokens": usage_seconds * 10, "output_tokens": tokens,
                            "total_tokens": usage_seconds * 10 + tokens}
        elif not self.groq:
            out["usage"] = {"type": "duration", "seconds": usage_seconds}
        if self.groq:
            out["x_groq"] = {"id": ctx.request_id}
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def speech(self, request: web.Request) -> web.Response:
        """POST /audio/speech: raw audio bytes with the format's Content-Type."""
        ctx = context_of(request)
        body = await self._json_object(ctx)
        self._require_model(ctx, body, ("tts",))
        text = _str(body, "input", required=True) or ""
        if len(text) > 4096:
            raise FakeError(400, f"Invalid 'input': string too long. Expected a string with maximum length 4096, "
                                 f"but got a string with length {len(text)} instead.",
                            type="invalid_request_error", param="input", code="string_above_max_length")
        voice = body.get("voice")
        if voice is None:
            raise _missing("voice")
        if not self.groq and voice not in _OPENAI_VOICES:
            raise _invalid_value("voice", voice, _OPENAI_VOICES)
        fmt = body.get("response_format") or "mp3"
        if fmt not in _SPEECH_TYPES:
            raise _invalid_value("response_format", fmt, tuple(_SPEECH_TYPES))
        _number(body, "speed", 0.25, 4.0)
        ctx.charge_tokens(count_tokens(text))
        seconds = max(0.2, len(text) * 0.06)
        return web.Response(body=_synth_audio(fmt, seconds, stable_hash(text)), content_type=_SPEECH_TYPES[fmt])

    # -- moderations --------------------------------------------------------------------
    async def moderations(self, request: web.Request) -> web.Response:
        """POST /moderations: 13 categories; a phrase table decides what is flagged."""
        ctx = context_of(request)
        body = await self._json_object(ctx)
        info = self._require_model(ctx, body, ("moderation",), default="omni-moderation-latest")
        raw = body.get("input")
        if raw is None:
            raise _missing("input")
        items: list[tuple[str, bool]]
        if isinstance(raw, str):
            items = [(raw, False)]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            items = [(x, False) for x in raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
            text, images = _content_text(raw)
            items = [(text, images > 0)]
        else:
            raise _invalid_type("input", "a string, an array of strings or an array of content parts", raw)
        results = [_moderate(text, has_image) for text, has_image in items]
        ctx.charge_tokens(sum(count_tokens(t) for t, _ in items))
        out = {"id": random_id("modr-", 24), "model": info.id, "results": results}
        return web.Response(body=json_bytes(out), content_type="application/json")


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _moderate(text: str, has_image: bool) -> dict[str, Any]:
    low = text.lower()
    categories, scores, applied = {}, {}, {}
    for cat, triggers in MODERATION_CATEGORIES.items():
        hit = any(t in low for t in triggers)
        base = (stable_hash(cat + "\x00" + text) % 1000) / 1_000_000
        scores[cat] = round(0.93 + base * 10, 6) if hit else round(base + 1e-6, 8)
        categories[cat] = hit
        applied[cat] = ["text", "image"] if (has_image and cat in _IMAGE_CATEGORIES) else ["text"]
    return {"flagged": any(categories.values()), "categories": categories, "category_scores": scores,
            "category_applied_input_types": applied}


def _synth_audio(fmt: str, seconds: float, seed: int) -> bytes:
    """Silent audio whose container bytes match ``fmt`` (decoders accept wav/pcm/mp3 frames)."""
    if fmt == "wav" or fmt == "pcm":
        rate = 24_000
        samples = b"\x00\x00" * int(rate * seconds)
        if fmt == "pcm":
            return samples
        header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + struct.pack(
            "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(samples))
        return header + samples
    if fmt == "mp3":
        # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono: 417-byte frames of 26 ms
        frame = b"\xff\xfb\x90\xc4" + b"\x00" * 413
        return frame * max(1, int(seconds / 0.026))
    magic = {"opus": b"OggS\x00\x02", "aac": b"\xff\xf1\x50\x80", "flac": b"fLaC"}[fmt]
    return magic + seed.to_bytes(8, "little") + b"\x00" * int(seconds * 2_000)


def make_app(flavor: str = "openai", controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake's aiohttp application: ``flavor`` "openai" (``/v1``) or "groq" (``/openai/v1``)."""
    return FakeServer(OpenAIProtocol(flavor), controls).make_app()
