"""Pure tests of the Anthropic Messages provider (PROTOCOLS.md section 2).

build() is checked as data, parse() and the stream decoder get canned bodies
and SSE events; the paginated models call runs against an in-memory transport.
"""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.providers.base import get_provider_class
from ipfs_accelerate_py.providers.claude import ClaudeProvider
from ipfs_accelerate_py.transport import HttpResponse, SseEvent
from ipfs_accelerate_py.types import ChatRequest, OperationRequest, ToolCall, build_chat_request

KEY = "sk-ant-api03-FAKEKEY0123456789abcdefXYZ"


class FakeSecret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def endpoint(key: str | None = KEY, **overrides):
    fields = dict(id="claude-1", provider="claude", base_url=None, api_key=FakeSecret(key) if key else None,
                  models=[], default_model=None, timeout_s=30.0, stream_timeout_s=30.0, headers={},
                  options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


def provider(**overrides) -> ClaudeProvider:
    return ClaudeProvider(endpoint(**overrides))


def chat(messages=None, model: str = "claude-3-5-sonnet-latest", **params) -> ChatRequest:
    return build_chat_request(model, messages or [{"role": "user", "content": "Hi"}], params)


def response(status: int, body, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def sse(payload: dict) -> SseEvent:
    return SseEvent(data=json.dumps(payload), event=payload.get("type"))


def body_of(request: ChatRequest, op: str = "chat", **overrides) -> dict:
    return provider(**overrides).build(op, request, None).json


# ---------------------------------------------------------------------------
# Headers and URLs
# ---------------------------------------------------------------------------

def test_registry_and_capabilities():
    assert get_provider_class("claude") is ClaudeProvider
    assert get_provider_class("anthropic") is ClaudeProvider
    assert ClaudeProvider.claims_model("claude-3-5-haiku-latest")
    assert not ClaudeProvider.claims_model("gpt-4o")
    assert {"chat", "stream_chat", "count_tokens", "models"} <= ClaudeProvider.operations
    assert ClaudeProvider.default_model.startswith("claude-")


def test_headers_and_url():
    http = provider().build("chat", chat(), "req-7")
    assert http.method == "POST"
    assert http.url == "https://api.anthropic.com/v1/messages"
    assert http.headers["x-api-key"] == KEY
    assert http.headers["anthropic-version"] == "2023-06-01"
    assert http.headers["Content-Type"] == "application/json"
    assert http.headers["X-Request-ID"] == "req-7"
    assert "Authorization" not in http.headers and "anthropic-beta" not in http.headers


def test_version_beta_and_base_url_options():
    p = provider(options={"anthropic_version": "2024-01-01", "anthropic_beta": ["a-1", "b-2"]},
                 base_url="https://proxy.example/anthropic/v1/")
    http = p.build("chat", chat(), None)
    assert http.headers["anthropic-version"] == "2024-01-01"
    assert http.headers["anthropic-beta"] == "a-1,b-2"
    assert http.url == "https://proxy.example/anthropic/v1/messages"


def test_oauth_token_goes_as_bearer():
    http = provider(key="sk-ant-oat01-FAKETOKEN0123456789").build("chat", chat(), None)
    assert http.headers["Authorization"] == "Bearer sk-ant-oat01-FAKETOKEN0123456789"
    assert "x-api-key" not in http.headers


# ---------------------------------------------------------------------------
# Request body mapping
# ---------------------------------------------------------------------------

def test_minimal_body_has_default_max_tokens():
    body = body_of(chat())
    assert body == {"model": "claude-3-5-sonnet-latest", "max_tokens": 4096,
                    "messages": [{"role": "user", "content": "Hi"}]}
    assert body_of(chat(), options={"max_tokens": 256})["max_tokens"] == 256
    assert body_of(chat(max_tokens=10))["max_tokens"] == 10


def test_system_and_sampling_fields():
    req = chat([{"role": "system", "content": "Be terse."}, {"role": "developer", "content": "Use French."},
                {"role": "user", "content": "Hi"}],
               temperature=0.3, top_p=0.8, top_k=20, stop=["END", "STOP"], user="user-42",
               seed=1, presence_penalty=0.5, response_format={"type": "json_object"},
               thinking={"type": "enabled", "budget_tokens": 2048})
    body = body_of(req)
    assert body["system"] == "Be terse.\n\nUse French."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.3, 0.8, 20)
    assert body["stop_sequences"] == ["END", "STOP"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    for absent in ("seed", "presence_penalty", "response_format", "stop", "user", "stream"):
        assert absent not in body


def test_consecutive_same_role_turns_merge():
    body = body_of(chat([{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                         {"role": "assistant", "content": "three"}, {"role": "assistant", "content": "four"},
                         {"role": "user", "content": "five"}]))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
        {"role": "user", "content": "five"}]


def test_image_parts_become_image_blocks():
    req = chat([{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    blocks = body_of(req)["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


@pytest.mark.parametrize("url", ["data:image/png,rawbytes", "ftp://example.com/a.png"])
def test_bad_image_urls_are_invalid_requests(url):
    req = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    with pytest.raises(errors.InvalidRequestError):
        provider().build("chat", req, None)


def test_tool_round_trip_mapping():
    req = chat([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "Thanks"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}},
                                                                 "required": ["city"]}}},
               {"type": "function", "function": {"name": "now"}},
               {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        tool_choice="required")
    body = body_of(req)
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
            {"type": "text", "text": "Thanks"}]}]
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather by city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    assert body["tool_choice"] == {"type": "any"}


def test_assistant_with_only_tool_calls_sends_no_empty_text():
    req = chat([{"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}])
    messages = body_of(req)["messages"]
    assert messages[1]["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]


@pytest.mark.parametrize("choice, expected", [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ({"type": "any", "disable_parallel_tool_use": True}, {"type": "any", "disable_parallel_tool_use": True}),
])
def test_tool_choice_mapping(choice, expected):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert body_of(chat(tools=tools, tool_choice=choice))["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_use():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = body_of(chat(tools=tools, parallel_tool_calls=False))
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "parallel_tool_calls" not in body


@pytest.mark.parametrize("bad", [
    chat([{"role": "assistant", "content": None,
           "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]),
    chat([{"role": "assistant", "content": None,
           "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
    chat([{"role": "tool", "content": "orphan"}]),
    chat(n=2),
    chat(tool_choice="sometimes"),
])
def test_unmappable_requests_fail_before_sending(bad):
    with pytest.raises(errors.InvalidRequestError):
        provider().build("chat", bad, None)


def test_stream_body_and_framing():
    http = provider().build("stream_chat", chat(), None)
    assert http.json["stream"] is True and http.stream == "sse"
    assert http.headers["Accept"] == "text/event-stream"


# ---------------------------------------------------------------------------
# Response parsing
# ---------------------------------------------------------------------------

MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20241022",
    "content": [{"type": "text", "text": "Let me check"}, {"type": "text", "text": " the weather."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 40, "cache_creation_input_tokens": 3,
              "cache_read_input_tokens": 7, "service_tier": "standard"},
}


def test_parse_message():
    result = provider().parse("chat", chat(), response(200, MESSAGE))
    assert result.text == "Let me check the weather."
    assert result.tool_calls == [ToolCall("toolu_01", "get_weather", "{\"city\": \"Paris\"}")]
    assert result.tool_calls[0].parsed_arguments() == {"city": "Paris"}
    assert result.finish_reason == "tool_calls"
    assert result.model == "claude-3-5-sonnet-20241022"
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (25, 40, 65)
    assert usage.details["cache_creation_input_tokens"] == 3
    assert usage.details["cache_read_input_tokens"] == 7
    assert usage.details["cached_tokens"] == 7
    assert result.raw == MESSAGE and result.provider == "claude" and result.endpoint_id == "claude-1"


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("pause_turn", "pause_turn"), ("refusal", "refusal"), (None, None)])
def test_stop_reason_mapping(stop_reason, finish):
    body = dict(MESSAGE, content=[{"type": "text", "text": "x"}], stop_reason=stop_reason)
    assert provider().parse("chat", chat(), response(200, body)).finish_reason == finish


def test_parse_non_json_is_provider_error():
    with pytest.raises(errors.ProviderError):
        provider().parse("chat", chat(), response(200, b"upstream connect error"))


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

STREAM = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                          "model": "claude-3-5-sonnet-20241022", "stop_reason": None,
                                          "stop_sequence": None,
                                          "usage": {"input_tokens": 25, "output_tokens": 1,
                                                    "cache_read_input_tokens": 5}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\": \"Paris\"}"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 15}},
    {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 17}},
    {"type": "message_stop"},
]


def run(events):
    decoder = provider().stream_decoder("stream_chat", chat(), {})
    chunks = []
    for payload in events:
        chunks.extend(decoder.feed(sse(payload)))
    chunks.extend(decoder.close())
    return chunks


def test_stream_decodes_every_event_type():
    chunks = run(STREAM)
    assert [c.text for c in chunks] == ["Hello", "!", ""]
    assert not any(c.done for c in chunks[:-1])
    final = chunks[-1]
    assert final.done
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == [ToolCall("toolu_9", "get_weather", "{\"city\": \"Paris\"}")]
    assert final.model == "claude-3-5-sonnet-20241022"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (25, 17, 42)
    assert final.usage.details["cached_tokens"] == 5


def test_stream_ignores_thinking_and_unknown_events():
    events = [STREAM[0],
              {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "x"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "brand_new_event", "data": 1},
              {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hi"}},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
              {"type": "message_stop"}]
    chunks = run(events)
    assert [c.text for c in chunks] == ["Hi", ""]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].tool_calls is None


@pytest.mark.parametrize("error_type, cls, retryable", [
    ("overloaded_error", errors.ProviderOverloadedError, True),
    ("api_error", errors.ProviderError, True),
    ("rate_limit_error", errors.RateLimitError, True),
    ("invalid_request_error", errors.InvalidRequestError, False),
])
def test_stream_error_event_raises_typed_error(error_type, cls, retryable):
    decoder = provider().stream_decoder("stream_chat", chat(), {})
    decoder.feed(sse(STREAM[0]))
    with pytest.raises(errors.GatewayError) as info:
        decoder.feed(sse({"type": "error", "error": {"type": error_type, "message": "Overloaded"}}))
    assert type(info.value) is cls and info.value.retryable is retryable
    assert info.value.provider == "claude"


def test_overloaded_event_status_is_529():
    decoder = provider().stream_decoder("stream_chat", chat(), {})
    with pytest.raises(errors.ProviderOverloadedError) as info:
        decoder.feed(sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert info.value.status == 529 and str(info.value).startswith("Provider overloaded")


@pytest.mark.parametrize("cut", [0, 1, 5, len(STREAM) - 1])
def test_truncated_stream_raises_retryable_provider_error(cut):
    decoder = provider().stream_decoder("stream_chat", chat(), {})
    for payload in STREAM[:cut]:
        decoder.feed(sse(payload))
    with pytest.raises(errors.ProviderError) as info:
        decoder.close()
    assert type(info.value) is errors.ProviderError and info.value.retryable
    assert "message_stop" in str(info.value)


# ---------------------------------------------------------------------------
# count_tokens and models
# ---------------------------------------------------------------------------

def test_count_tokens_from_operation_params():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = OperationRequest(op="count_tokens", model="claude-3-5-haiku-latest",
                           params={"messages": [{"role": "system", "content": "sys"},
                                                {"role": "user", "content": "Hello"}],
                                   "tools": tools, "max_tokens": 100, "temperature": 0.5})
    p = provider()
    http = p.build("count_tokens", req, None)
    assert http.url == "https://api.anthropic.com/v1/messages/count_tokens"
    assert http.json == {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "Hello"}],
                         "system": "sys", "tools": [{"name": "f", "input_schema": {"type": "object"}}]}
    result = p.parse("count_tokens", req, response(200, {"input_tokens": 1234}))
    assert result.data == {"input_tokens": 1234} and result["input_tokens"] == 1234
    assert result.usage is None


def test_count_tokens_from_chat_request_and_default_model():
    http = provider().build("count_tokens", chat(max_tokens=5), None)
    assert "max_tokens" not in http.json and "stream" not in http.json
    req = OperationRequest(op="count_tokens", params={"messages": "just text"})
    assert provider(default_model="claude-x").build("count_tokens", req, None).json["model"] == "claude-x"


class PagedTransport:
    """In-memory transport answering /v1/models pages by after_id."""

    def __init__(self, pages: dict, fail_with: HttpResponse | None = None) -> None:
        self.pages = pages
        self.fail_with = fail_with
        self.requests = []

    async def send(self, request, timeout_s=None):
        self.requests.append(request)
        if self.fail_with is not None:
            return self.fail_with
        page = self.pages[(request.params or {}).get("after_id")]
        return response(200, page, {"anthropic-ratelimit-requests-remaining": "49"})


def _model(mid: str) -> dict:
    return {"type": "model", "id": mid, "display_name": mid.upper(), "created_at": "2025-02-19T00:00:00Z",
            "max_input_tokens": 200000, "max_tokens": 64000}


def test_models_follow_pagination_until_has_more_is_false():
    transport = PagedTransport({
        None: {"data": [_model("claude-a"), _model("claude-b")], "has_more": True, "first_id": "claude-a",
               "last_id": "claude-b"},
        "claude-b": {"data": [_model("claude-c")], "has_more": False, "first_id": "claude-c", "last_id": "claude-c"}})
    models, headers = asyncio.run(provider().execute("models", OperationRequest(op="models"), "r", transport))
    assert [m.id for m in models] == ["claude-a", "claude-b", "claude-c"]
    assert models[0].context_window == 200000 and models[0].max_output_tokens == 64000
    assert models[0].description == "CLAUDE-A" and models[0].provider == "claude"
    assert [r.params for r in transport.requests] == [{"limit": "1000"}, {"limit": "1000", "after_id": "claude-b"}]
    assert all(r.method == "GET" and r.url == "https://api.anthropic.com/v1/models" for r in transport.requests)
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"


def test_models_stop_on_a_repeating_cursor_and_raise_on_errors():
    transport = PagedTransport({None: {"data": [_model("claude-a")], "has_more": True, "last_id": "claude-a"},
                                "claude-a": {"data": [], "has_more": True, "last_id": "claude-a"}})
    models, _ = asyncio.run(provider().execute("models", OperationRequest(op="models"), None, transport))
    assert [m.id for m in models] == ["claude-a"] and len(transport.requests) == 2
    failing = PagedTransport({}, fail_with=response(401, {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid x-api-key"}}))
    with pytest.raises(errors.AuthenticationError):
        asyncio.run(provider().execute("models", OperationRequest(op="models"), None, failing))


def test_model_info():
    p = provider()
    req = OperationRequest(op="model_info", model="claude-3-5-haiku-20241022")
    http = p.build("model_info", req, None)
    assert (http.method, http.url) == ("GET", "https://api.anthropic.com/v1/models/claude-3-5-haiku-20241022")
    result = p.parse("model_info", req, response(200, _model("claude-3-5-haiku-20241022")))
    assert result.data.id == "claude-3-5-haiku-20241022" and result.data.context_window == 200000


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def _err(etype: str, message: str = "boom") -> dict:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_011"}


@pytest.mark.parametrize("status, body, headers, cls, retryable, retry_after", [
    (400, _err("invalid_request_error", "messages: roles must alternate"), {}, errors.InvalidRequestError, False, None),
    (400, _err("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"), {},
     errors.ContextLengthError, False, None),
    (401, _err("authentication_error", "invalid x-api-key"), {}, errors.AuthenticationError, False, None),
    (402, _err("billing_error", "Your credit balance is too low"), {}, errors.PermissionDeniedError, False, None),
    (403, _err("permission_error", "not allowed"), {}, errors.PermissionDeniedError, False, None),
    (404, _err("not_found_error", "model: claude-9"), {}, errors.UnknownModelError, False, None),
    (404, _err("not_found_error", "Not found"), {}, errors.NotFoundError, False, None),
    (413, _err("request_too_large", "Request exceeds the maximum size"), {}, errors.InvalidRequestError, False, None),
    (413, b"<html>413 Request Entity Too Large</html>", {}, errors.InvalidRequestError, False, None),
    (429, _err("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
     {"retry-after": "17"}, errors.RateLimitError, True, 17.0),
    (429, _err("rate_limit_error"), {"retry-after-ms": "250"}, errors.RateLimitError, True, 0.25),
    (500, _err("api_error", "Internal server error"), {}, errors.ProviderError, True, None),
    (502, b"Bad Gateway", {}, errors.ProviderError, True, None),
    (503, b"Service Unavailable", {}, errors.ProviderOverloadedError, True, None),
    (504, _err("timeout_error", "Request timed out"), {}, errors.TimeoutError, True, None),
    (529, _err("overloaded_error", "Overloaded"), {}, errors.ProviderOverloadedError, True, None),
    (529, _err("overloaded_error", "Overloaded"), {"x-should-retry": "false"},
     errors.ProviderOverloadedError, False, None),
    (400, _err("invalid_request_error"), {"x-should-retry": "true"}, errors.InvalidRequestError, True, None),
])
def test_parse_error_mapping(status, body, headers, cls, retryable, retry_after):
    err = provider().parse_error(response(status, body, headers))
    assert type(err) is cls
    assert err.status == status and err.retryable is retryable and err.retry_after == retry_after
    assert err.provider == "claude" and err.endpoint_id == "claude-1"


def test_upstream_request_id_is_kept_in_details():
    err = provider().parse_error(response(500, _err("api_error")))
    assert err.details["upstream_request_id"] == "req_011"


@pytest.mark.parametrize("key", [KEY, "plain-secret-without-any-known-shape-43"])
def test_api_key_never_appears_in_errors_or_reprs(key):
    p = provider(key=key)
    echoed = _err("authentication_error", f"invalid x-api-key: {key}")
    err = p.parse_error(response(401, echoed))
    with pytest.raises(errors.GatewayError) as info:
        p.stream_decoder("stream_chat", chat(), {}).feed(sse(dict(echoed, type="error")))
    http = p.build("chat", chat(), None)
    for text in (str(err), repr(err), str(err.to_dict()), str(info.value), repr(info.value), repr(p), repr(http)):
        assert key not in text


def test_rate_limit_headers_are_parsed():
    limiter = pytest.importorskip("ipfs_accelerate_py.core.limiter")
    headers = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
               "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:30Z",
               "anthropic-ratelimit-tokens-limit": "40000", "anthropic-ratelimit-tokens-remaining": "39000",
               "anthropic-ratelimit-tokens-reset": "2030-01-01T00:00:10Z"}
    state = provider().rate_limit_headers(headers)
    assert state is not None
    assert type(state) is limiter.RateLimitHeaders
