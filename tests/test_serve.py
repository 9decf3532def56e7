"""The HTTP gateway on Ray Serve, end to end: official SDKs and raw HTTP against
one running application (one ``serve.run`` for the module), backed by the fake
OpenAI server.

Two endpoints: ``main`` (healthy; gpt-4o-mini, embeddings, instruct) and
``flaky`` (gpt-4o; fault rules target its key only, so the fault tests never
disturb the others).  Every test leaves the fake as it found it.
"""
from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
import ray

import ipfs_accelerate_py as ia
from ipfs_accelerate_py import serve_app
from ipfs_accelerate_py.testing.fakes.runner import start_fake

# Ray Serve is one per cluster: make test runs these alone, after the parallel part
pytestmark = [pytest.mark.ray, pytest.mark.serial]

openai = pytest.importorskip("openai")

MSG = [{"role": "user", "content": "hello there"}]
GATEWAY_KEY = f"gk-test-{uuid.uuid4().hex}"
OTHER_GATEWAY_KEY = f"gk-test-{uuid.uuid4().hex}"
MAIN_KEY = f"sk-test-servemain{uuid.uuid4().hex}"
FLAKY_KEY = f"sk-test-serveflaky{uuid.uuid4().hex}"
MAX_BODY = 256 * 1024
APP_NAME = "ia_serve_test"


def _wait_until(predicate, what: str, tries: int = 1000) -> None:
    for _ in range(tries):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(scope="module")
def served(serve_apps):
    fake = start_fake("openai")
    cfg = {
        "namespace": f"test-serve-{uuid.uuid4().hex[:8]}",
        "gateway_keys": [GATEWAY_KEY, OTHER_GATEWAY_KEY],
        "retry": {"max_retries": 1, "initial_retry_delay": 0.01, "max_retry_delay": 0.05},
        "circuit": {"failure_threshold": 1000},
        "endpoints": [
            {"id": "main", "provider": "openai", "base_url": fake.base_url, "api_key": MAIN_KEY,
             "models": ["gpt-4o-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct"]},
            {"id": "flaky", "provider": "openai", "base_url": fake.base_url, "api_key": FLAKY_KEY,
             "models": ["gpt-4o"], "max_concurrent_requests": 1, "timeout_s": 1.0},
        ],
    }
    # the driver's own handle on the same router the replica attaches to
    gw = ia.Gateway.start(cfg, enable_metrics=False)
    try:
        with serve_apps.run(serve_app.build_app(cfg, max_body_bytes=MAX_BODY), APP_NAME) as base:
            yield SimpleNamespace(base=base, fake=fake, gw=gw, config=cfg)
    finally:
        gw.shutdown()
        fake.stop()


@pytest.fixture
def base(served) -> str:
    return served.base


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"{served.base}/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=60)


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served.base, timeout=60,
                      headers={"Authorization": f"Bearer {GATEWAY_KEY}"}) as c:
        yield c


@pytest.fixture
def fake(served):
    yield served.fake
    served.fake.reset()


def assert_openai_error(resp: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if type_ is not None:
        assert body["error"]["type"] == type_
    assert resp.headers.get("x-request-id")
    return body["error"]


# ---------------------------------------------------------------------------
# The official openai SDK
# ---------------------------------------------------------------------------

def test_chat_with_the_openai_sdk(client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, temperature=0.2)
    r = raw.parse()
    assert "hello there" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    rid = raw.headers["x-request-id"]
    assert rid and r.id == f"chatcmpl-{rid}"


def test_chat_n_choices(client):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)


def test_streaming_chat_with_include_usage(client):
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices[0].message.content
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_chat_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_raw_sse_wire_format(http):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": MSG, "stream": True,
            "stream_options": {"include_usage": True}}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-request-id"]
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-2]["choices"][0]["delta"] == {}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_completions_with_the_openai_sdk(client):
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.total_tokens > 0
    chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test",
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_embeddings_with_the_openai_sdk(client, http):
    # the SDK asks for base64 and decodes it; floats are the other wire form
    r = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) > 8
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0
    floats = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "a",
                                               "encoding_format": "float"}).json()
    assert floats["object"] == "list" and floats["data"][0]["object"] == "embedding"
    assert floats["data"][0]["embedding"] == pytest.approx(r.data[0].embedding, rel=1e-6)


def test_models_with_the_openai_sdk(client):
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o-mini", "text-embedding-3-small", "gpt-4o"} <= set(ids)
    assert len(ids) == len(set(ids))
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-mimi")


def test_wrong_gateway_key_is_an_authentication_error(served):
    bad = openai.OpenAI(base_url=f"{served.base}/v1", api_key="gk-wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert info.value.status_code == 401
    assert info.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    other = openai.OpenAI(base_url=f"{served.base}/v1", api_key=OTHER_GATEWAY_KEY, max_retries=0)
    assert other.models.list().data  # every configured key works


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o-mimi", messages=MSG)
    assert "gpt-4o-mini" in info.value.message
    with pytest.raises(openai.NotFoundError):  # before the stream starts: a real status, not an SSE error
        client.chat.completions.create(model="gpt-4o-mimi", messages=MSG, stream=True)


@pytest.mark.parametrize("kwargs", [
    {"messages": []},
    {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": MSG, "n": 0},
    {"messages": MSG, "n": 1000},
    {"messages": MSG, "temperature": 5},
    {"messages": MSG, "max_tokens": 0},
])
def test_invalid_input_is_a_bad_request(client, kwargs):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", **kwargs)
    assert info.value.status_code == 400
    assert info.value.body["type"] == "invalid_request_error"


def test_upstream_rate_limit_is_a_rate_limit_error(client, fake):
    fake.controls(faults=[{"kind": "status", "status": 429, "key": FLAKY_KEY, "retry_after": 0.05}])
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.response.headers["x-request-id"]


def test_queue_full_is_429_with_retry_after(served, client, fake):
    gw = served.gw
    fake.controls(faults=[{"kind": "hang", "key": FLAKY_KEY, "count": 1}])
    gw.configure(queue_size=1)
    try:
        holder = gw.router.chat.remote("gpt-4o", MSG, request_id=f"hold-{uuid.uuid4().hex[:6]}")
        _wait_until(lambda: gw.queue_info()["endpoints"]["flaky"]["in_flight"] == 1, "the hang holds the slot")
        queued = gw.router.chat.remote("gpt-4o", MSG, request_id=f"queued-{uuid.uuid4().hex[:6]}")
        _wait_until(lambda: gw.queue_info()["size"] == 1, "one request waits in the queue")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o", messages=MSG)
        assert info.value.body["code"] == "queue_full"
        assert int(info.value.response.headers["retry-after"]) >= 1
    finally:
        gw.configure(queue_size=served.config.get("queue_size", 10000))
    ray.wait([holder, queued], num_returns=2, timeout=60)


def test_upstream_failures_map_to_502_and_504(client, http, fake):
    fake.controls(faults=[{"kind": "status", "status": 500, "key": FLAKY_KEY}])  # every attempt fails
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert info.value.status_code == 502
    fake.reset()
    fake.controls(faults=[{"kind": "hang", "key": FLAKY_KEY}])  # cut at the endpoint's timeout_s (1 s)
    resp = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSG})
    assert_openai_error(resp, 504, "timeout_error")


def test_error_after_the_stream_started_is_an_error_event(client, http, fake):
    fake.controls(stream_chunks=12,
                  faults=[{"kind": "error_mid_stream", "key": FLAKY_KEY, "count": 1, "after_chunks": 4}])
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "gpt-4o", "messages": MSG, "stream": True}) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1][6:])
    assert set(last) == {"error"} and last["error"]["message"].startswith("Stream interrupted")
    assert any(json.loads(line[6:]).get("choices", [{}])[0].get("delta", {}).get("content")
               for line in lines[:-1])
    fake.controls(faults=[{"kind": "error_mid_stream", "key": FLAKY_KEY, "count": 1, "after_chunks": 4}])
    with pytest.raises(openai.APIError):  # the SDK raises instead of returning a short answer
        for _ in client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True):
            pass


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_tool_calls_plain_and_streamed(client):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, tools=TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert "city" in json.loads(call.function.arguments)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, tools=TOOLS,
                                                 tool_choice="required", stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert json.loads("".join(d.function.arguments or "" for d in deltas))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_client_leaving_mid_stream_releases_the_upstream_request(served, http, fake):
    fake.controls(chunk_delay_s=1.0, stream_chunks=60)  # a one-minute answer
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "gpt-4o", "messages": MSG, "stream": True}) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
        _wait_until(lambda: served.gw.queue_info()["endpoints"]["flaky"]["in_flight"] == 1, "stream running")
    # the client hung up: the replica closes the router stream, which frees the slot long before a minute
    _wait_until(lambda: served.gw.queue_info()["endpoints"]["flaky"]["in_flight"] == 0,
                "the abandoned stream's slot is released", tries=3000)


# ---------------------------------------------------------------------------
# Raw HTTP: validation, limits, headers
# ---------------------------------------------------------------------------

def test_missing_or_malformed_bearer_is_401(base):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {GATEWAY_KEY}"},
                    {"Authorization": f"Bearer {GATEWAY_KEY}x"}):
        resp = httpx.post(f"{base}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                          headers=headers)
        err = assert_openai_error(resp, 401, "authentication_error")
        assert GATEWAY_KEY not in resp.text
        assert err["code"] in ("missing_api_key", "invalid_api_key")
    assert httpx.get(f"{base}/stats").status_code == 401
    assert httpx.get(f"{base}/v1/models", headers={"x-api-key": GATEWAY_KEY}).status_code == 200


@pytest.mark.parametrize("content,param", [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),
    (b"\xff\xfe{}", None),
    (b"[" * 5000 + b"]" * 5000, None),
    (json.dumps({"model": 42, "messages": MSG}).encode(), "model"),
    (json.dumps({"model": "gpt-4o-mini", "messages": "hi"}).encode(), "messages"),
    (json.dumps({"model": "gpt-4o-mini", "messages": []}).encode(), "messages"),
    (json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}).encode(),
     "messages.0.role"),
    (json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 7}]}).encode(), None),
    (json.dumps({"model": "gpt-4o-mini", "messages": MSG, "n": 129}).encode(), "n"),
    (json.dumps({"model": "gpt-4o-mini", "messages": MSG, "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"model": "gpt-4o-mini", "messages": MSG, "stream": "yes"}).encode(), "stream"),
    (json.dumps({"model": "gpt-4o-mini", "messages": MSG, "priority": "HIGH"}).encode(), "priority"),
    (json.dumps({"model": "gpt-4o-mini", "messages": MSG, "extra": "boom"}).encode(), "extra"),
])
def test_malformed_chat_bodies_are_400(http, content, param):
    resp = http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    err = assert_openai_error(resp, 400, "invalid_request_error")
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": []}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [1, 2]}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ""}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": {"a": 1}}),
])
def test_malformed_bodies_on_other_routes_are_400(http, path, body):
    assert_openai_error(http.post(path, json=body), 400, "invalid_request_error")


def test_oversize_payloads_are_413(http):
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}
    err = assert_openai_error(http.post("/v1/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 8192 + 2):
            yield b"x" * 8192
        yield b'"}]}'

    resp = http.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_openai_error(resp, 413)
    # just under the limit is fine
    ok = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (MAX_BODY // 2)}],
          "max_tokens": 5}
    assert http.post("/v1/chat/completions", json=ok).status_code == 200


def test_request_id_is_echoed_or_generated(http):
    body = {"model": "gpt-4o-mini", "messages": MSG}
    mine = f"my-req-{uuid.uuid4().hex[:8]}"
    resp = http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": mine})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == mine
    assert resp.json()["id"] == f"chatcmpl-{mine}"
    generated = http.post("/v1/chat/completions", json=body).headers["x-request-id"]
    assert generated and generated != mine
    # errors and unknown routes carry it too
    assert http.post("/v1/chat/completions", content=b"{", headers={"X-Request-ID": mine}).headers[
        "x-request-id"] == mine
    nope = http.get("/v1/nothing-here", headers={"X-Request-ID": mine})
    assert_openai_error(nope, 404)
    assert nope.headers["x-request-id"] == mine
    assert_openai_error(http.put("/v1/chat/completions", json=body), 405)


@pytest.mark.parametrize("priority", ["high", "normal", "low", "HIGH"])
def test_x_priority_is_accepted(http, priority):
    resp = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                     headers={"X-Priority": priority})
    assert resp.status_code == 200


def test_invalid_x_priority_is_400(http):
    resp = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                     headers={"X-Priority": "urgent"})
    assert assert_openai_error(resp, 400)["param"] == "X-Priority"


def test_stats_and_health_hold_no_secrets(http, base):
    http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
    stats = http.get("/stats")
    assert stats.status_code == 200
    data = stats.json()
    assert data["total_requests"] >= 1 and set(data["endpoints"]) == {"main", "flaky"}
    health = httpx.get(f"{base}/health")  # no token needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for text in (stats.text, health.text):
        for secret in (MAIN_KEY, FLAKY_KEY, GATEWAY_KEY, OTHER_GATEWAY_KEY):
            assert secret not in text


# ---------------------------------------------------------------------------
# Anthropic Messages format
# ---------------------------------------------------------------------------

def test_anthropic_sdk_messages(served):
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=served.base, api_key=GATEWAY_KEY, max_retries=0)
    msg = client.messages.create(model="gpt-4o-mini", max_tokens=64, system="be brief",
                                 messages=[{"role": "user", "content": "hello there"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert "hello there" in msg.content[0].text
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    with client.messages.stream(model="gpt-4o-mini", max_tokens=64,
                                messages=[{"role": "user", "content": "hello there"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == msg.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    tool = client.messages.create(
        model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}],
        tool_choice={"type": "any"})
    assert tool.stop_reason == "tool_use"
    use = [b for b in tool.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and isinstance(use.input, dict)
    with client.messages.stream(
            model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}],
            tool_choice={"type": "any"}) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [b.name for b in streamed.content if b.type == "tool_use"] == ["get_weather"]
    assert isinstance([b for b in streamed.content if b.type == "tool_use"][0].input, dict)
    follow = client.messages.create(model="gpt-4o-mini", max_tokens=64, messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}],
        tools=[{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}])
    assert follow.content
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="gpt-4o-mini", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    bad = anthropic.Anthropic(base_url=served.base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])


# ---------------------------------------------------------------------------
# Fuzzing the OpenAPI schema
# ---------------------------------------------------------------------------

OPERATIONS = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
              ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"), ("POST", "/v1/messages"),
              ("GET", "/health"), ("GET", "/stats")]


@pytest.fixture(scope="module")
def api_schema(served):
    schemathesis = pytest.importorskip("schemathesis")
    return schemathesis.openapi.from_url(f"{served.base}/openapi.json")


def test_openapi_lists_every_route(api_schema):
    listed = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


SERVED_MODELS = {"/v1/chat/completions": "gpt-4o-mini", "/v1/completions": "gpt-3.5-turbo-instruct",
                 "/v1/embeddings": "text-embedding-3-small", "/v1/messages": "gpt-4o-mini",
                 "/v1/models/{model_id}": "gpt-4o-mini"}
FUZZ_CASES = [(m, p, "positive") for m, p in OPERATIONS] + [
    (m, p, "negative") for m, p in OPERATIONS if m == "POST"]  # a GET without parameters has nothing to break


@pytest.mark.parametrize("method,path,mode", FUZZ_CASES)
def test_fuzzed_requests_never_get_a_5xx(served, api_schema, method, path, mode):
    """Schemathesis cases generated from the app's own /openapi.json (valid and
    invalid ones), sent to the live app: the upstream fake is healthy, so any
    5xx would be the ingress's fault.  Every error is OpenAI (or Anthropic) JSON."""
    import requests
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from hypothesis import strategies as st

    operation = api_schema[path][method]
    session = requests.Session()
    auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    served_model = SERVED_MODELS.get(path)

    def steer(pair):
        # half of the cases name a model the gateway serves, so they get past
        # routing and exercise the provider, the fake and the response rendering
        case, use_served = pair
        if use_served and served_model is not None:
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = served_model
            if case.path_parameters and "model_id" in case.path_parameters:
                case.path_parameters["model_id"] = served_model
        return case

    strategy = st.tuples(operation.as_strategy(generation_mode=GenerationMode(mode)), st.booleans()).map(steer)
    statuses: dict[int, int] = {}

    @given(case=strategy)
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case):
        response = case.call(base_url=served.base, session=session, headers=auth, timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.body, response.status_code, response.text[:500])
        if response.status_code >= 400:
            body = response.json()
            assert "error" in body and body["error"]["message"], body

    check()
    print(f"{method} {path} {mode}: statuses {dict(sorted(statuses.items()))}")


# ---------------------------------------------------------------------------
# Pure parts (no Ray)
# ---------------------------------------------------------------------------

def test_gateway_token_check():
    from ipfs_accelerate_py.config import Secret
    keys = [Secret("gk-aaaaaaaaaaaa"), Secret("gk-bbbbbbbbbbbb")]
    serve_app.check_gateway_token([], {})  # no keys configured: no auth
    serve_app.check_gateway_token(keys, {"authorization": "Bearer gk-bbbbbbbbbbbb"})
    serve_app.check_gateway_token(keys, {"authorization": "bearer  gk-aaaaaaaaaaaa "})
    serve_app.check_gateway_token(keys, {"x-api-key": "gk-aaaaaaaaaaaa"})
    for headers in ({}, {"authorization": "Bearer gk-cccccccccccc"}, {"authorization": "gk-aaaaaaaaaaaa"},
                    {"x-api-key": "gk-aaaaaaaaaaa"}):
        with pytest.raises(serve_app._HTTPError) as info:
            serve_app.check_gateway_token(keys, headers)
        assert isinstance(info.value.err, ia.AuthenticationError)


@pytest.mark.parametrize("err,status", [
    (ia.InvalidRequestError("x"), 400), (ia.ContextLengthError("x"), 400), (ia.AuthenticationError("x"), 401),
    (ia.PermissionDeniedError("x"), 403), (ia.UnknownModelError("x"), 404), (ia.NotFoundError("x"), 404),
    (ia.RateLimitError("x"), 429), (ia.QueueFullError("x"), 429), (ia.ProviderError("x", status=500), 502),
    (ia.ConnectionError("x"), 502), (ia.StreamInterruptedError("x"), 502), (ia.CircuitOpenError("x"), 503),
    (ia.ProviderOverloadedError("x"), 503), (ia.TimeoutError("x"), 504), (ia.UnsupportedOperationError("x"), 400),
    (ia.GatewayError("x"), 500),
])
def test_error_status_mapping(err, status):
    assert serve_app._http_status(err) == status
    body = serve_app.openai_error(err)["error"]
    assert body["type"] == err.openai_type and body["message"] == err.message


def test_retry_after_headers():
    assert serve_app._retry_headers(ia.QueueFullError("x"), 429)["Retry-After"] == "1"
    assert serve_app._retry_headers(ia.RateLimitError("x", retry_after=2.2), 429)["Retry-After"] == "3"
    assert serve_app._retry_headers(ia.CircuitOpenError("x", retry_after=7), 503)["Retry-After"] == "7"
    assert serve_app._retry_headers(ia.CircuitOpenError("x"), 503) == {}
    assert serve_app._retry_headers(ia.InvalidRequestError("x"), 400) == {}


def test_anthropic_request_mapping():
    messages, kwargs = serve_app.anthropic_to_chat({
        "model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "sys"}],
        "stop_sequences": ["END"], "temperature": 0.5, "metadata": {"user_id": "u1"},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "calling"},
                                              {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
        ]})
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert messages[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "t1", "content": "42"}
    assert len(messages) == 4
    assert kwargs["stop"] == ["END"] and kwargs["user"] == "u1" and kwargs["max_tokens"] == 10
    assert kwargs["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert kwargs["tools"][0]["function"]["parameters"] == {"type": "object"}
    with pytest.raises(serve_app._HTTPError):
        serve_app.anthropic_to_chat({"messages": [{"role": "user", "content": [{"type": "document"}]}]})


def test_chat_sse_reports_a_broken_stream_and_never_says_done():
    import asyncio

    async def chunks():
        yield ia.StreamChunk(text="b")
        raise ia.StreamInterruptedError("upstream went away")

    async def collect():
        return [e async for e in serve_app.chat_sse(ia.StreamChunk(text="a", model="m"), chunks(),
                                                    completion_id="c", model="m", created=0,
                                                    include_usage=True, request_id="r")]

    events = asyncio.run(collect())
    assert events[-1].startswith(b"data: {\"error\"") and serve_app._DONE not in events
    assert json.loads(events[-1][6:])["error"]["type"] == "api_error"
    assert [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[1:3]] == ["a", "b"]


def test_app_builder_finds_and_validates_the_config(tmp_path, monkeypatch):
    from ray import serve
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("gateway_keys: [gk-builder-token-123]\nendpoints:\n"
                   "  - {id: a, provider: openai, base_url: 'http://127.0.0.1:9/v1',"
                   " api_key: sk-test-builder-0000000001, models: [gpt-4o-mini]}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IPFS_ACCELERATE_CONFIG_DIR", raising=False)
    assert isinstance(serve_app.app_builder({"config": "gateway.yaml", "num_replicas": "2"}), serve.Application)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ia.ConfigError, match="not found"):
        serve_app.app_builder({"config": "gateway.yaml"})
    monkeypatch.setenv("IPFS_ACCELERATE_CONFIG_DIR", str(tmp_path))
    assert isinstance(serve_app.app_builder({"config": "gateway.yaml"}), serve.Application)
    with pytest.raises(ia.ConfigError, match="unknown serve_app argument"):
        serve_app.app_builder({"config": "gateway.yaml", "replicas": 2})
    with pytest.raises(ia.ConfigError):  # a bad config fails in the builder, not in every replica
        serve_app.build_app({"endpoints": [{"id": "x", "provider": "nope"}]})


def test_deployment_options():
    d = serve_app.GatewayIngress
    assert d.ray_actor_options["num_cpus"] == 0
    assert d.max_ongoing_requests >= 1000
