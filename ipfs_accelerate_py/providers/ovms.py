"""OpenVINO Model Server (PROTOCOLS.md section 8): OpenAI-compatible /v3 plus KServe v2.

Generative calls (chat, completions, embeddings, models) use the
OpenAI-compatible ``/v3`` routes through ``OpenAICompatibleProvider``; the
differences are a handful of rules below: ``logit_bias``, ``top_logprobs`` and
``user`` are not accepted (dropped, so portable callers keep working),
``functions`` is refused (use ``tools``), ``/v3/completions`` takes one string
prompt, embeddings take no ``dimensions``, and OVMS extras (``top_k``,
``repetition_penalty``, ``min_p``, ``chat_template_kwargs``, ...) pass through
from ``extra``.  Streams end with ``[DONE]``; an error inside one is
``{"error": ".."}`` and a first chunk with ``content: null`` carries no text.

Classic models are served by KServe v2: ``infer`` (tensors in and out, numpy
arrays accepted and returned), ``model_info`` (the model's metadata) and
``health`` (server readiness, and the model's when one is named).  Only the
``/v3`` routes can be protected by an API key, so only they get the Bearer
header.  Error bodies are ``{"error": ".."}`` everywhere: 404 = model or
version missing, 400/412 = bad request, 500 = model not loaded, 503 = not ready.

``base_url`` is the server root (``http://host:8000``); a URL ending in
``/v3`` (the OpenAI SDK's convention) is accepted and trimmed.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import numpy as np

from .. import errors
from ..transport import HttpRequest, HttpResponse
from ..types import ChatRequest, EmbeddingRequest, OperationRequest, OperationResponse
from .base import Request, Result, register
from .openai_compat import OpenAICompatibleProvider, json_object, op_params

__all__ = ["OVMSProvider", "KSERVE_DATATYPES", "to_kserve_input", "from_kserve_output"]

#: KServe v2 datatype -> numpy dtype (little-endian, as the binary extension uses)
KSERVE_DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "BYTES": "object",
}
_NUMPY_KINDS: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL", ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32", ("u", 8): "UINT64",
    ("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32", ("i", 8): "INT64",
    ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64",
}
#: OpenAI fields OVMS rejects; dropped rather than failing callers written for OpenAI
_UNSUPPORTED_DROPPED = ("logit_bias", "top_logprobs", "user")


def _invalid(message: str, code: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, provider="ovms", code=code)


def _datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in ("O", "U", "S"):
        return "BYTES"
    datatype = _NUMPY_KINDS.get((array.dtype.kind, array.dtype.itemsize))
    if datatype is None:
        raise _invalid(f"numpy dtype {array.dtype} has no KServe v2 datatype", "invalid_datatype")
    return datatype


def _bytes_elements(flat: Sequence[Any], name: str) -> list[str]:
    """BYTES elements as JSON strings; raw binary needs the binary extension."""
    out = []
    for item in flat:
        if isinstance(item, (bytes, bytearray)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid(f"input {name!r}: BYTES element is not UTF-8 text; binary tensors are not "
                               "supported over the JSON protocol", "invalid_bytes") from None
        if not isinstance(item, str):
            raise _invalid(f"input {name!r}: BYTES elements must be str or bytes, got {type(item).__name__}",
                           "invalid_bytes")
        out.append(item)
    return out


def to_kserve_input(name: Any, value: Any) -> dict:
    """One KServe v2 input tensor ``{name, shape, datatype, data}`` (data flat).

    ``value`` is a numpy array (shape and datatype read from it), any nested
    list numpy can read, or a mapping with ``data`` and optional ``shape`` /
    ``datatype`` (read from the data when absent).  The element count is
    checked against the shape here, because OVMS checks only that.
    """
    spec: Mapping[str, Any] = value if isinstance(value, Mapping) else {"data": value}
    if not isinstance(name, str) or not name:
        raise _invalid("every KServe input needs a non-empty 'name'", "invalid_input")
    if "data" not in spec:
        raise _invalid(f"input {name!r} has no 'data'", "invalid_input")
    datatype = spec.get("datatype")
    if datatype is not None and datatype not in KSERVE_DATATYPES:
        raise _invalid(f"input {name!r}: datatype must be one of {', '.join(KSERVE_DATATYPES)}, got {datatype!r}",
                       "invalid_datatype")
    dtype = None if datatype in (None, "BYTES") else KSERVE_DATATYPES[datatype]
    try:
        array = np.asarray(spec["data"], dtype=dtype if dtype is not None else None)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"input {name!r}: data is not a rectangular array of {datatype or 'numbers'} ({exc})",
                       "invalid_input") from None
    if datatype == "BYTES" and array.dtype.kind not in ("O", "U", "S"):
        raise _invalid(f"input {name!r}: BYTES data must be strings", "invalid_bytes")
    datatype = datatype or _datatype_of(array)
    shape = spec.get("shape")
    if shape is None:
        shape = list(array.shape)
    elif (not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                          for d in shape)):
        raise _invalid(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}",
                       "invalid_shape")
    shape = [int(d) for d in shape]
    flat = array.reshape(-1)
    if math.prod(shape) != flat.size:
        raise _invalid(f"input {name!r}: shape {shape} holds {math.prod(shape)} elements but data has "
                       f"{flat.size}", "invalid_shape")
    data = _bytes_elements(flat.tolist(), name) if datatype == "BYTES" else flat.tolist()
    out = {"name": name, "shape": shape, "datatype": datatype, "data": data}
    if isinstance(spec.get("parameters"), Mapping):
        out["parameters"] = dict(spec["parameters"])
    return out


def from_kserve_output(output: Mapping[str, Any]) -> Any:
    """One response tensor as a numpy array of its shape (BYTES: nested lists of str)."""
    name, datatype, shape = output.get("name"), output.get("datatype"), output.get("shape")
    params = output.get("parameters") if isinstance(output.get("parameters"), Mapping) else {}
    if "binary_data_size" in params:
        raise errors.ProviderError(f"ovms sent output {name!r} in binary form; only JSON outputs are read",
                                   provider="ovms", retryable=False)
    if datatype not in KSERVE_DATATYPES or not isinstance(shape, list):
        raise errors.ProviderError(f"ovms output {name!r} has an unknown datatype {datatype!r} or no shape",
                                   provider="ovms", retryable=False)
    dtype = KSERVE_DATATYPES[datatype]
    try:
        array = np.asarray(output.get("data"), dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise errors.ProviderError(f"ovms output {name!r} does not match its shape {shape}: {exc}",
                                   provider="ovms", retryable=False) from None
    return array.tolist() if datatype == "BYTES" else array


@register
class OVMSProvider(OpenAICompatibleProvider):
    name = "ovms"
    default_base_url = "http://localhost:8000"
    operations = frozenset({"chat", "stream_chat", "complete", "stream_complete", "embed", "models",
                            "infer", "model_info", "health"})
    max_embed_batch = 500
    description = "OpenVINO Model Server: OpenAI-compatible /v3 generation and KServe v2 inference"

    accepts_top_k = True
    chat_path = "v3/chat/completions"
    completions_path = "v3/completions"
    embeddings_path = "v3/embeddings"
    models_path = "v3/models"

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.base_url = self.base_url.removesuffix("/v3")

    # -- /v3: the OpenAI-compatible differences ----------------------------------
    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict:
        body = super().chat_body(request, stream=stream)
        if "functions" in body or "function_call" in body:
            raise errors.InvalidRequestError("ovms does not support the legacy 'functions'; pass 'tools'",
                                             provider=self.name, endpoint_id=self.endpoint.id,
                                             code="unsupported_functions")
        for field in _UNSUPPORTED_DROPPED:
            body.pop(field, None)
        return body

    def completion_body(self, request: OperationRequest, *, stream: bool) -> dict:
        body = super().completion_body(request, stream=stream)
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise errors.InvalidRequestError(
                    "ovms /v3/completions takes a single string prompt; send one request per prompt",
                    provider=self.name, endpoint_id=self.endpoint.id, code="invalid_prompt")
            body["prompt"] = prompt[0]
        for field in _UNSUPPORTED_DROPPED:
            body.pop(field, None)
        return body

    def _build_embed(self, request: EmbeddingRequest, request_id: str | None) -> HttpRequest:
        if request.dimensions is not None:
            raise errors.InvalidRequestError("ovms embeddings do not support 'dimensions'", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="unsupported_dimensions")
        http = super()._build_embed(request, request_id)
        http.json.pop("user", None)
        return http

    # -- /v2: KServe -------------------------------------------------------------
    def _kserve(self, method: str, path: str, request_id: str | None, json_body: Any = None) -> HttpRequest:
        """A KServe request: no Authorization (those routes are never protected)."""
        headers = self.headers(request_id)
        if json_body is None:
            headers.pop("Content-Type", None)
        return HttpRequest(method=method, url=self.url(path), headers=headers, json=json_body)

    def _model_path(self, op: str, request: Any) -> str:
        """``v2/models/{name}[/versions/{v}]`` for the request's model."""
        model = self.resolve_model(op, request)
        path = f"v2/models/{quote(str(model), safe='')}"
        version = op_params(request).get("version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, (int, str)) or not str(version).strip():
                raise errors.InvalidRequestError(f"ovms {op}: version must be a number or string, got {version!r}",
                                                 provider=self.name, endpoint_id=self.endpoint.id,
                                                 code="invalid_version")
            path += f"/versions/{quote(str(version).strip(), safe='')}"
        return path

    def _build_infer(self, request: OperationRequest, request_id: str | None) -> HttpRequest:
        params = op_params(request)
        raw = params.get("inputs")
        if isinstance(raw, Mapping):
            inputs = [to_kserve_input(name, value) for name, value in raw.items()]
        elif isinstance(raw, (list, tuple)) and all(isinstance(item, Mapping) for item in raw):
            inputs = [to_kserve_input(item.get("name"), item) for item in raw]
        else:
            raise errors.InvalidRequestError(
                "ovms infer needs 'inputs': {name: numpy array} or [{name, shape, datatype, data}, ...]",
                provider=self.name, endpoint_id=self.endpoint.id, code="invalid_inputs")
        if not inputs:
            raise errors.InvalidRequestError("ovms infer needs at least one input", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="invalid_inputs")
        body: dict[str, Any] = {"inputs": inputs}
        outputs = params.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, (str, Mapping)) for o in outputs):
                raise errors.InvalidRequestError("ovms infer 'outputs' must be a list of output names",
                                                 provider=self.name, endpoint_id=self.endpoint.id,
                                                 code="invalid_outputs")
            body["outputs"] = [{"name": o} if isinstance(o, str) else dict(o) for o in outputs]
        for field in ("id", "parameters"):
            if params.get(field) is not None:
                body[field] = params[field]
        return self._kserve("POST", f"{self._model_path('infer', request)}/infer", request_id, body)

    def _parse_infer(self, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        body = json_object(self, response, "infer")
        outputs = [o for o in body.get("outputs") or [] if isinstance(o, Mapping)]
        data = {str(o.get("name")): from_kserve_output(o) for o in outputs}
        raw = {k: v for k, v in body.items() if k != "outputs"}
        raw["outputs"] = [{k: v for k, v in o.items() if k != "data"} for o in outputs]
        return OperationResponse(op="infer", data=data, model=body.get("model_name") or request.model,
                                 provider=self.name, endpoint_id=self.endpoint.id, raw=raw)

    def _build_model_info(self, request: Any, request_id: str | None) -> HttpRequest:
        return self._kserve("GET", self._model_path("model_info", request), request_id)

    def _parse_model_info(self, request: Any, response: HttpResponse) -> OperationResponse:
        body = json_object(self, response, "model_info")
        return OperationResponse(op="model_info", data=body, model=body.get("name"), provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """The default loop, except ``health``, which asks the server and then
        (when a model is named) the model, judging each by its status code."""
        if op != "health":
            return await super().execute(op, request, request_id, transport)
        self.require(op)
        timeout = self.endpoint.timeout_s
        server = await transport.send(self._kserve("GET", "v2/health/ready", request_id), timeout_s=timeout)
        raw: dict[str, Any] = {"server_ready": server.status == 200, "server_status": server.status}
        ready = server.status == 200
        headers = server.headers
        model = getattr(request, "model", None) or op_params(request).get("model")
        if model and ready:
            probe = await transport.send(self._kserve("GET", f"{self._model_path('health', request)}/ready",
                                                      request_id), timeout_s=timeout)
            raw.update(model=model, model_ready=probe.status == 200, model_status=probe.status)
            if probe.status >= 400:
                raw["model_error"] = self.error_message(probe)[0]
            ready = probe.status == 200
        return OperationResponse(op="health", data=ready, model=model, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=raw), headers

    # -- errors ------------------------------------------------------------------
    def parse_error(self, response: HttpResponse) -> errors.GatewayError:
        """OVMS answers 404 only for a missing model, version or graph."""
        err = super().parse_error(response)
        if response.status == 404 and not isinstance(err, errors.UnknownModelError):
            err = errors.UnknownModelError(err.message, provider=self.name, endpoint_id=self.endpoint.id,
                                           status=404, code=err.code)
        return err
