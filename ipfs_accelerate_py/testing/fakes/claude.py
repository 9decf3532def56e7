"""Fake Anthropic Messages API server, wire-compatible with the official ``anthropic`` SDK.

The base URL has no ``/v1`` (the SDK convention); every route carries it:
``POST /v1/messages`` (also streamed), ``POST /v1/messages/count_tokens``,
``GET /v1/models`` (paginated) and ``GET /v1/models/{model_id}``.  Keys come from
``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version`` is mandatory.

Replies are deterministic: ``"Echo: <last user text>"``, or tool_use blocks when
``tools`` are given and the prompt names one (or ``tool_choice`` forces one), or
``"Echo: <tool result>"`` after a ``tool_result``; with extended thinking a
thinking block comes first.  ``input_tokens`` is the same number
``count_tokens`` reports for the same request, so a client can check one
against the other.  An ``error_mid_stream`` fault sends ``event: error`` with
``overloaded_error`` (status 529 unless the rule names another).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import time
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
    json_bytes,
    random_id,
    rfc3339,
    split_chunks,
    truncate_tokens,
)

__all__ = ["CLAUDE_MODELS", "ClaudeModel", "ClaudeProtocol", "make_app"]

#: anthropic-version must be a date: the long-standing "2023-06-01", or the newer dated
#: versions recent SDKs send (the installed SDK sends a 2026 date); anything else is a 400
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: flat input-token cost of one image block (the real cost depends on its pixel size)
_IMAGE_TOKENS = 1_000
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_NOMINAL_RPM = 4_000
_NOMINAL_TPM = 2_000_000
_ORG_ID = "00000000-0000-4000-8000-00000000fake"


@dataclass(frozen=True)
class ClaudeModel:
    """A model the fake serves; ``aliases`` resolve to it on every route."""

    id: str
    display_name: str
    created_at: str
    context_window: int = 200_000
    max_output: int = 64_000
    aliases: tuple[str, ...] = ()


#: newest first, as the real listing orders them
CLAUDE_MODELS: tuple[ClaudeModel, ...] = (
    ClaudeModel("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z",
                aliases=("claude-opus-4-5",)),
    ClaudeModel("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z",
                aliases=("claude-haiku-4-5",)),
    ClaudeModel("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z",
                aliases=("claude-sonnet-4-5",)),
    ClaudeModel("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z", max_output=32_000,
                aliases=("claude-opus-4-1",)),
    ClaudeModel("claude-opus-4-20250514", "Claude Opus 4", "2025-05-22T00:00:00Z", max_output=32_000,
                aliases=("claude-opus-4-0",)),
    ClaudeModel("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z",
                aliases=("claude-sonnet-4-0",)),
    ClaudeModel("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-24T00:00:00Z",
                aliases=("claude-3-7-sonnet-latest",)),
    ClaudeModel("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z", max_output=8_192,
                aliases=("claude-3-5-haiku-latest",)),
    ClaudeModel("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07T00:00:00Z", max_output=4_096),
    ClaudeModel("tiny-context", "Tiny Context (fake)", "2024-01-01T00:00:00Z", context_window=8_192,
                max_output=4_096),
)


def _bad(message: str) -> FakeError:
    return FakeError(400, message, type="invalid_request_error")


@dataclass
class _Request:
    """A validated Messages (or count_tokens) request."""

    model: ClaudeModel
    max_tokens: int
    input_tokens: int
    prompt: str
    answers_tool_result: bool
    tools: list[ToolSpec]
    tool_mode: str
    forced_tool: str | None
    parallel: bool
    stop_sequences: list[str]
    thinking_budget: int | None
    stream: bool


class ClaudeProtocol(FakeProtocol):
    """Anthropic's wire format (PROTOCOLS.md section 2)."""

    name = "claude"
    base_path = "/v1"
    sdk_base_path = ""
    default_stream_error_status = 529
    request_id_header = "request-id"

    def __init__(self) -> None:
        self.models: dict[str, ClaudeModel] = {m.id: m for m in CLAUDE_MODELS}
        self.aliases: dict[str, str] = {a: m.id for m in CLAUDE_MODELS for a in m.aliases}

    # -- hooks ----------------------------------------------------------------
    def extract_key(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key:
            return key
        return super().extract_key(request)

    def new_request_id(self, request: web.Request) -> str:
        return random_id("req_011C", 20)

    def check_request(self, request: web.Request, ctx: RequestContext) -> None:
        version = request.headers.get("anthropic-version")
        if not version:
            raise _bad("anthropic-version: header is required")
        if not _API_VERSION.match(version):
            raise _bad(f"anthropic-version: invalid version '{version}'")

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        table: dict[int, tuple[str, str]] = {
            400: ("invalid_request_error", "Invalid request."),
            401: ("authentication_error", "invalid x-api-key"),
            402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
            403: ("permission_error", "Your API key does not have permission to use the specified resource."),
            404: ("not_found_error", "Not Found"),
            413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
            429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
            500: ("api_error", "Internal server error"),
            504: ("timeout_error", "Request timed out"),
            529: ("overloaded_error", "Overloaded"),
        }
        if status in table:
            etype, message = table[status]
        elif status >= 500:
            etype, message = "api_error", f"Internal server error ({status})"
        else:
            etype, message = "invalid_request_error", f"Request failed ({status})"
        return etype, None, message

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"type": "error", "error": {"type": err.type, "message": err.message},
                "request_id": ctx.request_id}

    def stream_error_frame(self, err: FakeError, ctx: RequestContext) -> bytes:
        ctx.server.complete_error(err)
        data = err.body if err.body is not None else {
            "type": "error", "error": {"type": err.type, "message": err.message}}
        payload = data.encode() if isinstance(data, str) else json_bytes(data)
        return b"event: error\ndata: " + payload + b"\n\n"

    def auth_error(self, key: str | None) -> FakeError:
        if key is None:
            return FakeError(401, "x-api-key header is required", type="authentication_error")
        return FakeError(401, "invalid x-api-key", type="authentication_error")

    def rate_limit_error(self, snap: LimitSnapshot, ctx: RequestContext) -> FakeError:
        if snap.reason == "tokens":
            what = f"{int(snap.tpm or 0)} tokens per minute"
        else:
            what = f"{snap.requests_per_minute} requests per minute"
        return FakeError(429, f"This request would exceed the rate limit for your organization ({_ORG_ID}) of "
                              f"{what}. For details, refer to: https://docs.claude.com/en/api/rate-limits. "
                              "You can see the response headers for current usage.", type="rate_limit_error")

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        if exc.status == 405:
            return FakeError(405, "Method Not Allowed", type="invalid_request_error")
        return FakeError(404, "Not Found", type="not_found_error")

    def invalid_json_error(self, detail: str) -> FakeError:
        return _bad(f"There was an error parsing the body of your request: {detail}")

    def _limit_headers(self, snap: LimitSnapshot, tokens_exhausted: bool = False) -> dict[str, str]:
        now = time.time()
        if not snap.limited:
            req = (str(_NOMINAL_RPM), str(_NOMINAL_RPM - 1), rfc3339(now))
            tok = (str(_NOMINAL_TPM), str(_NOMINAL_TPM), rfc3339(now))
        else:
            req = (str(snap.requests_per_minute), str(int(snap.remaining_requests)),
                   rfc3339(now + snap.reset_requests_s))
            if snap.tpm:
                remaining = 0 if tokens_exhausted else int(snap.remaining_tokens)
                tok = (str(int(snap.tpm)), str(remaining), rfc3339(now + snap.reset_tokens_s))
            else:
                tok = (str(_NOMINAL_TPM), str(_NOMINAL_TPM), rfc3339(now))
        headers = {
            "anthropic-ratelimit-requests-limit": req[0],
            "anthropic-ratelimit-requests-remaining": req[1],
            "anthropic-ratelimit-requests-reset": req[2],
            "anthropic-organization-id": _ORG_ID,
        }
        for prefix in ("tokens", "input-tokens", "output-tokens"):
            headers[f"anthropic-ratelimit-{prefix}-limit"] = tok[0]
            headers[f"anthropic-ratelimit-{prefix}-remaining"] = tok[1]
            headers[f"anthropic-ratelimit-{prefix}-reset"] = tok[2]
        return headers

    def success_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        return self._limit_headers(snap)

    def throttle_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        headers = self._limit_headers(snap, tokens_exhausted=snap.reason == "tokens")
        headers.update(super().throttle_headers(snap, ctx))
        return headers

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model_id}", self.retrieve_model)

    # -- models -------------------------------------------------------------------
    def model_info(self, ctx: RequestContext, model_id: str) -> ClaudeModel | None:
        """Built-in model, alias, or ``controls.extra_models`` entry
        (attributes: display_name, created_at, context_window, max_output)."""
        extra = ctx.controls.extra_models.get(model_id)
        base = self.models.get(self.aliases.get(model_id, model_id))
        if extra is not None:
            fields = {k: v for k, v in extra.items()
                      if k in ("display_name", "created_at", "context_window", "max_output")}
            start = base or ClaudeModel(model_id, model_id, "2024-01-01T00:00:00Z")
            return replace(start, **fields)
        return base

    def _all_models(self, ctx: RequestContext) -> list[ClaudeModel]:
        extra = [self.model_info(ctx, m) for m in ctx.controls.extra_models if m not in self.models]
        everything = [self.model_info(ctx, m.id) for m in CLAUDE_MODELS] + extra
        models = [m for m in everything if m is not None]
        return sorted(models, key=lambda m: m.created_at, reverse=True)

    @staticmethod
    def _model_object(m: ClaudeModel) -> dict[str, Any]:
        return {"type": "model", "id": m.id, "display_name": m.display_name, "created_at": m.created_at,
                "max_input_tokens": m.context_window, "max_tokens": m.max_output}

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models with ``limit`` / ``after_id`` / ``before_id`` cursor pagination."""
        ctx = context_of(request)
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError as exc:
            raise _bad("limit: Input should be a valid integer") from exc
        if not 1 <= limit <= 1000:
            raise _bad("limit: Input should be greater than or equal to 1 and less than or equal to 1000")
        models = self._all_models(ctx)
        ids = [m.id for m in models]
        after, before = q.get("after_id"), q.get("before_id")
        if after is not None:
            if after not in ids:
                raise _bad(f"after_id: unknown model id '{after}'")
            start = ids.index(after) + 1
            page = models[start:start + limit]
            has_more = start + limit < len(models)
        elif before is not None:
            if before not in ids:
                raise _bad(f"before_id: unknown model id '{before}'")
            end = ids.index(before)
            page = models[max(0, end - limit):end]
            has_more = end - limit > 0
        else:
            page = models[:limit]
            has_more = limit < len(models)
        out = {"data": [self._model_object(m) for m in page], "has_more": has_more,
               "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None}
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def retrieve_model(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        model_id = request.match_info["model_id"]
        info = self.model_info(ctx, model_id)
        if info is None:
            raise FakeError(404, f"model: {model_id}", type="not_found_error")
        return web.Response(body=json_bytes(self._model_object(info)), content_type="application/json")

    # -- request validation ----------------------------------------------------------
    def _parse(self, ctx: RequestContext, body: Any, count_only: bool) -> _Request:
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.")
        model_id = body.get("model")
        if model_id is None:
            raise _bad("model: Field required")
        if not isinstance(model_id, str):
            raise _bad("model: Input should be a valid string")
        model = self.model_info(ctx, model_id)
        if model is None:
            raise FakeError(404, f"model: {model_id}", type="not_found_error")

        max_tokens = 0
        if not count_only:
            raw_max = body.get("max_tokens")
            if raw_max is None:
                raise _bad("max_tokens: Field required")
            if isinstance(raw_max, bool) or not isinstance(raw_max, int):
                raise _bad("max_tokens: Input should be a valid integer")
            if raw_max < 1:
                raise _bad("max_tokens: Input should be greater than or equal to 1")
            if raw_max > model.max_output:
                raise _bad(f"max_tokens: {raw_max} > {model.max_output}, which is the maximum allowed number of "
                           f"output tokens for {model.id}")
            max_tokens = raw_max
        for name, hi in (("temperature", 1.0), ("top_p", 1.0)):
            value = body.get(name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise _bad(f"{name}: Input should be a valid number")
                if not 0 <= value <= hi:
                    raise _bad(f"{name}: range: 0..{hi:g}")
        top_k = body.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise _bad("top_k: Input should be a valid non-negative integer")
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: Input should be a valid list of strings")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _bad("stream: Input should be a valid boolean")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _bad("metadata: Input should be a valid dictionary")

        system_text = self._system_text(body.get("system"))
        messages = body.get("messages")
        if messages is None:
            raise _bad("messages: Field required")
        if not isinstance(messages, list):
            raise _bad("messages: Input should be a valid list")
        if not messages:
            raise _bad("messages: at least one message is required")
        input_tokens = 1 + (count_tokens(system_text) + 3 if system_text else 0)
        previous_tool_uses: set[str] = set()
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise _bad(f"messages.{i}: Input should be a valid dictionary")
            role = msg.get("role")
            if role == "system":
                raise _bad('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                           'parameter, not "system" as an input message role.')
            if role not in ("user", "assistant"):
                raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            blocks = self._blocks(msg.get("content"), f"messages.{i}.content")
            tool_uses: set[str] = set()
            input_tokens += 3
            for j, block in enumerate(blocks):
                input_tokens += self._block_tokens(block, role, f"messages.{i}.content.{j}",
                                                   previous_tool_uses, tool_uses)
            previous_tool_uses = tool_uses

        tools, mode, forced, parallel = self._tools(body)
        if body.get("tools"):
            input_tokens += 10 + count_tokens(json.dumps(body["tools"], separators=(",", ":")))
        thinking_budget = self._thinking(body, max_tokens, count_only)

        if input_tokens > model.context_window:
            raise _bad(f"prompt is too long: {input_tokens} tokens > {model.context_window} maximum")
        if not count_only and input_tokens + max_tokens > model.context_window:
            raise _bad(f"input length and `max_tokens` exceed context limit: {input_tokens} + {max_tokens} > "
                       f"{model.context_window}, decrease input length or `max_tokens` and try again")

        prompt, answers_tool_result = self._prompt(messages)
        return _Request(model=model, max_tokens=max_tokens, input_tokens=input_tokens, prompt=prompt,
                        answers_tool_result=answers_tool_result, tools=tools, tool_mode=mode,
                        forced_tool=forced, parallel=parallel, stop_sequences=stops,
                        thinking_budget=thinking_budget, stream=stream)

    @staticmethod
    def _system_text(system: Any) -> str:
        if system is None:
            return ""
        if isinstance(system, str):
            return system
        if isinstance(system, list):
            texts = []
            for i, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(
                        block.get("text"), str):
                    raise _bad(f"system.{i}: Input should be a valid text block")
                texts.append(block["text"])
            return "\n".join(texts)
        raise _bad("system: Input should be a valid string or list of text blocks")

    @staticmethod
    def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
        if content is None:
            raise _bad(f"{where}: Field required")
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise _bad(f"{where}: Input should be a valid string or list of content blocks")
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                raise _bad(f"{where}.{j}: Input should be a valid dictionary")
        return content

    def _block_tokens(self, block: Mapping[str, Any], role: str, where: str,
                      previous_tool_uses: set[str], tool_uses: set[str]) -> int:
        btype = block.get("type")
        if btype == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}.text: Field required")
            if not text:
                raise _bad("messages: text content blocks must be non-empty")
            return count_tokens(text)
        if btype == "image":
            self._check_source(block.get("source"), f"{where}.source", _IMAGE_TYPES)
            return _IMAGE_TOKENS
        if btype == "document":
            source = block.get("source")
            if not isinstance(source, dict):
                raise _bad(f"{where}.source: Field required")
            if source.get("type") == "text":
                return count_tokens(str(source.get("data", "")))
            self._check_source(source, f"{where}.source", ("application/pdf",))
            return _IMAGE_TOKENS
        if btype == "tool_use":
            if role != "assistant":
                raise _bad(f"{where}: tool_use blocks are only allowed in assistant messages")
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad(f"{where}: tool_use blocks need string `id` and `name`")
            if not isinstance(block.get("input"), dict):
                raise _bad(f"{where}.input: Input should be a valid dictionary")
            tool_uses.add(block["id"])
            return 3 + count_tokens(block["name"]) + count_tokens(json.dumps(block["input"]))
        if btype == "tool_result":
            if role != "user":
                raise _bad(f"{where}: tool_result blocks are only allowed in user messages")
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str):
                raise _bad(f"{where}.tool_use_id: Field required")
            if tool_use_id not in previous_tool_uses:
                raise _bad(f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_use_id}. "
                           "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
                           "message.")
            return 3 + count_tokens(self._tool_result_text(block.get("content"), where))
        if btype in ("thinking", "redacted_thinking"):
            if role != "assistant":
                raise _bad(f"{where}: thinking blocks are only allowed in assistant messages")
            return count_tokens(str(block.get("thinking", "")))
        raise _bad(f"{where}.type: Input tag '{btype}' found using 'type' does not match any of the expected "
                   "tags: 'document', 'image', 'redacted_thinking', 'text', 'thinking', 'tool_result', "
                   "'tool_use'")

    @staticmethod
    def _check_source(source: Any, where: str, media_types: Sequence[str]) -> None:
        if not isinstance(source, dict):
            raise _bad(f"{where}: Field required")
        stype = source.get("type")
        if stype == "base64":
            if source.get("media_type") not in media_types:
                raise _bad(f"{where}.media_type: Input should be " + ", ".join(f"'{m}'" for m in media_types))
            data = source.get("data")
            if not isinstance(data, str) or not data:
                raise _bad(f"{where}.data: Field required")
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _bad(f"{where}.data: invalid base64 data") from exc
        elif stype == "url":
            if not isinstance(source.get("url"), str) or not source["url"]:
                raise _bad(f"{where}.url: Field required")
        else:
            raise _bad(f"{where}.type: Input tag '{stype}' found using 'type' does not match any of the "
                       "expected tags: 'base64', 'url'")

    @staticmethod
    def _tool_result_text(content: Any, where: str) -> str:
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
        raise _bad(f"{where}.content: Input should be a valid string or list of blocks")

    def _prompt(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str, bool]:
        """Text the fake answers, and whether it is a tool result (no new tool call then)."""
        for msg in reversed(messages):
            if msg.get("role") != "user":
                continue
            content = msg.get("content")
            if isinstance(content, str):
                return content, False
            results = [self._tool_result_text(b.get("content"), "") for b in content
                       if b.get("type") == "tool_result"]
            if results:
                return "\n".join(results), True
            return "\n".join(str(b.get("text", "")) for b in content if b.get("type") == "text"), False
        return "", False

    @staticmethod
    def _tools(body: Mapping[str, Any]) -> tuple[list[ToolSpec], str, str | None, bool]:
        raw = body.get("tools")
        choice = body.get("tool_choice")
        tools: list[ToolSpec] = []
        if raw is not None:
            if not isinstance(raw, list):
                raise _bad("tools: Input should be a valid list")
            for i, tool in enumerate(raw):
                if not isinstance(tool, dict):
                    raise _bad(f"tools.{i}: Input should be a valid dictionary")
                if tool.get("type") not in (None, "custom"):
                    continue  # server tools (web search, code execution, ...) run on Anthropic's side
                name = tool.get("name")
                if not isinstance(name, str) or not _TOOL_NAME.match(name):
                    raise _bad(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
                schema = tool.get("input_schema")
                if not isinstance(schema, dict):
                    raise _bad(f"tools.{i}.custom.input_schema: Field required")
                if schema.get("type") != "object":
                    raise _bad(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
                tools.append(ToolSpec(name, schema))
        if choice is None:
            return tools, "auto", None, True
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise _bad("tool_choice.type: Input tag found using 'type' does not match any of the expected tags: "
                       "'auto', 'any', 'tool', 'none'")
        parallel = not choice.get("disable_parallel_tool_use", False)
        kind = choice["type"]
        if kind != "none" and not tools:
            raise _bad("tool_choice may only be specified while providing tools.")
        if kind == "tool":
            name = choice.get("name")
            if not any(t.name == name for t in tools):
                raise _bad(f"tool_choice.name: tool '{name}' not found in tools")
            return tools, "any", name, parallel
        return tools, kind, None, parallel

    @staticmethod
    def _thinking(body: Mapping[str, Any], max_tokens: int, count_only: bool) -> int | None:
        thinking = body.get("thinking")
        if thinking is None:
            return None
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise _bad("thinking.type: Input tag found using 'type' does not match any of the expected tags: "
                       "'disabled', 'enabled'")
        if thinking["type"] == "disabled":
            return None
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise _bad("thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise _bad("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if not count_only and budget >= max_tokens:
            raise _bad("`max_tokens` must be greater than `thinking.budget_tokens`")
        if body.get("temperature") not in (None, 1, 1.0):
            raise _bad("`temperature` may only be set to 1 when thinking is enabled.")
        return budget

    # -- handlers ---------------------------------------------------------------------
    async def count_tokens(self, request: web.Request) -> web.Response:
        """POST /v1/messages/count_tokens: the ``input_tokens`` /v1/messages would report."""
        ctx = context_of(request)
        req = self._parse(ctx, await ctx.read_json(), count_only=True)
        return web.Response(body=json_bytes({"input_tokens": req.input_tokens}), content_type="application/json")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages (section 2.1), streamed as section 2.2 when ``stream`` is true."""
        ctx = context_of(request)
        req = self._parse(ctx, await ctx.read_json(), count_only=False)
        blocks: list[dict[str, Any]] = []
        output_tokens = 0
        budget = req.max_tokens
        if req.thinking_budget:
            thought, _ = truncate_tokens(f"The user wrote: {req.prompt.strip()}. I will answer deterministically.",
                                         req.thinking_budget)
            blocks.append({"type": "thinking", "thinking": thought,
                           "signature": base64.b64encode(random_id("sig", 48).encode()).decode()})
            used = count_tokens(thought)
            output_tokens += used
            budget = max(1, budget - used)
        calls = [] if req.answers_tool_result else choose_tool_calls(
            req.tools, req.prompt, mode=req.tool_mode, forced=req.forced_tool, parallel=req.parallel)
        stop_sequence = None
        if calls:
            for name, args in calls:
                blocks.append({"type": "tool_use", "id": random_id("toolu_01", 22), "name": name, "input": args})
                output_tokens += 3 + count_tokens(name) + count_tokens(json.dumps(args))
            stop_reason = "tool_use"
        else:
            text = echo_reply(req.prompt)
            stop_reason = "end_turn"
            cut_at = min(((text.find(s), s) for s in req.stop_sequences if s and s in text), default=None)
            if cut_at is not None:
                text, stop_sequence, stop_reason = text[:cut_at[0]], cut_at[1], "stop_sequence"
            text, truncated = truncate_tokens(text, budget)
            if truncated:
                stop_reason, stop_sequence = "max_tokens", None
            blocks.append({"type": "text", "text": text})
            output_tokens += count_tokens(text)
        ctx.charge_tokens(req.input_tokens + output_tokens)
        usage = {"input_tokens": req.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                 "output_tokens": output_tokens, "service_tier": "standard"}
        message = {"id": random_id("msg_01", 22), "type": "message", "role": "assistant", "model": req.model.id,
                   "content": blocks, "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}
        if not req.stream:
            return web.Response(body=json_bytes(message), content_type="application/json")
        return await self._stream(ctx, message)

    async def _stream(self, ctx: RequestContext, message: dict[str, Any]) -> web.StreamResponse:
        pieces = ctx.controls.stream_chunks
        stream = await ctx.sse()
        start_usage = dict(message["usage"], output_tokens=1)
        start = dict(message, content=[], stop_reason=None, stop_sequence=None, usage=start_usage)
        await stream.send({"type": "message_start", "message": start}, event="message_start")
        for index, block in enumerate(message["content"]):
            btype = block["type"]
            if btype == "text":
                opening: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in split_chunks(block["text"], pieces)]
            elif btype == "thinking":
                opening = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": p} for p in split_chunks(block["thinking"], pieces)]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                    {"type": "input_json_delta", "partial_json": p}
                    for p in split_chunks(json.dumps(block["input"]), pieces)]
            await stream.send({"type": "content_block_start", "index": index, "content_block": opening},
                              event="content_block_start")
            if index == 0:
                await stream.send({"type": "ping"}, event="ping")
            for delta in deltas:
                await stream.send({"type": "content_block_delta", "index": index, "delta": delta},
                                  event="content_block_delta")
            await stream.send({"type": "content_block_stop", "index": index}, event="content_block_stop")
        await stream.send({"type": "message_delta",
                           "delta": {"stop_reason": message["stop_reason"],
                                     "stop_sequence": message["stop_sequence"]},
                           "usage": {"output_tokens": message["usage"]["output_tokens"]}},
                          event="message_delta")
        await stream.send({"type": "message_stop"}, event="message_stop")
        return await stream.close()


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake Anthropic API as an aiohttp application."""
    return FakeServer(ClaudeProtocol(), controls).make_app()
