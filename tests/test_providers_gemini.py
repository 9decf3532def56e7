"""The Gemini provider and its fake server.

First half: pure tests of ``providers/gemini.py`` -- build() checked as data,
parse() and the stream decoder fed canned bodies and raw SSE bytes in the
shapes of PROTOCOLS.md section 4, errors mapped from Google RPC bodies.
Second half: the official ``google-genai`` SDK against the fake
(``testing/fakes/gemini.py``), proving the fake speaks the real wire format.
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
from ipfs_accelerate_py.providers.gemini import GeminiProvider, finish_reason, gemini_schema
from ipfs_accelerate_py.transport import HttpResponse, SseDecoder, SseEvent
from ipfs_accelerate_py.types import (ChatRequest, EmbeddingRequest, ModelInfo, OperationRequest, OperationResponse,
                                      build_chat_request, build_embedding_request)
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake

KEY = "AIzaSyFAKE-gemini-key-0123456789abcdef"


class FakeSecret:
    """Stand-in for config.Secret: the value only through .get()."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def endpoint(key: str | None = KEY, **overrides: Any) -> SimpleNamespace:
    fields = dict(id="gm-1", provider="gemini", base_url=None, api_key=FakeSecret(key) if key else None,
                  models=[], default_model=None, timeout_s=30.0, stream_timeout_s=30.0, headers={}, options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


def provider(**kw: Any) -> GeminiProvider:
    return GeminiProvider(endpoint(**kw))


def chat(messages: Any = None, model: str = "gemini-2.0-flash", **params: Any) -> ChatRequest:
    return build_chat_request(model, messages or [{"role": "user", "content": "Hi"}], params)


def body_of(request: Any, op: str = "chat", **kw: Any) -> dict:
    return provider(**kw).build(op, request, None).json


def response(status: int, body: Any, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (4, 3), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def rpc_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


RETRY_17S = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "x"}]},
             {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]
KEY_INVALID = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com"}]


def sse_frames(*payloads: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\r\n\r\n" for p in payloads)


def decode_stream(raw: bytes, request: ChatRequest | None = None, split: int = 7) -> list:
    """Run raw response bytes through the transport's SSE framing and the
    provider's decoder, fed in small pieces as a network would deliver them."""
    p = provider()
    decoder = p.stream_decoder("stream_chat", request or chat(), {})
    sse = SseDecoder()
    chunks = []
    for start in range(0, len(raw), split):
        for event in sse.feed(raw[start:start + split]):
            chunks.extend(decoder.feed(event))
    for event in sse.flush():
        chunks.extend(decoder.feed(event))
    chunks.extend(decoder.close())
    return chunks


def candidate(parts: list, finish: str | None = None, index: int = 0) -> dict:
    out: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
    if finish:
        out["finishReason"] = finish
    return out


class StubTransport:
    """Answers ``send`` from a list of canned responses and records the requests."""

    def __init__(self, *responses: HttpResponse) -> None:
        self.responses = list(responses)
        self.sent: list = []

    async def send(self, req: Any, *, timeout_s: float | None = None) -> HttpResponse:
        self.sent.append(req)
        return self.responses.pop(0)


# ---------------------------------------------------------------------------
# Registry, URLs and auth
# ---------------------------------------------------------------------------

def test_registry_capabilities_and_model_patterns():
    assert get_provider_class("gemini") is GeminiProvider
    assert get_provider_class("google") is GeminiProvider
    for model in ("gemini-2.0-flash", "gemini-2.5-pro", "text-embedding-004", "embedding-001", "gemma-3-27b-it"):
        assert GeminiProvider.claims_model(model), model
    assert not GeminiProvider.claims_model("gpt-4o")
    assert GeminiProvider.max_embed_batch == 100 and GeminiProvider.default_model == "gemini-2.0-flash"
    assert {"chat", "stream_chat", "embed", "count_tokens", "models", "model_info"} == set(GeminiProvider.operations)


@pytest.mark.parametrize("base_url, expected", [
    (None, "https://generativelanguage.googleapis.com/v1beta"),
    ("https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1beta"),
    ("https://generativelanguage.googleapis.com/v1", "https://generativelanguage.googleapis.com/v1"),
    ("https://proxy.internal/google/v1beta/", "https://proxy.internal/google/v1beta"),
])
def test_base_url_conventions(base_url, expected):
    assert provider(base_url=base_url).base_url == expected


def test_key_goes_in_the_header_never_in_the_url():
    req = provider().build("chat", chat(), "rid-1")
    assert req.method == "POST"
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and "Authorization" not in req.headers
    assert KEY not in req.url and not req.params and req.stream is None
    stream = provider().build("stream_chat", chat(), None)
    assert stream.url.endswith("/models/gemini-2.0-flash:streamGenerateContent")
    assert stream.params == {"alt": "sse"} and stream.stream == "sse"
    assert stream.headers["Accept"] == "text/event-stream" and KEY not in str(stream.params)
    assert "x-goog-api-key" not in provider(key=None).build("chat", chat(), None).headers


def test_model_paths_keep_collections():
    assert provider().build("chat", chat(model="models/gemini-1.5-pro"), None).url.endswith(
        "/models/gemini-1.5-pro:generateContent")
    assert provider().build("chat", chat(model="tunedModels/my-tune-7"), None).url.endswith(
        "/tunedModels/my-tune-7:generateContent")


# ---------------------------------------------------------------------------
# Request mapping
# ---------------------------------------------------------------------------

def test_minimal_body():
    assert body_of(chat()) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_system_roles_merging_and_generation_config():
    req = chat([{"role": "system", "content": "Be terse."}, {"role": "developer", "content": "Use French."},
                {"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                {"role": "assistant", "content": "three"}, {"role": "user", "content": "four"}],
               temperature=0.4, top_p=0.9, top_k=32, max_tokens=100, stop="END", n=2, seed=7,
               presence_penalty=0.5, frequency_penalty=-0.5, user="ignored")
    body = body_of(req)
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse.\n\nUse French."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
                                {"role": "model", "parts": [{"text": "three"}]},
                                {"role": "user", "parts": [{"text": "four"}]}]
    assert body["generationConfig"] == {"temperature": 0.4, "topP": 0.9, "topK": 32, "maxOutputTokens": 100,
                                        "stopSequences": ["END"], "candidateCount": 2, "seed": 7,
                                        "presencePenalty": 0.5, "frequencyPenalty": -0.5}
    assert set(body) == {"contents", "systemInstruction", "generationConfig"}


def test_only_a_system_prompt_is_refused_before_sending():
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat([{"role": "system", "content": "alone"}]))


def test_response_formats():
    assert body_of(chat(response_format={"type": "json_object"}))["generationConfig"] == {
        "responseMimeType": "application/json"}
    assert "generationConfig" not in body_of(chat(response_format={"type": "text"}))
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
              "additionalProperties": False, "$defs": {"City": {"type": "string", "description": "a city"}},
              "properties": {"city": {"$ref": "#/$defs/City"}, "temp": {"type": ["number", "null"]},
                             "tags": {"type": "array", "items": {"type": "string", "const": "x"}},
                             "kind": {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]}},
              "required": ["city"]}
    config = body_of(chat(response_format={"type": "json_schema",
                                           "json_schema": {"name": "w", "schema": schema, "strict": True}}))
    assert config["generationConfig"] == {"responseMimeType": "application/json", "responseSchema": {
        "type": "OBJECT", "required": ["city"],
        "properties": {"city": {"type": "STRING", "description": "a city"},
                       "temp": {"type": "NUMBER", "nullable": True},
                       "tags": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["x"]}},
                       "kind": {"type": "STRING", "enum": ["a", "b"], "nullable": True}}}}
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat(response_format={"type": "xml"}))


def test_recursive_schema_is_refused():
    with pytest.raises(errors.InvalidRequestError):
        gemini_schema({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}},
                       "$ref": "#/$defs/N"})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}


def test_tools_and_tool_choice():
    now = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    body = body_of(chat(tools=[WEATHER, now, {"googleSearch": {}}], tool_choice="required"))
    assert body["tools"] == [
        {"functionDeclarations": [
            {"name": "get_weather", "description": "Weather for a city",
             "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}},
            {"name": "now"}]},
        {"googleSearch": {}}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body_of(chat(tools=[WEATHER], tool_choice="none"))["toolConfig"]["functionCallingConfig"] == {
        "mode": "NONE"}
    forced = body_of(chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert forced["toolConfig"] == {"functionCallingConfig": {"mode": "ANY",
                                                              "allowedFunctionNames": ["get_weather"]}}
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat(tools=[WEATHER], tool_choice="sometimes"))


def test_tool_round_trip_maps_calls_and_results_by_name():
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
    ]
    body = body_of(chat(messages, tools=[WEATHER]))
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                    {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                                   {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]}]
    with pytest.raises(errors.InvalidRequestError):  # a result no call or name identifies
        body_of(chat([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]))
    with pytest.raises(errors.InvalidRequestError):  # arguments that are not a JSON object
        body_of(chat([{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "[1, 2]"}}]}, {"role": "user", "content": "x"}]))


def test_images_from_data_urls_bytes_and_pil():
    png = png_bytes()
    jpeg = png_bytes(fmt="JPEG")
    bmp = png_bytes(fmt="BMP")
    pil = Image.new("RGBA", (5, 5), (1, 2, 3, 128))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [{"type": "text", "text": "Describe"},
               {"type": "image_url", "image_url": {"url": data_url}},
               {"type": "image", "image": jpeg},
               {"type": "image", "image": pil},
               {"type": "image", "image": bytearray(bmp)},
               {"type": "image_url", "image_url": "https://example.com/cat.png"},
               {"type": "image_url", "image_url": {"url": "data:application/pdf;base64,JVBERi0="}}]
    parts = body_of(chat([{"role": "user", "content": content}]))["contents"][0]["parts"]
    assert parts[0] == {"text": "Describe"}
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}}
    assert parts[2] == {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(jpeg).decode()}}
    assert parts[3]["inlineData"]["mimeType"] == "image/png"
    decoded = Image.open(io.BytesIO(base64.b64decode(parts[3]["inlineData"]["data"])))
    assert decoded.size == (5, 5) and decoded.getpixel((0, 0)) == (1, 2, 3, 128)
    assert parts[4]["inlineData"]["mimeType"] == "image/png"  # BMP is not accepted inline: re-encoded
    assert Image.open(io.BytesIO(base64.b64decode(parts[4]["inlineData"]["data"]))).format == "PNG"
    assert parts[5] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}}
    assert parts[6] == {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}


def test_image_data_keyword_is_appended_to_the_last_user_turn():
    png = png_bytes()
    body = body_of(chat("What is this?", image_data=[png, Image.new("L", (2, 2))]))
    parts = body["contents"][-1]["parts"]
    assert parts[0] == {"text": "What is this?"}
    assert [p["inlineData"]["mimeType"] for p in parts[1:]] == ["image/png", "image/png"]
    assert parts[1]["inlineData"]["data"] == base64.b64encode(png).decode()
    assert "imageData" not in body and "image_data" not in body


@pytest.mark.parametrize("bad", [b"not an image at all", "https://x/y.png", 42, b""])
def test_unusable_images_are_invalid_requests(bad):
    with pytest.raises(errors.InvalidRequestError):
        body_of(chat([{"role": "user", "content": [{"type": "image", "image": bad}]}]))


def test_extra_fields_pass_through_in_the_right_place():
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    body = body_of(chat(safetySettings=safety, thinking_config={"thinkingBudget": 0}, cached_content="c/1",
                        generationConfig={"responseModalities": ["TEXT"], "temperature": 0.1},
                        parallel_tool_calls=False, temperature=0.9))
    assert body["safetySettings"] == safety and body["cachedContent"] == "c/1"
    assert body["generationConfig"] == {"temperature": 0.1, "thinkingConfig": {"thinkingBudget": 0},
                                        "responseModalities": ["TEXT"]}
    assert "parallelToolCalls" not in body and "parallel_tool_calls" not in body
    assert body_of(chat(safety_settings=safety))["safetySettings"] == safety


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------

GENERATE = {
    "candidates": [candidate([{"text": "thinking...", "thought": True}, {"text": "Hello "}, {"text": "there"}],
                             "STOP")],
    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 30, "totalTokenCount": 52,
                      "thoughtsTokenCount": 8, "cachedContentTokenCount": 4, "toolUsePromptTokenCount": 2},
    "modelVersion": "gemini-2.5-flash", "responseId": "abc",
}


def test_parse_generate_content():
    r = provider().parse("chat", chat(), response(200, GENERATE))
    assert r.text == "Hello there" and r.finish_reason == "stop" and r.model == "gemini-2.5-flash"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (14, 38, 52)
    assert r.usage.details["reasoning_tokens"] == 8 and r.usage.details["cached_tokens"] == 4
    assert r.provider == "gemini" and r.endpoint_id == "gm-1" and r.raw["responseId"] == "abc"


def test_parse_function_calls_and_several_candidates():
    body = {"candidates": [
        candidate([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                   {"functionCall": {"id": "fc-2", "name": "now", "args": {}}}], "STOP"),
        candidate([{"text": "second"}], "MAX_TOKENS", index=1)]}
    r = provider().parse("chat", chat(), response(200, body))
    assert r.finish_reason == "tool_calls" and r.text == ""
    assert [(c.name, json.loads(c.arguments)) for c in r.tool_calls] == [("get_weather", {"city": "Paris"}),
                                                                         ("now", {})]
    assert r.tool_calls[0].id.startswith("call_") and r.tool_calls[1].id == "fc-2"
    assert r.tool_calls[0].id != provider().parse("chat", chat(), response(200, body)).tool_calls[0].id
    assert r.choices == ["", "second"]


@pytest.mark.parametrize("reason, expected", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("MALFORMED_FUNCTION_CALL", "malformed_function_call"),
    ("OTHER", "other"), ("FINISH_REASON_UNSPECIFIED", None), (None, None)])
def test_finish_reason_mapping(reason, expected):
    assert finish_reason(reason) == expected


def test_blocked_prompt_is_an_empty_answer_not_a_crash():
    body = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}}
    r = provider().parse("chat", chat(), response(200, body))
    assert r.text == "" and r.finish_reason == "blocked" and r.usage.prompt_tokens == 9
    assert r.raw["promptFeedback"]["blockReason"] == "SAFETY"


def test_non_json_success_is_a_retryable_provider_error():
    with pytest.raises(errors.ProviderError) as info:
        provider().parse("chat", chat(), response(200, b"<html>proxy</html>"))
    assert info.value.retryable


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

def stream_body(*texts: str, finish: str | None = "STOP") -> bytes:
    frames = []
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        chunk: dict[str, Any] = {"candidates": [candidate([{"text": text}], finish if last else None)],
                                 "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
                                 "modelVersion": "gemini-2.0-flash"}
        if last and finish:
            chunk["usageMetadata"] = {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9}
        frames.append(chunk)
    return sse_frames(*frames)


def test_stream_text_finish_and_usage():
    chunks = decode_stream(stream_body("Hel", "lo ", "world"))
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo ", "world"]
    final = chunks[-1]
    assert final.done and final.finish_reason == "stop" and final.model == "gemini-2.0-flash"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (5, 4)


def test_stream_function_call_is_delivered_whole_on_the_final_chunk():
    raw = sse_frames({"candidates": [candidate([{"functionCall": {"name": "get_weather",
                                                                  "args": {"city": "Paris"}}}], "STOP")]})
    chunks = decode_stream(raw)
    assert len(chunks) == 1 and chunks[0].done and chunks[0].finish_reason == "tool_calls"
    assert chunks[0].tool_calls[0].name == "get_weather"
    assert json.loads(chunks[0].tool_calls[0].arguments) == {"city": "Paris"}


def test_stream_without_finish_reason_is_truncated():
    with pytest.raises(errors.ProviderError) as info:
        decode_stream(stream_body("Hel", "lo", finish=None))
    assert info.value.retryable and "finishReason" in str(info.value)
    assert type(info.value) is errors.ProviderError


def test_blocked_stream_is_complete():
    raw = sse_frames({"promptFeedback": {"blockReason": "OTHER"}, "usageMetadata": {"promptTokenCount": 3}})
    chunks = decode_stream(raw)
    assert len(chunks) == 1 and chunks[0].done and chunks[0].finish_reason == "blocked"


@pytest.mark.parametrize("code, status, details, cls, retry_after", [
    (503, "UNAVAILABLE", None, errors.ProviderOverloadedError, None),
    (429, "RESOURCE_EXHAUSTED", RETRY_17S, errors.RateLimitError, 17.0),
    (500, "INTERNAL", None, errors.ProviderError, None),
    (400, "INVALID_ARGUMENT", None, errors.InvalidRequestError, None),
])
def test_raw_json_error_mid_stream_raises_the_typed_error(code, status, details, cls, retry_after):
    error = json.dumps(rpc_error(code, status, "mid-stream trouble", details), indent=2).encode() + b"\n"
    p = provider()
    decoder = p.stream_decoder("stream_chat", chat(), {})
    sse = SseDecoder()
    got = []
    with pytest.raises(errors.GatewayError) as info:
        for event in sse.feed(stream_body("Hel", "lo", finish=None) + error):
            got.extend(decoder.feed(event))
    assert [c.text for c in got] == ["Hel", "lo"]
    assert type(info.value) is cls and info.value.status == code and info.value.retry_after == retry_after


def test_error_wrapped_in_a_list_and_with_only_a_status_word():
    decoder = provider().stream_decoder("stream_chat", chat(), {})
    with pytest.raises(errors.RateLimitError):
        decoder.feed(SseEvent(event="raw-json", data=json.dumps([rpc_error(429, "RESOURCE_EXHAUSTED", "q")])))
    with pytest.raises(errors.ProviderOverloadedError):
        decoder.feed(SseEvent(data=json.dumps({"error": {"message": "busy", "status": "UNAVAILABLE"}})))


# ---------------------------------------------------------------------------
# Embeddings, token counting, models
# ---------------------------------------------------------------------------

def test_embed_single_and_batch_bodies():
    one = build_embedding_request("text-embedding-004", "hello", {"task_type": "RETRIEVAL_QUERY", "dimensions": 64})
    req = provider().build("embed", one, None)
    assert req.url.endswith("/models/text-embedding-004:embedContent")
    assert req.json == {"content": {"parts": [{"text": "hello"}]}, "taskType": "RETRIEVAL_QUERY",
                        "outputDimensionality": 64}
    many = build_embedding_request("text-embedding-004", ["a", "b"], {"title": "Doc",
                                                                     "taskType": "RETRIEVAL_DOCUMENT"})
    req = provider().build("embed", many, None)
    assert req.url.endswith("/models/text-embedding-004:batchEmbedContents")
    assert req.json == {"requests": [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": t}]}, "title": "Doc",
         "taskType": "RETRIEVAL_DOCUMENT"} for t in ("a", "b")]}


def test_embed_parse_and_count_check():
    one = EmbeddingRequest(model="text-embedding-004", input=["hello world"])
    r = provider().parse("embed", one, response(200, {"embedding": {"values": [0.1, 0.2]}}))
    assert r.embeddings == [[0.1, 0.2]] and r.usage.prompt_tokens > 0 and r.usage.details["estimated"]
    two = EmbeddingRequest(model="text-embedding-004", input=["a", "b"])
    r = provider().parse("embed", two, response(200, {"embeddings": [{"values": [1]}, {"values": [2]}]}))
    assert r.embeddings == [[1.0], [2.0]]
    with pytest.raises(errors.ProviderError):
        provider().parse("embed", two, response(200, {"embeddings": [{"values": [1]}]}))
    with pytest.raises(errors.ProviderError):
        provider().parse("embed", one, response(200, {"embedding": {}}))


def test_embed_beyond_the_batch_limit_is_split():
    request = EmbeddingRequest(model="text-embedding-004", input=[f"t{i}" for i in range(250)])

    def answer(n: int, base: int) -> HttpResponse:
        return response(200, {"embeddings": [{"values": [float(base + i)]} for i in range(n)]})

    transport = StubTransport(answer(100, 0), answer(100, 100), answer(50, 200))
    result, _ = asyncio.run(provider().execute("embed", request, None, transport))
    assert [len(r.json["requests"]) for r in transport.sent] == [100, 100, 50]
    assert transport.sent[2].json["requests"][0]["content"]["parts"][0]["text"] == "t200"
    assert [v[0] for v in result.embeddings] == [float(i) for i in range(250)]


def test_count_tokens_plain_and_full_request_forms():
    plain = provider().build("count_tokens", OperationRequest(op="count_tokens", model="gemini-2.0-flash",
                                                              params={"messages": [{"role": "user", "content": "hi"}]}),
                             None)
    assert plain.url.endswith("/models/gemini-2.0-flash:countTokens")
    assert plain.json == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    full = provider().build("count_tokens", chat([{"role": "system", "content": "terse"},
                                                  {"role": "user", "content": "hi"}], tools=[WEATHER]), None)
    inner = full.json["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.0-flash" and inner["systemInstruction"]["parts"][0]["text"] == "terse"
    assert inner["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    text_form = provider().build("count_tokens", OperationRequest(op="count_tokens", params={"text": "hello"}), None)
    assert text_form.json == {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    assert text_form.url.endswith("/models/gemini-2.0-flash:countTokens")  # the provider's default model
    result = provider().parse("count_tokens", OperationRequest(op="count_tokens", params={"text": "hello"}),
                              response(200, {"totalTokens": 31, "promptTokensDetails": []}))
    assert isinstance(result, OperationResponse) and result.data == {"total_tokens": 31}
    assert result["total_tokens"] == 31


MODEL = {"name": "models/gemini-2.0-flash", "displayName": "Gemini 2.0 Flash", "inputTokenLimit": 1048576,
         "outputTokenLimit": 8192, "supportedGenerationMethods": ["generateContent", "countTokens"]}
EMBED_MODEL = {"name": "models/text-embedding-004", "inputTokenLimit": 2048, "outputTokenLimit": 1,
               "supportedGenerationMethods": ["embedContent"]}


def test_models_follow_page_tokens():
    transport = StubTransport(response(200, {"models": [MODEL], "nextPageToken": "p2"}),
                              response(200, {"models": [EMBED_MODEL]}))
    models, _ = asyncio.run(provider().execute("models", OperationRequest(op="models"), None, transport))
    assert [m.id for m in models] == ["gemini-2.0-flash", "text-embedding-004"]
    assert models[0].context_window == 1048576 and models[0].max_output_tokens == 8192
    assert (models[0].category, models[1].category) == ("chat", "embedding")
    assert models[0].description == "Gemini 2.0 Flash" and models[0].owned_by == "google"
    assert transport.sent[0].params == {"pageSize": "1000"}
    assert transport.sent[1].params == {"pageSize": "1000", "pageToken": "p2"}


def test_models_stop_on_a_repeating_token_and_raise_on_errors():
    looping = StubTransport(*[response(200, {"models": [MODEL], "nextPageToken": "same"}) for _ in range(3)])
    models, _ = asyncio.run(provider().execute("models", OperationRequest(op="models"), None, looping))
    assert len(models) == 2 and len(looping.sent) == 2
    failing = StubTransport(response(403, rpc_error(403, "PERMISSION_DENIED", "no")))
    with pytest.raises(errors.PermissionDeniedError):
        asyncio.run(provider().execute("models", OperationRequest(op="models"), None, failing))


def test_model_info():
    req = provider().build("model_info", OperationRequest(op="model_info", model="gemini-2.0-flash"), None)
    assert req.method == "GET" and req.url.endswith("/v1beta/models/gemini-2.0-flash")
    result = provider().parse("model_info", OperationRequest(op="model_info", model="gemini-2.0-flash"),
                              response(200, MODEL))
    assert isinstance(result.data, ModelInfo) and result.data.context_window == 1048576


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("status, body, cls, retryable, retry_after", [
    (400, rpc_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", KEY_INVALID),
     errors.AuthenticationError, False, None),
    (403, rpc_error(403, "PERMISSION_DENIED", "API key not valid. Please pass a valid API key."),
     errors.AuthenticationError, False, None),
    (403, rpc_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                                              "established identity)."), errors.AuthenticationError, False, None),
    (401, rpc_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
     errors.AuthenticationError, False, None),
    (403, rpc_error(403, "PERMISSION_DENIED", "Your API key was reported as leaked."),
     errors.PermissionDeniedError, False, None),
    (400, rpc_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
     errors.PermissionDeniedError, False, None),
    (404, rpc_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"),
     errors.UnknownModelError, False, None),
    (404, rpc_error(404, "NOT_FOUND", "Requested entity was not found."), errors.NotFoundError, False, None),
    (429, rpc_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", RETRY_17S),
     errors.RateLimitError, True, 17.0),
    (429, rpc_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"), errors.RateLimitError, True, None),
    (400, rpc_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
     errors.InvalidRequestError, False, None),
    (400, rpc_error(400, "INVALID_ARGUMENT", "The input token count (9000) exceeds the maximum number of tokens "
                                             "allowed (8192)."), errors.ContextLengthError, False, None),
    (500, rpc_error(500, "INTERNAL", "An internal error has occurred."), errors.ProviderError, True, None),
    (503, rpc_error(503, "UNAVAILABLE", "The model is overloaded."), errors.ProviderOverloadedError, True, None),
    (504, rpc_error(504, "DEADLINE_EXCEEDED", "Deadline expired."), errors.TimeoutError, True, None),
    (502, b"<html>Bad Gateway</html>", errors.ProviderError, True, None),
])
def test_parse_error_mapping(status, body, cls, retryable, retry_after):
    err = provider().parse_error(response(status, body))
    assert type(err) is cls
    assert err.status == status and err.retryable is retryable and err.retry_after == retry_after
    assert err.provider == "gemini" and err.endpoint_id == "gm-1"


def test_error_messages_are_greppable_and_keep_the_reason():
    err = provider().parse_error(response(400, rpc_error(400, "INVALID_ARGUMENT", "API key not valid.",
                                                          KEY_INVALID)))
    assert str(err).startswith("Authentication error: gemini returned HTTP 400 INVALID_ARGUMENT")
    assert err.details["reasons"] == ["API_KEY_INVALID"] and err.code == "INVALID_ARGUMENT"
    limited = provider().parse_error(response(429, rpc_error(429, "RESOURCE_EXHAUSTED", "quota", RETRY_17S)))
    assert str(limited).startswith("Rate limit exceeded:")


@pytest.mark.parametrize("key", [KEY, "plain-secret-without-any-known-shape-42"])
def test_api_key_never_appears_in_errors_or_reprs(key):
    p = provider(key=key)
    echoed = rpc_error(400, "INVALID_ARGUMENT", f"API key not valid: {key}", KEY_INVALID)
    err = p.parse_error(response(400, echoed))
    with pytest.raises(errors.GatewayError) as info:
        p.stream_decoder("stream_chat", chat(), {}).feed(SseEvent(event="raw-json", data=json.dumps(echoed)))
    http = p.build("stream_chat", chat(), None)
    texts = (str(err), repr(err), json.dumps(err.to_dict()), str(info.value), repr(info.value), repr(p),
             repr(http), http.url, str(http.params))
    for text in texts:
        assert key not in text


# ---------------------------------------------------------------------------
# The official google-genai SDK against the fake server
# ---------------------------------------------------------------------------

genai = pytest.importorskip("google.genai")
from google.genai import errors as genai_errors  # noqa: E402
from google.genai import types as gtypes  # noqa: E402

SDK_KEY = "AIzaSyFAKE-sdk-test-key-000000000000"


@pytest.fixture(scope="module")
def gemini_fake() -> Iterator[FakeHandle]:
    handle = start_fake("gemini")
    yield handle
    handle.stop()


@pytest.fixture
def fake(gemini_fake: FakeHandle) -> FakeHandle:
    gemini_fake.reset(valid_keys=[])
    return gemini_fake


def client(fake: FakeHandle, key: str = SDK_KEY) -> Any:
    """The SDK's base_url is the host root; the version comes from api_version."""
    return genai.Client(api_key=key, http_options=gtypes.HttpOptions(base_url=fake.root_url, api_version="v1beta",
                                                                     timeout=10_000))


def post(fake: FakeHandle, path: str, body: Any, key: str | None = SDK_KEY, query: str = "") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["x-goog-api-key"] = key
    req = urllib.request.Request(f"{fake.base_url}/{path}{query}", data=json.dumps(body).encode(), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sdk_generate_content_with_config(fake: FakeHandle) -> None:
    c = client(fake)
    config = gtypes.GenerateContentConfig(system_instruction="Be terse.", temperature=0.3, top_p=0.9, top_k=20,
                                          seed=3, candidate_count=2, max_output_tokens=64,
                                          safety_settings=[gtypes.SafetySetting(
                                              category="HARM_CATEGORY_HARASSMENT", threshold="BLOCK_NONE")])
    r = c.models.generate_content(model="gemini-2.0-flash", contents="hello world", config=config)
    assert r.candidates[0].content.parts[0].text == "Echo: hello world" and len(r.candidates) == 2
    assert r.candidates[0].finish_reason == gtypes.FinishReason.STOP
    usage = r.usage_metadata
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    single = c.models.generate_content(model="gemini-2.0-flash", contents="hello world").usage_metadata
    assert usage.candidates_token_count == 2 * single.candidates_token_count  # every candidate is billed
    counted = c.models.count_tokens(model="gemini-2.0-flash", contents="hello world")
    assert counted.total_tokens == single.prompt_token_count


def test_sdk_stop_and_max_tokens_json_and_tools(fake: FakeHandle) -> None:
    c = client(fake)
    cut = c.models.generate_content(model="gemini-2.0-flash", contents="alpha beta gamma",
                                    config=gtypes.GenerateContentConfig(stop_sequences=["gamma"]))
    assert cut.text == "Echo: alpha beta "
    short = c.models.generate_content(model="gemini-2.0-flash", contents="alpha beta gamma delta",
                                      config=gtypes.GenerateContentConfig(max_output_tokens=2))
    assert short.candidates[0].finish_reason == gtypes.FinishReason.MAX_TOKENS
    schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}, "n": {"type": "INTEGER"}}}
    structured = c.models.generate_content(model="gemini-2.0-flash", contents="Weather in Paris",
                                           config=gtypes.GenerateContentConfig(response_mime_type="application/json",
                                                                              response_schema=schema))
    assert json.loads(structured.text) == {"city": "Paris", "n": 1}
    tool = gtypes.Tool(function_declarations=[gtypes.FunctionDeclaration(
        name="get_weather", description="weather",
        parameters=gtypes.Schema(type="OBJECT", properties={"city": gtypes.Schema(type="STRING")}))])
    called = c.models.generate_content(model="gemini-2.0-flash", contents="Use get_weather for Rome",
                                       config=gtypes.GenerateContentConfig(tools=[tool]))
    assert called.function_calls[0].name == "get_weather" and called.function_calls[0].args == {"city": "Rome"}


def test_sdk_image_input(fake: FakeHandle) -> None:
    png = png_bytes()
    c = client(fake)  # keep a reference: a collected Client closes its HTTP session
    r = c.models.generate_content(
        model="gemini-2.0-flash", contents=[gtypes.Part.from_bytes(data=png, mime_type="image/png"), "Describe"])
    assert r.text == f"Echo: Describe [image/png: {len(png)} bytes]"
    assert r.usage_metadata.prompt_token_count > 258


def test_sdk_stream(fake: FakeHandle) -> None:
    c = client(fake)
    chunks = list(c.models.generate_content_stream(model="gemini-2.0-flash", contents="stream me please"))
    assert len(chunks) == 8
    assert "".join(ch.text for ch in chunks) == "Echo: stream me please"
    assert chunks[-1].candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert all(ch.candidates[0].finish_reason is None for ch in chunks[:-1])
    assert chunks[-1].usage_metadata.candidates_token_count > 0


def test_sdk_embeddings_single_and_batch(fake: FakeHandle) -> None:
    c = client(fake)
    one = c.models.embed_content(model="text-embedding-004", contents="hello")
    assert len(one.embeddings) == 1 and len(one.embeddings[0].values) == 768
    many = c.models.embed_content(model="text-embedding-004", contents=["hello", "goodbye", "hello"],
                                  config=gtypes.EmbedContentConfig(output_dimensionality=32,
                                                                   task_type="SEMANTIC_SIMILARITY"))
    vectors = [e.values for e in many.embeddings]
    assert [len(v) for v in vectors] == [32, 32, 32] and vectors[0] == vectors[2] != vectors[1]
    # the SDK always batches; the single-input method, driven directly, gives the same vector
    status, body = post(fake, "models/text-embedding-004:embedContent", {"content": {"parts": [{"text": "hello"}]}})
    assert status == 200 and body["embedding"]["values"] == one.embeddings[0].values


def test_sdk_models_list_paginates(fake: FakeHandle) -> None:
    c = client(fake)
    models = list(c.models.list(config={"page_size": 3}))
    names = [m.name for m in models]
    assert len(names) == len(set(names)) >= 10
    assert "models/gemini-2.0-flash" in names and "models/text-embedding-004" in names
    flash = c.models.get(model="gemini-2.0-flash")
    assert flash.input_token_limit == 1_048_576 and flash.output_token_limit == 8_192


def test_sdk_errors(fake: FakeHandle) -> None:
    fake.controls(valid_keys=[SDK_KEY])
    wrong, c = client(fake, key="AIzaSyWRONG-key-00000000000000000"), client(fake)
    with pytest.raises(genai_errors.ClientError) as bad_key:
        wrong.models.generate_content(model="gemini-2.0-flash", contents="x")
    assert bad_key.value.code == 400 and bad_key.value.status == "INVALID_ARGUMENT"
    assert bad_key.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(genai_errors.ClientError) as missing:
        c.models.generate_content(model="gemini-9-ultra", contents="x")
    assert missing.value.code == 404
    fake.controls(faults=[{"kind": "status", "status": 429, "count": 1, "retry_after": 17}])
    with pytest.raises(genai_errors.ClientError) as limited:
        c.models.generate_content(model="gemini-2.0-flash", contents="x")
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    retry = [d for d in limited.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]
    assert "retry-after" not in {k.lower() for k in (limited.value.response.headers or {})}
    fake.controls(faults=[{"kind": "status", "status": 503, "count": 1}])
    with pytest.raises(genai_errors.ServerError) as overloaded:
        c.models.generate_content(model="gemini-2.0-flash", contents="x")
    assert overloaded.value.code == 503 and overloaded.value.status == "UNAVAILABLE"


def test_sdk_error_mid_stream(fake: FakeHandle) -> None:
    fake.controls(faults=[{"kind": "error_mid_stream", "after_chunks": 3, "count": 1}])
    got = []
    c = client(fake)
    with pytest.raises(genai_errors.APIError) as info:
        for chunk in c.models.generate_content_stream(model="gemini-2.0-flash", contents="a long answer"):
            got.append(chunk.text)
    assert len(got) == 3 and info.value.code == 503


def test_fake_auth_via_query_and_missing_key(fake: FakeHandle) -> None:
    fake.controls(valid_keys=[SDK_KEY])
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, answer = post(fake, "models/gemini-2.0-flash:generateContent", body, key=None, query=f"?key={SDK_KEY}")
    assert status == 200 and answer["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hi"
    status, answer = post(fake, "models/gemini-2.0-flash:generateContent", body, key=None)
    assert status == 403 and answer["error"]["status"] == "PERMISSION_DENIED"


def test_fake_parses_like_proto_json(fake: FakeHandle) -> None:
    path = "models/gemini-2.0-flash:generateContent"
    user = [{"role": "user", "parts": [{"text": "hi"}]}]
    status, body = post(fake, path, {"contents": user, "generationConfig": {"max_tokens": 5}})
    assert status == 400 and 'Unknown name "max_tokens"' in body["error"]["message"]
    status, _ = post(fake, path, {"contents": user, "generation_config": {"max_output_tokens": 5}})
    assert status == 200  # snake_case spellings are proto JSON too
    status, body = post(fake, path, {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})
    assert status == 400 and "valid role" in body["error"]["message"]
    status, body = post(fake, path, {"contents": user, "safetySettings": [{"category": "HARM_CATEGORY_NOPE",
                                                                           "threshold": "BLOCK_NONE"}]})
    assert status == 400 and "HARM_CATEGORY_NOPE" in body["error"]["message"]
    schema = {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}}
    status, body = post(fake, path, {"contents": user, "generationConfig": {"responseMimeType": "application/json",
                                                                           "responseSchema": schema}})
    assert status == 400 and "additionalProperties" in body["error"]["message"]
    status, body = post(fake, path, {"contents": [{"role": "user", "parts": [{"text": ""}]}]})
    assert status == 400 and "empty text" in body["error"]["message"]


def test_fake_batch_models_must_match_and_blocked_prompts(fake: FakeHandle) -> None:
    status, body = post(fake, "models/text-embedding-004:batchEmbedContents",
                        {"requests": [{"model": "models/embedding-001", "content": {"parts": [{"text": "a"}]}}]})
    assert status == 400 and "must match" in body["error"]["message"]
    status, body = post(fake, "models/gemini-2.0-flash:generateContent",
                        {"contents": [{"parts": [{"text": "please BLOCK_PROMPT this"}]}]})
    assert status == 200 and "candidates" not in body and body["promptFeedback"]["blockReason"] == "SAFETY"
    status, body = post(fake, "models/text-embedding-004:generateContent",
                        {"contents": [{"parts": [{"text": "x"}]}]})
    assert status == 404 and "not supported for generateContent" in body["error"]["message"]
