"""Hugging Face Text Generation Inference (PROTOCOLS.md section 6).

TGI speaks two dialects and this module uses each where it is the better fit:

* the native ``/generate`` and ``/generate_stream`` routes for ``complete``:
  raw prompts, TGI's own sampling parameters, ``details`` with exact token
  counts, and an SSE stream framed as ``data:{...}`` (no space) that has no
  ``[DONE]``: the event with a non-null ``generated_text`` is the end;
* the OpenAI-shaped Messages API (``/v1/chat/completions``) for ``chat``,
  which applies the model's chat template on the server.  It reuses the
  OpenAI-compatible provider; only ``response_format`` differs (TGI wants the
  schema under ``value``: OpenAI's bare ``{"type": "json_object"}`` is a 422).

A ``base_url`` may contain ``{model}``, filled per request with the model id,
so the hosted router (``https://router.huggingface.co/hf-inference/models/{model}``)
works like a local server.  Hosted URLs serve generation at their root (TGI's
``POST /`` compat route, whose non-streamed answer is a one-element list) rather
than at ``/generate``; both shapes are parsed.

Errors are ``{"error": "..", "error_type": ".."}``.  ``hf_error`` maps them and
is shared with the TEI provider, whose router follows the same convention.
"""
from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Mapping
from urllib.parse import quote

from .. import errors
from ..transport import HttpRequest, HttpResponse
from ..types import ChatRequest, ChatResponse, ModelInfo, OperationRequest, OperationResponse, StreamChunk, Usage
from .base import Provider, Request, Result, StreamDecoder, register
from .openai_compat import OpenAICompatibleProvider, event_json, http_request, json_object, op_params

__all__ = ["TGIProvider", "TGIStreamDecoder", "hf_error", "generate_parameters", "tgi_response_format",
           "grammar_from_response_format"]

#: TGI finish reasons in OpenAI's words
FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}

#: error_type (lower-cased) -> error class, for TGI and TEI alike.  The types
#: come from the routers' InferError / TEI ErrorType enums.
_ERROR_TYPES: dict[str, type[errors.GatewayError]] = {
    "validation": errors.InvalidRequestError, "template_error": errors.InvalidRequestError,
    "missing_template_variable": errors.InvalidRequestError, "tool_error": errors.InvalidRequestError,
    "tokenizer": errors.InvalidRequestError, "empty": errors.InvalidRequestError,
    "generation": errors.ProviderError, "backend": errors.ProviderError,
    "incomplete_generation": errors.ProviderError, "incomplete_generation_stream": errors.ProviderError,
    "stream_serialization_error": errors.ProviderError,
    "healthcheck": errors.ProviderError, "unhealthy": errors.ProviderError,
    "overloaded": errors.ProviderOverloadedError,
}
#: the status each error_type comes with, for errors that arrive as stream events inside a 200
_ERROR_STATUS = {"validation": 422, "template_error": 422, "missing_template_variable": 422, "tool_error": 422,
                 "tokenizer": 422, "empty": 400, "generation": 424, "backend": 424, "overloaded": 429,
                 "healthcheck": 503, "unhealthy": 503}
#: the validation messages that mean "the prompt does not fit" (TGI and TEI wording)
_CONTEXT_RE = re.compile(r"`inputs` (tokens \+ `max_new_tokens` must be <=|must have less than)"
                         r"|input (is )?too long|maximum context|context length", re.I)
#: TEI's answer when a route does not fit the served model (rerank on an embedding model, ...)
_WRONG_MODEL_TYPE_RE = re.compile(r"model is not an? (re-ranker|embedding|classifier) model", re.I)

#: caller-facing names -> TGI's /generate parameter names
_RENAMED = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
#: params that describe the call, not the generation: never sent as parameters
_NOT_PARAMETERS = frozenset({"model", "prompt", "inputs", "stream", "include_usage", "stream_options",
                             "response_format", "parameters", "n"})


def hf_error(provider: Provider, response: HttpResponse) -> errors.GatewayError:
    """The typed error for a TGI/TEI ``{"error", "error_type"}`` answer.

    The error type decides wherever the server sent one (validation vs
    generation vs overload); statuses with no HF type (a bare 401, an HTTP-layer 413 in
    plain text, a proxy's 502 page) fall back to the common status mapping.
    TGI's 424 ("the model failed mid-way") is retryable even though it is a
    4xx, and a 429 is "Model is overloaded", a concurrency reject with no
    Retry-After: retried with backoff, never a problem of the key.
    """
    message, etype, _ = provider.error_message(response)
    kind = (etype or "").lower()
    status = response.status
    cls = None if status in (401, 403) else _ERROR_TYPES.get(kind)  # auth is auth, whatever the body
    if cls is None:
        if status == 424:
            cls = errors.ProviderError
        elif status == 429:
            cls = errors.ProviderOverloadedError
        else:
            err = Provider.parse_error(provider, response)
            _hosted_retry_after(err, response)
            return err
    if cls is errors.InvalidRequestError and _CONTEXT_RE.search(message):
        cls = errors.ContextLengthError
    elif _WRONG_MODEL_TYPE_RE.search(message):
        # TEI answers 424 Backend when asked to rerank with an embedding model (or the
        # reverse): a deployment mismatch that no retry can fix
        cls = errors.UnsupportedOperationError
    err = cls(f"{provider.name} returned HTTP {status}: {message}", provider=provider.name,
              endpoint_id=provider.endpoint.id, status=status, code=kind or None,
              retry_after=provider.retry_after(response))
    _hosted_retry_after(err, response)
    return err


def _hosted_retry_after(err: errors.GatewayError, response: HttpResponse) -> None:
    """The hosted Inference API answers 503 ``{"error": "Model .. is currently loading",
    "estimated_time": 20.0}`` while it loads a model: wait that long, then retry."""
    body = response.json()
    estimate = body.get("estimated_time") if isinstance(body, Mapping) else None
    if err.retry_after is None and isinstance(estimate, (int, float)) and not isinstance(estimate, bool):
        err.retry_after = max(0.0, float(estimate))
        err.retryable = True


def hf_stream_error(provider: Provider, payload: Mapping) -> errors.GatewayError:
    """The typed error for an ``{"error": .., "error_type": ..}`` event inside a 200 stream."""
    kind = str(payload.get("error_type") or "").lower()
    status = _ERROR_STATUS.get(kind, 500)
    return hf_error(provider, HttpResponse(status, {}, json.dumps(payload).encode()))


def grammar_from_response_format(response_format: Any) -> dict | None:
    """An OpenAI ``response_format`` as a ``/generate`` grammar (None = unconstrained).

    ``json_schema`` becomes ``{"type": "json", "value": <schema>}`` (the grammar
    type every TGI version with grammars accepts); ``json_object`` becomes a JSON
    grammar for "any object"; TGI-shaped formats (``json``/``regex`` with a
    ``value``) pass through.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise errors.InvalidRequestError("response_format must be an object", provider="hf_tgi",
                                         code="invalid_response_format")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema") or response_format.get("value") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise errors.InvalidRequestError("response_format json_schema needs json_schema.schema",
                                             provider="hf_tgi", code="invalid_response_format")
        return {"type": "json", "value": dict(schema)}
    if kind in ("json_object", "json"):
        value = response_format.get("value")
        return {"type": "json", "value": dict(value) if isinstance(value, Mapping) else {"type": "object"}}
    if kind == "regex" and isinstance(response_format.get("value"), str):
        return {"type": "regex", "value": response_format["value"]}
    raise errors.InvalidRequestError(f"unsupported response_format type {kind!r} for TGI (use json_object, "
                                     "json_schema or regex)", provider="hf_tgi", code="invalid_response_format")


def tgi_response_format(response_format: Any) -> dict | None:
    """An OpenAI ``response_format`` in the adjacently tagged form TGI's Messages API wants.

    ``{"type": "json_object"}`` -> ``{"type": "json_object", "value": {"type": "object"}}``
    (any JSON object; without ``value`` TGI rejects it with 422),
    ``{"type": "json_schema", "json_schema": {name, schema, strict}}`` ->
    ``{"type": "json_schema", "value": {name, schema, strict}}``, ``text`` -> None
    (no constraint), and anything that already carries ``value`` passes through.
    """
    if response_format is None or not isinstance(response_format, Mapping):
        return response_format  # type: ignore[return-value]  # validated upstream
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if "value" in response_format:
        return dict(response_format)
    if kind == "json_object":
        return {"type": "json_object", "value": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise errors.InvalidRequestError("response_format json_schema needs json_schema.schema",
                                             provider="hf_tgi", code="invalid_response_format")
        value = {k: spec[k] for k in ("name", "schema", "strict") if spec.get(k) is not None}
        return {"type": "json_schema", "value": value}
    return dict(response_format)


def generate_parameters(params: Mapping[str, Any], *, stream: bool) -> dict:
    """The ``parameters`` object of a ``/generate`` request from caller kwargs.

    Portable names map to TGI's (``max_tokens`` -> ``max_new_tokens``); TGI's
    own names (``repetition_penalty``, ``truncate``, ``typical_p``,
    ``watermark``, ``adapter_id`` ...) and a seed-style nested ``parameters``
    dict pass through.  TGI rejects ``temperature: 0``, ``top_p: 1`` and
    ``top_k: 0`` ("must be strictly positive" / "< 1.0"), which portable callers
    use to mean "greedy" or "no filter", so those become ``do_sample: false`` or
    are left out.  ``details`` is on (it carries the token counts) and
    ``return_full_text`` off (the answer, not the prompt echoed back).
    """
    merged: dict[str, Any] = {}
    nested = params.get("parameters")
    if isinstance(nested, Mapping):
        merged.update(nested)
    merged.update((k, v) for k, v in params.items() if k not in _NOT_PARAMETERS)
    out: dict[str, Any] = {}
    for key, value in merged.items():
        if value is None:
            continue
        out[_RENAMED.get(key, key)] = value
    for name in ("temperature", "top_p", "top_k", "max_new_tokens", "seed", "repetition_penalty"):
        value = out.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise errors.InvalidRequestError(f"{name} must be a number, got {value!r}", provider="hf_tgi",
                                             code=f"invalid_{name}")
    temperature = out.pop("temperature", None)
    if temperature is not None:
        if temperature > 0:
            out["temperature"] = temperature
            out.setdefault("do_sample", True)
        else:
            out["do_sample"] = False
    if out.get("top_p") is not None and not 0 < out["top_p"] < 1:
        out.pop("top_p")
    if out.get("top_k") is not None and out["top_k"] <= 0:
        out.pop("top_k")
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    grammar = grammar_from_response_format(params.get("response_format"))
    if grammar is not None and "grammar" not in out:
        out["grammar"] = grammar
    out.setdefault("details", True)
    out.setdefault("return_full_text", False)
    if stream:
        out.pop("best_of", None)  # "best_of != 1 is not supported when streaming tokens"
    return out


def _usage(details: Any, headers: Mapping[str, str]) -> Usage:
    """Token counts from ``details`` (streams carry ``input_length``) or the
    ``x-prompt-tokens`` / ``x-generated-tokens`` headers of a non-streamed answer."""
    details = details if isinstance(details, Mapping) else {}

    def number(value: Any) -> int | None:
        try:
            return int(value) if value is not None and not isinstance(value, bool) else None
        except (TypeError, ValueError):
            return None

    prompt = number(details.get("input_length"))
    if prompt is None:
        prompt = number(headers.get("x-prompt-tokens"))
    if prompt is None and isinstance(details.get("prefill"), list) and details["prefill"]:
        prompt = len(details["prefill"])
    completion = number(details.get("generated_tokens"))
    if completion is None:
        completion = number(headers.get("x-generated-tokens"))
    extra = {k: details[k] for k in ("seed",) if details.get(k) is not None}
    return Usage(prompt_tokens=prompt or 0, completion_tokens=completion or 0, details=extra)


class TGIStreamDecoder(StreamDecoder):
    """Decodes ``/generate_stream``: one event per token, the last one carrying
    the full ``generated_text`` and ``details`` (finish reason, token counts).

    Special tokens (``</s>``, ``<|eot_id|>``) are not text and are skipped, as
    TGI's own ``generated_text`` skips them.  A stream that ends without the
    final event is a retryable ProviderError, never a short answer.
    """

    def __init__(self, provider: "TGIProvider", model: str | None) -> None:
        self._provider = provider
        self._model = model
        self._final: Mapping | None = None
        self._closed = False

    def feed(self, event: Any) -> list[StreamChunk]:
        if self._final is not None:
            return []
        obj = event_json(self._provider, event)
        if not isinstance(obj, Mapping):
            return []
        if obj.get("error") is not None:
            raise hf_stream_error(self._provider, obj)
        token = obj.get("token") if isinstance(obj.get("token"), Mapping) else {}
        text = "" if token.get("special") else str(token.get("text") or "")
        if obj.get("generated_text") is not None:
            self._final = obj
        return [StreamChunk(text=text, model=self._model, raw=obj)] if text else []

    def close(self) -> list[StreamChunk]:
        if self._closed:
            return []
        if self._final is None:
            raise errors.ProviderError(
                "stream ended before the final event (the one with generated_text): hf_tgi closed the "
                "response early, so the answer may be incomplete", retryable=True,
                provider=self._provider.name, endpoint_id=self._provider.endpoint.id)
        self._closed = True
        details = self._final.get("details")
        reason = details.get("finish_reason") if isinstance(details, Mapping) else None
        return [StreamChunk(done=True, finish_reason=FINISH_REASONS.get(reason, reason),
                            usage=_usage(details, {}), model=self._model, raw=self._final)]


@register
class TGIProvider(OpenAICompatibleProvider):
    name = "hf_tgi"
    default_base_url = "http://localhost:8080"
    operations = frozenset({"chat", "stream_chat", "complete", "stream_complete", "models", "model_info",
                            "health"})
    description = ("Hugging Face Text Generation Inference: /generate (+stream), Messages API chat, "
                   "hosted router URLs with {model}")

    # TGI's Messages API: no top_k field, max_tokens as such, include_usage supported
    accepts_top_k = False
    chat_path = "v1/chat/completions"
    completions_path = "v1/completions"
    models_path = "v1/models"
    #: where ``complete`` goes when the base URL is a plain server; templated
    #: (hosted) URLs use the root compat route, which is all the router serves
    generate_path: ClassVar[str] = "generate"
    generate_stream_path: ClassVar[str] = "generate_stream"

    @property
    def templated(self) -> bool:
        """Whether the base URL names the model (``.../models/{model}``)."""
        return "{model}" in self.base_url

    # -- build -----------------------------------------------------------------
    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op in ("complete", "stream_complete"):
            http = self._build_generate(request, request_id, stream=op == "stream_complete")
        elif op == "model_info":
            http = http_request(self, "GET", "info", request_id)
        else:
            http = super().build(op, request, request_id)
        if self.templated:
            http.url = http.url.replace("{model}", quote(self._model_for_url(op, request), safe="/:"))
        return http

    def _model_for_url(self, op: str, request: Request) -> str:
        model = (getattr(request, "model", None) or op_params(request).get("model")
                 or getattr(self.endpoint, "default_model", None)
                 or next(iter(getattr(self.endpoint, "models", None) or []), None))
        if not model:
            raise errors.InvalidRequestError(
                f"{self.name} base_url contains {{model}} but the {op} request names no model (set the "
                "endpoint's default_model)", provider=self.name, endpoint_id=self.endpoint.id,
                code="missing_model")
        return str(model)

    def _build_generate(self, request: Request, request_id: str | None, *, stream: bool) -> HttpRequest:
        params = op_params(request)
        prompt = params.get("prompt", params.get("inputs"))
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise errors.InvalidRequestError(
                f"{self.name} complete needs one non-empty prompt string (/generate takes a single input)",
                provider=self.name, endpoint_id=self.endpoint.id, code="invalid_prompt")
        if (params.get("n") or 1) != 1:
            raise errors.InvalidRequestError(f"{self.name} /generate returns one answer per call; n must be 1",
                                             provider=self.name, endpoint_id=self.endpoint.id, code="invalid_n")
        body: dict[str, Any] = {"inputs": prompt, "parameters": generate_parameters(params, stream=stream)}
        if self.templated:
            body["stream"] = stream  # the root compat route switches on this field
            path = ""
        else:
            path = self.generate_stream_path if stream else self.generate_path
        http = http_request(self, "POST", path, request_id, json_body=body, stream=stream)
        if not path:
            http.url = self.base_url  # the root itself, without a trailing slash
        return http

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict:
        body = super().chat_body(request, stream=stream)
        if "response_format" in body:
            converted = tgi_response_format(body["response_format"])
            if converted is None:
                body.pop("response_format")
            else:
                body["response_format"] = converted
        return body

    # -- parse -----------------------------------------------------------------
    def _parse_complete(self, request: OperationRequest, response: HttpResponse) -> ChatResponse:
        body = response.json()
        if isinstance(body, list) and len(body) == 1:  # the root compat route wraps the answer
            body = body[0]
        if not isinstance(body, Mapping) or not isinstance(body.get("generated_text"), str):
            raise errors.ProviderError(
                f"{self.name} answered complete without generated_text: {response.text[:200]!r}",
                provider=self.name, endpoint_id=self.endpoint.id)
        details = body.get("details")
        reason = details.get("finish_reason") if isinstance(details, Mapping) else None
        return ChatResponse(text=body["generated_text"], model=request.model or "",
                            usage=_usage(details, response.headers),
                            finish_reason=FINISH_REASONS.get(reason, reason), provider=self.name,
                            endpoint_id=self.endpoint.id, raw=dict(body))

    def _parse_model_info(self, request: Any, response: HttpResponse) -> OperationResponse:
        body = json_object(self, response, "model_info")
        info = ModelInfo(id=str(body.get("model_id") or getattr(request, "model", None) or ""),
                         provider=self.name, endpoint_id=self.endpoint.id, owned_by=body.get("model_id"),
                         context_window=body.get("max_total_tokens") or body.get("max_input_tokens"),
                         category=body.get("model_pipeline_tag"),
                         description=f"TGI {body['version']}" if body.get("version") else None, raw=body)
        return OperationResponse(op="model_info", data=info, model=info.id, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        if op == "stream_complete":
            return TGIStreamDecoder(self, getattr(request, "model", None))
        return super().stream_decoder(op, request, response_headers)

    # -- execute -----------------------------------------------------------------
    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        if op == "health":
            self.require(op)
            return await self.probe_health("health", request_id, transport)
        return await super().execute(op, request, request_id, transport)

    # -- errors ------------------------------------------------------------------
    def parse_error(self, response: HttpResponse) -> errors.GatewayError:
        body = response.json()
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            # the Messages API's OpenAI-shaped errors ({"error": {"message", ...}})
            return super().parse_error(response)
        return hf_error(self, response)

    def stream_error(self, payload: Mapping) -> errors.GatewayError:
        """Chat streams carry ``{"error": {"message", "http_status_code"}}``; older
        TGI versions send the native ``{"error": "..", "error_type": ".."}``."""
        if isinstance(payload.get("error"), str):
            return hf_stream_error(self, payload)
        return super().stream_error(payload)

    def rate_limit_headers(self, headers: Mapping[str, str]) -> None:
        return None  # TGI sends no rate-limit headers; its limit is a concurrency semaphore
