"""Ollama's native API (PROTOCOLS.md section 5): ``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/tags``, ``/api/show``, ``/api/ps``.

Native rather than Ollama's OpenAI-compatible ``/v1`` surface because only the
native API takes ``options`` (``num_ctx`` above all, which ``/v1`` cannot set),
``keep_alive``, ``think`` and JSON-schema ``format``, and reports load and
eval timings.  The mapping:

* sampling fields -> ``options`` (``max_tokens`` -> ``num_predict``); Modelfile
  parameters passed as keywords (``num_ctx=8192``) or as ``options={...}`` join
  them; ``keep_alive``, ``think``, ``template`` ... stay top-level;
* ``response_format`` -> ``format`` (``"json"`` or the schema itself);
* images (data: URLs, bytes, PIL images) -> raw base64 in the message's ``images``;
* tool-call arguments are JSON strings in the normalized types and objects on
  the wire; Ollama calls carry no id, so one is made up for the caller;
* every request says ``stream`` explicitly, since Ollama streams by default.

Model routing: a self-hosted server serves whatever was pulled onto it, so the
provider claims no model names (``model_patterns`` is empty).  Configure the
endpoint's ``models`` list, or address it as ``ollama/<model>`` or by endpoint
id; ``default_model`` (``OLLAMA_MODEL``) is used when a call names none.
No auth locally; a configured key is sent as a Bearer token (ollama.com).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

from .. import errors
from ..transport import HttpRequest, HttpResponse
from ..types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Message, ModelInfo,
                     OperationRequest, OperationResponse, StreamChunk, ToolCall, Usage)
from .base import Provider, Request, Result, StreamDecoder, register
from .openai_compat import (content_text, event_json, http_request, image_inputs, image_payload, json_object,
                            op_params, tool_arguments, tool_call_names)

__all__ = ["OllamaProvider", "OllamaStreamDecoder", "ollama_usage"]

#: Modelfile parameters (PROTOCOLS.md 5.5 plus the runtime ones): these go in ``options``
OPTION_NAMES = frozenset({
    "num_ctx", "num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "use_mlock",
    "numa", "low_vram", "vocab_only", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p",
    "tfs_z", "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline", "stop",
})
#: normalized sampling field -> Ollama option
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_tokens": "num_predict",
             "max_completion_tokens": "num_predict", "stop": "stop", "seed": "seed",
             "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
#: keys that decide what is parsed, or that this module consumes itself
_PROTECTED = frozenset({"model", "messages", "stream", "prompt", "input", "image_data", "parallel_tool_calls",
                        "include_usage", "options", "response_format", "n"})
#: timing fields (nanoseconds) kept in Usage.details
_DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
#: model families of the embedding-only models Ollama ships (BERT-style encoders)
_EMBEDDING_FAMILIES = frozenset({"bert", "nomic-bert", "jina-bert-v2", "xlm-roberta"})


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def ollama_usage(body: Mapping) -> Usage:
    """Usage from ``prompt_eval_count`` / ``eval_count``; the durations (ns) are kept in details."""
    def count(key: str) -> int:
        value = body.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    details = {key: body[key] for key in _DURATIONS if isinstance(body.get(key), (int, float))}
    return Usage(prompt_tokens=count("prompt_eval_count"), completion_tokens=count("eval_count"), details=details)


def _tool_calls(message: Mapping) -> list[ToolCall]:
    calls = []
    for item in message.get("tool_calls") or []:
        fn = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        arguments = fn.get("arguments")
        calls.append(ToolCall(id=str(item.get("id") or _call_id()), name=str(fn.get("name") or ""),
                              arguments=arguments if isinstance(arguments, str) else json.dumps(arguments or {})))
    return calls


def _finish(done_reason: Any, has_tool_calls: bool) -> str | None:
    """``done_reason`` as a finish reason: ``stop`` with tool calls is ``tool_calls``
    (OpenAI's word); ``length``, ``load`` and ``unload`` are kept."""
    if has_tool_calls and done_reason in (None, "", "stop"):
        return "tool_calls"
    return str(done_reason) if done_reason else None


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

class OllamaStreamDecoder(StreamDecoder):
    """Decodes the NDJSON stream of ``/api/chat`` (``field="message"``) or
    ``/api/generate`` (``field="response"``).

    The stream is complete only at the object with ``"done": true``, which
    carries done_reason and the counts; a body that ends before it was cut off.
    An ``{"error": ...}`` line, which arrives with HTTP 200 already sent, raises
    the typed error.
    """

    def __init__(self, provider: "OllamaProvider", field: str) -> None:
        self._provider = provider
        self._field = field
        self._model: str | None = None
        self._calls: list[ToolCall] = []
        self._final: Mapping | None = None
        self._closed = False

    def feed(self, event: Any) -> list[StreamChunk]:
        obj = event_json(self._provider, event)
        if not isinstance(obj, Mapping):
            return []
        if obj.get("error") is not None:
            raise self._provider.stream_error(obj)
        if self._final is not None:
            return []
        self._model = obj.get("model") or self._model
        if self._field == "message":
            message = obj.get("message") if isinstance(obj.get("message"), Mapping) else {}
            text = message.get("content") or ""
            self._calls.extend(_tool_calls(message))
        else:
            text = obj.get("response") or ""
        if obj.get("done"):
            self._final = obj
        return [StreamChunk(text=str(text), model=self._model, raw=obj)] if text else []

    def close(self) -> list[StreamChunk]:
        if self._closed:
            return []
        if self._final is None:
            raise errors.ProviderError(
                "stream ended before the done:true line: ollama closed the response early, so the answer "
                "may be incomplete", retryable=True, provider=self._provider.name,
                endpoint_id=self._provider.endpoint.id)
        self._closed = True
        final = self._final
        return [StreamChunk(done=True, finish_reason=_finish(final.get("done_reason"), bool(self._calls)),
                            tool_calls=self._calls or None, usage=ollama_usage(final), model=self._model,
                            raw=final)]


# ---------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------

@register
class OllamaProvider(Provider):
    name = "ollama"
    default_base_url = "http://localhost:11434"
    operations = frozenset({"chat", "stream_chat", "complete", "stream_complete", "embed", "models",
                            "model_info", "running_models", "health"})
    model_patterns = ()  # a self-hosted server serves what was pulled: see the module docstring
    max_embed_batch = None  # /api/embed takes any list; the server batches internally
    sends_request_id = False  # Ollama neither reads nor echoes request ids
    default_model = None
    description = "Ollama native API: chat, generate, streaming (NDJSON), embeddings, tags/show/ps"

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        # the seed's OLLAMA_API_URL ends in /api, and the OpenAI habit adds /v1: both mean the root
        for suffix in ("/api", "/v1"):
            if self.base_url.endswith(suffix):
                self.base_url = self.base_url[: -len(suffix)]

    # -- helpers -------------------------------------------------------------------
    def _error(self, message: str, code: str) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(message, provider=self.name, endpoint_id=self.endpoint.id, code=code)

    def _model(self, op: str, request: Any) -> str:
        model = (getattr(request, "model", None) or op_params(request).get("model")
                 or getattr(self.endpoint, "default_model", None) or self.default_model)
        if not model:
            raise self._error(f"ollama {op} needs a model (name one, or set the endpoint's default_model)",
                              "missing_model")
        return str(model)

    def _image(self, image: Any) -> str:
        return image_payload(self, image, accepted=("image/png", "image/jpeg"))[1]

    def _options_and_fields(self, sampling: Mapping[str, Any], extra: Mapping[str, Any]) -> tuple[dict, dict]:
        """(options, top-level fields) from normalized sampling fields and caller extras."""
        options: dict[str, Any] = {}
        for key, value in sampling.items():
            if value is not None and key in _SAMPLING:
                options[_SAMPLING[key]] = value
        given = extra.get("options")
        if isinstance(given, Mapping):
            options.update((k, v) for k, v in given.items() if v is not None)
        fields: dict[str, Any] = {}
        for key, value in extra.items():
            if value is None or key in _PROTECTED:
                continue
            if key in OPTION_NAMES:
                options[key] = value
            else:  # keep_alive, think, template, raw, context, suffix, truncate, ...: Ollama decides
                fields[key] = value
        return options, fields

    def _format(self, response_format: Any) -> Any:
        if not response_format:
            return None
        kind = response_format.get("type") if isinstance(response_format, Mapping) else None
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            return "json"
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            return dict(schema) if isinstance(schema, Mapping) else "json"
        raise self._error(f"response_format type must be text, json_object or json_schema, got {kind!r}",
                          "invalid_response_format")

    def message(self, message: Message, names: Mapping[str, str]) -> dict:
        """One message in Ollama's shape: text content plus raw-base64 ``images``."""
        out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
        images: list[str] = []
        if isinstance(message.content, list):
            for part in message.content:
                kind = part.get("type")
                if kind == "image_url":
                    image_url = part.get("image_url")
                    images.append(self._image(image_url.get("url") if isinstance(image_url, Mapping) else image_url))
                elif kind == "image":
                    images.append(self._image(part.get("image")))
                elif kind != "text":
                    raise self._error(f"ollama cannot send a content part of type {kind!r}", "invalid_content")
        out["content"] = content_text(message.content)
        if images:
            out["images"] = images
        if message.tool_calls:
            out["tool_calls"] = [{"function": {"name": c.name, "arguments": tool_arguments(self, c)}}
                                 for c in message.tool_calls]
        if message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "")
            if name:
                out["tool_name"] = name
        return out

    def _tools(self, request: ChatRequest) -> list[dict] | None:
        """OpenAI-style tools travel as they are.  The native API has no
        ``tool_choice``: "none" drops the tools and a named function keeps only
        that one, which is as close as the server allows."""
        tools = request.tools
        choice = request.tool_choice
        if not tools or choice == "none":
            return None
        if isinstance(choice, Mapping) and choice.get("type") == "function":
            wanted = (choice.get("function") or {}).get("name")
            return [t for t in tools if (t.get("function") or {}).get("name") == wanted] or list(tools)
        return list(tools)

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict:
        if not isinstance(request, ChatRequest):
            raise self._error("ollama chat needs a ChatRequest", "invalid_request")
        if request.n is not None and request.n > 1:
            raise self._error(f"ollama returns one answer per call; n must be 1, got {request.n}", "invalid_n")
        names = tool_call_names(request.messages)
        messages = [self.message(m, names) for m in request.messages]
        extra_images = [self._image(i) for i in image_inputs(request.extra.get("image_data"))]
        if extra_images:
            if messages and messages[-1]["role"] == "user":
                messages[-1].setdefault("images", []).extend(extra_images)
            else:
                messages.append({"role": "user", "content": "", "images": extra_images})
        options, fields = self._options_and_fields(request.sampling(), request.extra)
        body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": stream}
        tools = self._tools(request)
        if tools:
            body["tools"] = tools
        fmt = self._format(request.response_format)
        if fmt is not None:
            body["format"] = fmt
        if options:
            body["options"] = options
        body.update(fields)
        return body

    def generate_body(self, request: OperationRequest, *, stream: bool) -> dict:
        """The /api/generate body from ``complete``'s params (prompt, system, suffix, images, ...)."""
        params = op_params(request)
        prompt = params.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise self._error("ollama generate takes one prompt string per call", "invalid_prompt")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise self._error("ollama complete needs a prompt string", "missing_prompt")
        images = [self._image(i) for i in image_inputs(params.pop("images", None))]
        images += [self._image(i) for i in image_inputs(params.pop("image_data", None))]
        sampling = {k: params.pop(k) for k in list(params) if k in _SAMPLING}
        options, fields = self._options_and_fields(sampling, params)
        body: dict[str, Any] = {"model": self._model("complete", request), "prompt": prompt, "stream": stream}
        if images:
            body["images"] = images
        fmt = self._format(params.get("response_format"))
        if fmt is not None:
            body["format"] = fmt
        if options:
            body["options"] = options
        body.update(fields)
        return body

    # -- build ------------------------------------------------------------------------
    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op in ("chat", "stream_chat"):
            stream = op == "stream_chat"
            return http_request(self, "POST", "api/chat", request_id,
                                json_body=self.chat_body(request, stream=stream),  # type: ignore[arg-type]
                                stream="ndjson" if stream else False)
        if op in ("complete", "stream_complete"):
            stream = op == "stream_complete"
            return http_request(self, "POST", "api/generate", request_id,
                                json_body=self.generate_body(request, stream=stream),  # type: ignore[arg-type]
                                stream="ndjson" if stream else False)
        if op == "embed":
            if not isinstance(request, EmbeddingRequest):
                raise self._error("ollama embed needs an EmbeddingRequest", "invalid_request")
            options, fields = self._options_and_fields({}, request.extra)
            body: dict[str, Any] = {"model": request.model, "input": list(request.input)}
            if request.dimensions is not None:
                body["dimensions"] = request.dimensions
            if options:
                body["options"] = options
            body.update(fields)
            return http_request(self, "POST", "api/embed", request_id, json_body=body)
        if op == "models":
            return http_request(self, "GET", "api/tags", request_id)
        if op == "running_models":
            return http_request(self, "GET", "api/ps", request_id)
        if op == "model_info":
            body = {"model": self._model(op, request)}
            if op_params(request).get("verbose"):
                body["verbose"] = True
            return http_request(self, "POST", "api/show", request_id, json_body=body)
        return super().build(op, request, request_id)

    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """``health`` is ``GET /`` ("Ollama is running"); everything else is one call."""
        if op == "health":
            self.require(op)
            return await self.probe_health("/", request_id, transport)
        return await super().execute(op, request, request_id, transport)

    # -- parse ------------------------------------------------------------------------
    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        body = json_object(self, response, op)
        if op in ("chat", "complete"):
            if op == "chat":
                message = body.get("message") if isinstance(body.get("message"), Mapping) else {}
                text, calls = str(message.get("content") or ""), _tool_calls(message)
            else:
                text, calls = str(body.get("response") or ""), []
            return ChatResponse(text=text, model=body.get("model") or getattr(request, "model", None) or "",
                                usage=ollama_usage(body), finish_reason=_finish(body.get("done_reason"), bool(calls)),
                                tool_calls=calls, provider=self.name, endpoint_id=self.endpoint.id, raw=body)
        if op == "embed":
            assert isinstance(request, EmbeddingRequest)
            vectors = body.get("embeddings")
            if not isinstance(vectors, list) or len(vectors) != len(request.input):
                count = len(vectors) if isinstance(vectors, list) else 0
                raise errors.ProviderError(f"ollama returned {count} embeddings for {len(request.input)} inputs",
                                           provider=self.name, endpoint_id=self.endpoint.id)
            usage = Usage(prompt_tokens=int(body.get("prompt_eval_count") or 0),
                          details={k: body[k] for k in _DURATIONS if isinstance(body.get(k), (int, float))})
            return EmbeddingResponse(embeddings=[[float(x) for x in v] for v in vectors],
                                     model=body.get("model") or request.model, usage=usage, provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        if op == "models":
            return [self._tag_info(m) for m in body.get("models") or [] if isinstance(m, Mapping)]
        if op == "running_models":
            models = [self._tag_info(m) for m in body.get("models") or [] if isinstance(m, Mapping)]
            return OperationResponse(op=op, data=models, provider=self.name, endpoint_id=self.endpoint.id,
                                     raw=body)
        if op == "model_info":
            info = self._show_info(self._model(op, request), body)
            return OperationResponse(op=op, data=info, model=info.id, provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        return super().parse(op, request, response)

    def _tag_info(self, item: Mapping) -> ModelInfo:
        """One ``/api/tags`` or ``/api/ps`` entry; ``details`` become the description."""
        details = item.get("details") if isinstance(item.get("details"), Mapping) else {}
        described = " ".join(str(details[k]) for k in ("family", "parameter_size", "quantization_level")
                             if details.get(k))
        family = str(details.get("family") or "")
        return ModelInfo(id=str(item.get("name") or item.get("model") or ""), provider=self.name,
                         endpoint_id=self.endpoint.id, context_window=item.get("context_length"),
                         category="embedding" if family in _EMBEDDING_FAMILIES else "chat",
                         description=described or None, raw=dict(item))

    def _show_info(self, model: str, body: Mapping) -> ModelInfo:
        """``/api/show``: the context length is ``<architecture>.context_length`` in ``model_info``."""
        info = body.get("model_info") if isinstance(body.get("model_info"), Mapping) else {}
        arch = info.get("general.architecture")
        context = info.get(f"{arch}.context_length") if arch else None
        capabilities = body.get("capabilities") or []
        category = ("embedding" if "embedding" in capabilities and "completion" not in capabilities
                    else "vision" if "vision" in capabilities else "chat")
        details = body.get("details") if isinstance(body.get("details"), Mapping) else {}
        described = " ".join(str(details[k]) for k in ("family", "parameter_size", "quantization_level")
                             if details.get(k))
        return ModelInfo(id=model, provider=self.name, endpoint_id=self.endpoint.id,
                         context_window=int(context) if isinstance(context, (int, float)) else None,
                         category=category, description=described or None, raw=dict(body))

    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        if op == "stream_chat":
            return OllamaStreamDecoder(self, "message")
        if op == "stream_complete":
            return OllamaStreamDecoder(self, "response")
        return super().stream_decoder(op, request, response_headers)

    # -- errors -----------------------------------------------------------------------
    def error_message(self, response: HttpResponse) -> tuple[str, str | None, str | None]:
        # ollama.com may echo a rejected token; strip this endpoint's key whatever its shape
        message, etype, code = super().error_message(response)
        return errors.redact(message, [self.api_key or ""]), etype, code

    def stream_error(self, payload: Mapping) -> errors.GatewayError:
        """The typed error for an ``{"error": ...}`` line inside a 200 stream.
        The line has no status, so one is inferred from the text."""
        message = str(payload.get("error") or "").lower()
        status = 404 if "not found" in message else 400 if "context length" in message else 500
        return self.parse_error(HttpResponse(status, {}, json.dumps(payload).encode()))
