"""The Ollama provider and its fake server.

First half: pure tests of ``providers/ollama.py`` -- build() checked as data,
parse() and the NDJSON stream decoder fed canned bodies (through the
transport's own NDJSON framing), errors mapped from ``{"error": ...}`` bodies.
Second half: the official ``ollama`` SDK against the fake
(``testing/fakes/ollama.py``), proving the fake speaks the real wire format.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from PIL import Image

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.providers.base import get_provider_class
from ipfs_accelerate_py.providers.ollama import OllamaProvider
from ipfs_accelerate_py.transport import HttpResponse, NdjsonDecoder
from ipfs_accelerate_py.types import (ChatRequest, EmbeddingRequest, ModelInfo, OperationRequest, OperationResponse,
                                      build_chat_request, build_embedding_request)
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake

CLOUD_KEY = "ollama-cloud-key-0123456789abcdefXYZ"


class FakeSecret:
    """Stand-in for config.Secret: the value only through .get()."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def endpoint(key: str | None = None, **overrides: Any) -> SimpleNamespace:
    fields = dict(id="ol-1", provider="ollama", base_url=None, api_key=FakeSecret(key) if key else None,
                  models=[], default_model=None, timeout_s=30.0, stream_timeout_s=30.0, headers={}, options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


def provider(**kw: Any) -> OllamaProvider:
    return OllamaProvider(endpoint(**kw))


def chat(messages: Any = None, model: str = "llama3.2", **params: Any) -> ChatRequest:
    return build_chat_request(model, messages or [{"role": "user", "content": "Hi"}], params)


def complete(prompt: Any = "Why is the sky blue?", model: str | None = "llama3.2", **params: Any) -> OperationRequest:
    return OperationRequest(op="complete", model=model, params={"prompt": prompt, **params})


def body_of(request: Any, op: str = "chat", **kw: Any) -> dict:
    return provider(**kw).build(op, request, None).json


def response(status: int, body: Any, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def png_bytes(size: tuple[int, int] = (4, 3), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def ndjson(*objects: Any) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def decode_stream(raw: bytes, op: str = "stream_chat", split: int = 9) -> list:
    """Raw body bytes through the transport's NDJSON framing and the provider's
    decoder, in small pieces as the network would deliver them."""
    p = provider()
    decoder = p.stream_decoder(op, chat(), {})
    framing = NdjsonDecoder()
    chunks = []
    for start in range(0, len(raw), split):
        for obj in framing.feed(raw[start:start + split]):
            chunks.extend(decoder.feed(obj))
    for obj in framing.flush():
        chunks.extend(decoder.feed(obj))
    chunks.extend(decoder.close())
    return chunks


class StubTransport:
    """Answers ``send`` from canned responses and records the requests."""

    def __init__(self, *responses: HttpResponse) -> None:
        self.responses = list(responses)
        self.sent: list = []

    async def send(self, req: Any, *, timeout_s: float | None = None) -> HttpResponse:
        self.sent.append(req)
        return self.responses.pop(0)


# ---------------------------------------------------------------------------
# Registry, URLs and auth
# ---------------------------------------------------------------------------

def test_registry_and_capabilities():
    assert get_provider_class("ollama") is OllamaProvider
    assert OllamaProvider.model_patterns == ()  # a self-hosted server serves what was pulled onto it
    assert not OllamaProvider.claims_model("llama3.2")
    assert OllamaProvider.max_embed_batch is None
    assert {"chat", "stream_chat", "complete", "stream_complete", "embed", "models", "model_info",
            "running_models", "health"} == set(OllamaProvider.operations)


@pytest.mark.parametrize("base_url, expected", [
    (None, "http://localhost:11434"), ("http://gpu-box:11434/api", "http://gpu-box:11434"),
    ("http://gpu-box:11434/api/", "http://gpu-box:11434"), ("http://gpu-box:11434/v1", "http://gpu-box:11434"),
    ("https://ollama.com", "https://ollama.com")])
def test_base_url_accepts_the_api_suffix(base_url, expected):
    assert provider(base_url=base_url).base_url == expected


def test_no_auth_locally_and_bearer_for_the_cloud():
    local = provider().build("chat", chat(), "rid-1")
    assert local.url == "http://localhost:11434/api/chat" and local.method == "POST"
    assert "Authorization" not in local.headers and "X-Request-ID" not in local.headers
    cloud = provider(key=CLOUD_KEY, base_url="https://ollama.com/api").build("chat", chat(), None)
    assert cloud.url == "https://ollama.com/api/chat" and cloud.headers["Authorization"] == f"Bearer {CLOUD_KEY}"


# ---------------------------------------------------------------------------
# Request mapping
# ---------------------------------------------------------------------------

def test_every_request_says_stream_explicitly():
    assert body_of(chat()) == {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    req = provider().build("stream_chat", chat(), None)
    assert req.json["stream"] is True and req.stream == "ndjson"
    assert req.headers["Accept"] == "application/x-ndjson"
    assert provider().build("chat", chat(), None).stream is None


def test_sampling_fields_become_options():
    body = body_of(chat(temperature=0.2, top_p=0.8, top_k=30, max_tokens=64, stop=["END"], seed=11,
                        presence_penalty=0.3, frequency_penalty=0.4, num_ctx=8192, repeat_penalty=1.1,
                        options={"num_gpu": 1, "temperature": 0.5}, keep_alive="10m", think=False))
    assert body["options"] == {"temperature": 0.5, "top_p": 0.8, "top_k": 30, "num_predict": 64, "stop": ["END"],
                               "seed": 11, "presence_penalty": 0.3, "frequency_penalty": 0.4, "num_ctx": 8192,
                               "repeat_penalty": 1.1, "num_gpu": 1}
    assert body["keep_alive"] == "10m" and body["think"] is False
    assert "num_ctx" not in body and "temperature" not in body


def test_response_format_becomes_format():
    assert body_of(chat(response_format={"type": "json_object"}))["format"] == "json"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert body_of(chat(response_format={"type": "json_schema",
                                         "json_schema": {"name": "w", "schema": schema}}))["format"] == schema
    assert "format" not in body_of(chat(response_format={"type": "text"}))
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat(response_format={"type": "yaml"}))


def test_roles_images_and_content_parts():
    png = png_bytes()
    jpeg = png_bytes(fmt="JPEG")
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is "}, {"type": "text", "text": "this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                    {"type": "image", "image": jpeg},
                    {"type": "image", "image": Image.new("RGB", (3, 3))}]}]
    body = body_of(chat(messages, image_data=png))
    system, user = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert user["content"] == "What is this?"
    assert user["images"][0] == base64.b64encode(png).decode()  # raw base64, no data: prefix
    assert user["images"][1] == base64.b64encode(jpeg).decode()
    assert Image.open(io.BytesIO(base64.b64decode(user["images"][2]))).format == "PNG"
    assert user["images"][3] == base64.b64encode(png).decode()  # image_data= joins the last user turn
    assert "image_data" not in body
    webp = png_bytes(fmt="WEBP")  # Ollama decodes PNG and JPEG: anything else is re-encoded
    converted = body_of(chat([{"role": "user", "content": [{"type": "image", "image": webp}]}]))
    assert Image.open(io.BytesIO(base64.b64decode(converted["messages"][0]["images"][0]))).format == "PNG"
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat([{"role": "user", "content": [{"type": "image_url",
                                                    "image_url": {"url": "https://example.com/a.png"}}]}]))


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}


def test_tools_tool_calls_and_results():
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21C"}]
    body = body_of(chat(messages, tools=[WEATHER, CLOCK]))
    assert body["tools"] == [WEATHER, CLOCK]
    assert body["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}  # an object on the wire
    assert body["messages"][2] == {"role": "tool", "content": "21C", "tool_name": "get_weather"}
    assert "tools" not in body_of(chat(tools=[WEATHER], tool_choice="none"))
    forced = body_of(chat(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "now"}}))
    assert forced["tools"] == [CLOCK]
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat(n=2))


def test_generate_body():
    body = body_of(complete(system="You are terse.", suffix="END", max_tokens=5, temperature=0.1,
                            images=[png_bytes()], raw=True, num_ctx=2048, response_format={"type": "json_object"}),
                   op="complete")
    assert body == {"model": "llama3.2", "prompt": "Why is the sky blue?", "stream": False,
                    "images": [base64.b64encode(png_bytes()).decode()], "format": "json",
                    "options": {"num_predict": 5, "temperature": 0.1, "num_ctx": 2048},
                    "system": "You are terse.", "suffix": "END", "raw": True}
    streamed = provider().build("stream_complete", complete(), None)
    assert streamed.url.endswith("/api/generate") and streamed.json["stream"] is True and streamed.stream == "ndjson"
    assert body_of(complete(model=None), op="complete",
                   default_model="qwen2.5:7b")["model"] == "qwen2.5:7b"  # the endpoint's OLLAMA_MODEL
    with pytest.raises(errors.InvalidRequestError):
        body_of(complete(model=None), op="complete")
    with pytest.raises(errors.InvalidRequestError):
        body_of(complete(["one", "two"]), op="complete")


def test_embed_and_info_requests():
    req = provider().build("embed", build_embedding_request("nomic-embed-text", ["a", "b"],
                                                            {"dimensions": 256, "truncate": False,
                                                             "num_ctx": 512}), None)
    assert req.url.endswith("/api/embed")
    assert req.json == {"model": "nomic-embed-text", "input": ["a", "b"], "dimensions": 256, "truncate": False,
                        "options": {"num_ctx": 512}}
    tags = provider().build("models", OperationRequest(op="models"), None)
    assert (tags.method, tags.url) == ("GET", "http://localhost:11434/api/tags") and tags.json is None
    ps = provider().build("running_models", OperationRequest(op="running_models"), None)
    assert (ps.method, ps.url) == ("GET", "http://localhost:11434/api/ps")
    show = provider().build("model_info", OperationRequest(op="model_info", model="llava"), None)
    assert (show.method, show.url, show.json) == ("POST", "http://localhost:11434/api/show", {"model": "llava"})


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------

FINAL = {"model": "llama3.2:latest", "created_at": "2025-01-01T00:00:00Z", "done": True, "done_reason": "stop",
         "total_duration": 5_000_000, "load_duration": 100, "prompt_eval_count": 26, "prompt_eval_duration": 200,
         "eval_count": 12, "eval_duration": 4_000_000}


def test_parse_chat():
    body = {**FINAL, "message": {"role": "assistant", "content": "Hello there"}}
    r = provider().parse("chat", chat(), response(200, body))
    assert r.text == "Hello there" and r.finish_reason == "stop" and r.model == "llama3.2:latest"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (26, 12, 38)
    assert r.usage.details["eval_duration"] == 4_000_000 and r.provider == "ollama"


def test_parse_tool_calls_makes_ids_and_json_strings():
    body = {**FINAL, "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]}}
    r = provider().parse("chat", chat(), response(200, body))
    assert r.finish_reason == "tool_calls" and r.tool_calls[0].id.startswith("call_")
    assert r.tool_calls[0].name == "get_weather" and json.loads(r.tool_calls[0].arguments) == {"city": "Tokyo"}


def test_parse_generate_and_length():
    body = {**FINAL, "response": "Because", "done_reason": "length", "context": [1, 2, 3]}
    r = provider().parse("complete", complete(), response(200, body))
    assert r.text == "Because" and r.finish_reason == "length" and r.truncated


def test_stream_chat_text_usage_and_tool_calls():
    raw = ndjson({"model": "llama3.2:latest", "message": {"role": "assistant", "content": "Hel"}, "done": False},
                 {"model": "llama3.2:latest", "message": {"role": "assistant", "content": "lo"}, "done": False},
                 {"model": "llama3.2:latest", "message": {"role": "assistant", "content": "", "tool_calls": [
                     {"function": {"name": "now", "arguments": {}}}]}, "done": False},
                 {**FINAL, "message": {"role": "assistant", "content": ""}},
                 {"model": "llama3.2:latest", "message": {"role": "assistant", "content": "ignored"}, "done": False})
    chunks = decode_stream(raw)
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo"]
    final = chunks[-1]
    assert final.done and final.finish_reason == "tool_calls" and final.tool_calls[0].name == "now"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (26, 12)


def test_stream_generate():
    raw = ndjson({"model": "m", "response": "Be", "done": False}, {"model": "m", "response": "cause", "done": False},
                 {**FINAL, "response": ""})
    chunks = decode_stream(raw, op="stream_complete")
    assert "".join(c.text for c in chunks) == "Because" and chunks[-1].finish_reason == "stop"


def test_stream_ending_before_done_is_truncated():
    raw = ndjson({"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False})
    with pytest.raises(errors.ProviderError) as info:
        decode_stream(raw)
    assert info.value.retryable and "done:true" in str(info.value)


@pytest.mark.parametrize("message, cls, retryable", [
    ("an error was encountered while running the model: unexpected EOF", errors.ProviderError, True),
    ('model "llama9" not found, try pulling it first', errors.UnknownModelError, False),
    ("the input length exceeds the context length", errors.ContextLengthError, False),
])
def test_error_line_mid_stream_raises_the_typed_error(message, cls, retryable):
    raw = ndjson({"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
                 {"error": message})
    with pytest.raises(errors.GatewayError) as info:
        decode_stream(raw)
    assert type(info.value) is cls and info.value.retryable is retryable


def test_malformed_stream_line_is_a_provider_error():
    with pytest.raises(errors.ProviderError):
        decode_stream(b'{"model": "m", "message": {"content": "Hel"}, "do\n')


def test_parse_embeddings():
    req = EmbeddingRequest(model="nomic-embed-text", input=["a", "b"])
    body = {"model": "nomic-embed-text:latest", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 4,
            "total_duration": 10}
    r = provider().parse("embed", req, response(200, body))
    assert r.embeddings == [[0.1, 0.2], [0.3, 0.4]] and r.usage.prompt_tokens == 4
    with pytest.raises(errors.ProviderError):
        provider().parse("embed", req, response(200, {**body, "embeddings": [[0.1]]}))


TAG = {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189, "digest": "abc",
       "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}
EMBED_TAG = {"name": "nomic-embed-text:latest", "details": {"family": "nomic-bert", "parameter_size": "137M"}}


def test_models_running_models_and_model_info():
    models = provider().parse("models", OperationRequest(op="models"),
                              response(200, {"models": [TAG, EMBED_TAG]}))
    assert [m.id for m in models] == ["llama3.2:latest", "nomic-embed-text:latest"]
    assert [m.category for m in models] == ["chat", "embedding"]
    assert models[0].description == "llama 3.2B Q4_K_M" and models[0].raw["digest"] == "abc"
    running = provider().parse("running_models", OperationRequest(op="running_models"),
                               response(200, {"models": [{**TAG, "context_length": 4096, "size_vram": 1}]}))
    assert isinstance(running, OperationResponse) and running.data[0].context_window == 4096
    show = {"details": TAG["details"], "capabilities": ["completion", "vision"],
            "model_info": {"general.architecture": "llama", "llama.context_length": 131072}}
    info = provider().parse("model_info", OperationRequest(op="model_info", model="llava"), response(200, show))
    assert isinstance(info.data, ModelInfo) and info.data.id == "llava"
    assert info.data.context_window == 131072 and info.data.category == "vision"


def test_health_is_get_root():
    ok = StubTransport(response(200, b"Ollama is running"))
    result, _ = asyncio.run(provider().execute("health", OperationRequest(op="health"), None, ok))
    assert result.data is True and ok.sent[0].url == "http://localhost:11434/" and ok.sent[0].method == "GET"
    down = StubTransport(response(500, {"error": "boom"}))
    result, _ = asyncio.run(provider().execute("health", OperationRequest(op="health"), None, down))
    assert result.data is False


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("status, body, cls, retryable", [
    (404, {"error": 'model "llama9" not found, try pulling it first'}, errors.UnknownModelError, False),
    (404, b"404 page not found", errors.NotFoundError, False),
    (400, {"error": "invalid format"}, errors.InvalidRequestError, False),
    (400, {"error": "the input length exceeds the context length"}, errors.ContextLengthError, False),
    (400, {"error": "registry.ollama.ai/library/phi3:mini does not support tools"}, errors.InvalidRequestError,
     False),
    (401, {"error": "unauthorized"}, errors.AuthenticationError, False),
    (429, {"error": "too many requests"}, errors.RateLimitError, True),
    (500, {"error": "an error was encountered while running the model"}, errors.ProviderError, True),
    (502, {"error": "an error occurred while connecting to the remote model"}, errors.ProviderError, True),
    (503, {"error": "server busy, please try again."}, errors.ProviderOverloadedError, True),
])
def test_parse_error_mapping(status, body, cls, retryable):
    err = provider().parse_error(response(status, body))
    assert type(err) is cls and err.status == status and err.retryable is retryable
    assert err.provider == "ollama" and err.endpoint_id == "ol-1"


@pytest.mark.parametrize("key", [CLOUD_KEY, "plain-secret-without-any-known-shape-44"])
def test_api_key_never_appears_in_errors_or_reprs(key):
    p = provider(key=key)
    err = p.parse_error(response(401, {"error": f"unauthorized: {key}"}))
    with pytest.raises(errors.GatewayError) as info:
        p.stream_decoder("stream_chat", chat(), {}).feed({"error": f"bad token {key}"})
    http = p.build("chat", chat(), None)
    for text in (str(err), repr(err), json.dumps(err.to_dict()), str(info.value), repr(info.value), repr(p),
                 repr(http), http.url):
        assert key not in text


# ---------------------------------------------------------------------------
# The official ollama SDK against the fake server
# ---------------------------------------------------------------------------

ollama = pytest.importorskip("ollama")


@pytest.fixture(scope="module")
def ollama_fake() -> Iterator[FakeHandle]:
    handle = start_fake("ollama")
    yield handle
    handle.stop()


@pytest.fixture
def fake(ollama_fake: FakeHandle) -> FakeHandle:
    ollama_fake.reset(valid_keys=[])
    return ollama_fake


def get(fake: FakeHandle, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(fake.root_url + path, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(fake: FakeHandle, path: str, body: Any) -> tuple[int, str]:
    req = urllib.request.Request(fake.root_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def journal(fake: FakeHandle) -> list[dict]:
    return json.loads(get(fake, "/_fake/ollama/requests")[1])


def test_sdk_chat_and_options(fake: FakeHandle) -> None:
    client = ollama.Client(host=fake.root_url)
    r = client.chat(model="llama3.2", messages=[{"role": "user", "content": "tell me about the sea"}],
                    options={"temperature": 0.1, "seed": 5})
    assert r.message.role == "assistant" and r.message.content == "Echo: tell me about the sea"
    assert r.done and r.done_reason == "stop" and r.prompt_eval_count > 0 and r.eval_count > 0
    assert r.model == "llama3.2:latest" and r.total_duration > 0
    short = client.chat(model="llama3.2", messages=[{"role": "user", "content": "tell me about the sea"}],
                        options={"num_predict": 2, "stop": ["sea"]})
    assert short.done_reason == "length" and short.eval_count == 2
    cut = client.chat(model="llama3.2", messages=[{"role": "user", "content": "tell me about the sea"}],
                      options={"stop": ["about"]})
    assert cut.message.content == "Echo: tell me " and cut.done_reason == "stop"
    long = client.chat(model="llama3.2", messages=[{"role": "user", "content": "word " * 300}],
                       options={"num_ctx": 64})
    assert long.prompt_eval_count == 64  # truncated to the context, as Ollama does
    sent = [e for e in journal(fake) if e["path"] == "/api/chat"][-1]["body"]
    assert sent["options"] == {"num_ctx": 64}


def test_sdk_chat_stream_tools_format_and_images(fake: FakeHandle) -> None:
    client = ollama.Client(host=fake.root_url)
    parts = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "stream this"}], stream=True))
    assert "".join(p.message.content for p in parts) == "Echo: stream this"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].eval_count > 0
    called = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Use get_weather for Tokyo"}],
                         tools=[WEATHER])
    assert called.message.tool_calls[0].function.name == "get_weather"
    assert called.message.tool_calls[0].function.arguments == {"city": "Tokyo"}
    structured = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Weather in Oslo"}],
                             format={"type": "object", "properties": {"city": {"type": "string"}}})
    assert json.loads(structured.message.content) == {"city": "Oslo"}
    png = png_bytes()
    seen = client.chat(model="llava", messages=[{"role": "user", "content": "what is it", "images": [png]}])
    assert seen.message.content == f"Echo: what is it [image: {len(png)} bytes]"


def test_sdk_generate_embed_and_model_management(fake: FakeHandle) -> None:
    client = ollama.Client(host=fake.root_url)
    r = client.generate(model="llama3.2", prompt="why is the sky blue", system="be short")
    assert r.response == "Echo: why is the sky blue" and r.done and r.context
    streamed = list(client.generate(model="llama3.2", prompt="why is the sky blue", stream=True))
    assert "".join(p.response for p in streamed) == r.response and streamed[-1].done
    e = client.embed(model="nomic-embed-text", input=["hello", "goodbye", "hello"])
    assert len(e.embeddings) == 3 and len(e.embeddings[0]) == 768 and e.embeddings[0] == e.embeddings[2]
    assert e.prompt_eval_count > 0
    legacy = client.embeddings(model="nomic-embed-text", prompt="hello")
    assert list(legacy.embedding) == e.embeddings[0]
    names = [m.model for m in client.list().models]
    assert "llama3.2:latest" in names and "nomic-embed-text:latest" in names
    shown = client.show("llama3.2")
    assert shown.modelinfo["llama.context_length"] == 131072 and "tools" in shown.capabilities
    running = {m.model for m in client.ps().models}
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= running
    client.generate(model="llama3.2", keep_alive=0)  # an empty prompt with keep_alive 0 unloads
    assert "llama3.2:latest" not in {m.model for m in client.ps().models}


def test_sdk_errors(fake: FakeHandle) -> None:
    client = ollama.Client(host=fake.root_url)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="llama9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and missing.value.error == 'model "llama9" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as no_tools:
        client.chat(model="phi3:mini", messages=[{"role": "user", "content": "x"}], tools=[WEATHER])
    assert no_tools.value.status_code == 400 and "does not support tools" in no_tools.value.error
    with pytest.raises(ollama.ResponseError) as not_chat:
        client.chat(model="nomic-embed-text", messages=[{"role": "user", "content": "x"}])
    assert not_chat.value.status_code == 400
    fake.controls(faults=[{"kind": "error_mid_stream", "after_chunks": 2, "count": 1}])
    got = []
    with pytest.raises(ollama.ResponseError) as mid:
        for part in client.chat(model="llama3.2", messages=[{"role": "user", "content": "a long one"}], stream=True):
            got.append(part.message.content)
    assert len(got) == 2 and "error" in mid.value.error


def test_fake_wire_details(fake: FakeHandle) -> None:
    assert get(fake, "/") == (200, "Ollama is running")
    assert json.loads(get(fake, "/api/version")[1]) == {"version": "0.12.6"}
    assert get(fake, "/api/nope") == (404, "404 page not found")
    status, body = post(fake, "/api/chat", {"model": "llava", "stream": False, "messages": [
        {"role": "user", "content": "x", "images": ["data:image/png;base64,iVBORw0KGgo="]}]})
    assert status == 400 and "illegal base64 data" in json.loads(body)["error"]
    status, body = post(fake, "/api/chat", {"model": "llama3.2", "stream": False, "messages": [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "x"}]})
    assert status == 400 and "api.ToolCallFunctionArguments" in json.loads(body)["error"]
    status, body = post(fake, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}],
                                            "options": {"num_predict": "lots"}})
    assert status == 400 and json.loads(body)["error"] == 'option "num_predict" must be of type integer'
    status, body = post(fake, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hey"}]})
    lines = [json.loads(line) for line in body.splitlines()]  # streaming is the default
    assert status == 200 and len(lines) > 2 and lines[-1]["done"] is True and lines[0]["done"] is False
    status, body = post(fake, "/api/embed", {"model": "all-minilm", "input": "word " * 600, "truncate": False})
    assert status == 400 and "context length" in json.loads(body)["error"]


def test_fake_keys_only_when_configured(fake: FakeHandle) -> None:
    fake.controls(valid_keys=[CLOUD_KEY])
    with pytest.raises(ollama.ResponseError) as denied:
        ollama.Client(host=fake.root_url).list()
    assert denied.value.status_code == 401
    authed = ollama.Client(host=fake.root_url, headers={"Authorization": f"Bearer {CLOUD_KEY}"})
    assert authed.list().models
    assert get(fake, "/")[0] == 200  # the health route stays open
