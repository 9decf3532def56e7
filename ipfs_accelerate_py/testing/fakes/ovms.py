"""Fake OpenVINO Model Server (PROTOCOLS.md section 8): /v3 OpenAI-compatible and KServe v2.

Served models (plus ``controls.extra_models``, ``{"id": {"kind": "llm" |
"embeddings" | "kserve"}}``; extra KServe models behave like ``add-one``):

* ``tiny-llm`` -- an LLM graph: ``/v3/chat/completions`` and ``/v3/completions``
  answer ``"Echo: <last user text>"`` (``base.echo_reply``), cut to
  ``max_tokens``/``max_completion_tokens``.
* ``tiny-embed`` -- an embeddings graph (384 dims, ``base.embedding_vector``).
* ``add-one`` -- KServe: input ``input`` FP32 ``[-1, -1]``, output ``output`` =
  input + 1 (versions 1 and 2; the latest answers when none is named).
* ``string-length`` -- KServe: input ``text`` BYTES ``[-1]``, output ``length``
  INT64 = UTF-8 byte length of each element.

OVMS's rules are enforced so the client's translation is really tested:
``logit_bias``, ``top_logprobs``, ``user``, ``functions`` and embedding
``dimensions`` are rejected with 400; ``/v3/completions`` takes a single
string prompt; at most 500 embedding inputs.  Chat answers have no ``id``;
streams start with ``delta {"role": "assistant", "content": null}``; errors
are ``{"error": ".."}`` everywhere (also mid-stream).  KServe checks input
names, datatypes and that the element count matches the shape (400), unknown
models or versions (404).

Auth as in OVMS: only ``/v3`` is protected, and only when ``valid_keys`` is
set (the server was started with an API key).  ``controls.options``:
``server_ready`` (false -> ``/v2/health/ready`` answers 503) and
``unloaded_models`` (KServe models whose ``ready`` is 503 and whose ``infer``
is 500 "not loaded").

The OpenAI-shaped generation helpers at the top are also what the OPEA fake's
LLM microservice uses: in a real OPEA deployment that service forwards to a
backend such as OVMS.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
from aiohttp import web

from .base import (
    FakeControls,
    FakeError,
    FakeProtocol,
    FakeServer,
    RequestContext,
    context_of,
    count_tokens,
    echo_reply,
    embedding_base64,
    embedding_vector,
    json_bytes,
    split_chunks,
    truncate_tokens,
)

__all__ = ["OVMSProtocol", "make_app", "OVMS_MODELS", "content_text", "last_user_text", "chat_prompt_tokens",
           "generate_reply", "stream_openai_chunks", "check_messages"]

OVMS_VERSION = "2025.3.0.fake"


# --------------------------------------------------------------------------- OpenAI-shaped generation


def content_text(content: Any) -> str:
    """The text of a message's content (string, or the text parts of a part list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") in ("user", "tool"):
            return content_text(msg.get("content"))
    return ""


def chat_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Tokens of the rendered chat template: a few per message plus the text."""
    return 3 + sum(4 + count_tokens(content_text(m.get("content"))) for m in messages)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate OpenAI-style ``messages``; raises ``FakeError(400)`` with OVMS-style text."""
    if not isinstance(messages, list) or not messages:
        raise FakeError(400, "Messages array cannot be empty" if isinstance(messages, list)
                        else "Messages field must be an array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise FakeError(400, f"Every message must be an object with a role (message {i})")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise FakeError(400, f"Invalid message content type in message {i}")
    return messages


def generate_reply(prompt: str, max_tokens: int | None, stops: Sequence[str] = ()) -> tuple[str, str]:
    """``(text, finish_reason)`` of the deterministic answer to ``prompt``."""
    text = echo_reply(prompt)
    for stop in stops:
        cut = text.find(stop) if stop else -1
        if cut >= 0:
            text = text[:cut]
    text, truncated = truncate_tokens(text, max_tokens)
    return text, "length" if truncated else "stop"


def usage_json(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def stream_openai_chunks(ctx: RequestContext, base: Mapping[str, Any], text: str, finish: str,
                               usage: Mapping[str, int], *, chat: bool, include_usage: bool,
                               first_content: str | None = None) -> web.StreamResponse:
    """An OpenAI-shaped SSE stream: (chat: a role delta), text pieces, the finish
    chunk, the usage chunk when asked for, ``[DONE]``."""
    stream = await ctx.sse()

    def chunk(payload: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, **payload, "logprobs": None, "finish_reason": finish_reason}
        out = dict(base, choices=[choice])
        if include_usage:
            out["usage"] = None
        return out

    if chat:
        await stream.send(chunk({"delta": {"role": "assistant", "content": first_content}}))
    for piece in split_chunks(text, ctx.controls.stream_chunks):
        await stream.send(chunk({"delta": {"content": piece}} if chat else {"text": piece}))
    await stream.send(chunk({"delta": {}} if chat else {"text": ""}, finish))
    if include_usage:
        await stream.send(dict(base, choices=[], usage=dict(usage)))
    await stream.send("[DONE]")
    return await stream.close()


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class KServeTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class OVMSModel:
    id: str
    kind: str  # "llm" | "embeddings" | "kserve"
    versions: tuple[str, ...] = ("1",)
    inputs: tuple[KServeTensor, ...] = ()
    outputs: tuple[KServeTensor, ...] = ()
    dimensions: int = 384


_ADD_ONE_IO = ((KServeTensor("input", "FP32", (-1, -1)),), (KServeTensor("output", "FP32", (-1, -1)),))
OVMS_MODELS: tuple[OVMSModel, ...] = (
    OVMSModel("tiny-llm", "llm"),
    OVMSModel("tiny-embed", "embeddings", dimensions=384),
    OVMSModel("add-one", "kserve", ("1", "2"), *_ADD_ONE_IO),
    OVMSModel("string-length", "kserve", ("1",), (KServeTensor("text", "BYTES", (-1,)),),
              (KServeTensor("length", "INT64", (-1,)),)),
)
_NUMERIC = {"BOOL": "bool", "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8", "INT8": "i1",
            "INT16": "i2", "INT32": "i4", "INT64": "i8", "FP16": "f2", "FP32": "f4", "FP64": "f8"}
#: what OVMS rejects on its OpenAI-compatible routes
_UNSUPPORTED_CHAT = ("logit_bias", "top_logprobs", "user", "functions", "function_call")
_MAX_EMBED_INPUTS = 500


def _not_found(what: str = "name") -> FakeError:
    return FakeError(404, f"Model with requested {what} is not found")


def _number(body: Mapping[str, Any], name: str, lo: float | None = None, hi: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FakeError(400, f"{name} is not a valid number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FakeError(400, f"{name} out of range({lo if lo is not None else '-inf'}, "
                             f"{hi if hi is not None else 'inf'})")
    return float(value)


def _integer(body: Mapping[str, Any], name: str, lo: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FakeError(400, f"{name} is not an integer")
    if lo is not None and value < lo:
        raise FakeError(400, f"{name} must be at least {lo}")
    return value


def _stops(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return stop
    raise FakeError(400, "stop is not a string or array of up to 4 strings")


# --------------------------------------------------------------------------- the protocol


class OVMSProtocol(FakeProtocol):
    name = "ovms"
    base_path = "/v3"
    sdk_base_path = "/v3"
    request_id_header = "x-request-id"

    def __init__(self) -> None:
        self.models = {m.id: m for m in OVMS_MODELS}

    # -- hooks ----------------------------------------------------------------
    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        # OVMS protects only the generative (/v3) routes, and only when started with a key
        return bool(controls.valid_keys) and request.path.startswith("/v3/")

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        messages = {400: "Invalid request", 401: "Unauthorized", 404: "Model with requested name is not found",
                    412: "Invalid JSON", 429: "Too many requests", 500: "Internal server error",
                    503: "Server is not ready"}
        return "", None, messages.get(status, f"HTTP {status}")

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"error": err.message}

    def auth_error(self, key: str | None) -> FakeError:
        return FakeError(401, "Unauthorized")

    def invalid_json_error(self, detail: str) -> FakeError:
        return FakeError(400, "Cannot parse JSON body")

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        return FakeError(404 if exc.status == 404 else exc.status, "Invalid request URL")

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        r = app.router
        for prefix in ("/v3", "/v3/v1"):
            r.add_post(f"{prefix}/chat/completions", self.chat_completions)
            r.add_post(f"{prefix}/completions", self.completions)
            r.add_post(f"{prefix}/embeddings", self.embeddings)
            r.add_get(f"{prefix}/models", self.list_models)
            r.add_get(f"{prefix}/models/{{model}}", self.get_model)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        for suffix in ("", "/versions/{version}"):
            r.add_get(f"/v2/models/{{model}}{suffix}", self.model_metadata)
            r.add_get(f"/v2/models/{{model}}{suffix}/ready", self.model_ready)
            r.add_post(f"/v2/models/{{model}}{suffix}/infer", self.infer)

    # -- model lookup -----------------------------------------------------------
    def model(self, ctx: RequestContext, model_id: Any, kind: str | None = None) -> OVMSModel:
        if not isinstance(model_id, str) or not model_id:
            raise FakeError(400, "model field is missing in request")
        info = self.models.get(model_id)
        extra = ctx.controls.extra_models.get(model_id)
        if extra is not None:
            extra_kind = str(extra.get("kind", "llm"))
            io = _ADD_ONE_IO if extra_kind == "kserve" else ((), ())
            info = OVMSModel(model_id, extra_kind, tuple(str(v) for v in extra.get("versions", ["1"])), *io,
                             dimensions=int(extra.get("dimensions", 384)))
        if info is None or (kind is not None and info.kind != kind):
            if kind in ("llm", "embeddings"):
                raise FakeError(404, "Mediapipe graph definition with requested name is not found")
            raise _not_found()
        return info

    async def _body(self, ctx: RequestContext) -> dict[str, Any]:
        body = await ctx.read_json()
        if not isinstance(body, dict):
            raise FakeError(400, "Request body must be a JSON object")
        return body

    @staticmethod
    def _reject_unsupported(body: Mapping[str, Any], fields: Sequence[str]) -> None:
        for field in fields:
            if field in body:
                raise FakeError(400, f"{field} is not supported")

    # -- /v3 -----------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        body = await self._body(ctx)
        info = self.model(ctx, body.get("model"), "llm")
        self._reject_unsupported(body, _UNSUPPORTED_CHAT)
        messages = check_messages(body.get("messages"))
        self._sampling(body)
        max_tokens = _integer(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _integer(body, "max_tokens", 1)
        text, finish = generate_reply(last_user_text(messages), max_tokens, _stops(body))
        prompt, completion = chat_prompt_tokens(messages), count_tokens(text)
        ctx.charge_tokens(prompt + completion)
        base = {"created": int(time.time()), "model": info.id, "object": "chat.completion"}
        stream, include_usage = self._stream_flags(body)
        if stream:
            return await stream_openai_chunks(ctx, dict(base, object="chat.completion.chunk"), text, finish,
                                              usage_json(prompt, completion), chat=True,
                                              include_usage=include_usage, first_content=None)
        out = dict(base, choices=[{"finish_reason": finish, "index": 0, "logprobs": None,
                                   "message": {"content": text, "role": "assistant"}}],
                   usage=usage_json(prompt, completion))
        return web.Response(body=json_bytes(out), content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        body = await self._body(ctx)
        info = self.model(ctx, body.get("model"), "llm")
        self._reject_unsupported(body, ("logit_bias", "user"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise FakeError(400, "prompt is not a string" if prompt is not None else "prompt is missing")
        self._sampling(body)
        max_tokens = _integer(body, "max_tokens", 1)
        text, finish = generate_reply(prompt, max_tokens, _stops(body))
        prompt_tokens, completion = count_tokens(prompt), count_tokens(text)
        ctx.charge_tokens(prompt_tokens + completion)
        base = {"created": int(time.time()), "model": info.id, "object": "text_completion"}
        stream, include_usage = self._stream_flags(body)
        if stream:
            return await stream_openai_chunks(ctx, base, text, finish, usage_json(prompt_tokens, completion),
                                              chat=False, include_usage=include_usage)
        out = dict(base, choices=[{"finish_reason": finish, "index": 0, "logprobs": None, "text": text}],
                   usage=usage_json(prompt_tokens, completion))
        return web.Response(body=json_bytes(out), content_type="application/json")

    @staticmethod
    def _sampling(body: Mapping[str, Any]) -> None:
        """OVMS's sampling and beam-search fields, type- and range-checked."""
        _number(body, "temperature", 0, 2)
        _number(body, "top_p", 0, 1)
        _integer(body, "top_k", 0)
        _number(body, "min_p", 0, 1)
        _number(body, "repetition_penalty", 0)
        _number(body, "length_penalty")
        _number(body, "presence_penalty", -2, 2)
        _number(body, "frequency_penalty", -2, 2)
        _integer(body, "seed")
        n, best_of = _integer(body, "n", 1), _integer(body, "best_of", 1)
        if n is not None and best_of is not None and best_of < n:
            raise FakeError(400, "best_of must be greater or equal to n")
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise FakeError(400, "chat_template_kwargs must be an object")

    @staticmethod
    def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise FakeError(400, "Stream is not bool")
        options = body.get("stream_options")
        if options is not None and (not stream or not isinstance(options, dict)):
            raise FakeError(400, "stream_options provided, but stream not set to true")
        return stream, bool(options and options.get("include_usage"))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        body = await self._body(ctx)
        info = self.model(ctx, body.get("model"), "embeddings")
        self._reject_unsupported(body, ("dimensions", "user"))
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
            raise FakeError(400, "input must be a non-empty string or array of non-empty strings")
        if len(inputs) > _MAX_EMBED_INPUTS:
            raise FakeError(400, f"Number of documents exceeds the limit of {_MAX_EMBED_INPUTS}")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise FakeError(400, "encoding_format should either be base64 or float")
        data = []
        for i, text in enumerate(inputs):
            vec = embedding_vector(text, info.dimensions)
            data.append({"object": "embedding", "index": i,
                         "embedding": embedding_base64(vec) if encoding == "base64" else vec.astype(float).tolist()})
        tokens = sum(count_tokens(t) for t in inputs)
        ctx.charge_tokens(tokens)
        out = {"object": "list", "data": data, "model": info.id,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return web.Response(body=json_bytes(out), content_type="application/json")

    def _model_object(self, info: OVMSModel) -> dict[str, Any]:
        return {"id": info.id, "object": "model", "created": 1_700_000_000, "owned_by": "OVMS"}

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        ids = list(self.models) + [m for m in ctx.controls.extra_models if m not in self.models]
        data = [self._model_object(self.model(ctx, m)) for m in ids]
        return web.Response(body=json_bytes({"object": "list", "data": data}), content_type="application/json")

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        info = self.model(ctx, request.match_info["model"])
        return web.Response(body=json_bytes(self._model_object(info)), content_type="application/json")

    # -- /v2: KServe ------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"name": "OpenVINO Model Server", "version": OVMS_VERSION})

    async def live(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.StreamResponse:
        if context_of(request).controls.options.get("server_ready", True) is False:
            raise FakeError(503, "Server is not ready")
        return web.Response(status=200)

    def _kserve_model(self, request: web.Request) -> tuple[OVMSModel, str]:
        ctx = context_of(request)
        info = self.model(ctx, request.match_info["model"], "kserve")
        version = request.match_info.get("version")
        if version is not None and version not in info.versions:
            raise _not_found("version")
        return info, version or info.versions[-1]

    async def model_metadata(self, request: web.Request) -> web.StreamResponse:
        info, _ = self._kserve_model(request)

        def tensors(items: Sequence[KServeTensor]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return web.json_response({"name": info.id, "versions": list(info.versions), "platform": "OpenVINO",
                                  "inputs": tensors(info.inputs), "outputs": tensors(info.outputs),
                                  "rt_info": {"model_info": {"fake": "true"}}})

    def _loaded(self, ctx: RequestContext, info: OVMSModel) -> bool:
        return info.id not in (ctx.controls.options.get("unloaded_models") or [])

    async def model_ready(self, request: web.Request) -> web.StreamResponse:
        info, _ = self._kserve_model(request)
        if not self._loaded(context_of(request), info):
            raise FakeError(503, "Model with requested version is not loaded yet")
        return web.Response(status=200)

    async def infer(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        info, version = self._kserve_model(request)
        if request.headers.get("Inference-Header-Content-Length"):
            raise FakeError(400, "the fake OVMS does not implement the binary tensor extension")
        body = await self._body(ctx)
        if not self._loaded(ctx, info):
            raise FakeError(500, "Model with requested version is not loaded yet")
        raw_inputs = body.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise FakeError(400, "Invalid JSON: inputs must be a non-empty array")
        arrays = {spec.name: self._input(spec, raw_inputs) for spec in info.inputs}
        outputs = self._run(info, arrays)
        requested = body.get("outputs")
        if requested is not None:
            names = [o.get("name") for o in requested if isinstance(o, dict)] if isinstance(requested, list) else []
            unknown = [n for n in names if n not in outputs]
            if not names or unknown:
                raise FakeError(400, f"Invalid output name: {unknown[0] if unknown else requested!r}")
            outputs = {n: outputs[n] for n in names}
        out_specs = {t.name: t for t in info.outputs}
        rendered = [{"name": name, "shape": list(array.shape), "datatype": out_specs[name].datatype,
                     "data": array.reshape(-1).tolist()} for name, array in outputs.items()]
        result: dict[str, Any] = {"model_name": info.id, "model_version": version, "outputs": rendered}
        if body.get("id") is not None:
            result["id"] = body["id"]
        if isinstance(body.get("parameters"), dict):
            result["parameters"] = body["parameters"]
        return web.Response(body=json_bytes(result), content_type="application/json")

    @staticmethod
    def _input(spec: KServeTensor, raw_inputs: Sequence[Any]) -> np.ndarray:
        """The named input as an array of its declared shape, checked like OVMS does."""
        matches = [i for i in raw_inputs if isinstance(i, dict) and i.get("name") == spec.name]
        if not matches:
            names = [i.get("name") for i in raw_inputs if isinstance(i, dict)]
            raise FakeError(400, f"Required input '{spec.name}' is missing (got {names})")
        item = matches[0]
        if item.get("datatype") != spec.datatype:
            raise FakeError(400, f"Invalid precision on input '{spec.name}': expected {spec.datatype}, "
                                 f"got {item.get('datatype')}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise FakeError(400, f"Invalid shape on input '{spec.name}'")
        if len(shape) != len(spec.shape):
            raise FakeError(400, f"Invalid number of shape dimensions on input '{spec.name}': expected "
                                 f"{len(spec.shape)}, got {len(shape)}")
        flat = _flatten(item.get("data"))
        if len(flat) != math.prod(shape):
            raise FakeError(400, f"Invalid number of elements in input '{spec.name}': shape {shape} needs "
                                 f"{math.prod(shape)}, data has {len(flat)}")
        if spec.datatype == "BYTES":
            if not all(isinstance(v, str) for v in flat):
                raise FakeError(400, f"Invalid BYTES data on input '{spec.name}'")
            return np.array(flat, dtype=object).reshape(shape)
        if not all(isinstance(v, (int, float)) and (spec.datatype == "BOOL" or not isinstance(v, bool))
                   for v in flat):
            raise FakeError(400, f"Invalid data on input '{spec.name}': expected numbers")
        return np.asarray(flat, dtype=_NUMERIC[spec.datatype]).reshape(shape)

    @staticmethod
    def _run(info: OVMSModel, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if info.id == "string-length":
            lengths = [len(str(s).encode("utf-8")) for s in arrays["text"].reshape(-1)]
            return {"length": np.asarray(lengths, dtype="i8").reshape(arrays["text"].shape)}
        return {"output": (arrays["input"] + np.float32(1)).astype("f4")}


def _flatten(data: Any) -> list[Any]:
    """KServe ``data`` may be flat or nested; only the element count matters."""
    if not isinstance(data, list):
        raise FakeError(400, "Invalid JSON: input data must be an array")
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    return FakeServer(OVMSProtocol(), controls).make_app()
