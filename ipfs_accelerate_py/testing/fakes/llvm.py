"""Fake LLVM-style inference server (PROTOCOLS.md section 11).

Routes: ``GET /models`` -> ``{"models": [ids]}``, ``GET /models/{id}`` ->
``{"model_id", "status", "details"}`` and ``POST /models/{id}/inference`` with
``{"inputs": str | object, "parameters": {...}}`` -> ``{"model_id", "outputs",
"usage"}``.  Ids may contain ``/``.  Errors are ``{"error": "message"}`` with
400/401/404/429/500/503; 429 (the framework's per-key limiter) and 503 carry
``Retry-After``.  Auth is off until ``valid_keys`` is set, then a bearer key is
required (401 ``{"error": ...}`` otherwise).

Models and their load status: ``llvm-model-1`` and ``llvm-text-model`` are
loaded, ``llvm-loading-model`` is loading (inference gets 503 with Retry-After),
``llvm-broken-model`` failed to load (inference gets 500); more come from
``controls.extra_models`` (attributes ``status``, ``context_window``,
``description``).  Options (``controls.options``): ``report_usage`` (true;
false leaves ``usage`` out of answers) and ``loading_retry_after`` (1 s).

Inference is deterministic: a string input is answered ``"Echo: <input>"``;
a chat transcript (lines ``role: text`` ending in ``assistant:``) is answered
``"Echo: <last user text>"``; an object input gets an object back with the
echo under ``text``.  ``parameters.max_tokens`` cuts the answer;
``parameters.stop`` cuts it at the first stop string.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .base import (
    FakeControls,
    FakeError,
    FakeProtocol,
    FakeServer,
    LimitSnapshot,
    RequestContext,
    context_of,
    count_tokens,
    echo_reply,
    fingerprint,
    json_bytes,
    truncate_tokens,
    unique_models,
)

__all__ = ["LLVM_MODELS", "LLVMModel", "LLVMProtocol", "make_app"]


@dataclass(frozen=True)
class LLVMModel:
    id: str
    status: str = "loaded"
    context_window: int = 4096
    description: str = ""


LLVM_MODELS: tuple[LLVMModel, ...] = (
    LLVMModel("llvm-model-1", description="General text model"),
    LLVMModel("llvm-text-model", context_window=8192, description="Text generation model"),
    LLVMModel("llvm-loading-model", status="loading", description="A model still loading"),
    LLVMModel("llvm-broken-model", status="error", description="A model that failed to load"),
)
_OPTIONS = {"report_usage": True, "loading_retry_after": 1}
_SAMPLING_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}


def _bad(message: str) -> FakeError:
    return FakeError(400, message)


class LLVMProtocol(FakeProtocol):
    """The LLVM server's wire format (PROTOCOLS.md section 11)."""

    name = "llvm"
    base_path = ""
    sdk_base_path = ""

    def __init__(self) -> None:
        self.models = {m.id: m for m in LLVM_MODELS}

    # -- hooks ---------------------------------------------------------------------------
    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        return bool(controls.valid_keys)

    def auth_error(self, key: str | None) -> FakeError:
        if key is None:
            return FakeError(401, "Missing API key: send Authorization: Bearer <LLVM_API_KEY>")
        return FakeError(401, f"Invalid API key {fingerprint(key)}")

    def rate_limit_error(self, snap: LimitSnapshot, ctx: RequestContext) -> FakeError:
        return FakeError(429, f"Rate limit exceeded; retry in {snap.retry_after_s:.1f}s")

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        messages = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 429: "Rate limit exceeded",
                    500: "Internal server error", 503: "Service unavailable"}
        return "error", None, messages.get(status, f"HTTP {status}")

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"error": err.message}

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        if exc.status == 405:
            return FakeError(405, f"Method {request.method} not allowed on {request.path}")
        return FakeError(404, f"Route {request.path} not found")

    def invalid_json_error(self, detail: str) -> FakeError:
        return _bad(f"Request body is not valid JSON: {detail}")

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        app.router.add_get("/models", self.list_models)
        app.router.add_post("/models/{model_id:.+}/inference", self.inference)
        app.router.add_get("/models/{model_id:.+}", self.model_info)

    # -- models --------------------------------------------------------------------------------
    def _model(self, ctx: RequestContext, model_id: str) -> LLVMModel:
        extra = ctx.controls.extra_models.get(model_id)
        if extra is not None:
            return LLVMModel(model_id, status=str(extra.get("status", "loaded")),
                             context_window=int(extra.get("context_window", 4096)),
                             description=str(extra.get("description", "")))
        model = self.models.get(model_id)
        if model is None:
            raise FakeError(404, f"Model '{model_id}' not found")
        return model

    async def list_models(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        ids = unique_models(self.models, ctx.controls.extra_models)
        return web.Response(body=json_bytes({"models": ids}), content_type="application/json")

    async def model_info(self, request: web.Request) -> web.Response:
        ctx = context_of(request)
        model = self._model(ctx, request.match_info["model_id"])
        out = {"model_id": model.id, "status": model.status,
               "details": {"context_window": model.context_window, "description": model.description}}
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- inference --------------------------------------------------------------------------------
    @staticmethod
    def _parameters(body: Mapping[str, Any]) -> dict[str, Any]:
        params = body.get("parameters")
        if params is None:
            return {}
        if not isinstance(params, dict):
            raise _bad("'parameters' must be an object")
        max_tokens = params.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise _bad(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
        for name, (lo, hi) in _SAMPLING_RANGES.items():
            value = params.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise _bad(f"'{name}' must be a number between {lo:g} and {hi:g}, got {value!r}")
        top_k = params.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise _bad(f"'top_k' must be a non-negative integer, got {top_k!r}")
        return params

    @staticmethod
    def _prompt_of(text: str) -> str:
        """What to echo: the last user turn of a chat transcript, else the whole input."""
        lines = text.rstrip().splitlines()
        if lines and lines[-1].strip() == "assistant:":
            for line in reversed(lines[:-1]):
                if line.startswith("user:"):
                    return line[len("user:"):].strip()
        return text

    async def inference(self, request: web.Request) -> web.Response:
        """POST /models/{id}/inference."""
        ctx = context_of(request)
        model = self._model(ctx, request.match_info["model_id"])
        body = await ctx.read_json()
        if not isinstance(body, dict):
            raise _bad("Request body must be a JSON object")
        if "inputs" not in body or body["inputs"] is None or body["inputs"] == "":
            raise _bad("'inputs' is required")
        inputs = body["inputs"]
        if not isinstance(inputs, (str, dict, list)):
            raise _bad("'inputs' must be a string or an object")
        params = self._parameters(body)
        if model.status == "loading":
            retry = ctx.controls.options.get("loading_retry_after", _OPTIONS["loading_retry_after"])
            raise FakeError(503, f"Model '{model.id}' is loading; retry shortly",
                            headers={"Retry-After": str(retry)})
        if model.status == "error":
            raise FakeError(500, f"Model '{model.id}' failed to load")
        prompt = inputs if isinstance(inputs, str) else str(
            inputs.get("text") if isinstance(inputs, dict) and isinstance(inputs.get("text"), str)
            else json.dumps(inputs, sort_keys=True))
        prompt_tokens = count_tokens(prompt)
        if prompt_tokens > model.context_window:
            raise _bad(f"Input is too long: {prompt_tokens} tokens exceed the model's context length "
                       f"of {model.context_window}")
        text = echo_reply(self._prompt_of(prompt))
        stops = params.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            if isinstance(stop, str) and stop and stop in text:
                text = text[: text.index(stop)]
        text, _ = truncate_tokens(text, params.get("max_tokens"))
        completion_tokens = count_tokens(text)
        ctx.charge_tokens(prompt_tokens + completion_tokens)
        outputs: Any = text if isinstance(inputs, str) else {"text": text, "inputs": inputs}
        out: dict[str, Any] = {"model_id": model.id, "outputs": outputs}
        if ctx.controls.options.get("report_usage", _OPTIONS["report_usage"]):
            out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        return web.Response(body=json_bytes(out), content_type="application/json")


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    """The fake LLVM server as an aiohttp application."""
    return FakeServer(LLVMProtocol(), controls).make_app()
