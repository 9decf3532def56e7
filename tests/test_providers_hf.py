"""Hugging Face TGI and TEI providers (PROTOCOLS.md sections 6 and 7).

Two halves: pure tests (build() checked as data, parse() and the stream
decoder fed canned bodies, TGI's ``data:`` frames without a space run through
the real SSE framer, batching driven by a scripted in-memory transport), then
the providers through the real Transport against the fake servers, where the
fakes' stats show what went over the wire.
"""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.providers.base import get_provider_class
from ipfs_accelerate_py.providers.hf_tei import TEIProvider, similarity
from ipfs_accelerate_py.providers.hf_tgi import (TGIProvider, generate_parameters, grammar_from_response_format,
                                                 tgi_response_format)
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake
from ipfs_accelerate_py.transport import HttpRequest, HttpResponse, SseDecoder, SseEvent, Transport
from ipfs_accelerate_py.types import (ChatRequest, EmbeddingRequest, OperationRequest, build_chat_request,
                                      build_embedding_request)

KEY = "hf_FAKEtoken0123456789abcdefXYZ"
ODD_KEY = "tgi-secret-Zq81"  # no recognisable shape, never registered: only the provider knows it
MODEL = "mistralai/Mistral-7B-Instruct-v0.2"


class FakeSecret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def endpoint(key: str | None = KEY, **overrides: Any) -> SimpleNamespace:
    fields = dict(id="hf-1", provider="hf_tgi", base_url=None, api_key=FakeSecret(key) if key else None,
                  models=[], default_model=None, timeout_s=30.0, stream_timeout_s=30.0, headers={}, options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


def tgi(**overrides: Any) -> TGIProvider:
    return TGIProvider(endpoint(**overrides))


def tei(**overrides: Any) -> TEIProvider:
    return TEIProvider(endpoint(provider="hf_tei", **overrides))


def response(status: int, body: Any, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def complete(prompt: str = "Hello", **params: Any) -> OperationRequest:
    return OperationRequest(op="complete", model=MODEL, params={"prompt": prompt, **params})


def chat(messages: Any = None, **params: Any) -> ChatRequest:
    return build_chat_request(MODEL, messages or [{"role": "user", "content": "Hi"}], params)


def tgi_frames(*payloads: Any) -> bytes:
    """A /generate_stream body exactly as TGI frames it: ``data:`` with no space."""
    return b"".join(b"data:" + json.dumps(p).encode() + b"\n\n" for p in payloads)


def token_event(index: int, text: str, *, special: bool = False, final: dict | None = None) -> dict:
    event = {"index": index, "token": {"id": index, "text": text, "logprob": -0.1, "special": special},
             "top_tokens": [], "generated_text": None, "details": None}
    if final is not None:
        event.update(final)
    return event


def decode_stream(provider: TGIProvider, body: bytes, request: Any = None, split: int | None = None):
    """Frame ``body`` with the transport's SSE parser (optionally cut into ``split``-byte
    pieces) and run the provider's decoder over it; returns the chunks."""
    framer = SseDecoder()
    pieces = [body] if split is None else [body[i:i + split] for i in range(0, len(body), split)]
    events: list[SseEvent] = []
    for piece in pieces:
        events.extend(framer.feed(piece))
    events.extend(framer.flush())
    decoder = provider.stream_decoder("stream_complete", request or complete(), {})
    chunks = []
    for event in events:
        chunks.extend(decoder.feed(event))
    chunks.extend(decoder.close())
    return chunks


class ScriptedTransport:
    """An in-memory Transport: ``answer(request)`` returns the HttpResponse."""

    def __init__(self, answer: Callable[[HttpRequest], HttpResponse]) -> None:
        self.answer = answer
        self.requests: list[HttpRequest] = []

    async def send(self, request: HttpRequest, *, timeout_s: float | None = None) -> HttpResponse:
        self.requests.append(request)
        return self.answer(request)


# ===========================================================================
# TGI: pure
# ===========================================================================

def test_tgi_registry_and_capabilities():
    assert get_provider_class("hf_tgi") is TGIProvider
    assert get_provider_class("tgi") is TGIProvider
    assert TGIProvider.default_base_url == "http://localhost:8080"
    assert {"chat", "stream_chat", "complete", "stream_complete", "models", "model_info", "health"} \
        == set(TGIProvider.operations)
    with pytest.raises(errors.UnsupportedOperationError) as info:
        tgi().build("embed", EmbeddingRequest(model="m", input=["x"]), None)
    assert "complete" in str(info.value)


def test_generate_body_maps_portable_parameters():
    request = tgi().build("complete", complete("Tell me", max_tokens=40, temperature=0.7, top_p=0.9, top_k=5,
                                               stop="###", seed=3, repetition_penalty=1.1, truncate=100), "rid-1")
    assert request.method == "POST" and request.url == "http://localhost:8080/generate"
    assert request.stream is None
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["X-Request-ID"] == "rid-1"
    assert request.json == {"inputs": "Tell me", "parameters": {
        "max_new_tokens": 40, "temperature": 0.7, "do_sample": True, "top_p": 0.9, "top_k": 5, "stop": ["###"],
        "seed": 3, "repetition_penalty": 1.1, "truncate": 100, "details": True, "return_full_text": False}}


def test_generate_parameters_turn_portable_no_ops_into_what_tgi_accepts():
    # TGI rejects temperature 0, top_p 1 and top_k 0 ("must be strictly positive" / "< 1.0")
    params = generate_parameters({"temperature": 0, "top_p": 1.0, "top_k": 0}, stream=False)
    assert params == {"do_sample": False, "details": True, "return_full_text": False}
    # seed-style nested parameters pass through, loose kwargs win
    params = generate_parameters({"parameters": {"max_new_tokens": 100, "watermark": True}, "max_new_tokens": 7},
                                 stream=True)
    assert params["max_new_tokens"] == 7 and params["watermark"] is True
    assert "best_of" not in generate_parameters({"best_of": 2}, stream=True)
    assert generate_parameters({"best_of": 2}, stream=False)["best_of"] == 2
    with pytest.raises(errors.InvalidRequestError):
        generate_parameters({"temperature": "hot"}, stream=False)


def test_generate_grammar_from_response_format():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    assert grammar_from_response_format(fmt) == {"type": "json", "value": schema}
    assert grammar_from_response_format({"type": "json_object"}) == {"type": "json", "value": {"type": "object"}}
    assert grammar_from_response_format({"type": "regex", "value": "[0-9]+"}) == {"type": "regex", "value": "[0-9]+"}
    assert grammar_from_response_format({"type": "text"}) is None
    with pytest.raises(errors.InvalidRequestError):
        grammar_from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    body = tgi().build("complete", complete(response_format=fmt), None).json
    assert body["parameters"]["grammar"] == {"type": "json", "value": schema}
    assert "response_format" not in body["parameters"]


def test_stream_complete_goes_to_generate_stream_as_sse():
    request = tgi().build("stream_complete", complete(max_tokens=5), None)
    assert request.url == "http://localhost:8080/generate_stream"
    assert request.stream == "sse" and request.headers["Accept"] == "text/event-stream"
    assert "stream" not in request.json


def test_complete_needs_one_prompt():
    for bad in ("", ["a", "b"], None, 3):
        with pytest.raises(errors.InvalidRequestError):
            tgi().build("complete", OperationRequest(op="complete", model=MODEL, params={"prompt": bad}), None)
    assert tgi().build("complete", complete(["only one"]), None).json["inputs"] == "only one"
    with pytest.raises(errors.InvalidRequestError):
        tgi().build("complete", complete(n=2), None)


def test_no_key_no_authorization_header():
    request = tgi(key=None).build("complete", complete(), None)
    assert "Authorization" not in request.headers


def test_templated_base_url_names_the_model_per_request():
    hosted = "https://router.huggingface.co/hf-inference/models/{model}"
    provider = tgi(base_url=hosted)
    generate = provider.build("complete", complete(), None)
    assert generate.url == f"https://router.huggingface.co/hf-inference/models/{MODEL}"
    assert generate.json["stream"] is False  # the root compat route switches on it
    stream = provider.build("stream_complete", complete(), None)
    assert stream.url == generate.url and stream.json["stream"] is True and stream.stream == "sse"
    chat_request = provider.build("chat", chat(), None)
    assert chat_request.url == f"https://router.huggingface.co/hf-inference/models/{MODEL}/v1/chat/completions"
    # operations without a model use the endpoint's default
    models = tgi(base_url=hosted, default_model="org/other").build("models", OperationRequest(op="models"), None)
    assert models.url.endswith("/models/org/other/v1/models")
    with pytest.raises(errors.InvalidRequestError):
        provider.build("models", OperationRequest(op="models"), None)


def test_chat_uses_messages_api_with_tgi_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = tgi().build("chat", chat(response_format={"type": "json_object"}, top_k=4, max_tokens=9), None)
    assert request.url == "http://localhost:8080/v1/chat/completions"
    body = request.json
    assert body["response_format"] == {"type": "json_object", "value": {"type": "object"}}
    assert "top_k" not in body and body["max_tokens"] == 9
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    assert tgi().build("chat", chat(response_format=fmt), None).json["response_format"] == {
        "type": "json_schema", "value": {"name": "n", "schema": schema, "strict": True}}
    assert "response_format" not in tgi().build("chat", chat(response_format={"type": "text"}), None).json
    native = {"type": "regex", "value": "yes|no"}
    assert tgi_response_format(native) == native
    stream = tgi().build("stream_chat", chat(), None)
    assert stream.json["stream"] is True and stream.json["stream_options"] == {"include_usage": True}


def test_parse_generate_object_and_compat_list():
    body = {"generated_text": " Paris.", "details": {"finish_reason": "eos_token", "generated_tokens": 3,
                                                     "seed": None, "prefill": [], "tokens": []}}
    headers = {"x-prompt-tokens": "7", "x-generated-tokens": "3"}
    for raw in (body, [body]):
        result = tgi().parse("complete", complete(), response(200, raw, headers))
        assert result.text == " Paris." and result.finish_reason == "stop"
        assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (7, 3, 10)
        assert result.model == MODEL and result.provider == "hf_tgi"
    cut = {"generated_text": "a b", "details": {"finish_reason": "length", "generated_tokens": 2}}
    assert tgi().parse("complete", complete(), response(200, cut)).truncated
    with pytest.raises(errors.ProviderError):
        tgi().parse("complete", complete(), response(200, {"details": {}}))


def test_stream_decoder_reads_tgi_frames_without_space():
    final = {"generated_text": "Hello world", "details": {"finish_reason": "eos_token", "generated_tokens": 3,
                                                          "input_length": 4, "seed": None}}
    body = tgi_frames(token_event(1, "Hello"), token_event(2, " world"),
                      token_event(3, "</s>", special=True, final=final))
    assert body.startswith(b'data:{"index"')  # really no space
    for split in (None, 1, 7):
        chunks = decode_stream(tgi(), body, split=split)
        assert "".join(c.text for c in chunks) == "Hello world"  # the special token is not text
        last = chunks[-1]
        assert last.done and last.finish_reason == "stop"
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 3)
        assert [c.done for c in chunks].count(True) == 1


def test_stream_without_final_event_is_a_retryable_error():
    body = tgi_frames(token_event(1, "Hello"), token_event(2, " wor"))
    with pytest.raises(errors.ProviderError) as info:
        decode_stream(tgi(), body)
    assert info.value.retryable and "generated_text" in str(info.value)
    assert not isinstance(info.value, errors.StreamInterruptedError)


@pytest.mark.parametrize("payload, cls, status, retryable", [
    ({"error": "Request failed during generation: CUDA OOM", "error_type": "generation"},
     errors.ProviderError, 424, True),
    ({"error": "Model is overloaded", "error_type": "overloaded"}, errors.ProviderOverloadedError, 429, True),
    ({"error": "Input validation error: `inputs` must have less than 10 tokens. Given: 12",
      "error_type": "validation"}, errors.ContextLengthError, 422, False),
    ({"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"},
     errors.ProviderError, 500, True),
])
def test_stream_error_events_are_typed(payload, cls, status, retryable):
    body = tgi_frames(token_event(1, "Hi"), payload)
    with pytest.raises(errors.GatewayError) as info:
        decode_stream(tgi(), body)
    assert type(info.value) is cls
    assert info.value.status == status and info.value.retryable is retryable
    assert info.value.provider == "hf_tgi" and info.value.endpoint_id == "hf-1"


@pytest.mark.parametrize("status, body, cls, retryable", [
    (422, {"error": "Input validation error: `temperature` must be strictly positive", "error_type": "validation"},
     errors.InvalidRequestError, False),
    (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 "
                    "`inputs` tokens and 1024 `max_new_tokens`", "error_type": "validation"},
     errors.ContextLengthError, False),
    (422, {"error": "Template error: unknown role", "error_type": "template_error"},
     errors.InvalidRequestError, False),
    (422, b"Failed to deserialize the JSON body into the target type: response_format: missing field `value`",
     errors.InvalidRequestError, False),
    (424, {"error": "Request failed during generation", "error_type": "generation"}, errors.ProviderError, True),
    (429, {"error": "Model is overloaded", "error_type": "overloaded"}, errors.ProviderOverloadedError, True),
    (500, {"error": "Incomplete generation", "error_type": "incomplete_generation"}, errors.ProviderError, True),
    (503, {"error": "unhealthy", "error_type": "healthcheck"}, errors.ProviderError, True),
    (401, b"", errors.AuthenticationError, False),
    (404, {"error": "Model foo/bar does not exist"}, errors.UnknownModelError, False),
])
def test_tgi_error_mapping(status, body, cls, retryable):
    err = tgi().parse_error(response(status, body))
    assert type(err) is cls, err
    assert err.status == status and err.retryable is retryable
    assert err.message.startswith(cls.prefix)
    assert err.retry_after is None  # TGI's 429 sends no Retry-After: the router backs off


def test_tgi_hosted_model_loading_uses_estimated_time():
    err = tgi().parse_error(response(503, {"error": "Model x is currently loading", "estimated_time": 20.5}))
    assert err.retryable and err.retry_after == 20.5


def test_tgi_chat_stream_errors_in_both_shapes():
    provider = tgi()
    openai_shaped = provider.stream_error({"error": {"message": "bad", "http_status_code": 422}})
    assert isinstance(openai_shaped, errors.InvalidRequestError) and openai_shaped.status == 422
    native = provider.stream_error({"error": "Model is overloaded", "error_type": "overloaded"})
    assert isinstance(native, errors.ProviderOverloadedError) and native.status == 429


def test_tgi_parse_model_info_and_models():
    info = {"model_id": MODEL, "model_pipeline_tag": "text-generation", "max_input_tokens": 4095,
            "max_total_tokens": 4096, "max_client_batch_size": 4, "version": "3.3.6"}
    result = tgi().parse("model_info", OperationRequest(op="model_info"), response(200, info))
    assert result.data.id == MODEL and result.data.context_window == 4096
    assert result.data.category == "text-generation" and result.raw["max_client_batch_size"] == 4
    assert tgi().build("model_info", OperationRequest(op="model_info"), None).url.endswith("/info")
    listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": MODEL}]}
    models = tgi().parse("models", OperationRequest(op="models"), response(200, listing))
    assert [m.id for m in models] == [MODEL]
    assert tgi().build("models", OperationRequest(op="models"), None).url.endswith("/v1/models")


def test_tgi_key_never_in_errors_or_reprs():
    provider = tgi(key=ODD_KEY)
    request = provider.build("complete", complete(), None)
    err = provider.parse_error(response(401, {"error": f"bad token {ODD_KEY}", "error_type": "validation"}))
    assert isinstance(err, errors.AuthenticationError)
    for text in (repr(provider), repr(request), str(err), repr(err), json.dumps(err.to_dict())):
        assert ODD_KEY not in text


# ===========================================================================
# TEI: pure
# ===========================================================================

def test_tei_registry_and_capabilities():
    assert get_provider_class("hf_tei") is TEIProvider and get_provider_class("tei") is TEIProvider
    assert TEIProvider.max_embed_batch == 32
    assert set(TEIProvider.operations) == {"embed", "rerank", "model_info", "health"}
    assert "stream_chat" not in TEIProvider.operations


def test_similarity_is_cosine():
    assert similarity([1, 0], [1, 0]) == pytest.approx(1.0)
    assert similarity([1, 0], [0, 2]) == pytest.approx(0.0)
    assert similarity([1, 1], [-1, -1]) == pytest.approx(-1.0)
    assert similarity([3, 4], [6, 8]) == pytest.approx(1.0)
    assert similarity([0, 0], [1, 0]) == 0.0
    with pytest.raises(ValueError):
        similarity([1, 0, 0], [1, 0])


def test_tei_embed_body():
    request = build_embedding_request("bge", ["a", "b"], {"dimensions": 64, "truncate": True,
                                                          "truncation_direction": "Left", "prompt_name": "query"})
    body = tei().embed_body(request, ["a", "b"])
    assert body == {"inputs": ["a", "b"], "normalize": True, "dimensions": 64, "truncate": True,
                    "truncation_direction": "Left", "prompt_name": "query"}
    request = build_embedding_request("bge", ["a"], {"normalize": False})
    assert tei().embed_body(request, ["a"])["normalize"] is False


def test_tei_batch_size_option_is_validated():
    assert tei(options={"max_client_batch_size": 8}).client_batch_size == 8
    with pytest.raises(errors.ConfigError):
        tei(options={"max_client_batch_size": 0})


def test_tei_smaller_batch_rules():
    provider = tei()
    limit = {"error": "batch size 40 > maximum allowed batch size 16", "error_type": "Validation"}
    assert provider.smaller_batch(response(422, limit), 40) == 16
    assert provider.client_batch_size == 16  # remembered for later calls
    assert tei().smaller_batch(response(413, limit), 40) == 16  # TEI before 1.9 said 413
    plain = b"Failed to buffer the request body: length limit exceeded"
    provider = tei(options={"max_client_batch_size": 32})
    assert provider.smaller_batch(response(413, plain), 32) == 16
    assert provider.client_batch_size == 32  # a payload limit depends on the texts: not remembered
    assert tei().smaller_batch(response(413, plain), 1) is None
    too_long = {"error": "`inputs` must have less than 512 tokens. Given: 600", "error_type": "Validation"}
    assert tei().smaller_batch(response(422, too_long), 8) is None
    assert tei().smaller_batch(response(424, limit), 40) is None


@pytest.mark.parametrize("status, body, cls, retryable", [
    (422, {"error": "batch size 40 > maximum allowed batch size 32", "error_type": "Validation"},
     errors.InvalidRequestError, False),
    (422, {"error": "`inputs` must have less than 512 tokens. Given: 600", "error_type": "Validation"},
     errors.ContextLengthError, False),
    (422, {"error": "tokenizer error", "error_type": "Tokenizer"}, errors.InvalidRequestError, False),
    (400, {"error": "Batch is empty", "error_type": "Empty"}, errors.InvalidRequestError, False),
    (424, {"error": "Inference failed", "error_type": "Backend"}, errors.ProviderError, True),
    (424, {"error": "Backend error: model is not a re-ranker model", "error_type": "Backend"},
     errors.UnsupportedOperationError, False),
    (429, {"error": "Model is overloaded", "error_type": "Overloaded"}, errors.ProviderOverloadedError, True),
    (503, {"error": "unhealthy", "error_type": "Unhealthy"}, errors.ProviderError, True),
    (413, b"Failed to buffer the request body: length limit exceeded", errors.InvalidRequestError, False),
    (401, b"", errors.AuthenticationError, False),
])
def test_tei_error_mapping_is_case_insensitive(status, body, cls, retryable):
    err = tei().parse_error(response(status, body))
    assert type(err) is cls, err
    assert err.status == status and err.retryable is retryable
    if isinstance(body, dict):
        lowered = dict(body, error_type=body["error_type"].lower())
        assert type(tei().parse_error(response(status, lowered))) is cls


def _fake_tei(limit: int, calls: list[list[str]], *, status: int = 422, with_tokens: bool = True):
    """An in-memory TEI: /info says ``limit``; /embed enforces it and embeds text i as [len, i]."""
    def answer(request: HttpRequest) -> HttpResponse:
        if request.url.endswith("/info"):
            return response(200, {"model_id": "m", "max_client_batch_size": limit})
        inputs = request.json["inputs"]
        calls.append(list(inputs))
        if len(inputs) > limit:
            return response(status, {"error": f"batch size {len(inputs)} > maximum allowed batch size {limit}",
                                     "error_type": "Validation"})
        vectors = [[float(len(t)), float(t.split("-")[1])] for t in inputs]
        headers = {"x-compute-tokens": str(2 * len(inputs))} if with_tokens else {}
        return response(200, vectors, headers)
    return answer


def test_tei_embed_learns_the_limit_from_info_and_keeps_order():
    calls: list[list[str]] = []
    transport = ScriptedTransport(_fake_tei(8, calls))
    provider = tei()
    texts = [f"t-{i}" for i in range(20)]
    result, _ = asyncio.run(provider.execute("embed", build_embedding_request("m", texts, {}), "r", transport))
    assert [len(c) for c in calls] == [8, 8, 4]
    assert [v[1] for v in result.embeddings] == list(range(20))
    assert result.raw["upstream_calls"] == 3
    assert result.usage.prompt_tokens == 40 and "estimated" not in result.usage.details
    assert sum(r.url.endswith("/info") for r in transport.requests) == 1
    # the limit is cached per provider instance: no second /info
    asyncio.run(provider.execute("embed", build_embedding_request("m", texts[:3], {}), "r", transport))
    assert sum(r.url.endswith("/info") for r in transport.requests) == 1


@pytest.mark.parametrize("status", [422, 413])
def test_tei_batch_size_rejection_splits_smaller(status):
    calls: list[list[str]] = []
    provider = tei(options={"max_client_batch_size": 32})  # configured too high for this server
    transport = ScriptedTransport(_fake_tei(10, calls, status=status, with_tokens=False))
    texts = [f"t-{i}" for i in range(45)]
    result, _ = asyncio.run(provider.execute("embed", build_embedding_request("m", texts, {}), None, transport))
    assert [len(c) for c in calls] == [32, 10, 10, 10, 10, 5]
    assert [v[1] for v in result.embeddings] == list(range(45))
    assert not any(r.url.endswith("/info") for r in transport.requests)  # configured: /info not needed
    assert result.usage.details == {"estimated": True} and result.usage.prompt_tokens > 0
    assert provider.client_batch_size == 10


def test_tei_info_failure_falls_back_to_default_batch():
    calls: list[list[str]] = []
    inner = _fake_tei(100, calls)

    def answer(request: HttpRequest) -> HttpResponse:
        return response(404, b"") if request.url.endswith("/info") else inner(request)

    texts = [f"t-{i}" for i in range(40)]
    asyncio.run(tei().execute("embed", build_embedding_request("m", texts, {}), None, ScriptedTransport(answer)))
    assert [len(c) for c in calls] == [32, 8]


def test_tei_embed_rejects_short_answers():
    def answer(request: HttpRequest) -> HttpResponse:
        return response(200, [[0.1, 0.2]])  # one vector for two inputs

    with pytest.raises(errors.ProviderError):
        asyncio.run(tei(options={"max_client_batch_size": 4}).execute(
            "embed", build_embedding_request("m", ["a", "b"], {}), None, ScriptedTransport(answer)))


def test_tei_rerank_splits_and_merges_sorted():
    calls: list[dict] = []

    def answer(request: HttpRequest) -> HttpResponse:
        calls.append(request.json)
        texts = request.json["texts"]
        if len(texts) > 2:
            return response(422, {"error": f"batch size {len(texts)} > maximum allowed batch size 2",
                                  "error_type": "Validation"})
        ranks = [{"index": i, "score": float(t.count("cat")), "text": t} for i, t in enumerate(texts)]
        return response(200, sorted(ranks, key=lambda r: -r["score"]))

    texts = ["dog", "cat cat cat", "cat", "bird", "cat cat"]
    request = OperationRequest(op="rerank", model="rr", params={"query": "cat", "texts": texts, "return_text": True})
    result, _ = asyncio.run(tei(options={"max_client_batch_size": 8}).execute(
        "rerank", request, None, ScriptedTransport(answer)))
    assert [r["index"] for r in result.data] == [1, 4, 2, 0, 3]
    assert [r["text"] for r in result.data] == ["cat cat cat", "cat cat", "cat", "dog", "bird"]
    assert [len(c["texts"]) for c in calls] == [5, 2, 2, 1]
    assert all(c["query"] == "cat" and c["return_text"] is True for c in calls)
    assert result.usage.details["estimated"] is True


def test_tei_rerank_validates_arguments():
    for params in ({"query": "", "texts": ["a"]}, {"query": "q", "texts": []}, {"query": "q"},
                   {"query": "q", "texts": ["a", 3]}):
        with pytest.raises(errors.InvalidRequestError):
            asyncio.run(tei().execute("rerank", OperationRequest(op="rerank", model="m", params=params), None,
                                      ScriptedTransport(lambda r: response(500, b""))))


def test_tei_key_never_in_errors_or_reprs():
    provider = tei(key=ODD_KEY)
    err = provider.parse_error(response(422, {"error": f"token {ODD_KEY} rejected", "error_type": "Validation"}))
    request = provider.build("model_info", OperationRequest(op="model_info"), None)
    for text in (repr(provider), repr(request), str(err), repr(err)):
        assert ODD_KEY not in text


# ===========================================================================
# Through the real Transport, against the fake servers
# ===========================================================================

@pytest.fixture(scope="module")
def tgi_fake() -> FakeHandle:
    handle = start_fake("hf_tgi")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def tei_fake() -> FakeHandle:
    handle = start_fake("hf_tei")
    yield handle
    handle.stop()


@pytest.fixture
def fake_tgi(tgi_fake: FakeHandle) -> FakeHandle:
    tgi_fake.reset(valid_keys=[])
    return tgi_fake


@pytest.fixture
def fake_tei(tei_fake: FakeHandle) -> FakeHandle:
    tei_fake.reset(valid_keys=[])
    return tei_fake


def run(coro_fn: Callable[[Transport], Any]) -> Any:
    async def main() -> Any:
        async with Transport(timeout_s=20.0) as transport:
            return await coro_fn(transport)
    return asyncio.run(main())


async def execute(provider: Any, op: str, request: Any, transport: Transport) -> Any:
    result, _ = await provider.execute(op, request, "req-test", transport)
    return result


async def collect(provider: Any, op: str, request: Any, transport: Transport) -> list:
    return [chunk async for chunk in provider.stream(op, request, "req-test", transport)]


def test_tgi_generate_and_stream_agree(fake_tgi):
    provider = tgi(base_url=fake_tgi.base_url, key=None)
    result = run(lambda t: execute(provider, "complete", complete("the weather", max_tokens=50), t))
    assert result.text == "Echo: the weather" and result.finish_reason == "stop"
    assert result.usage.prompt_tokens == 2 and result.usage.completion_tokens > 0
    chunks = run(lambda t: collect(provider, "stream_complete", complete("the weather", max_tokens=50), t))
    assert "".join(c.text for c in chunks) == result.text
    assert chunks[-1].done and chunks[-1].usage.prompt_tokens == 2
    assert chunks[-1].usage.completion_tokens == result.usage.completion_tokens
    assert len([c for c in chunks if c.text]) > 2  # one event per token
    stats = fake_tgi.stats()
    assert stats["by_path"] == {"/generate": 1, "/generate_stream": 1}


def test_tgi_generate_limits_and_stops(fake_tgi):
    provider = tgi(base_url=fake_tgi.base_url, key=None)
    cut = run(lambda t: execute(provider, "complete", complete("one two three four five six", max_tokens=3), t))
    assert cut.finish_reason == "length" and cut.usage.completion_tokens == 3
    stopped = run(lambda t: execute(provider, "complete", complete("alpha beta", stop=["beta"]), t))
    assert stopped.text == "Echo: alpha beta" and stopped.finish_reason == "stop"
    greedy = run(lambda t: execute(provider, "complete", complete("x", temperature=0, top_p=1.0), t))
    assert greedy.text == "Echo: x"  # accepted: the provider did not send what TGI rejects
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    constrained = run(lambda t: execute(provider, "complete", complete("Weather in Paris", response_format=fmt), t))
    assert set(json.loads(constrained.text)) == {"city"}


def test_tgi_chat_and_stream_chat(fake_tgi):
    provider = tgi(base_url=fake_tgi.base_url, key=None)
    result = run(lambda t: execute(provider, "chat", chat([{"role": "system", "content": "be brief"},
                                                           {"role": "user", "content": "hi there"}]), t))
    assert result.text == "Echo: hi there" and result.finish_reason == "stop"
    assert result.usage.prompt_tokens > 0 and result.model == MODEL
    chunks = run(lambda t: collect(provider, "stream_chat", chat([{"role": "user", "content": "hi there"}]), t))
    assert "".join(c.text for c in chunks) == "Echo: hi there"
    assert chunks[-1].done and chunks[-1].usage.completion_tokens == result.usage.completion_tokens
    as_json = run(lambda t: execute(provider, "chat", chat(response_format={"type": "json_object"}), t))
    assert isinstance(json.loads(as_json.text), dict)


def test_tgi_fake_rejects_openai_bare_json_object(fake_tgi):
    async def raw(transport: Transport) -> HttpResponse:
        request = HttpRequest("POST", fake_tgi.base_url + "/v1/chat/completions", json={
            "model": "tgi", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})
        return await transport.send(request)
    answer = run(raw)
    assert answer.status == 422 and b"value" in answer.body
    err = tgi().parse_error(answer)
    assert isinstance(err, errors.InvalidRequestError) and not err.retryable


def test_tgi_context_length_and_validation_errors(fake_tgi):
    fake_tgi.controls(options={"max_input_tokens": 5, "max_total_tokens": 20})
    provider = tgi(base_url=fake_tgi.base_url, key=None)
    long_prompt = "one two three four five six seven eight"
    with pytest.raises(errors.ContextLengthError) as info:
        run(lambda t: execute(provider, "complete", complete(long_prompt), t))
    assert info.value.status == 422
    with pytest.raises(errors.ContextLengthError):
        run(lambda t: execute(provider, "chat", chat([{"role": "user", "content": long_prompt}]), t))
    with pytest.raises(errors.ContextLengthError):
        run(lambda t: execute(provider, "complete", complete("short", max_tokens=50), t))
    with pytest.raises(errors.InvalidRequestError):
        run(lambda t: execute(provider, "complete", complete("x", stop=["a", "b", "c", "d", "e"]), t))


def test_tgi_overload_is_an_immediate_429(fake_tgi):
    """One permit: while a stalled stream holds it, the next request is refused at once."""
    fake_tgi.controls(options={"max_concurrent_requests": 1},
                      faults=[{"kind": "stall_mid_stream", "path": "/generate_stream", "after_chunks": 1}])
    provider = tgi(base_url=fake_tgi.base_url, key=None)

    async def scenario(transport: Transport) -> errors.GatewayError:
        stream = provider.stream("stream_complete", complete("hold the permit please"), None, transport)
        first = await stream.__anext__()  # the permit is held from here on
        assert first.text
        try:
            await execute(provider, "complete", complete("second"), transport)
        except errors.GatewayError as exc:
            return exc
        finally:
            await stream.aclose()
        raise AssertionError("the second request was admitted")

    err = run(scenario)
    assert isinstance(err, errors.ProviderOverloadedError)
    assert err.status == 429 and err.retryable and err.retry_after is None


def test_tgi_mid_stream_error_and_cut_stream(fake_tgi):
    provider = tgi(base_url=fake_tgi.base_url, key=None)
    fake_tgi.controls(faults=[{"kind": "error_mid_stream", "after_chunks": 2, "count": 1}])
    with pytest.raises(errors.ProviderError) as info:
        run(lambda t: collect(provider, "stream_complete", complete("a b c d e f g"), t))
    assert info.value.status == 424 and info.value.code == "generation"
    fake_tgi.controls(faults=[{"kind": "drop_mid_stream", "after_chunks": 2, "count": 1}])
    with pytest.raises(errors.GatewayError) as info:
        run(lambda t: collect(provider, "stream_complete", complete("a b c d e f g"), t))
    assert info.value.retryable  # a cut stream is never a short answer


def test_tgi_auth_only_on_inference_routes(fake_tgi):
    secret = "tgi-Key-For-Tests-123"
    fake_tgi.controls(valid_keys=[secret])
    anonymous = tgi(base_url=fake_tgi.base_url, key=None)
    with pytest.raises(errors.AuthenticationError) as info:
        run(lambda t: execute(anonymous, "complete", complete(), t))
    assert info.value.status == 401
    info_result = run(lambda t: execute(anonymous, "model_info", OperationRequest(op="model_info"), t))
    assert info_result.data.id == MODEL  # /info stays open
    assert run(lambda t: execute(anonymous, "health", OperationRequest(op="health"), t)).data is True
    other_case = tgi(base_url=fake_tgi.base_url, key=secret.upper())  # TGI compares ignoring case
    assert run(lambda t: execute(other_case, "complete", complete(), t)).text == "Echo: Hello"
    wrong = tgi(base_url=fake_tgi.base_url, key=ODD_KEY)
    with pytest.raises(errors.AuthenticationError) as info:
        run(lambda t: execute(wrong, "chat", chat(), t))
    assert ODD_KEY not in str(info.value) and ODD_KEY not in repr(info.value)


def test_tgi_hosted_router_url(fake_tgi):
    hosted = fake_tgi.root_url + "/hf-inference/models/{model}"
    provider = tgi(base_url=hosted)
    result = run(lambda t: execute(provider, "complete", complete("hosted call"), t))
    assert result.text == "Echo: hosted call" and result.usage.completion_tokens > 0
    chunks = run(lambda t: collect(provider, "stream_complete", complete("hosted call"), t))
    assert "".join(c.text for c in chunks) == "Echo: hosted call"
    assert run(lambda t: execute(provider, "chat", chat(), t)).text == "Echo: Hi"
    assert fake_tgi.stats()["by_path"] == {f"/hf-inference/models/{MODEL}": 2,
                                           f"/hf-inference/models/{MODEL}/v1/chat/completions": 1}
    missing = OperationRequest(op="complete", model="org/none", params={"prompt": "x"})
    with pytest.raises(errors.UnknownModelError):
        run(lambda t: execute(provider, "complete", missing, t))


def test_tgi_health_models_and_info(fake_tgi):
    provider = tgi(base_url=fake_tgi.base_url, key=None)
    assert [m.id for m in run(lambda t: execute(provider, "models", OperationRequest(op="models"), t))] == [MODEL]
    fake_tgi.controls(options={"healthy": False})
    unhealthy = run(lambda t: execute(provider, "health", OperationRequest(op="health"), t))
    assert unhealthy.data is False and unhealthy.raw["status"] == 503


def test_tei_embed_70_inputs_in_three_calls(fake_tei):
    provider = tei(base_url=fake_tei.base_url, key=None)
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(70)]
    result = run(lambda t: execute(provider, "embed", build_embedding_request("bge", texts, {}), t))
    stats = fake_tei.stats()
    assert stats["by_path"] == {"/info": 1, "/embed": 3}
    assert len(result.embeddings) == 70 and len(result.embeddings[0]) == 384
    # order: each vector is the one the server gives that text alone
    singles = run(lambda t: execute(provider, "embed", build_embedding_request("bge", [texts[0], texts[69]], {}), t))
    assert np.allclose(result.embeddings[0], singles.embeddings[0])
    assert np.allclose(result.embeddings[69], singles.embeddings[1])
    assert np.linalg.norm(result.embeddings[5]) == pytest.approx(1.0, abs=1e-5)  # normalize defaults to true
    assert result.usage.prompt_tokens > 70 and "estimated" not in result.usage.details  # x-compute-tokens


def test_tei_batch_size_reply_triggers_smaller_split(fake_tei):
    fake_tei.controls(options={"max_client_batch_size": 10})
    provider = tei(base_url=fake_tei.base_url, key=None, options={"max_client_batch_size": 32})
    texts = [f"t{i}" for i in range(25)]
    result = run(lambda t: execute(provider, "embed", build_embedding_request("bge", texts, {}), t))
    assert len(result.embeddings) == 25 and result.raw["upstream_calls"] == 4
    assert fake_tei.stats()["by_status"] == {"200": 3, "422": 1}
    fake_tei.reset(options={"max_client_batch_size": 10, "batch_size_status": 413})  # a TEI before 1.9
    provider = tei(base_url=fake_tei.base_url, key=None, options={"max_client_batch_size": 32})
    run(lambda t: execute(provider, "embed", build_embedding_request("bge", texts, {}), t))
    assert fake_tei.stats()["by_status"] == {"200": 3, "413": 1}


def test_tei_payload_limit_halves_the_batch(fake_tei):
    fake_tei.controls(options={"payload_limit": 600})
    provider = tei(base_url=fake_tei.base_url, key=None)
    texts = [f"{i:03d} " + "x" * 40 for i in range(16)]
    result = run(lambda t: execute(provider, "embed", build_embedding_request("bge", texts, {}), t))
    assert len(result.embeddings) == 16
    assert fake_tei.stats()["by_status"]["413"] >= 1
    with pytest.raises(errors.InvalidRequestError) as info:  # one input alone too big: no split helps
        run(lambda t: execute(provider, "embed", build_embedding_request("bge", ["y" * 800], {}), t))
    assert info.value.status == 413


def test_tei_options_and_errors_through_the_fake(fake_tei):
    provider = tei(base_url=fake_tei.base_url, key=None)
    short = run(lambda t: execute(provider, "embed", build_embedding_request("bge", ["abc"], {"dimensions": 32}), t))
    assert len(short.embeddings[0]) == 32
    raw = run(lambda t: execute(provider, "embed", build_embedding_request("bge", ["abc def"], {"normalize": False}), t))
    assert np.linalg.norm(raw.embeddings[0]) > 1.01
    fake_tei.controls(options={"max_input_length": 4})
    with pytest.raises(errors.ContextLengthError):
        run(lambda t: execute(provider, "embed", build_embedding_request("bge", ["a b c d e f g h"], {}), t))
    cut = run(lambda t: execute(provider, "embed", build_embedding_request("bge", ["a b c d e f g h"],
                                                                           {"truncate": True}), t))
    assert len(cut.embeddings) == 1
    with pytest.raises(errors.UnsupportedOperationError):  # an embedding model cannot rerank
        run(lambda t: execute(provider, "rerank", OperationRequest(op="rerank", model="m",
                                                                   params={"query": "q", "texts": ["a"]}), t))


def test_tei_rerank_through_the_fake(fake_tei):
    fake_tei.controls(options={"model_type": "reranker", "max_client_batch_size": 3})
    provider = tei(base_url=fake_tei.base_url, key=None)
    texts = ["cats purr", "stock markets fell", "a cat sleeps", "rain tomorrow", "my cat", "cats and dogs", "tax"]
    request = OperationRequest(op="rerank", model="rr", params={"query": "cat", "texts": texts, "return_text": True})
    result = run(lambda t: execute(provider, "rerank", request, t))
    assert sorted(r["index"] for r in result.data) == list(range(7))
    scores = [r["score"] for r in result.data]
    assert scores == sorted(scores, reverse=True)
    assert all(r["text"] == texts[r["index"]] for r in result.data)
    assert fake_tei.stats()["by_path"]["/rerank"] == 3
    fake_tei.controls(options={"max_client_batch_size": 32})
    whole = run(lambda t: execute(tei(base_url=fake_tei.base_url, key=None), "rerank", request, t))
    assert [(r["index"], r["score"]) for r in whole.data] == [(r["index"], r["score"]) for r in result.data]


def test_tei_info_health_auth_and_overload(fake_tei):
    secret = "tei-key-for-tests-0001"
    fake_tei.controls(valid_keys=[secret])
    anonymous = tei(base_url=fake_tei.base_url, key=None)
    info = run(lambda t: execute(anonymous, "model_info", OperationRequest(op="model_info"), t))
    assert info.data.category == "embedding" and info.data.context_window == 512
    assert anonymous.client_batch_size == 32  # learned from /info
    assert run(lambda t: execute(anonymous, "health", OperationRequest(op="health"), t)).data is True
    with pytest.raises(errors.AuthenticationError):
        run(lambda t: execute(anonymous, "embed", build_embedding_request("bge", ["x"], {}), t))
    with pytest.raises(errors.AuthenticationError):  # TEI compares keys exactly
        run(lambda t: execute(tei(base_url=fake_tei.base_url, key=secret.upper()), "embed",
                              build_embedding_request("bge", ["x"], {}), t))
    keyed = tei(base_url=fake_tei.base_url, key=secret)
    assert len(run(lambda t: execute(keyed, "embed", build_embedding_request("bge", ["x"], {}), t)).embeddings) == 1
    fake_tei.controls(faults=[{"kind": "status", "status": 429, "count": 1,
                               "body": {"error": "Model is overloaded", "error_type": "Overloaded"}}])
    with pytest.raises(errors.ProviderOverloadedError) as overload:
        run(lambda t: execute(keyed, "embed", build_embedding_request("bge", ["x"], {}), t))
    assert overload.value.status == 429 and overload.value.retryable
    fake_tei.controls(options={"healthy": False})
    assert run(lambda t: execute(anonymous, "health", OperationRequest(op="health"), t)).data is False
