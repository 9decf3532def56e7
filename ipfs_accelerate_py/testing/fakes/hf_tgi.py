"""Fake Hugging Face Text Generation Inference server (PROTOCOLS.md section 6).

Routes, as the TGI router serves them:

* ``POST /generate`` and ``POST /generate_stream`` (SSE framed ``data:{...}``
  with no space, one event per token, no ``[DONE]``: the last event carries
  ``generated_text`` and ``details``); ``POST /`` dispatches to either on
  ``"stream"`` and wraps a non-streamed answer in a one-element list, as the
  hosted Inference API does;
* ``POST /v1/chat/completions`` (the Messages API, also streamed, ending in
  ``data:[DONE]``), where ``response_format`` must carry ``value``: OpenAI's
  bare ``{"type": "json_object"}`` is a 422 deserialization error;
* ``GET /info``, ``/health`` (also ``/ping`` and ``GET /``), ``/v1/models``:
  open even when a key is set;
* a hosted-router flavour of the same API under ``/hf-inference/models/{model}``
  (``POST`` at the root and ``/v1/chat/completions``), which needs a key and
  404s for a model this server does not serve.

Auth is off until ``valid_keys`` is set; then inference routes want
``Authorization: Bearer <key>`` (compared ignoring case, like TGI) and answer a
bare 401 otherwise.

Server settings live in ``controls.options`` (names as TGI's launcher flags):
``model_id``, ``max_concurrent_requests`` (128), ``max_input_tokens`` (4095),
``max_total_tokens`` (4096), ``max_stop_sequences`` (4), ``max_best_of`` (2),
``max_client_batch_size`` (4), ``healthy`` (true), ``version``, and
``generation_s`` (0): how long each generation holds its concurrency permit.
A request that finds every permit taken gets 429 ``overloaded`` at once, with
no Retry-After, like the real router's semaphore.

Replies are deterministic: ``"Echo: <prompt>"`` (``/generate``) or ``"Echo:
<last user message>"`` (chat), cut at a stop sequence (which stays in the
text, as TGI keeps it) or at ``max_new_tokens``/``max_tokens``; a JSON grammar
or ``response_format`` yields an instance of its schema; chat ``tools`` yield
tool calls when the prompt names one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import (
    FakeError,
    FakeProtocol,
    FakeServer,
    FakeControls,
    RequestContext,
    ToolSpec,
    choose_tool_calls,
    context_of,
    count_tokens,
    decode_tokens,
    echo_reply,
    instance_from_schema,
    json_bytes,
    random_id,
    server_of,
    token_ids,
)

__all__ = ["DEFAULT_OPTIONS", "Permits", "TGIProtocol", "make_app", "token_texts"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "model_id": "mistralai/Mistral-7B-Instruct-v0.2",
    "max_concurrent_requests": 128,
    "max_input_tokens": 4095,
    "max_total_tokens": 4096,
    "max_stop_sequences": 4,
    "max_best_of": 2,
    "max_client_batch_size": 4,
    "validation_workers": 2,
    "healthy": True,
    "version": "3.3.6-dev0",
    "generation_s": 0.0,
}
#: the end-of-sequence token a finished generation ends with (Llama/Mistral vocabulary)
EOS_TOKEN = {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}
_HOSTED_PREFIX = "/hf-inference/models/"
#: routes the router leaves open when it was started with --api-key
_OPEN_ROUTES = {("GET", "/"), ("GET", "/info"), ("GET", "/health"), ("GET", "/ping"), ("GET", "/metrics"),
                ("GET", "/v1/models"), ("POST", "/chat_tokenize")}
_FINISH_TO_OPENAI = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
_GRAMMAR_TYPES = ("json", "json_object", "regex", "json_schema")


def option(ctx: RequestContext, name: str, defaults: Mapping[str, Any] = DEFAULT_OPTIONS) -> Any:
    """A server setting: ``controls.options`` first, else the default."""
    value = ctx.controls.options.get(name)
    return defaults[name] if value is None else value


class Permits:
    """The router's concurrency semaphore: ``max_concurrent_requests`` permits,
    taken *without waiting*; a request that finds none left is rejected with
    429 at once (no Retry-After), never queued."""

    def __init__(self, error_type: str) -> None:
        self.error_type = error_type
        self.in_use = 0

    @contextlib.contextmanager
    def hold(self, limit: int) -> Iterator[None]:
        if self.in_use >= limit:
            raise FakeError(429, "Model is overloaded", type=self.error_type)
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


def token_texts(ids: Sequence[int]) -> list[str]:
    """The text each token adds, decoding prefixes so a character split across
    tokens appears once, whole, with the token that completes it."""
    out: list[str] = []
    shown = ""
    for i in range(len(ids)):
        text = decode_tokens(ids[: i + 1])
        if text.endswith("\ufffd"):
            out.append("")
            continue
        out.append(text[len(shown):])
        shown = text
    return out


def deserialize_error(detail: str) -> FakeError:
    """axum's Json extractor rejection: 422 with a plain-text body."""
    return FakeError(422, body=f"Failed to deserialize the JSON body into the target type: {detail}")


def validation_error(message: str) -> FakeError:
    return FakeError(422, message, type="validation")


@dataclass
class Generation:
    """One validated generation request and its deterministic outcome."""

    prompt: str
    input_tokens: int
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    do_sample: bool = False
    details: bool = True
    return_full_text: bool = False
    decoder_input_details: bool = False
    schema: Any = None
    #: filled by ``run``
    text: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "eos_token"

    def run(self, answer: str) -> None:
        """Decide the tokens: stop sequence (kept in the text), length, or EOS."""
        stopped = False
        cut = min(((answer.find(s), s) for s in self.stop if s and s in answer), default=None)
        if cut is not None:
            answer, stopped = answer[: cut[0] + len(cut[1])], True
        ids = token_ids(answer)
        if len(ids) >= self.max_new_tokens:
            ids, self.finish_reason = ids[: self.max_new_tokens], "length"
        elif stopped:
            self.finish_reason = "stop_sequence"
        texts = token_texts(ids)
        self.tokens = [{"id": i, "text": t, "logprob": round(-0.05 - (i % 7) / 100, 4), "special": False}
                       for i, t in zip(ids, texts)]
        self.text = decode_tokens(ids)
        if self.finish_reason == "eos_token":
            self.tokens.append(dict(EOS_TOKEN))

    @property
    def output(self) -> str:
        return self.prompt + self.text if self.return_full_text else self.text

    @property
    def used_seed(self) -> int | None:
        return (self.seed if self.seed is not None else 42) if self.do_sample else None


class TGIProtocol(FakeProtocol):
    """TGI's wire format (PROTOCOLS.md section 6)."""

    name = "hf_tgi"
    base_path = ""
    sdk_base_path = ""
    default_stream_error_status = 424

    def __init__(self) -> None:
        self.permits = Permits("overloaded")

    # -- identity and auth -----------------------------------------------------
    def extract_key(self, request: web.Request) -> str | None:
        """The bearer key; TGI compares ``Bearer <key>`` ignoring case, so a key
        that matches an accepted one that way is that key."""
        auth = request.headers.get("Authorization")
        if not auth or auth[:7].lower() != "bearer ":
            return None
        key = auth[7:].strip() or None
        if key is not None:
            for valid in server_of(request).controls.valid_keys:
                if auth.lower() == f"bearer {valid}".lower():
                    return valid
        return key

    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        if request.path.startswith(_HOSTED_PREFIX):
            return True  # the hosted router always wants a token
        return bool(controls.valid_keys) and (request.method, request.path) not in _OPEN_ROUTES

    def auth_error(self, key: str | None) -> FakeError:
        return FakeError(401, body=b"")  # the auth layer answers a bare status

    # -- errors ----------------------------------------------------------------------
    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        table = {422: ("validation", "Input validation error"),
                 424: ("generation", "Request failed during generation"),
                 429: ("overloaded", "Model is overloaded"),
                 500: ("incomplete_generation", "Incomplete generation"),
                 503: ("healthcheck", "unhealthy")}
        if status in table:
            etype, message = table[status]
        elif status >= 500:
            etype, message = "generation", f"Request failed during generation ({status})"
        else:
            etype, message = "validation", f"Request failed ({status})"
        return etype, None, message

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"error": err.message, "error_type": err.type}

    def stream_error_frame(self, err: FakeError, ctx: RequestContext) -> bytes:
        """Native streams send ``{"error", "error_type"}``; chat streams send the
        OpenAI-style ``{"error": {"message", "http_status_code"}}``."""
        ctx.server.complete_error(err)
        if err.body is not None:
            payload = err.body.encode() if isinstance(err.body, str) else (
                err.body if isinstance(err.body, bytes) else json_bytes(err.body))
        elif ctx.request.path.endswith("/v1/chat/completions"):
            payload = json_bytes({"error": {"message": err.message, "http_status_code": err.status}})
        else:
            payload = json_bytes(self.error_payload(err, ctx))
        return b"data:" + payload + b"\n\n"

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        return FakeError(exc.status, body=b"")  # axum's fallback: status only

    def invalid_json_error(self, detail: str) -> FakeError:
        return FakeError(400, body=f"Failed to parse the request body as JSON: {detail}")

    # -- routes ------------------------------------------------------------------------
    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/generate_stream", self.generate_stream)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/", self.compat)
        app.router.add_get("/", self.health)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_get("/info", self.info)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post(_HOSTED_PREFIX + "{model:.+}/v1/chat/completions", self.hosted_chat)
        app.router.add_post(_HOSTED_PREFIX + "{model:.+}", self.hosted_compat)

    # -- info routes ---------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        out = {name: option(ctx, name) for name in (
            "model_id", "max_concurrent_requests", "max_best_of", "max_stop_sequences", "max_input_tokens",
            "max_total_tokens", "validation_workers", "max_client_batch_size", "version")}
        out.update(model_sha="0" * 40, model_pipeline_tag="text-generation", router="text-generation-router",
                   sha=None, docker_label=None)
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        if not option(context_of(request), "healthy"):
            raise FakeError(503, "unhealthy", type="healthcheck")
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        model_id = option(context_of(request), "model_id")
        out = {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]}
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- /generate ------------------------------------------------------------------------
    async def _object(self, ctx: RequestContext) -> dict[str, Any]:
        body = await ctx.read_json()
        if not isinstance(body, dict):
            raise deserialize_error("invalid type: expected struct, line 1 column 1")
        return body

    def _generation(self, ctx: RequestContext, body: Mapping[str, Any], *, stream: bool) -> Generation:
        """Validate a /generate body like TGI's validation workers."""
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise deserialize_error("inputs: missing field `inputs`" if inputs is None
                                    else "inputs: invalid type: expected a string")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise deserialize_error("parameters: invalid type: expected struct GenerateParameters")
        number = (int, float)
        for name in ("temperature", "top_p", "repetition_penalty", "typical_p", "frequency_penalty"):
            value = params.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, number)):
                raise deserialize_error(f"parameters.{name}: invalid type: expected f32")
        for name in ("top_k", "max_new_tokens", "seed", "truncate", "best_of", "top_n_tokens"):
            value = params.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise deserialize_error(f"parameters.{name}: invalid value: expected an unsigned integer")
        if not inputs:
            raise validation_error("`inputs` cannot be empty")
        best_of = params.get("best_of") or 1
        max_best_of = option(ctx, "max_best_of")
        if best_of > max_best_of or best_of < 1:
            raise validation_error(f"`best_of` must be > 0 and <= {max_best_of}. Given: {best_of}")
        if best_of > 1 and stream:
            raise validation_error("`best_of` != 1 is not supported when streaming tokens")
        temperature = params.get("temperature")
        if temperature is not None and temperature <= 0:
            raise validation_error("`temperature` must be strictly positive")
        if params.get("repetition_penalty") is not None and params["repetition_penalty"] <= 0:
            raise validation_error("`repetition_penalty` must be strictly positive")
        top_p = params.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            raise validation_error("`top_p` must be > 0.0 and < 1.0")
        if params.get("top_k") is not None and params["top_k"] <= 0:
            raise validation_error("`top_k` must be strictly positive")
        if params.get("max_new_tokens") == 0:
            raise validation_error("`max_new_tokens` must be strictly positive")
        stop = params.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise deserialize_error("parameters.stop: invalid type: expected a sequence of strings")
        max_stop = option(ctx, "max_stop_sequences")
        if len(stop) > max_stop:
            raise validation_error(f"`stop` supports up to {max_stop} stop sequences. Given: {len(stop)}")
        schema = self._grammar_schema(params.get("grammar"))
        max_input = option(ctx, "max_input_tokens")
        max_total = option(ctx, "max_total_tokens")
        ids = token_ids(inputs)
        truncate = params.get("truncate")
        if truncate is not None:
            if not 0 < truncate <= max_input:
                raise validation_error(f"`truncate` must be strictly positive and less than {max_input}. "
                                       f"Given: {truncate}")
            if len(ids) > truncate:  # TGI keeps the end of the prompt
                ids = ids[-truncate:]
                inputs = decode_tokens(ids)
        if len(ids) > max_input:
            raise validation_error(f"`inputs` must have less than {max_input} tokens. Given: {len(ids)}")
        max_new = params.get("max_new_tokens")
        if max_new is None:
            max_new = max(1, max_total - len(ids))
        if len(ids) + max_new > max_total:
            raise validation_error(f"`inputs` tokens + `max_new_tokens` must be <= {max_total}. Given: "
                                   f"{len(ids)} `inputs` tokens and {max_new} `max_new_tokens`")
        do_sample = bool(params.get("do_sample")) or temperature is not None or top_p is not None or \
            params.get("top_k") is not None
        return Generation(prompt=inputs, input_tokens=len(ids), max_new_tokens=max_new, stop=list(stop),
                          seed=params.get("seed"), do_sample=do_sample,
                          details=params.get("details", True) is not False,
                          return_full_text=bool(params.get("return_full_text")),
                          decoder_input_details=bool(params.get("decoder_input_details")), schema=schema)

    @staticmethod
    def _grammar_schema(grammar: Any) -> Any:
        """The JSON schema a grammar constrains to (None: free text or a regex)."""
        if grammar is None:
            return None
        if not isinstance(grammar, dict) or grammar.get("type") not in _GRAMMAR_TYPES:
            kind = grammar.get("type") if isinstance(grammar, dict) else grammar
            raise deserialize_error(f"parameters.grammar: unknown variant `{kind}`, expected one of "
                                    "`json`, `json_object`, `regex`, `json_schema`")
        if "value" not in grammar:
            raise deserialize_error("parameters.grammar: missing field `value`")
        value = grammar["value"]
        if grammar["type"] == "regex":
            return None
        if grammar["type"] == "json_schema":
            if not isinstance(value, dict) or not isinstance(value.get("schema"), dict):
                raise deserialize_error("parameters.grammar.value: missing field `schema`")
            return value["schema"]
        if not isinstance(value, dict):
            raise validation_error("grammar is not valid: the JSON grammar must be a JSON schema object")
        return value

    def _generate_in(self, ctx: RequestContext, gen: Generation) -> None:
        gen.run(json.dumps(instance_from_schema(gen.schema, gen.prompt)) if gen.schema is not None
                else echo_reply(gen.prompt))
        ctx.charge_tokens(gen.input_tokens + len(gen.tokens))

    def _response(self, gen: Generation) -> dict[str, Any]:
        out: dict[str, Any] = {"generated_text": gen.output}
        if gen.details:
            prefill = []
            if gen.decoder_input_details:
                prefill = [{"id": i, "text": t, "logprob": None if n == 0 else -0.5}
                           for n, (i, t) in enumerate(zip(token_ids(gen.prompt), token_texts(token_ids(gen.prompt))))]
            out["details"] = {"finish_reason": gen.finish_reason, "generated_tokens": len(gen.tokens),
                              "seed": gen.used_seed, "prefill": prefill, "tokens": gen.tokens}
        return out

    @staticmethod
    def _timing_headers(gen: Generation, started: float) -> dict[str, str]:
        total_ms = max(0, int((time.monotonic() - started) * 1000))
        return {"x-compute-type": "gpu+optimized", "x-compute-time": f"{total_ms / 1000:.3f}",
                "x-compute-characters": str(len(gen.prompt)), "x-total-time": str(total_ms),
                "x-validation-time": "0", "x-queue-time": "0", "x-inference-time": str(total_ms),
                "x-time-per-token": str(total_ms // max(1, len(gen.tokens))),
                "x-prompt-tokens": str(gen.input_tokens), "x-generated-tokens": str(len(gen.tokens))}

    async def _think(self, ctx: RequestContext) -> None:
        delay = float(option(ctx, "generation_s") or 0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _generate(self, ctx: RequestContext, body: Mapping[str, Any], *, wrap: bool) -> web.Response:
        started = time.monotonic()
        with self.permits.hold(int(option(ctx, "max_concurrent_requests"))):
            gen = self._generation(ctx, body, stream=False)
            await self._think(ctx)
            self._generate_in(ctx, gen)
        out: Any = self._response(gen)
        return web.Response(body=json_bytes([out] if wrap else out), content_type="application/json",
                            headers=self._timing_headers(gen, started))

    async def _generate_stream(self, ctx: RequestContext, body: Mapping[str, Any]) -> web.StreamResponse:
        with self.permits.hold(int(option(ctx, "max_concurrent_requests"))):
            gen = self._generation(ctx, body, stream=True)
            await self._think(ctx)
            self._generate_in(ctx, gen)
            stream = await ctx.sse()
            last = len(gen.tokens) - 1
            for index, token in enumerate(gen.tokens):
                event: dict[str, Any] = {"index": index + 1, "token": token, "top_tokens": [],
                                         "generated_text": None, "details": None}
                if index == last:
                    event["generated_text"] = gen.output
                    if gen.details:
                        event["details"] = {"finish_reason": gen.finish_reason, "generated_tokens": len(gen.tokens),
                                            "input_length": gen.input_tokens, "seed": gen.used_seed}
                await stream.send_raw(b"data:" + json_bytes(event) + b"\n\n")
            return await stream.close()

    async def generate(self, request: web.Request) -> web.Response:
        """POST /generate (section 6.1)."""
        ctx = context_of(request)
        return await self._generate(ctx, await self._object(ctx), wrap=False)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """POST /generate_stream (section 6.2)."""
        ctx = context_of(request)
        return await self._generate_stream(ctx, await self._object(ctx))

    async def compat(self, request: web.Request) -> web.StreamResponse:
        """POST /: /generate_stream when ``stream`` is true, else /generate wrapped in a list."""
        ctx = context_of(request)
        body = await self._object(ctx)
        if body.get("stream"):
            return await self._generate_stream(ctx, body)
        return await self._generate(ctx, body, wrap=True)

    # -- hosted router flavour ---------------------------------------------------------------
    def _check_hosted(self, request: web.Request) -> None:
        model = request.match_info["model"]
        ctx = context_of(request)
        if model != option(ctx, "model_id") and model not in ctx.controls.extra_models:
            raise FakeError(404, body={"error": f"Model {model} does not exist"})

    async def hosted_compat(self, request: web.Request) -> web.StreamResponse:
        self._check_hosted(request)
        return await self.compat(request)

    async def hosted_chat(self, request: web.Request) -> web.StreamResponse:
        self._check_hosted(request)
        return await self.chat(request)

    # -- Messages API -----------------------------------------------------------------------
    @staticmethod
    def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        if messages is None:
            raise deserialize_error("missing field `messages`")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise deserialize_error("messages: invalid type: expected a sequence of messages")
        for i, msg in enumerate(messages):
            if not isinstance(msg.get("role"), str):
                raise deserialize_error(f"messages[{i}]: missing field `role`")
            content = msg.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise deserialize_error(f"messages[{i}].content: data did not match any variant")
        if not messages:
            raise validation_error("`inputs` cannot be empty")
        return messages

    @staticmethod
    def _text(content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return ""

    def _template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """A chat template (Zephyr style): what the model would see as its prompt."""
        parts = [f"<|{m['role']}|>\n{self._text(m.get('content'))}</s>\n" for m in messages]
        return "".join(parts) + "<|assistant|>\n"

    @staticmethod
    def _response_format_schema(fmt: Any) -> tuple[bool, Any]:
        """(constrained?, schema) of a Messages API ``response_format``; TGI wants it
        adjacently tagged, so a format without ``value`` fails deserialization."""
        if fmt is None:
            return False, None
        if not isinstance(fmt, dict):
            raise deserialize_error("response_format: invalid type: expected internally tagged enum GrammarType")
        kind = fmt.get("type")
        if kind not in _GRAMMAR_TYPES:
            raise deserialize_error(f"response_format: unknown variant `{kind}`, expected one of `json`, "
                                    "`json_object`, `regex`, `json_schema`")
        if "value" not in fmt:
            raise deserialize_error("response_format: missing field `value`")
        value = fmt["value"]
        if kind == "regex":
            return True, None
        if kind == "json_schema":
            if not isinstance(value, dict) or not isinstance(value.get("schema"), dict):
                raise deserialize_error("response_format.value: missing field `schema`")
            return True, value["schema"]
        return True, value if isinstance(value, dict) else {}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions (section 6.4)."""
        ctx = context_of(request)
        body = await self._object(ctx)
        with self.permits.hold(int(option(ctx, "max_concurrent_requests"))):
            messages = self._messages(body)
            constrained, schema = self._response_format_schema(body.get("response_format"))
            tools = body.get("tools")
            if constrained and tools:
                raise FakeError(422, "Tool error: Grammar and tools are mutually exclusive", type="tool_error")
            stop = body.get("stop") or []
            if isinstance(stop, str):
                stop = [stop]
            max_stop = option(ctx, "max_stop_sequences")
            if len(stop) > max_stop:
                raise validation_error(f"`stop` supports up to {max_stop} stop sequences. Given: {len(stop)}")
            max_tokens = body.get("max_tokens")
            if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                           or max_tokens < 0):
                raise deserialize_error("max_tokens: invalid value: expected u32")
            if max_tokens == 0:
                raise validation_error("`max_new_tokens` must be strictly positive")
            template = self._template(messages)
            input_tokens = count_tokens(template)
            max_input = option(ctx, "max_input_tokens")
            max_total = option(ctx, "max_total_tokens")
            if input_tokens > max_input:
                raise validation_error(f"`inputs` must have less than {max_input} tokens. Given: {input_tokens}")
            max_new = max_tokens if max_tokens is not None else max(1, min(1024, max_total - input_tokens))
            if input_tokens + max_new > max_total:
                raise validation_error(f"`inputs` tokens + `max_new_tokens` must be <= {max_total}. Given: "
                                       f"{input_tokens} `inputs` tokens and {max_new} `max_new_tokens`")
            last_user = next((self._text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
                             "")
            await self._think(ctx)
            calls = self._tool_calls(body, last_user) if tools else []
            gen = Generation(prompt=last_user, input_tokens=input_tokens, max_new_tokens=max_new, stop=list(stop))
            if calls:
                gen.run(json.dumps(calls))
                gen.finish_reason = "tool_calls"
            else:
                gen.run(json.dumps(instance_from_schema(schema, last_user)) if schema is not None
                        else echo_reply(last_user))
            ctx.charge_tokens(input_tokens + len(gen.tokens))
            usage = {"prompt_tokens": input_tokens, "completion_tokens": len(gen.tokens),
                     "total_tokens": input_tokens + len(gen.tokens)}
            finish = _FINISH_TO_OPENAI.get(gen.finish_reason, gen.finish_reason)
            model_id = option(ctx, "model_id")
            base = {"id": "", "created": int(time.time()), "model": model_id,
                    "system_fingerprint": f"{option(ctx, 'version')}-native"}
            if not body.get("stream"):
                message: dict[str, Any] = {"role": "assistant", "content": None if calls else gen.text}
                if calls:
                    message["tool_calls"] = [
                        {"id": random_id("", 9), "type": "function",
                         "function": {"name": name, "description": None, "arguments": json.dumps(args)}}
                        for name, args in calls]
                out = {**base, "object": "chat.completion",
                       "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                       "usage": usage}
                return web.Response(body=json_bytes(out), content_type="application/json")
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            return await self._chat_stream(ctx, base, gen, calls, finish, usage if options.get("include_usage")
                                           else None)

    @staticmethod
    def _tool_calls(body: Mapping[str, Any], prompt: str) -> list[tuple[str, dict[str, Any]]]:
        specs = []
        for tool in body.get("tools") or []:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                specs.append(ToolSpec(fn["name"], fn.get("parameters") or fn.get("arguments") or {}))
        choice = body.get("tool_choice", "auto")
        forced = None
        if isinstance(choice, dict):
            fn = choice.get("function") if isinstance(choice.get("function"), dict) else {}
            forced, choice = fn.get("name"), "required"
        return choose_tool_calls(specs, prompt, mode=str(choice or "auto"), forced=forced, parallel=False)

    async def _chat_stream(self, ctx: RequestContext, base: dict[str, Any], gen: Generation,
                           calls: list[tuple[str, dict[str, Any]]], finish: str,
                           usage: dict[str, int] | None) -> web.StreamResponse:
        stream = await ctx.sse()

        async def send(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices, "usage": None, **(extra or {})}
            await stream.send_raw(b"data:" + json_bytes(chunk) + b"\n\n")

        if calls:
            name, args = calls[0]
            await send([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": random_id("", 9), "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}]}, "logprobs": None,
                "finish_reason": None}])
        else:
            for token in gen.tokens:
                if token["special"] or not token["text"]:
                    continue
                await send([{"index": 0, "delta": {"role": "assistant", "content": token["text"]},
                             "logprobs": None, "finish_reason": None}])
        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": finish}])
        if usage is not None:
            await send([], {"usage": usage})
        await stream.send_raw(b"data:[DONE]\n\n")
        return await stream.close()


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake TGI server as an aiohttp application."""
    return FakeServer(TGIProtocol(), controls).make_app()
