"""Fake Ollama server (native API), wire-compatible with the ``ollama`` Python SDK.

Routes (the root is the SDK's ``host``): ``POST /api/chat``, ``/api/generate``
(NDJSON streams by **default**; ``"stream": false`` answers one object),
``/api/embed``, ``/api/embeddings`` (legacy), ``/api/show``; ``GET /api/tags``,
``/api/ps``, ``/api/version`` and ``GET /`` ("Ollama is running").

Fidelity that matters to clients:

* no auth unless ``valid_keys`` are configured (then ``Authorization: Bearer``,
  as ollama.com wants; ``/`` and ``/api/version`` stay open);
* errors are ``{"error": "..."}`` with Ollama's wording: an unknown model is
  404 ``model "x" not found, try pulling it first``, a chat with an embedding
  model or tools on a model without the capability is a 400, an unknown route
  is Go's plain-text ``404 page not found``; there are no rate-limit headers;
* request fields are typed like Go's decoder: ``content`` must be a string,
  tool-call ``arguments`` an object, ``images`` raw base64 (a ``data:`` prefix
  is "illegal base64 data"); option values are type-checked, unknown options
  ignored;
* options act: ``num_predict`` caps the answer (``done_reason: "length"``),
  ``stop`` cuts it, ``num_ctx`` (default 4096) truncates the prompt, so
  ``prompt_eval_count`` never exceeds it; ``keep_alive: 0`` unloads the model
  from ``/api/ps``, every other call loads it for ``keep_alive`` (default 5m);
* an ``error_mid_stream`` fault writes an ``{"error": ...}`` line with status 200.

Replies are deterministic: ``"Echo: <last user text>"`` plus ``" [image: <n> bytes]"``
per image of the last user message, JSON for ``format`` (``{"echo": ...}`` or a
schema instance), tool calls when a tool is named in the prompt, the tool
output echoed after a tool turn.  Models are the table below plus
``controls.extra_models`` (attributes: ``family``, ``parameter_size``,
``quantization``, ``context_length``, ``embedding_length``, ``capabilities``).

``GET /_fake/ollama/requests`` returns the bodies of the last requests
(images shortened to their size) so a test can see exactly what a client sent.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from collections.abc import Mapping, Sequence

from aiohttp import web

from .base import (
    FakeError,
    FakeControls,
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
    split_chunks,
    token_ids,
    truncate_tokens,
)

__all__ = ["OLLAMA_MODELS", "OLLAMA_VERSION", "OllamaModel", "OllamaProtocol", "make_app"]

OLLAMA_VERSION = "0.12.6"
#: context Ollama allocates when a request sets no num_ctx
DEFAULT_NUM_CTX = 4096
DEFAULT_KEEP_ALIVE_S = 300.0
#: prompt cost of one image (the real cost depends on the vision encoder)
IMAGE_TOKENS = 256
_JOURNAL_SIZE = 256
_OPEN_PATHS = frozenset({"/", "/api/version"})
#: options by the type Go's api.Options.FromMap converts them to (unknown names are ignored)
_INT_OPTIONS = frozenset({"num_ctx", "num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "seed",
                          "num_predict", "top_k", "repeat_last_n", "mirostat"})
_FLOAT_OPTIONS = frozenset({"temperature", "top_p", "min_p", "typical_p", "tfs_z", "repeat_penalty",
                            "presence_penalty", "frequency_penalty", "mirostat_tau", "mirostat_eta"})
_BOOL_OPTIONS = frozenset({"use_mmap", "use_mlock", "numa", "low_vram", "vocab_only", "penalize_newline"})


@dataclass(frozen=True)
class OllamaModel:
    """One model "pulled" onto the fake server."""

    name: str
    family: str
    parameter_size: str
    quantization: str = "Q4_K_M"
    context_length: int = 131_072
    embedding_length: int = 3_072
    capabilities: tuple[str, ...] = ("completion", "tools")
    size: int = 2_019_393_189

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {"parent_model": "", "format": "gguf", "family": self.family, "families": [self.family],
                "parameter_size": self.parameter_size, "quantization_level": self.quantization}


OLLAMA_MODELS: tuple[OllamaModel, ...] = (
    OllamaModel("llama3.2:latest", "llama", "3.2B"),
    OllamaModel("llama3.1:8b", "llama", "8.0B", embedding_length=4_096, size=4_920_753_328),
    OllamaModel("mistral:latest", "llama", "7.2B", context_length=32_768, embedding_length=4_096,
                size=4_113_301_824),
    OllamaModel("qwen2.5:7b", "qwen2", "7.6B", context_length=32_768, embedding_length=3_584, size=4_683_087_332),
    OllamaModel("qwen3:8b", "qwen3", "8.2B", context_length=40_960, embedding_length=4_096,
                capabilities=("completion", "tools", "thinking"), size=5_225_387_923),
    OllamaModel("gemma3:4b", "gemma3", "4.3B", embedding_length=2_560, capabilities=("completion", "vision"),
                size=3_338_801_804),
    OllamaModel("llava:latest", "llama", "7B", context_length=32_768, embedding_length=4_096,
                capabilities=("completion", "vision"), quantization="Q4_0", size=4_733_363_377),
    OllamaModel("phi3:mini", "phi3", "3.8B", embedding_length=3_072, capabilities=("completion",),
                size=2_176_178_913),
    OllamaModel("nomic-embed-text:latest", "nomic-bert", "137M", quantization="F16", context_length=2_048,
                embedding_length=768, capabilities=("embedding",), size=274_302_450),
    OllamaModel("all-minilm:latest", "bert", "23M", quantization="F16", context_length=512, embedding_length=384,
                capabilities=("embedding",), size=45_960_996),
    OllamaModel("mxbai-embed-large:latest", "bert", "334M", quantization="F16", context_length=512,
                embedding_length=1_024, capabilities=("embedding",), size=669_615_493),
)


def _bad(message: str, status: int = 400) -> FakeError:
    return FakeError(status, message, type="error")


def _now() -> str:
    """RFC 3339 with nanoseconds, as Go's time.Time marshals."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _duration(value: Any) -> float:
    """A keep_alive value (seconds as a number, or a Go duration string) in seconds."""
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, bool):
        raise _bad(f"invalid keep_alive: {value}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
        total, number = 0.0, ""
        text = value.strip()
        i = 0
        while i < len(text):
            ch = text[i]
            if ch.isdigit() or ch in ".-":
                number += ch
                i += 1
                continue
            unit = "ms" if text[i:i + 2] == "ms" else ch
            if unit not in units or not number:
                raise _bad(f'time: invalid duration "{value}"')
            total += float(number) * units[unit]
            number = ""
            i += len(unit)
        if number:
            raise _bad(f'time: missing unit in duration "{value}"')
        return total
    raise _bad(f"invalid keep_alive: {value!r}")


@dataclass
class _Generation:
    """What every generating call shares: the model, its options and bookkeeping."""

    model: OllamaModel
    options: dict[str, Any]
    num_ctx: int
    num_predict: int | None
    stops: list[str]
    fmt: Any
    started: float = field(default_factory=time.monotonic)


class OllamaProtocol(FakeProtocol):
    """Ollama's native wire format (PROTOCOLS.md section 5)."""

    name = "ollama"
    base_path = "/api"
    sdk_base_path = ""
    default_stream_error_status = 500

    def __init__(self) -> None:
        self.models: dict[str, OllamaModel] = {m.name: m for m in OLLAMA_MODELS}
        #: model name -> monotonic expiry of its "loaded" state, for /api/ps
        self.loaded: dict[str, float] = {}
        self.journal: deque[dict[str, Any]] = deque(maxlen=_JOURNAL_SIZE)

    # -- hooks ---------------------------------------------------------------------------
    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        # local Ollama has no auth; with keys configured it behaves like ollama.com
        return bool(controls.valid_keys) and request.path not in _OPEN_PATHS

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        table = {400: "invalid request", 401: "unauthorized", 403: "forbidden", 404: "not found",
                 429: "too many requests, please try again later",
                 500: "an error was encountered while running the model: unexpected EOF",
                 502: "an error occurred while connecting to the remote model",
                 503: "server busy, please try again.  maximum pending requests exceeded"}
        message = table.get(status) or ("internal server error" if status >= 500 else "bad request")
        return "error", None, message

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"error": err.message}

    def stream_error_frame(self, err: FakeError, ctx: RequestContext) -> bytes:
        ctx.server.complete_error(err)
        payload = err.body if err.body is not None else {"error": err.message}
        return (payload.encode() if isinstance(payload, str) else json_bytes(payload)) + b"\n"

    def auth_error(self, key: str | None) -> FakeError:
        return FakeError(401, "unauthorized", type="error")

    def rate_limit_error(self, snap: LimitSnapshot, ctx: RequestContext) -> FakeError:
        return FakeError(429, "too many requests, please try again later", type="error")

    def throttle_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        return {}

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        if exc.status == 405:
            return FakeError(405, body="405 method not allowed")
        return FakeError(404, body="404 page not found")

    def invalid_json_error(self, detail: str) -> FakeError:
        return _bad(f"invalid character in request body: {detail}")

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        app.router.add_get("/", self.root)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/embed", self.embed)
        app.router.add_post("/api/embeddings", self.embeddings)
        app.router.add_get("/_fake/ollama/requests", self.recent_requests)

    # -- models ----------------------------------------------------------------------------
    def resolve(self, ctx: RequestContext, name: Any) -> OllamaModel:
        """A model by ``name[:tag]`` (the tag defaults to ``latest``), else Ollama's 404."""
        if not isinstance(name, str) or not name:
            raise _bad("model is required")
        full = name if ":" in name else f"{name}:latest"
        extra = ctx.controls.extra_models.get(name)
        if extra is None:  # an entry with no attributes ({}) still names a model
            extra = ctx.controls.extra_models.get(full)
        base = self.models.get(full)
        if extra is not None:
            fields = {k: (tuple(v) if k == "capabilities" else v) for k, v in extra.items()
                      if k in ("family", "parameter_size", "quantization", "context_length", "embedding_length",
                               "capabilities")}
            return replace(base or OllamaModel(full, "llama", "1B"), **fields)
        if base is None:
            raise _bad(f'model "{name}" not found, try pulling it first', 404)
        return base

    def _all_models(self, ctx: RequestContext) -> list[OllamaModel]:
        names = list(self.models) + [n for n in ctx.controls.extra_models if n not in self.models]
        return [self.resolve(ctx, n) for n in names]

    def _touch(self, model: OllamaModel, keep_alive: Any) -> None:
        seconds = _duration(keep_alive)
        if seconds == 0:
            self.loaded.pop(model.name, None)
        else:
            # a negative keep_alive keeps the model loaded indefinitely
            self.loaded[model.name] = float("inf") if seconds < 0 else time.monotonic() + seconds

    def _record(self, path: str, body: Any) -> None:
        """Keep the body for ``/_fake/ollama/requests``; images become their size."""
        def shorten(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: ([f"<{len(i) * 3 // 4} bytes>" if isinstance(i, str) else i for i in v]
                            if k == "images" and isinstance(v, list) else shorten(v)) for k, v in value.items()}
            if isinstance(value, list):
                return [shorten(v) for v in value]
            return value
        self.journal.append({"path": path, "body": shorten(body)})

    async def _body(self, ctx: RequestContext) -> dict[str, Any]:
        body = await ctx.read_json()
        if not isinstance(body, dict):
            raise _bad("json: cannot unmarshal non-object into Go value of type api.Request")
        self._record(ctx.request.path, body)
        return body

    # -- shared validation -------------------------------------------------------------------
    def _generation(self, ctx: RequestContext, body: Mapping[str, Any], model: OllamaModel) -> _Generation:
        raw = body.get("options")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise _bad("json: cannot unmarshal into Go struct field of type map[string]interface {}")
        options: dict[str, Any] = {}
        for name, value in raw.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if name in _INT_OPTIONS:
                if not number:
                    raise _bad(f'option "{name}" must be of type integer')
                value = int(value)  # JSON numbers arrive as float64 and are converted
            elif name in _FLOAT_OPTIONS:
                if not number:
                    raise _bad(f'option "{name}" must be of type float32')
            elif name in _BOOL_OPTIONS:
                if not isinstance(value, bool):
                    raise _bad(f'option "{name}" must be of type boolean')
            elif name == "stop":
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                    raise _bad('option "stop" must be of an array of strings')
            else:
                continue  # Ollama logs "invalid option provided" and carries on
            options[name] = value
        num_ctx = int(options.get("num_ctx") or DEFAULT_NUM_CTX)
        num_ctx = max(1, min(num_ctx, model.context_length))
        predict = options.get("num_predict")
        num_predict = None if predict is None or predict < 0 else int(predict)
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise _bad(f"invalid format: {json.dumps(fmt)}; expected \"json\" or a valid JSON schema")
        if body.get("think") not in (None, False) and "thinking" not in model.capabilities:
            raise _bad(f'"{model.name.removesuffix(":latest")}" does not support thinking')
        self._touch(model, body.get("keep_alive"))
        return _Generation(model=model, options=options, num_ctx=num_ctx, num_predict=num_predict,
                           stops=list(options.get("stop") or []), fmt=fmt or None)

    @staticmethod
    def _images(value: Any, where: str) -> list[int]:
        """Sizes of base64 images; a data: URL or other non-base64 text is Go's decode error."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise _bad(f"json: cannot unmarshal {type(value).__name__} into Go struct field {where} of type "
                       "[]api.ImageData")
        sizes = []
        for item in value:
            if not isinstance(item, str):
                raise _bad(f"json: cannot unmarshal {type(item).__name__} into Go struct field {where} of type "
                           "api.ImageData")
            try:
                sizes.append(len(base64.b64decode(item, validate=True)))
            except (binascii.Error, ValueError):
                bad_at = next((i for i, ch in enumerate(item) if not (ch.isalnum() or ch in "+/=")), 0)
                raise _bad(f"illegal base64 data at input byte {bad_at}") from None
        return sizes

    def _answer(self, gen: _Generation, prompt: str, images: Sequence[int]) -> tuple[str, str, int]:
        """(text, done_reason, eval_count) of a plain answer, options applied."""
        if gen.fmt == "json":
            text = json.dumps({"echo": prompt})
        elif isinstance(gen.fmt, dict):
            text = json.dumps(instance_from_schema(gen.fmt, prompt))
        else:
            text = echo_reply(prompt) + "".join(f" [image: {size} bytes]" for size in images)
        cut = min((i for i in (text.find(s) for s in gen.stops if s) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        text, truncated = truncate_tokens(text, gen.num_predict)
        return text, "length" if truncated else "stop", count_tokens(text)

    @staticmethod
    def _timings(gen: _Generation, prompt_tokens: int, eval_tokens: int) -> dict[str, Any]:
        total = max(1, int((time.monotonic() - gen.started) * 1e9))
        return {"total_duration": total, "load_duration": total // 10, "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": total // 5, "eval_count": eval_tokens, "eval_duration": total // 2}

    # -- info routes ------------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(body=json_bytes({"version": OLLAMA_VERSION}), content_type="application/json")

    async def tags(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        models = [{"name": m.name, "model": m.name, "modified_at": "2025-06-01T12:00:00.000000000Z",
                   "size": m.size, "digest": m.digest, "details": m.details()} for m in self._all_models(ctx)]
        return web.Response(body=json_bytes({"models": models}), content_type="application/json")

    async def ps(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        now = time.monotonic()
        running = []
        for name, expires in sorted(self.loaded.items()):
            if expires <= now:
                continue
            model = self.resolve(ctx, name)
            until = time.time() + (expires - now) if expires != float("inf") else time.time() + 10 * 365 * 86400
            running.append({"name": model.name, "model": model.name, "size": model.size, "digest": model.digest,
                            "details": model.details(), "expires_at": _iso(until), "size_vram": model.size,
                            "context_length": min(DEFAULT_NUM_CTX, model.context_length)})
        return web.Response(body=json_bytes({"models": running}), content_type="application/json")

    async def show(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        body = await self._body(ctx)
        name = body.get("model") or body.get("name")
        try:
            model = self.resolve(ctx, name)
        except FakeError as exc:
            if exc.status == 404:
                raise _bad(f"model '{name}' not found", 404) from None
            raise
        arch = model.family.replace("-", "")
        info = {"general.architecture": arch, "general.basename": model.name.split(":")[0],
                "general.parameter_count": int(float(model.parameter_size.rstrip("BM")) *
                                               (1e9 if model.parameter_size.endswith("B") else 1e6)),
                "general.quantization_version": 2, f"{arch}.context_length": model.context_length,
                f"{arch}.embedding_length": model.embedding_length}
        out = {"license": "FAKE LICENSE", "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {model.name}\n",
               "parameters": "stop                           \"<|eot_id|>\"", "template": "{{ .Prompt }}",
               "details": model.details(), "model_info": info, "capabilities": list(model.capabilities),
               "modified_at": "2025-06-01T12:00:00.000000000Z"}
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def recent_requests(self, request: web.Request) -> web.Response:
        return web.Response(body=json_bytes(list(self.journal)), content_type="application/json")

    # -- chat ------------------------------------------------------------------------------------
    def _messages(self, raw: Any) -> tuple[list[dict[str, Any]], int]:
        if raw is None:
            return [], 0
        if not isinstance(raw, list):
            raise _bad("json: cannot unmarshal object into Go struct field ChatRequest.messages of type "
                       "[]api.Message")
        tokens = 0
        for i, msg in enumerate(raw):
            if not isinstance(msg, dict):
                raise _bad("json: cannot unmarshal into Go struct field ChatRequest.messages of type api.Message")
            if msg.get("role") not in ("system", "user", "assistant", "tool"):
                raise _bad(f"invalid role {msg.get('role')!r} in messages[{i}]")
            content = msg.get("content", "")
            if not isinstance(content, str):
                raise _bad(f"json: cannot unmarshal {type(content).__name__} into Go struct field "
                           "ChatRequest.messages.content of type string")
            tokens += 4 + count_tokens(content)
            tokens += IMAGE_TOKENS * len(self._images(msg.get("images"), "ChatRequest.messages.images"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _bad("json: cannot unmarshal into Go struct field ChatRequest.messages.tool_calls of "
                               "type api.ToolCall")
                if not isinstance(fn.get("arguments", {}), dict):
                    raise _bad(f"json: cannot unmarshal {type(fn['arguments']).__name__} into Go struct field "
                               "ToolCallFunction.messages.tool_calls.function.arguments of type "
                               "api.ToolCallFunctionArguments")
                tokens += count_tokens(fn["name"] + json.dumps(fn.get("arguments") or {}))
        return raw, tokens

    @staticmethod
    def _tools(raw: Any) -> list[ToolSpec]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise _bad("json: cannot unmarshal into Go struct field ChatRequest.tools of type api.Tools")
        specs = []
        for tool in raw:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad("json: cannot unmarshal into Go struct field ChatRequest.tools of type api.Tool")
            specs.append(ToolSpec(fn["name"], fn.get("parameters") or {"type": "object", "properties": {}}))
        return specs

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /api/chat (PROTOCOLS.md 5.1)."""
        ctx = context_of(request)
        body = await self._body(ctx)
        model = self.resolve(ctx, body.get("model"))
        stream = body.get("stream", True) is not False
        if "completion" not in model.capabilities:
            raise _bad(f'"{model.name.removesuffix(":latest")}" does not support chat')
        messages, prompt_tokens = self._messages(body.get("messages"))
        tools = self._tools(body.get("tools"))
        if tools and "tools" not in model.capabilities:
            raise _bad(f"registry.ollama.ai/library/{model.name} does not support tools")
        gen = self._generation(ctx, body, model)
        if tools:
            prompt_tokens += count_tokens(json.dumps(body["tools"], separators=(",", ":")))
        base = {"model": model.name, "created_at": _now()}
        if not messages:  # an empty conversation only loads (or, with keep_alive 0, unloads) the model
            reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            final = {**base, "message": {"role": "assistant", "content": ""}, "done_reason": reason, "done": True}
            return await self._answer_out(ctx, [final], stream)
        last = messages[-1]
        prompt = str(last.get("content") or "")
        images = self._images(last.get("images"), "ChatRequest.messages.images") if last["role"] == "user" else []
        prompt_tokens = min(prompt_tokens, gen.num_ctx)  # Ollama truncates what does not fit the context
        thinking = None
        if body.get("think") not in (None, False):
            thinking = f"The user wrote: {prompt.strip()[:200]}. I will answer deterministically."
        calls = choose_tool_calls(tools, prompt) if last["role"] == "user" else []
        if calls:
            tool_calls = [{"function": {"name": name, "arguments": args}} for name, args in calls]
            text, reason = "", "stop"
            eval_tokens = sum(3 + count_tokens(name) + count_tokens(json.dumps(args)) for name, args in calls)
        else:
            tool_calls = []
            text, reason, eval_tokens = self._answer(gen, prompt, images)
        eval_tokens += count_tokens(thinking or "")
        ctx.charge_tokens(prompt_tokens + eval_tokens)
        final = {**base, "message": {"role": "assistant", "content": text}, "done_reason": reason, "done": True,
                 **self._timings(gen, prompt_tokens, eval_tokens)}
        if thinking:
            final["message"]["thinking"] = thinking
        if tool_calls:
            final["message"]["tool_calls"] = tool_calls
        if not stream:
            return await self._answer_out(ctx, [final], stream=False)
        lines: list[dict[str, Any]] = []
        if thinking:
            lines.append({**base, "message": {"role": "assistant", "content": "", "thinking": thinking},
                          "done": False})
        if tool_calls:
            lines.append({**base, "message": {"role": "assistant", "content": "", "tool_calls": tool_calls},
                          "done": False})
        for piece in split_chunks(text, ctx.controls.stream_chunks):
            lines.append({**base, "message": {"role": "assistant", "content": piece}, "done": False})
        lines.append({**final, "message": {"role": "assistant", "content": ""}})
        return await self._answer_out(ctx, lines, stream=True)

    @staticmethod
    async def _answer_out(ctx: RequestContext, objects: Sequence[Mapping[str, Any]],
                          stream: bool) -> web.StreamResponse:
        """One JSON object, or NDJSON lines through the framework's stream writer (faults apply)."""
        if not stream:
            return web.Response(body=json_bytes(objects[-1]), content_type="application/json")
        writer = await ctx.sse(content_type="application/x-ndjson")
        for obj in objects:
            await writer.send_raw(json_bytes(obj) + b"\n")
        return await writer.close()

    # -- generate ---------------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        """POST /api/generate (PROTOCOLS.md 5.2)."""
        ctx = context_of(request)
        body = await self._body(ctx)
        model = self.resolve(ctx, body.get("model"))
        stream = body.get("stream", True) is not False
        if "completion" not in model.capabilities:
            raise _bad(f'"{model.name.removesuffix(":latest")}" does not support generate')
        prompt = body.get("prompt") or ""
        for name in ("prompt", "suffix", "system", "template"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise _bad(f"json: cannot unmarshal {type(body[name]).__name__} into Go struct field "
                           f"GenerateRequest.{name} of type string")
        images = self._images(body.get("images"), "GenerateRequest.images")
        gen = self._generation(ctx, body, model)
        base = {"model": model.name, "created_at": _now()}
        if not prompt and not images:
            reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            return await self._answer_out(ctx, [{**base, "response": "", "done": True, "done_reason": reason}],
                                          stream)
        system = str(body.get("system") or "")
        prompt_tokens = min(count_tokens(system) + count_tokens(prompt) + count_tokens(str(body.get("suffix") or ""))
                            + IMAGE_TOKENS * len(images) + 4, gen.num_ctx)
        text, reason, eval_tokens = self._answer(gen, prompt, images)
        ctx.charge_tokens(prompt_tokens + eval_tokens)
        final = {**base, "response": text, "done": True, "done_reason": reason,
                 "context": token_ids(prompt + text)[-gen.num_ctx:], **self._timings(gen, prompt_tokens, eval_tokens)}
        if not stream:
            return await self._answer_out(ctx, [final], stream=False)
        lines: list[dict[str, Any]] = [{**base, "response": piece, "done": False}
                                       for piece in split_chunks(text, ctx.controls.stream_chunks)]
        lines.append({**final, "response": ""})
        return await self._answer_out(ctx, lines, stream=True)

    # -- embeddings -------------------------------------------------------------------------------
    async def embed(self, request: web.Request) -> web.Response:
        """POST /api/embed (PROTOCOLS.md 5.3)."""
        ctx = context_of(request)
        started = time.monotonic()
        body = await self._body(ctx)
        model = self.resolve(ctx, body.get("model"))
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw if raw is not None else []
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise _bad("invalid input type")
        truncate = body.get("truncate", True) is not False
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)
                                 or not 0 < dims <= model.embedding_length):
            raise _bad(f"dimensions must be between 1 and {model.embedding_length}")
        gen = self._generation(ctx, {"options": body.get("options"), "keep_alive": body.get("keep_alive")}, model)
        limit = min(gen.num_ctx, model.context_length) if "num_ctx" in gen.options else model.context_length
        vectors, used = [], 0
        for text in inputs:
            tokens = count_tokens(text)
            if tokens > limit:
                if not truncate:
                    raise _bad("the input length exceeds the context length")
                text, _ = truncate_tokens(text, limit)
                tokens = limit
            used += tokens
            vector = embedding_vector(text, dims or model.embedding_length, model.embedding_length)
            vectors.append([float(x) for x in vector])
        ctx.charge_tokens(used)
        total = max(1, int((time.monotonic() - started) * 1e9))
        out = {"model": model.name, "embeddings": vectors, "total_duration": total, "load_duration": total // 10,
               "prompt_eval_count": used}
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /api/embeddings, the legacy single-prompt form: ``{"embedding": [...]}``."""
        ctx = context_of(request)
        body = await self._body(ctx)
        model = self.resolve(ctx, body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise _bad("json: cannot unmarshal into Go struct field EmbeddingRequest.prompt of type string")
        self._generation(ctx, {"options": body.get("options"), "keep_alive": body.get("keep_alive")}, model)
        if not prompt:
            return web.Response(body=json_bytes({"embedding": []}), content_type="application/json")
        text, _ = truncate_tokens(prompt, model.context_length)
        ctx.charge_tokens(count_tokens(text))
        vector = [float(x) for x in embedding_vector(text, model.embedding_length)]
        return web.Response(body=json_bytes({"embedding": vector}), content_type="application/json")


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake Ollama server as an aiohttp application."""
    return FakeServer(OllamaProtocol(), controls).make_app()
