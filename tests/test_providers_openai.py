"""Pure tests of the OpenAI-shaped providers (openai_compat, openai, groq).

No sockets: build() is checked as data, parse() and the stream decoders are fed
canned bodies and SSE events in the shapes of PROTOCOLS.md sections 1 and 3.
"""
from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.providers import groq as groq_module
from ipfs_accelerate_py.providers.base import get_provider_class
from ipfs_accelerate_py.providers.groq import GroqProvider
from ipfs_accelerate_py.providers.openai import OpenAIProvider
from ipfs_accelerate_py.providers.openai_compat import OpenAICompatibleProvider
from ipfs_accelerate_py.transport import HttpResponse, SseEvent
from ipfs_accelerate_py.types import (ChatRequest, EmbeddingRequest, Message, ModelInfo, OperationRequest,
                                      ToolCall, build_chat_request)

KEY = "sk-test-FAKEKEY0123456789abcdefXYZ"


class FakeSecret:
    """Stand-in for config.Secret: the value only through .get()."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def endpoint(key: str | None = KEY, **overrides):
    fields = dict(id="ep-1", provider="openai", base_url=None, api_key=FakeSecret(key) if key else None,
                  models=[], default_model=None, timeout_s=30.0, stream_timeout_s=30.0, headers={},
                  options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


class CompatProvider(OpenAICompatibleProvider):
    """A generic compatible server (vLLM-like) to test the base class flags."""
    name = "compat_test"
    default_base_url = "http://localhost:8000/v1"
    operations = OpenAICompatibleProvider.operations | {"transcribe"}


def chat(model: str = "gpt-4o-mini", messages=None, **params) -> ChatRequest:
    return build_chat_request(model, messages or [{"role": "user", "content": "Hi"}], params)


def response(status: int, body, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def events(*payloads) -> list[SseEvent]:
    return [SseEvent(data=p if isinstance(p, str) else json.dumps(p)) for p in payloads]


def run_stream(provider, op, request, payloads):
    decoder = provider.stream_decoder(op, request, {})
    chunks = []
    for event in events(*payloads):
        chunks.extend(decoder.feed(event))
    chunks.extend(decoder.close())
    return chunks


def chunk(delta=None, finish=None, index=0, **extra):
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish}], "usage": None}
    body.update(extra)
    return body


CHAT_RESPONSE = {
    "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_1", "service_tier": "default",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
              "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
}


# ---------------------------------------------------------------------------
# Registry and capabilities
# ---------------------------------------------------------------------------

def test_registry_and_model_patterns():
    assert get_provider_class("openai") is OpenAIProvider
    assert get_provider_class("openai_api") is OpenAIProvider
    assert get_provider_class("groq") is GroqProvider
    for model in ("gpt-4o", "o1-mini", "o3", "o4-mini", "chatgpt-4o-latest", "text-embedding-3-small",
                  "dall-e-3", "gpt-image-1", "whisper-1", "tts-1-hd", "omni-moderation-latest", "davinci-002",
                  "babbage-002"):
        assert OpenAIProvider.claims_model(model), model
    assert not OpenAIProvider.claims_model("claude-3-5-sonnet-latest")
    assert GroqProvider.claims_model("llama-3.3-70b-versatile")
    assert GroqProvider.claims_model("meta-llama/llama-4-scout-17b-16e-instruct")
    assert OpenAIProvider.max_embed_batch == 2048
    assert OpenAIProvider.default_model == "gpt-4o-mini"
    assert {"images", "transcribe", "translate", "speech", "moderate", "model_info"} <= OpenAIProvider.operations


def test_unsupported_operation_is_typed():
    with pytest.raises(errors.UnsupportedOperationError):
        GroqProvider(endpoint()).build("embed", EmbeddingRequest(model="m", input=["x"]), None)


# ---------------------------------------------------------------------------
# Chat: build
# ---------------------------------------------------------------------------

def test_openai_chat_request_url_headers_and_body():
    ep = endpoint(options={"organization": "org_1", "project": "proj_1"}, headers={"X-Extra": "1"})
    req = chat(messages=[{"role": "system", "content": "Be terse"}, {"role": "user", "content": "Hi"}],
               temperature=0.2, top_p=0.9, top_k=40, max_tokens=50, stop="END", seed=7,
               presence_penalty=0.1, frequency_penalty=0.2, n=2, user="u-1",
               tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
               tool_choice="auto", response_format={"type": "json_object"},
               logit_bias={"50256": -100}, logprobs=True, service_tier="flex")
    http = OpenAIProvider(ep).build("chat", req, "req-1")
    assert http.method == "POST"
    assert http.url == "https://api.openai.com/v1/chat/completions"
    assert http.stream is None
    assert http.headers["Authorization"] == f"Bearer {KEY}"
    assert http.headers["OpenAI-Organization"] == "org_1"
    assert http.headers["OpenAI-Project"] == "proj_1"
    assert http.headers["X-Request-ID"] == "req-1"
    assert http.headers["X-Extra"] == "1"
    assert http.headers["Content-Type"] == "application/json"
    body = http.json
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "system", "content": "Be terse"}, {"role": "user", "content": "Hi"}]
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert "top_k" not in body
    assert body["stop"] == ["END"]
    assert (body["temperature"], body["top_p"], body["seed"], body["n"], body["user"]) == (0.2, 0.9, 7, 2, "u-1")
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.1, 0.2)
    assert body["tools"][0]["function"]["name"] == "f" and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert body["logit_bias"] == {"50256": -100} and body["logprobs"] is True and body["service_tier"] == "flex"
    assert "stream" not in body and "stream_options" not in body


def test_compat_server_uses_max_tokens_and_top_k():
    http = CompatProvider(endpoint(base_url="http://vllm:8000/v1/")).build(
        "chat", chat("llama", max_tokens=20, top_k=5), None)
    assert http.url == "http://vllm:8000/v1/chat/completions"
    assert http.json["max_tokens"] == 20 and "max_completion_tokens" not in http.json
    assert http.json["top_k"] == 5
    assert "X-Request-ID" not in http.headers


def test_chat_minimal_body_omits_unset_fields():
    body = OpenAIProvider(endpoint()).build("chat", chat(), None).json
    assert body == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


def test_no_key_means_no_authorization_header():
    http = CompatProvider(endpoint(key=None)).build("chat", chat(), None)
    assert "Authorization" not in http.headers


def test_stream_chat_request_asks_for_usage():
    http = OpenAIProvider(endpoint()).build("stream_chat", chat(), None)
    assert http.stream == "sse"
    assert http.headers["Accept"] == "text/event-stream"
    assert http.json["stream"] is True
    assert http.json["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_and_stray_stream_options():
    req = chat(stream_options={"include_usage": False})
    http = OpenAIProvider(endpoint()).build("stream_chat", req, None)
    assert http.json["stream"] is True and "stream_options" not in http.json
    req = chat()
    req.extra["stream_options"] = {"include_usage": True}
    assert "stream_options" not in OpenAIProvider(endpoint()).build("chat", req, None).json


def test_extra_cannot_override_protected_fields():
    req = chat()
    req.extra.update({"model": "other", "stream": True, "messages": []})
    body = OpenAIProvider(endpoint()).build("chat", req, None).json
    assert body["model"] == "gpt-4o-mini" and "stream" not in body and body["messages"]


def test_assistant_tool_calls_and_tool_messages_serialize():
    req = chat(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    messages = OpenAIProvider(endpoint()).build("chat", req, None).json["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == "{\"city\":\"Paris\"}"
    assert messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


# ---------------------------------------------------------------------------
# Chat: parse
# ---------------------------------------------------------------------------

def test_parse_chat_response():
    provider = OpenAIProvider(endpoint())
    result = provider.parse("chat", chat(), response(200, CHAT_RESPONSE))
    assert result.text == "Hello there"
    assert result.finish_reason == "stop"
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (9, 12, 21)
    assert result.usage.details["cached_tokens"] == 4
    assert result.usage.details["reasoning_tokens"] == 2
    assert result.usage.details["prompt_tokens_details"]["audio_tokens"] == 0
    assert result.raw == CHAT_RESPONSE
    assert result.choices == [] and result.tool_calls == []
    assert result.provider == "openai" and result.endpoint_id == "ep-1"


def test_parse_chat_with_several_choices_and_tool_calls():
    body = dict(CHAT_RESPONSE, choices=[
        {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"},
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
         "finish_reason": "tool_calls"}])
    result = OpenAIProvider(endpoint()).parse("chat", chat(n=2), response(200, body))
    assert result.text == ""
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == [ToolCall(id="call_x", name="get_weather", arguments="{\"city\":\"Paris\"}")]
    assert result.tool_calls[0].parsed_arguments() == {"city": "Paris"}
    assert result.choices == ["", "second"]


def test_parse_chat_non_json_body_is_retryable_provider_error():
    with pytest.raises(errors.ProviderError) as info:
        OpenAIProvider(endpoint()).parse("chat", chat(), response(200, b"<html>bad gateway</html>"))
    assert info.value.retryable


# ---------------------------------------------------------------------------
# Chat: stream
# ---------------------------------------------------------------------------

def test_stream_text_finish_and_usage():
    provider = OpenAIProvider(endpoint())
    chunks = run_stream(provider, "stream_chat", chat(), [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, finish="stop"),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                   "prompt_tokens_details": {"cached_tokens": 0}}},
        "[DONE]"])
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert not any(c.done for c in chunks[:-1])
    final = chunks[-1]
    assert final.done and final.finish_reason == "stop"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (5, 2, 7)
    assert final.model == "gpt-4o-mini"
    assert final.tool_calls is None


def test_stream_without_usage_chunk_has_no_usage():
    chunks = run_stream(OpenAIProvider(endpoint()), "stream_chat", chat(),
                        [chunk({"content": "x"}), chunk({}, finish="length"), "[DONE]"])
    assert chunks[-1].done and chunks[-1].usage is None and chunks[-1].finish_reason == "length"


def test_stream_tool_call_fragments_are_joined_per_index():
    chunks = run_stream(OpenAIProvider(endpoint()), "stream_chat", chat(), [
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}),
        chunk({}, finish="tool_calls"),
        "[DONE]"])
    assert len(chunks) == 1
    final = chunks[0]
    assert final.done and final.finish_reason == "tool_calls"
    assert final.tool_calls == [ToolCall("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                                ToolCall("call_b", "get_time", "{}")]


def test_stream_multiple_choices_carry_their_index():
    chunks = run_stream(OpenAIProvider(endpoint()), "stream_chat", chat(n=2), [
        chunk({"content": "a"}, index=0), chunk({"content": "b"}, index=1),
        chunk({}, finish="stop", index=0), chunk({}, finish="length", index=1), "[DONE]"])
    assert [(c.index, c.text) for c in chunks[:-1]] == [(0, "a"), (1, "b")]
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize("payload", [
    [chunk({"content": "partial"})],
    [chunk({"content": "partial"}), chunk({}, finish="stop")],
    [],
])
def test_truncated_stream_raises_retryable_provider_error(payload):
    provider = OpenAIProvider(endpoint())
    decoder = provider.stream_decoder("stream_chat", chat(), {})
    for event in events(*payload):
        decoder.feed(event)
    with pytest.raises(errors.ProviderError) as info:
        decoder.close()
    assert type(info.value) is errors.ProviderError
    assert "stream ended before [DONE]" in str(info.value)
    assert info.value.retryable and info.value.provider == "openai"


@pytest.mark.parametrize("error, cls, retryable", [
    ({"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}, errors.RateLimitError, True),
    ({"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}, errors.RateLimitError, False),
    ({"message": "The server had an error", "type": "server_error", "code": None}, errors.ProviderError, True),
    ({"message": "Overloaded", "type": "overloaded_error"}, errors.ProviderOverloadedError, True),
    ({"message": "Input validation error", "http_status_code": 422}, errors.InvalidRequestError, False),
    ({"object": "error", "message": "maximum context length is 4096 tokens", "type": "BadRequestError",
      "code": 400}, errors.ContextLengthError, False),
])
def test_stream_error_event_raises_typed_error(error, cls, retryable):
    provider = OpenAIProvider(endpoint())
    decoder = provider.stream_decoder("stream_chat", chat(), {})
    decoder.feed(events(chunk({"content": "x"}))[0])
    with pytest.raises(errors.GatewayError) as info:
        decoder.feed(events({"error": error})[0])
    assert type(info.value) is cls
    assert info.value.retryable is retryable
    assert info.value.provider == "openai"


def test_stream_string_error_event_is_provider_error():
    decoder = CompatProvider(endpoint()).stream_decoder("stream_chat", chat(), {})
    with pytest.raises(errors.ProviderError):
        decoder.feed(SseEvent(data=json.dumps({"error": "model crashed"})))


def test_stream_garbage_event_raises():
    decoder = OpenAIProvider(endpoint()).stream_decoder("stream_chat", chat(), {})
    with pytest.raises(errors.ProviderError):
        decoder.feed(SseEvent(data="{not json"))


# ---------------------------------------------------------------------------
# Legacy completions
# ---------------------------------------------------------------------------

def test_complete_build_parse_and_stream():
    provider = OpenAIProvider(endpoint())
    req = OperationRequest(op="complete", params={"prompt": "Say this", "max_tokens": 7, "temperature": 0,
                                                   "echo": False, "suffix": None})
    http = provider.build("complete", req, None)
    assert http.url == "https://api.openai.com/v1/completions"
    assert http.json == {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "max_tokens": 7,
                         "temperature": 0, "echo": False}
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": " this is a test", "index": 0, "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}
    result = provider.parse("complete", req, response(200, body))
    assert result.text == " this is a test" and result.finish_reason == "length"
    assert result.usage.total_tokens == 10

    stream_req = OperationRequest(op="stream_complete", model="davinci-002", params={"prompt": "Hi"})
    http = provider.build("stream_complete", stream_req, None)
    assert http.json["model"] == "davinci-002" and http.json["stream"] is True
    assert http.json["stream_options"] == {"include_usage": True}
    chunks = run_stream(provider, "stream_complete", stream_req, [
        {"object": "text_completion", "model": "davinci-002", "choices": [{"index": 0, "text": "Hel", "finish_reason": None}]},
        {"object": "text_completion", "model": "davinci-002", "choices": [{"index": 0, "text": "lo", "finish_reason": "stop"}]},
        "[DONE]"])
    assert [c.text for c in chunks] == ["Hel", "lo", ""] and chunks[-1].finish_reason == "stop"


def test_complete_needs_prompt():
    with pytest.raises(errors.InvalidRequestError):
        OpenAIProvider(endpoint()).build("complete", OperationRequest(op="complete", params={}), None)


# ---------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------

def _b64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def test_embed_asks_for_base64_and_decodes_in_input_order():
    provider = OpenAIProvider(endpoint())
    req = EmbeddingRequest(model="text-embedding-3-small", input=["a", "b"], dimensions=3, user="u")
    http = provider.build("embed", req, None)
    assert http.url == "https://api.openai.com/v1/embeddings"
    assert http.json == {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "base64",
                         "dimensions": 3, "user": "u"}
    body = {"object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 1, "embedding": _b64([0.5, -1.0, 2.0])},
                     {"object": "embedding", "index": 0, "embedding": _b64([0.25, 0.0, -0.5])}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    result = provider.parse("embed", req, response(200, body))
    assert result.embeddings == [[0.25, 0.0, -0.5], [0.5, -1.0, 2.0]]
    assert all(type(x) is float for x in result.embeddings[0])
    assert result.usage.prompt_tokens == 2 and result.usage.total_tokens == 2


def test_embed_keeps_caller_format_and_reads_float_lists():
    provider = OpenAIProvider(endpoint())
    req = EmbeddingRequest(model="text-embedding-3-small", input=["a"], encoding_format="float")
    assert provider.build("embed", req, None).json["encoding_format"] == "float"
    body = {"data": [{"index": 0, "embedding": [1, 2.5]}], "model": "m", "usage": {"prompt_tokens": 1}}
    assert provider.parse("embed", req, response(200, body)).embeddings == [[1.0, 2.5]]


def test_compat_server_embeddings_do_not_ask_for_base64():
    req = EmbeddingRequest(model="bge", input=["a"])
    assert "encoding_format" not in CompatProvider(endpoint()).build("embed", req, None).json


def test_embed_count_mismatch_and_bad_base64_raise():
    provider = OpenAIProvider(endpoint())
    req = EmbeddingRequest(model="m", input=["a", "b"])
    with pytest.raises(errors.ProviderError, match="1 embeddings for 2 inputs"):
        provider.parse("embed", req, response(200, {"data": [{"index": 0, "embedding": [1.0]}]}))
    with pytest.raises(errors.ProviderError, match="unreadable embedding"):
        provider.parse("embed", EmbeddingRequest(model="m", input=["a"]),
                       response(200, {"data": [{"index": 0, "embedding": "@@not-base64@@"}]}))


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def test_models_and_model_info():
    provider = OpenAIProvider(endpoint())
    http = provider.build("models", OperationRequest(op="models"), None)
    assert (http.method, http.url, http.json) == ("GET", "https://api.openai.com/v1/models", None)
    assert "Content-Type" not in http.headers
    body = {"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "local", "object": "model", "owned_by": "me", "max_model_len": 4096}]}
    models = provider.parse("models", OperationRequest(op="models"), response(200, body))
    assert [m.id for m in models] == ["gpt-4o", "local"]
    assert models[0].owned_by == "system" and models[0].raw["created"] == 1715367049
    assert models[1].context_window == 4096
    assert all(isinstance(m, ModelInfo) and m.provider == "openai" for m in models)

    req = OperationRequest(op="model_info", model="ft:gpt-4o-mini:org::abc")
    assert provider.build("model_info", req, None).url == "https://api.openai.com/v1/models/ft:gpt-4o-mini:org::abc"
    result = provider.parse("model_info", req, response(200, body["data"][0]))
    assert result.data.id == "gpt-4o" and result.raw["owned_by"] == "system"


# ---------------------------------------------------------------------------
# Images, audio, moderation
# ---------------------------------------------------------------------------

def test_images():
    provider = OpenAIProvider(endpoint())
    req = OperationRequest(op="images", model="dall-e-3",
                           params={"prompt": "a cat", "n": 1, "size": "1024x1024", "style": None})
    http = provider.build("images", req, None)
    assert http.url == "https://api.openai.com/v1/images/generations"
    assert http.json == {"prompt": "a cat", "model": "dall-e-3", "n": 1, "size": "1024x1024"}
    body = {"created": 1, "data": [{"url": "https://img/1.png", "revised_prompt": "a cute cat"},
                                   {"b64_json": "aGVsbG8="}],
            "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30,
                      "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}}
    result = provider.parse("images", req, response(200, body))
    assert result.data == {"urls": ["https://img/1.png"], "b64_json": ["aGVsbG8="], "revised_prompts": ["a cute cat"]}
    assert result["urls"] == ["https://img/1.png"]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (10, 20)
    with pytest.raises(errors.InvalidRequestError):
        provider.build("images", OperationRequest(op="images", params={}), None)


WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32


def test_transcribe_builds_multipart_form():
    provider = OpenAIProvider(endpoint())
    req = OperationRequest(op="transcribe", params={
        "file": WAV, "language": "fr", "prompt": "names", "response_format": "verbose_json",
        "temperature": 0.0, "timestamp_granularities": ["word", "segment"]})
    http = provider.build("transcribe", req, "r1")
    assert http.url == "https://api.openai.com/v1/audio/transcriptions"
    assert http.json is None and "Content-Type" not in http.headers
    assert http.headers["Authorization"] == f"Bearer {KEY}"
    fields = {(f.name, f.value if isinstance(f.value, str) else "<bytes>") for f in http.form}
    assert fields == {("file", "<bytes>"), ("model", "whisper-1"), ("language", "fr"), ("prompt", "names"),
                      ("response_format", "verbose_json"), ("temperature", "0.0"),
                      ("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment")}
    file_part = http.form[0]
    assert file_part.value == WAV and file_part.filename == "audio.wav" and file_part.content_type == "audio/wav"

    body = {"task": "transcribe", "language": "french", "duration": 2.5, "text": "Bonjour",
            "segments": [{"id": 0, "text": "Bonjour"}], "words": [{"word": "Bonjour", "start": 0, "end": 1}],
            "usage": {"type": "duration", "seconds": 3}}
    result = provider.parse("transcribe", req, response(200, body))
    assert result.data["text"] == "Bonjour" and result.data["duration"] == 2.5
    assert result.data["words"][0]["word"] == "Bonjour"
    assert result.usage is None and result.model == "whisper-1"


def test_transcribe_token_usage_and_explicit_filename():
    req = OperationRequest(op="transcribe", model="gpt-4o-transcribe",
                           params={"file": bytearray(b"\x00\x01"), "filename": "clip.m4a"})
    http = OpenAIProvider(endpoint()).build("transcribe", req, None)
    assert http.form[0].filename == "clip.m4a" and http.form[1].value == "gpt-4o-transcribe"
    body = {"text": "hi", "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 4, "total_tokens": 18}}
    result = OpenAIProvider(endpoint()).parse("transcribe", req, response(200, body))
    assert result.usage.prompt_tokens == 14 and result.usage.total_tokens == 18


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_plain_text_transcription_formats(fmt):
    req = OperationRequest(op="translate", params={"file": WAV, "response_format": fmt, "language": "de"})
    provider = OpenAIProvider(endpoint())
    http = provider.build("translate", req, None)
    assert http.url.endswith("/audio/translations")
    assert "language" not in {f.name for f in http.form}
    body = b"1\n00:00:00,000 --> 00:00:01,000\nHello\n"
    result = provider.parse("translate", req, HttpResponse(200, {"content-type": "text/plain"}, body))
    assert result.data == {"text": body.decode()}


def test_transcribe_rejects_non_bytes():
    with pytest.raises(errors.InvalidRequestError, match="bytes"):
        OpenAIProvider(endpoint()).build("transcribe", OperationRequest(op="transcribe",
                                                                          params={"file": "/tmp/a.wav"}), None)


def test_speech_returns_bytes_with_content_type():
    provider = OpenAIProvider(endpoint())
    req = OperationRequest(op="speech", params={"input": "Hello", "voice": "nova", "response_format": "mp3",
                                                "speed": 1.25})
    http = provider.build("speech", req, None)
    assert http.url == "https://api.openai.com/v1/audio/speech"
    assert http.json == {"model": "tts-1", "input": "Hello", "voice": "nova", "response_format": "mp3", "speed": 1.25}
    result = provider.parse("speech", req, HttpResponse(200, {"content-type": "audio/mpeg"}, b"ID3\x03audio"))
    assert result.data == b"ID3\x03audio"
    assert result.raw["content_type"] == "audio/mpeg"
    default_voice = provider.build("speech", OperationRequest(op="speech", params={"input": "x"}), None)
    assert default_voice.json["voice"] == "alloy"


def test_moderate():
    provider = OpenAIProvider(endpoint())
    req = OperationRequest(op="moderate", model="omni-moderation-latest", params={"input": ["a", "b"]})
    http = provider.build("moderate", req, None)
    assert http.url == "https://api.openai.com/v1/moderations"
    assert http.json == {"input": ["a", "b"], "model": "omni-moderation-latest"}
    results = [{"flagged": True, "categories": {"harassment/threatening": True, "self-harm/intent": False},
                "category_scores": {"harassment/threatening": 0.9, "self-harm/intent": 0.01},
                "category_applied_input_types": {"harassment/threatening": ["text"]}},
               {"flagged": False, "categories": {}, "category_scores": {}}]
    body = {"id": "modr-1", "model": "omni-moderation-latest", "results": results}
    result = provider.parse("moderate", req, response(200, body))
    assert result.data == results and result.model == "omni-moderation-latest"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def _err(message, etype=None, code=None):
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


ERROR_CASES = [
    # status, body, headers, class, retryable, retry_after
    (401, _err("Incorrect API key provided", "invalid_request_error", "invalid_api_key"), {},
     errors.AuthenticationError, False, None),
    (403, _err("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"),
     {}, errors.PermissionDeniedError, False, None),
    (404, _err("The model `gpt-9` does not exist or you do not have access to it.", "invalid_request_error",
               "model_not_found"), {}, errors.UnknownModelError, False, None),
    (404, _err("Not found"), {}, errors.NotFoundError, False, None),
    (400, _err("This model's maximum context length is 128000 tokens.", "invalid_request_error",
               "context_length_exceeded"), {}, errors.ContextLengthError, False, None),
    (400, _err("'messages' must contain the word 'json'", "invalid_request_error"), {},
     errors.InvalidRequestError, False, None),
    (413, _err("Request too large"), {}, errors.InvalidRequestError, False, None),
    (422, _err("Unprocessable"), {}, errors.InvalidRequestError, False, None),
    (429, _err("Rate limit reached for requests", "requests", "rate_limit_exceeded"), {"retry-after": "20"},
     errors.RateLimitError, True, 20.0),
    (429, _err("Rate limit reached for tokens", "tokens", "rate_limit_exceeded"),
     {"retry-after-ms": "1500", "retry-after": "9"}, errors.RateLimitError, True, 1.5),
    (429, _err("You exceeded your current quota", "insufficient_quota", "insufficient_quota"), {},
     errors.RateLimitError, False, None),
    (500, _err("The server had an error", "server_error"), {}, errors.ProviderError, True, None),
    (502, b"<html>Bad Gateway</html>", {}, errors.ProviderError, True, None),
    (503, _err("The engine is currently overloaded"), {}, errors.ProviderOverloadedError, True, None),
    (529, _err("Overloaded", "overloaded_error"), {}, errors.ProviderOverloadedError, True, None),
    (400, _err("bad"), {"x-should-retry": "true"}, errors.InvalidRequestError, True, None),
    (500, _err("boom", "server_error"), {"x-should-retry": "false"}, errors.ProviderError, False, None),
]


@pytest.mark.parametrize("status, body, headers, cls, retryable, retry_after", ERROR_CASES)
def test_parse_error_mapping(status, body, headers, cls, retryable, retry_after):
    err = OpenAIProvider(endpoint()).parse_error(response(status, body, headers))
    assert type(err) is cls
    assert isinstance(err, ValueError)
    assert err.status == status
    assert err.retryable is retryable
    assert err.retry_after == retry_after
    assert err.provider == "openai" and err.endpoint_id == "ep-1"


def test_error_messages_are_greppable():
    err = OpenAIProvider(endpoint()).parse_error(response(429, _err("slow down", "requests", "rate_limit_exceeded")))
    assert str(err).startswith("Rate limit exceeded")
    err = OpenAIProvider(endpoint()).parse_error(response(401, _err("bad key")))
    assert str(err).startswith("Authentication error")


@pytest.mark.parametrize("key", [KEY, "plain-secret-without-any-known-shape-42"])
def test_api_key_never_appears_in_errors_or_reprs(key):
    provider = OpenAIProvider(endpoint(key=key))
    echoed = _err(f"Incorrect API key provided: {key}. You can find your API key at ...", code="invalid_api_key")
    err = provider.parse_error(response(401, echoed))
    stream_err = None
    try:
        provider.stream_decoder("stream_chat", chat(), {}).feed(SseEvent(data=json.dumps(echoed)))
    except errors.GatewayError as exc:
        stream_err = exc
    http = provider.build("chat", chat(), "r")
    texts = [str(err), repr(err), str(err.to_dict()), str(stream_err), repr(stream_err), repr(provider),
             repr(http), repr(response(401, echoed))]
    for text in texts:
        assert key not in text


# ---------------------------------------------------------------------------
# Groq
# ---------------------------------------------------------------------------

def test_groq_chat_request():
    provider = GroqProvider(endpoint(provider="groq", api_key=FakeSecret("gsk_FAKE0123456789abcdefghij")))
    http = provider.build("stream_chat", chat("llama-3.3-70b-versatile", max_tokens=10, top_k=3), None)
    assert http.url == "https://api.groq.com/openai/v1/chat/completions"
    assert http.headers["Authorization"] == "Bearer gsk_FAKE0123456789abcdefghij"
    assert http.json["max_completion_tokens"] == 10 and "top_k" not in http.json
    assert http.json["stream_options"] == {"include_usage": True}


def test_groq_rejects_n_above_one_before_sending():
    with pytest.raises(errors.InvalidRequestError, match="n must be 1") as info:
        GroqProvider(endpoint()).build("chat", chat("llama-3.1-8b-instant", n=2), None)
    assert info.value.provider == "groq"
    GroqProvider(endpoint()).build("chat", chat("llama-3.1-8b-instant", n=1), None)


GROQ_USAGE = {"queue_time": 0.02, "prompt_tokens": 12, "prompt_time": 0.001, "completion_tokens": 3,
              "completion_time": 0.01, "total_tokens": 15, "total_time": 0.011}


def test_groq_usage_timings_kept():
    body = dict(CHAT_RESPONSE, model="llama-3.3-70b-versatile", usage=GROQ_USAGE)
    usage = GroqProvider(endpoint()).parse("chat", chat("llama-3.3-70b-versatile"), response(200, body)).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 3, 15)
    assert {k: usage.details[k] for k in ("queue_time", "prompt_time", "completion_time", "total_time")} == \
        {"queue_time": 0.02, "prompt_time": 0.001, "completion_time": 0.01, "total_time": 0.011}


def test_groq_stream_uses_x_groq_usage_when_no_usage_chunk():
    chunks = run_stream(GroqProvider(endpoint()), "stream_chat", chat("llama-3.3-70b-versatile"), [
        chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_1"}),
        chunk({"content": "Hi"}),
        chunk({}, finish="stop", x_groq={"id": "req_1", "usage": GROQ_USAGE}),
        "[DONE]"])
    final = chunks[-1]
    assert final.done and final.usage.total_tokens == 15 and final.usage.details["queue_time"] == 0.02


def test_groq_stream_prefers_include_usage_chunk():
    chunks = run_stream(GroqProvider(endpoint()), "stream_chat", chat("llama-3.3-70b-versatile"), [
        chunk({"content": "Hi"}),
        chunk({}, finish="stop", x_groq={"id": "req_1", "usage": GROQ_USAGE}),
        {"choices": [], "usage": dict(GROQ_USAGE, completion_tokens=4, total_tokens=16)},
        "[DONE]"])
    assert chunks[-1].usage.total_tokens == 16


def test_groq_models_merge_live_answer_with_catalog():
    body = {"object": "list", "data": [
        {"id": "llama-3.3-70b-versatile", "object": "model", "created": 1733447754, "owned_by": "Meta",
         "active": True, "context_window": 131072, "public_apps": None, "max_completion_tokens": 32768},
        {"id": "whisper-large-v3", "object": "model", "owned_by": "OpenAI", "active": True, "context_window": 448},
        {"id": "mixtral-8x7b-32768", "object": "model", "owned_by": "Mistral AI", "active": False},
        {"id": "meta-llama/llama-5-vision-new", "object": "model", "owned_by": "Meta"}]}
    provider = GroqProvider(endpoint())
    models = provider.parse("models", OperationRequest(op="models"), response(200, body))
    by_id = {m.id: m for m in models}
    assert set(by_id) == {"llama-3.3-70b-versatile", "whisper-large-v3", "meta-llama/llama-5-vision-new"}
    llama = by_id["llama-3.3-70b-versatile"]
    assert (llama.category, llama.context_window, llama.max_output_tokens) == ("chat", 131072, 32768)
    assert llama.description and llama.raw["active"] is True
    assert by_id["whisper-large-v3"].category == "audio"
    assert by_id["meta-llama/llama-5-vision-new"].category == "vision"
    url = provider.build("model_info", OperationRequest(op="model_info",
                                                        model="meta-llama/llama-4-scout-17b-16e-instruct"), None).url
    assert url == "https://api.groq.com/openai/v1/models/meta-llama/llama-4-scout-17b-16e-instruct"


SEED_GROQ_MODELS = ["llama3-8b-8192", "llama3-70b-8192", "mixtral-8x7b-32768", "gemma2-9b-it",
                    "llama-3.3-70b-versatile", "llama-3.1-8b-instant", "mistral-saba-24b", "qwen-2.5-coder-32b",
                    "whisper-large-v3", "whisper-large-v3-turbo", "distil-whisper-large-v3-en",
                    "llama-3.2-11b-vision-preview", "llama-3.2-90b-vision-preview", "llama-guard-3-8b",
                    "deepseek-r1-distill-llama-70b", "meta-llama/llama-4-scout-17b-16e-instruct"]


def test_groq_catalog_helpers():
    ids = {entry["id"] for entry in groq_module.catalog()}
    assert set(SEED_GROQ_MODELS) <= ids
    for entry in groq_module.catalog():
        assert set(entry) >= {"id", "category", "context_window", "description", "owned_by"}
        assert entry["category"] in ("chat", "vision", "audio")
    audio = groq_module.catalog("audio")
    assert audio and all(e["category"] == "audio" for e in audio)
    audio[0]["id"] = "mutated"  # copies: the module table is untouched
    assert "mutated" not in {e["id"] for e in groq_module.catalog()}
    with pytest.raises(errors.InvalidRequestError):
        groq_module.catalog("nonsense")
    assert groq_module.is_compatible_model("llama-3.3-70b-versatile", "chat")
    assert groq_module.is_compatible_model("llama-3.2-90b-vision-preview", "vision")
    assert groq_module.is_compatible_model("llama-3.2-90b-vision-preview", "chat")
    assert groq_module.is_compatible_model("whisper-large-v3", "audio")
    assert not groq_module.is_compatible_model("whisper-large-v3", "chat")
    assert not groq_module.is_compatible_model("llama-3.1-8b-instant", "audio")
    assert not groq_module.is_compatible_model("gpt-4o", "chat")


def test_groq_audio_defaults():
    provider = GroqProvider(endpoint())
    t = provider.build("transcribe", OperationRequest(op="transcribe", params={"file": WAV}), None)
    assert t.url == "https://api.groq.com/openai/v1/audio/transcriptions"
    assert [f.value for f in t.form if f.name == "model"] == ["whisper-large-v3-turbo"]
    tr = provider.build("translate", OperationRequest(op="translate", params={"file": WAV}), None)
    assert [f.value for f in tr.form if f.name == "model"] == ["whisper-large-v3"]


@pytest.mark.parametrize("status, body, cls, retryable", [
    (498, _err("Flex tier capacity exceeded. This is a temporary issue.", "capacity_exceeded"),
     errors.ProviderError, True),
    (400, {"error": {"message": "Failed to generate JSON", "type": "invalid_request_error",
                     "code": "json_validate_failed", "failed_generation": "{oops"}}, errors.InvalidRequestError, False),
    (413, _err("Request Entity Too Large", "invalid_request_error"), errors.InvalidRequestError, False),
    (424, _err("Failed dependency", "invalid_request_error"), errors.InvalidRequestError, False),
    (503, _err("Service Unavailable", "internal_server_error"), errors.ProviderOverloadedError, True),
])
def test_groq_errors(status, body, cls, retryable):
    err = GroqProvider(endpoint()).parse_error(response(status, body))
    assert type(err) is cls and err.retryable is retryable and err.provider == "groq"


# ---------------------------------------------------------------------------
# Rate-limit headers
# ---------------------------------------------------------------------------

def test_rate_limit_headers_are_parsed():
    limiter = pytest.importorskip("ipfs_accelerate_py.core.limiter")
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
               "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
               "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "6m0s"}
    state = OpenAIProvider(endpoint()).rate_limit_headers(headers)
    assert state == limiter.parse_openai_rate_headers(headers)
    assert state is not None
    assert GroqProvider(endpoint()).rate_limit_headers(headers) == state
