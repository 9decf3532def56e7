"""The LLVM-style inference server provider (PROTOCOLS.md section 11).

Pure tests check build() as data and parse() on canned bodies; the second
half runs the provider through the real Transport against the fake server.
"""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.providers.base import get_provider_class
from ipfs_accelerate_py.providers.llvm import LLVMProvider, output_text, render_prompt
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake
from ipfs_accelerate_py.transport import HttpRequest, HttpResponse, Transport
from ipfs_accelerate_py.types import (ChatRequest, Message, ModelInfo, OperationRequest, build_chat_request)

KEY = "llvm-Secret-Key-0042"


class FakeSecret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def endpoint(key: str | None = KEY, **overrides: Any) -> SimpleNamespace:
    fields = dict(id="llvm-1", provider="llvm", base_url=None, api_key=FakeSecret(key) if key else None,
                  models=[], default_model="llvm-model-1", timeout_s=30.0, stream_timeout_s=30.0, headers={},
                  options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


def provider(**overrides: Any) -> LLVMProvider:
    return LLVMProvider(endpoint(**overrides))


def response(status: int, body: Any, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def infer(model: str | None = "llvm-model-1", **params: Any) -> OperationRequest:
    return OperationRequest(op="infer", model=model, params=params)


def chat(messages: Any = None, model: str = "llvm-model-1", **params: Any) -> ChatRequest:
    return build_chat_request(model, messages or [{"role": "user", "content": "Hi"}], params)


MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is machine learning?"}]


class ScriptedTransport:
    def __init__(self, answer: Callable[[HttpRequest], HttpResponse]) -> None:
        self.answer = answer
        self.requests: list[HttpRequest] = []

    async def send(self, request: HttpRequest, *, timeout_s: float | None = None) -> HttpResponse:
        self.requests.append(request)
        return self.answer(request)


# ---------------------------------------------------------------------------
# Pure
# ---------------------------------------------------------------------------

def test_registry_and_capabilities():
    assert get_provider_class("llvm") is LLVMProvider
    assert LLVMProvider.default_base_url == "http://localhost:8000"
    assert set(LLVMProvider.operations) == {"chat", "infer", "models", "model_info", "health"}
    with pytest.raises(errors.UnsupportedOperationError) as info:
        provider().require("stream_chat")
    message = str(info.value)
    assert "stream_chat" in message and all(op in message for op in ("chat", "infer", "models", "health"))
    with pytest.raises(errors.UnsupportedOperationError):
        provider().build("stream_chat", chat(), None)


def test_render_prompt():
    messages = [Message.coerce(m) for m in MESSAGES + [{"role": "assistant", "content": "A field of AI."},
                                                       {"role": "developer", "content": "Be brief."},
                                                       {"role": "user", "content": [
                                                           {"type": "text", "text": "More?"}]}]]
    assert render_prompt(messages) == ("system: You are a helpful assistant.\nuser: What is machine learning?\n"
                                       "assistant: A field of AI.\nsystem: Be brief.\nuser: More?\nassistant:")


def test_build_infer():
    request = provider().build("infer", infer(inputs="Translate: hi", parameters={"max_tokens": 100, "x": 1},
                                              temperature=0.7, top_k=40), "rid")
    assert request.method == "POST" and request.url == "http://localhost:8000/models/llvm-model-1/inference"
    assert request.json == {"inputs": "Translate: hi",
                            "parameters": {"max_tokens": 100, "x": 1, "temperature": 0.7, "top_k": 40}}
    assert request.headers["Authorization"] == f"Bearer {KEY}" and request.headers["X-Request-ID"] == "rid"
    structured = {"text": "Capital of France?", "options": {"format": "json"}}
    assert provider().build("infer", infer(inputs=structured), None).json == {"inputs": structured, "parameters": {}}
    # no model named: the endpoint's default (LLVM_DEFAULT_MODEL)
    assert provider().build("infer", infer(None, inputs="x"), None).url.endswith("/models/llvm-model-1/inference")
    assert provider().build("infer", infer("org/model", inputs="x"), None).url.endswith(
        "/models/org/model/inference")
    with pytest.raises(errors.InvalidRequestError):
        provider(default_model=None).build("infer", infer(None, inputs="x"), None)
    for bad in ({}, {"inputs": ""}, {"inputs": "x", "parameters": "fast"}):
        with pytest.raises(errors.InvalidRequestError):
            provider().build("infer", OperationRequest(op="infer", model="m", params=bad), None)


def test_build_chat_over_inference():
    request = provider().build("chat", chat(MESSAGES, max_tokens=200, temperature=0.8, top_p=0.9, stop=["\n"],
                                            foo="bar"), None)
    assert request.url == "http://localhost:8000/models/llvm-model-1/inference"
    assert request.json == {
        "inputs": "system: You are a helpful assistant.\nuser: What is machine learning?\nassistant:",
        "parameters": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 200, "stop": ["\n"], "foo": "bar"}}
    with pytest.raises(errors.InvalidRequestError):
        provider().build("chat", chat(tools=[{"type": "function", "function": {"name": "f"}}]), None)
    with pytest.raises(errors.InvalidRequestError):
        provider().build("chat", chat(n=2), None)


def test_no_key_no_header_and_key_never_shown():
    assert "Authorization" not in provider(key=None).build("models", OperationRequest(op="models"), None).headers
    p = provider()
    request = p.build("models", OperationRequest(op="models"), None)
    err = p.parse_error(response(401, {"error": f"Invalid API key {KEY}"}))
    for text in (repr(p), repr(request), str(err), repr(err), json.dumps(err.to_dict())):
        assert KEY not in text


def test_parse_infer_and_models():
    body = {"model_id": "llvm-model-1", "outputs": {"text": "Bonjour", "score": 0.9},
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    result = provider().parse("infer", infer(inputs="x"), response(200, body))
    assert result.op == "infer" and result.data == {"text": "Bonjour", "score": 0.9}
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 2, 7)
    assert result["text"] == "Bonjour"  # data keys reachable like the seed's result.outputs
    bare = provider().parse("infer", infer(inputs="x"), response(200, {"model_id": "m", "outputs": "ok"}))
    assert bare.data == "ok" and bare.usage is None
    with pytest.raises(errors.ProviderError):
        provider().parse("infer", infer(inputs="x"), response(200, {"model_id": "m"}))
    models = provider().parse("models", OperationRequest(op="models"),
                              response(200, {"models": ["a", {"model_id": "b", "status": "loading"}, 3]}))
    assert [m.id for m in models] == ["a", "b"] and all(isinstance(m, ModelInfo) for m in models)
    info = provider().parse("model_info", OperationRequest(op="model_info", model="b"), response(200, {
        "model_id": "b", "status": "loading", "details": {"context_window": 2048}}))
    assert info.data.id == "b" and info.data.context_window == 2048 and info.raw["status"] == "loading"


def test_parse_chat_uses_outputs_and_estimates_missing_usage():
    request = chat(MESSAGES)
    with_usage = provider().parse("chat", request, response(200, {
        "model_id": "llvm-model-1", "outputs": " ML learns from data.", "usage": {"prompt_tokens": 20,
                                                                               "completion_tokens": 6}}))
    assert with_usage.text == "ML learns from data." and with_usage.usage.prompt_tokens == 20
    assert with_usage.finish_reason == "stop" and with_usage.provider == "llvm"
    estimated = provider().parse("chat", request, response(200, {"model_id": "llvm-model-1",
                                                                 "outputs": {"generated_text": "ML."}}))
    assert estimated.text == "ML." and estimated.usage.details == {"estimated": True}
    assert estimated.usage.prompt_tokens > 10 and estimated.usage.completion_tokens >= 1
    assert output_text(["first", "second"]) == "first" and output_text({"n": 1}) == '{"n": 1}'


@pytest.mark.parametrize("status, body, headers, cls, retryable, retry_after", [
    (400, {"error": "'inputs' is required"}, {}, errors.InvalidRequestError, False, None),
    (400, {"error": "Input is too long: 9000 tokens exceed the model's context length of 4096"}, {},
     errors.ContextLengthError, False, None),
    (401, {"error": "Invalid API key"}, {}, errors.AuthenticationError, False, None),
    (404, {"error": "Model 'x' not found"}, {}, errors.UnknownModelError, False, None),
    (429, {"error": "Rate limit exceeded"}, {"Retry-After": "2"}, errors.RateLimitError, True, 2.0),
    (500, {"error": "Internal server error"}, {}, errors.ProviderError, True, None),
    (503, {"error": "Model 'x' is loading"}, {"Retry-After": "1"}, errors.ProviderOverloadedError, True, 1.0),
])
def test_error_mapping(status, body, headers, cls, retryable, retry_after):
    err = provider().parse_error(response(status, body, headers))
    assert type(err) is cls and err.status == status
    assert err.retryable is retryable and err.retry_after == retry_after
    assert body["error"] in err.message


def test_404_on_a_model_route_is_an_unknown_model_whatever_the_wording():
    transport = ScriptedTransport(lambda r: response(404, {"error": "not here"}))
    with pytest.raises(errors.UnknownModelError) as info:
        asyncio.run(provider().execute("infer", infer("ghost", inputs="x"), None, transport))
    assert "ghost" in str(info.value)
    with pytest.raises(errors.NotFoundError) as info:  # the listing itself: a wrong base URL, not a model
        asyncio.run(provider().execute("models", OperationRequest(op="models"), None, transport))
    assert not isinstance(info.value, errors.UnknownModelError)


def test_health_is_get_models():
    transport = ScriptedTransport(lambda r: response(200, {"models": []}))
    result, _ = asyncio.run(provider().execute("health", OperationRequest(op="health"), None, transport))
    assert result.data is True and transport.requests[0].method == "GET"
    assert transport.requests[0].url == "http://localhost:8000/models"
    down = ScriptedTransport(lambda r: response(503, {"error": "starting"}))
    result, _ = asyncio.run(provider().execute("health", OperationRequest(op="health"), None, down))
    assert result.data is False and result.raw == {"status": 503, "error": "starting"}
    with pytest.raises(errors.AuthenticationError):
        asyncio.run(provider().execute("health", OperationRequest(op="health"), None,
                                       ScriptedTransport(lambda r: response(401, {"error": "no"}))))


# ---------------------------------------------------------------------------
# Through the real Transport, against the fake server
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llvm_fake() -> FakeHandle:
    handle = start_fake("llvm")
    yield handle
    handle.stop()


@pytest.fixture
def fake(llvm_fake: FakeHandle) -> FakeHandle:
    llvm_fake.reset(valid_keys=[])
    return llvm_fake


def run(fn: Callable[[Transport], Any]) -> Any:
    async def main() -> Any:
        async with Transport(timeout_s=20.0) as transport:
            return await fn(transport)
    return asyncio.run(main())


def call(p: LLVMProvider, op: str, request: Any) -> Any:
    async def go(transport: Transport) -> Any:
        result, _ = await p.execute(op, request, "req-llvm", transport)
        return result
    return run(go)


def test_models_info_and_health(fake):
    p = provider(base_url=fake.base_url)
    ids = [m.id for m in call(p, "models", OperationRequest(op="models"))]
    assert {"llvm-model-1", "llvm-text-model", "llvm-loading-model"} <= set(ids)
    info = call(p, "model_info", OperationRequest(op="model_info", model="llvm-loading-model"))
    assert info.raw["status"] == "loading" and info.data.id == "llvm-loading-model"
    assert call(p, "health", OperationRequest(op="health")).data is True
    fake.controls(extra_models={"org/custom-model": {"status": "loaded", "context_window": 1024}})
    assert "org/custom-model" in [m.id for m in call(p, "models", OperationRequest(op="models"))]
    custom = call(p, "model_info", OperationRequest(op="model_info", model="org/custom-model"))
    assert custom.data.context_window == 1024


def test_infer_and_chat(fake):
    p = provider(base_url=fake.base_url)
    result = call(p, "infer", infer(inputs="Translate to French: Hello", parameters={"max_tokens": 100}))
    assert result.data == "Echo: Translate to French: Hello" and result.model == "llvm-model-1"
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    structured = call(p, "infer", infer(inputs={"text": "capital?", "options": {"format": "json"}}))
    assert structured.data["text"] == "Echo: capital?"
    short = call(p, "infer", infer(inputs="one two three four five", max_tokens=2))
    assert short.usage.completion_tokens == 2
    answer = call(p, "chat", chat(MESSAGES))
    assert answer.text == "Echo: What is machine learning?"
    assert answer.usage.prompt_tokens > 0 and "estimated" not in answer.usage.details
    fake.controls(options={"report_usage": False})
    estimated = call(p, "chat", chat(MESSAGES))
    assert estimated.text == answer.text and estimated.usage.details == {"estimated": True}
    assert fake.stats()["by_path"] == {"/models/llvm-model-1/inference": 5}


def test_errors_through_the_fake(fake):
    p = provider(base_url=fake.base_url)
    with pytest.raises(errors.UnknownModelError):
        call(p, "infer", infer("nope", inputs="x"))
    with pytest.raises(errors.UnknownModelError):
        call(p, "chat", chat(model="nope"))
    with pytest.raises(errors.ProviderOverloadedError) as loading:
        call(p, "infer", infer("llvm-loading-model", inputs="x"))
    assert loading.value.status == 503 and loading.value.retry_after == 1.0
    with pytest.raises(errors.ProviderError) as broken:
        call(p, "infer", infer("llvm-broken-model", inputs="x"))
    assert broken.value.status == 500 and broken.value.retryable
    with pytest.raises(errors.InvalidRequestError):
        call(p, "infer", infer(inputs="x", parameters={"temperature": 5}))
    fake.controls(extra_models={"tiny": {"context_window": 3}})
    with pytest.raises(errors.ContextLengthError):
        call(p, "infer", infer("tiny", inputs="far too many words for this model"))


def test_auth_and_rate_limit_through_the_fake(fake):
    fake.controls(valid_keys=[KEY])
    with pytest.raises(errors.AuthenticationError):
        call(provider(base_url=fake.base_url, key=None), "models", OperationRequest(op="models"))
    with pytest.raises(errors.AuthenticationError) as wrong:
        call(provider(base_url=fake.base_url, key="llvm-Wrong-Key-0000"), "health", OperationRequest(op="health"))
    assert "llvm-Wrong-Key-0000" not in str(wrong.value)
    p = provider(base_url=fake.base_url)
    assert call(p, "health", OperationRequest(op="health")).data is True
    fake.controls(limits={KEY: {"rps": 0.5, "burst_s": 2}})
    call(p, "infer", infer(inputs="a"))
    with pytest.raises(errors.RateLimitError) as limited:
        call(p, "infer", infer(inputs="b"))
    assert limited.value.retryable and limited.value.retry_after is not None and limited.value.retry_after >= 1
