"""Tests of the OVMS and OPEA providers and of their fakes.

The first part is pure (no sockets): requests are checked as data, responses
and streams are fed canned bodies in the shapes of PROTOCOLS.md sections 8
and 9, and multi-call operations (health) run against an in-memory transport.
The second part points the official ``openai`` SDK at the fakes' OpenAI-shaped
routes (the SDK is the reference for those) and runs the providers against
the fakes over real HTTP with the project's Transport.
"""
from __future__ import annotations

import asyncio
import json
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.providers.base import get_provider_class
from ipfs_accelerate_py.providers.opea import OPEAProvider, decode_bytes_literal, fastapi_error_message
from ipfs_accelerate_py.providers.ovms import OVMSProvider, from_kserve_output, to_kserve_input
from ipfs_accelerate_py.testing.fakes.opea import CORPUS, bytes_fragment
from ipfs_accelerate_py.testing.fakes.runner import start_fake
from ipfs_accelerate_py.transport import HttpResponse, SseEvent, Transport
from ipfs_accelerate_py.types import (ChatRequest, EmbeddingRequest, OperationRequest, build_chat_request,
                                      build_embedding_request)

KEY = "ovms-test-key-0123456789abcdef"


class FakeSecret:
    """Stand-in for config.Secret: the value only through .get()."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value


def endpoint(provider: str = "ovms", key: str | None = None, **overrides):
    fields = dict(id=f"{provider}-1", provider=provider, base_url=None,
                  api_key=FakeSecret(key) if key else None, models=[], default_model=None, timeout_s=30.0,
                  stream_timeout_s=30.0, headers={}, options={})
    fields.update(overrides)
    return SimpleNamespace(**fields)


def ovms(key: str | None = None, **kw) -> OVMSProvider:
    return OVMSProvider(endpoint("ovms", key, **kw))


def opea(key: str | None = None, **kw) -> OPEAProvider:
    return OPEAProvider(endpoint("opea", key, **kw))


def chat(model: str = "tiny-llm", messages=None, **params) -> ChatRequest:
    return build_chat_request(model, messages or [{"role": "user", "content": "Hi"}], params)


def op(name: str, model: str | None = None, **params) -> OperationRequest:
    return OperationRequest(op=name, model=model, params=params)


def response(status: int, body, headers: dict | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def feed_all(decoder, payloads):
    chunks = []
    for payload in payloads:
        chunks.extend(decoder.feed(SseEvent(data=payload if isinstance(payload, str) else json.dumps(payload))))
    chunks.extend(decoder.close())
    return chunks


class ScriptedTransport:
    """An in-memory Transport: answers by URL path, records what was sent."""

    def __init__(self, answers: dict[str, HttpResponse]) -> None:
        self.answers = answers
        self.sent = []

    async def send(self, request, *, timeout_s=None):
        self.sent.append(request)
        path = request.url.split("://", 1)[1].split("/", 1)[1]
        return self.answers[path]


# ===========================================================================
# OVMS: /v3
# ===========================================================================

def test_registry():
    assert get_provider_class("ovms") is OVMSProvider
    assert get_provider_class("openvino") is OVMSProvider
    assert get_provider_class("opea") is OPEAProvider
    assert {"infer", "model_info", "health", "chat", "stream_chat", "embed"} <= OVMSProvider.operations
    assert {"chatqna", "stream_chatqna", "health", "chat", "embed"} <= OPEAProvider.operations
    assert OVMSProvider.max_embed_batch == 500


def test_ovms_chat_url_auth_and_dropped_fields():
    req = chat(logit_bias={"50256": -100}, top_logprobs=3, user="u-1", top_k=20, temperature=0.3,
               repetition_penalty=1.1, chat_template_kwargs={"enable_thinking": False}, min_p=0.05)
    http = ovms(KEY).build("chat", req, "rid-1")
    assert http.method == "POST" and http.url == "http://localhost:8000/v3/chat/completions"
    assert http.headers["Authorization"] == f"Bearer {KEY}"
    body = http.json
    for dropped in ("logit_bias", "top_logprobs", "user"):
        assert dropped not in body
    assert body["top_k"] == 20 and body["repetition_penalty"] == 1.1 and body["min_p"] == 0.05
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"] == [{"role": "user", "content": "Hi"}] and "stream" not in body


def test_ovms_no_key_no_auth_and_v3_suffix_trimmed():
    provider = ovms(base_url="http://ovms.local:9000/v3")
    http = provider.build("stream_chat", chat(stream=True), None)
    assert "Authorization" not in http.headers
    assert http.url == "http://ovms.local:9000/v3/chat/completions"
    assert http.json["stream"] is True and http.json["stream_options"] == {"include_usage": True}
    assert provider.build("models", op("models"), None).url == "http://ovms.local:9000/v3/models"


def test_ovms_refuses_legacy_functions():
    with pytest.raises(errors.InvalidRequestError, match="tools"):
        ovms().build("chat", chat(functions=[{"name": "f"}]), None)


def test_ovms_completions_take_one_string_prompt():
    provider = ovms()
    body = provider.build("complete", op("complete", "tiny-llm", prompt=["only one"], user="x"), None).json
    assert body["prompt"] == "only one" and "user" not in body
    assert provider.build("complete", op("complete", "tiny-llm", prompt="plain"), None).json["prompt"] == "plain"
    with pytest.raises(errors.InvalidRequestError, match="single string prompt"):
        provider.build("complete", op("complete", "tiny-llm", prompt=["a", "b"]), None)


def test_ovms_embeddings_refuse_dimensions_and_drop_user():
    provider = ovms()
    http = provider.build("embed", build_embedding_request("tiny-embed", ["a", "b"], {"user": "u"}), None)
    assert http.url.endswith("/v3/embeddings") and http.json == {"model": "tiny-embed", "input": ["a", "b"]}
    with pytest.raises(errors.InvalidRequestError, match="dimensions"):
        provider.build("embed", EmbeddingRequest(model="tiny-embed", input=["a"], dimensions=64), None)


def _ovms_chunk(delta, finish=None):
    return {"created": 1, "model": "tiny-llm", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_ovms_stream_with_null_first_content_and_usage():
    provider = ovms()
    decoder = provider.stream_decoder("stream_chat", chat(), {})
    chunks = feed_all(decoder, [
        _ovms_chunk({"role": "assistant", "content": None}), _ovms_chunk({"content": "Ec"}),
        _ovms_chunk({"content": "ho"}), _ovms_chunk({}, "stop"),
        {"created": 1, "model": "tiny-llm", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}, "[DONE]"])
    assert [c.text for c in chunks if not c.done] == ["Ec", "ho"]
    final = chunks[-1]
    assert final.done and final.finish_reason == "stop" and final.usage.total_tokens == 7


def test_ovms_stream_error_event_and_truncation():
    provider = ovms()
    with pytest.raises(errors.ProviderError, match="generation failed"):
        feed_all(provider.stream_decoder("stream_chat", chat(), {}),
                 [_ovms_chunk({"content": "x"}), {"error": "generation failed"}])
    with pytest.raises(errors.ProviderError) as info:
        feed_all(provider.stream_decoder("stream_chat", chat(), {}), [_ovms_chunk({"content": "x"})])
    assert info.value.retryable and "[DONE]" in str(info.value)


def test_ovms_parse_chat_without_id():
    body = {"choices": [{"finish_reason": "stop", "index": 0, "logprobs": None,
                         "message": {"content": "Echo: Hi", "role": "assistant", "reasoning_content": "r"}}],
            "created": 1, "model": "tiny-llm", "object": "chat.completion",
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}
    result = ovms().parse("chat", chat(), response(200, body))
    assert result.text == "Echo: Hi" and result.usage.total_tokens == 13 and result.finish_reason == "stop"


# ===========================================================================
# OVMS: KServe v2
# ===========================================================================

def test_kserve_inputs_from_numpy_arrays():
    provider = ovms(KEY)
    arrays = {"input": np.arange(6, dtype=np.float32).reshape(2, 3), "mask": np.array([True, False]),
              "ids": np.array([[1, 2]], dtype=np.int64), "half": np.ones(2, dtype=np.float16),
              "raw": np.array([7, 8], dtype=np.uint8), "text": np.array(["héllo", "wörld"])}
    http = provider.build("infer", op("infer", "add-one", inputs=arrays, outputs=["output"], id="req-9"), "rid")
    assert http.url == "http://localhost:8000/v2/models/add-one/infer"
    assert "Authorization" not in http.headers  # KServe routes are never protected
    by_name = {i["name"]: i for i in http.json["inputs"]}
    assert by_name["input"] == {"name": "input", "shape": [2, 3], "datatype": "FP32",
                                "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}
    assert by_name["mask"]["datatype"] == "BOOL" and by_name["mask"]["data"] == [True, False]
    assert by_name["ids"]["datatype"] == "INT64" and by_name["ids"]["shape"] == [1, 2]
    assert by_name["half"]["datatype"] == "FP16" and by_name["raw"]["datatype"] == "UINT8"
    assert by_name["text"] == {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", "wörld"]}
    assert http.json["outputs"] == [{"name": "output"}] and http.json["id"] == "req-9"
    json.dumps(http.json)  # every value is plain JSON, no numpy scalars


def test_kserve_explicit_specs_versions_and_checks():
    provider = ovms()
    spec = [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}]
    http = provider.build("infer", op("infer", "add-one", inputs=spec, version=2), None)
    assert http.url.endswith("/v2/models/add-one/versions/2/infer")
    assert http.json["inputs"][0]["data"] == [1.0, 2.0, 3.0]
    with pytest.raises(errors.InvalidRequestError, match="holds 4 elements but data has 3"):
        provider.build("infer", op("infer", "add-one", inputs=[{**spec[0], "shape": [2, 2]}]), None)
    with pytest.raises(errors.InvalidRequestError, match="datatype"):
        provider.build("infer", op("infer", "add-one", inputs=[{**spec[0], "datatype": "FP128"}]), None)
    with pytest.raises(errors.InvalidRequestError, match="KServe"):
        provider.build("infer", op("infer", "add-one", inputs={"c": np.array([1j])}), None)
    with pytest.raises(errors.InvalidRequestError, match="inputs"):
        provider.build("infer", op("infer", "add-one", inputs=np.zeros(3)), None)
    with pytest.raises(errors.InvalidRequestError, match="UTF-8"):
        to_kserve_input("b", {"data": [b"\xff\xfe"], "datatype": "BYTES"})
    with pytest.raises(errors.InvalidRequestError, match="needs a model"):
        provider.build("infer", op("infer", None, inputs={"x": np.zeros(1)}), None)


def test_kserve_outputs_become_arrays_of_their_shape():
    body = {"model_name": "add-one", "model_version": "2", "id": "req-9",
            "outputs": [{"name": "output", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
                        {"name": "length", "shape": [2], "datatype": "INT64", "data": [5, 6]},
                        {"name": "words", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}
    result = ovms().parse("infer", op("infer", "add-one"), response(200, body))
    out = result.data["output"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 2)
    assert out.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert result.data["length"].dtype == np.int64
    assert result.data["words"] == [["a", "b"]]
    assert result.model == "add-one" and result.raw["model_version"] == "2"
    assert "data" not in result.raw["outputs"][0]  # raw keeps the header, not a second copy of the tensor
    with pytest.raises(errors.ProviderError, match="binary"):
        from_kserve_output({"name": "o", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}})
    with pytest.raises(errors.ProviderError, match="shape"):
        from_kserve_output({"name": "o", "shape": [3], "datatype": "FP32", "data": [1, 2]})


def test_model_info_is_kserve_metadata():
    provider = ovms()
    http = provider.build("model_info", op("model_info", "add-one"), None)
    assert http.method == "GET" and http.url == "http://localhost:8000/v2/models/add-one"
    meta = {"name": "add-one", "versions": ["1", "2"], "platform": "OpenVINO",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}], "outputs": []}
    result = provider.parse("model_info", op("model_info", "add-one"), response(200, meta))
    assert result.data == meta and result.model == "add-one"


@pytest.mark.parametrize("server, model_status, model, expected", [
    (200, None, None, True), (503, None, None, False), (200, 200, "add-one", True),
    (200, 503, "add-one", False), (200, 404, "nope", False)])
def test_ovms_health_judges_status_codes(server, model_status, model, expected):
    answers = {"v2/health/ready": response(server, b"")}
    if model_status is not None:
        answers[f"v2/models/{model}/ready"] = response(model_status, {"error": "not there"}
                                                       if model_status >= 400 else b"")
    transport = ScriptedTransport(answers)
    result, _ = asyncio.run(ovms(KEY).execute("health", op("health", model), "rid", transport))
    assert result.data is expected
    assert len(transport.sent) == (2 if model and server == 200 else 1)
    assert all("Authorization" not in r.headers for r in transport.sent)
    if model_status == 404:
        assert result.raw["model_error"] == "not there"


@pytest.mark.parametrize("status, body, cls, retryable", [
    (404, {"error": "Model with requested name is not found"}, errors.UnknownModelError, False),
    (404, {"error": "Mediapipe graph definition with requested name is not found"}, errors.UnknownModelError,
     False),
    (400, {"error": "Invalid number of elements"}, errors.InvalidRequestError, False),
    (412, {"error": "Invalid JSON"}, errors.InvalidRequestError, False),
    (401, {"error": "Unauthorized"}, errors.AuthenticationError, False),
    (500, {"error": "Model with requested version is not loaded yet"}, errors.ProviderError, True),
    (503, {"error": "Server is not ready"}, errors.ProviderOverloadedError, True),
])
def test_ovms_error_mapping(status, body, cls, retryable):
    err = ovms().parse_error(response(status, body))
    assert type(err) is cls and err.retryable is retryable and err.status == status
    assert body["error"] in str(err) and err.provider == "ovms"


# ===========================================================================
# OPEA: the bytes-literal stream
# ===========================================================================

TRICKY = ["plain", "it's", 'say "hi"', "both ' and \"", "new\nline\tand tab", "back\\slash",
          "caf\u00e9 \u2615 \u691c\u7d22", "\x00\x7f control", "b'nested'", "\\x41 is not A", "ends with \\",
          "emoji \U0001F600", "", "'", '"', "\r\n"]


@pytest.mark.parametrize("text", TRICKY)
def test_bytes_literal_round_trip(text):
    literal = repr(text.encode("utf-8"))
    assert decode_bytes_literal(literal) == text.encode("utf-8")
    assert decode_bytes_literal(f"  {literal} ") == text.encode("utf-8")


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_bytes_literal_round_trip_any_text(text):
    assert decode_bytes_literal(repr(text.encode("utf-8"))).decode("utf-8") == text


@pytest.mark.parametrize("payload", [
    "b'unterminated", "b'a' + b'b'", "__import__('os').getcwd()", "'text literal'", "plain text",
    "b'a'; b'b'", "[b'a']", "bytes(3)", "b", "", "{\"x\": 1}", "B'ok'x"])
def test_non_literals_are_not_evaluated(payload):
    assert decode_bytes_literal(payload) is None


def test_hostile_nesting_is_not_a_literal_and_leaves_the_interpreter_working():
    # ast.parse raised RecursionError on this, after which CPython 3.11 failed every
    # later compile in the process (an upstream could break the endpoint actor)
    assert decode_bytes_literal("b'x'" + " + b'x'" * 100_000) is None
    assert eval(compile("1 + 1", "<check>", "eval")) == 2


def test_uppercase_and_double_quoted_literals():
    assert decode_bytes_literal('B"it\'s"') == b"it's"
    assert decode_bytes_literal(r"b'\xe2\x9c\x93 \'q\' \"d\" \\'") == "\u2713 'q' \"d\" \\".encode()


def _qna_decoder(messages="What is OPEA?"):
    return opea().stream_decoder("stream_chatqna", op("stream_chatqna", None, messages=messages), {})


def test_chatqna_stream_unescapes_fragments_and_estimates_usage():
    answer = "Echo: it's \"quoted\"\nline two caf\u00e9 \u2615 back\\slash"
    fragments = [answer[i:i + 5] for i in range(0, len(answer), 5)]
    chunks = feed_all(_qna_decoder(), [bytes_fragment(f) for f in fragments] + ["[DONE]"])
    assert "".join(c.text for c in chunks) == answer
    final = chunks[-1]
    assert final.done and final.finish_reason == "stop"
    assert final.usage.completion_tokens > 0 and final.usage.prompt_tokens > 0
    assert final.usage.details == {"estimated": True}


def test_chatqna_stream_joins_a_character_split_across_fragments():
    raw = "\u2713 ok".encode()
    payloads = [repr(raw[:2]), repr(raw[2:]), "[DONE]"]
    assert "".join(c.text for c in feed_all(_qna_decoder(), payloads)) == "\u2713 ok"


def test_chatqna_stream_without_done_is_retryable():
    with pytest.raises(errors.ProviderError) as info:
        feed_all(_qna_decoder(), [bytes_fragment("partial answer")])
    assert info.value.retryable and "[DONE]" in str(info.value)


def test_chatqna_stream_other_payload_shapes():
    chunk = {"choices": [{"index": 0, "delta": {"content": "json piece"}}]}
    chunks = feed_all(_qna_decoder(), [json.dumps(chunk), "bare text", "[DONE]"])
    assert [c.text for c in chunks if not c.done] == ["json piece", "bare text"]
    with pytest.raises(errors.ProviderError, match="malformed"):
        feed_all(_qna_decoder(), ["b'never closed"])
    with pytest.raises(errors.GatewayError, match="backend down"):
        feed_all(_qna_decoder(), [json.dumps({"error": {"message": "backend down", "type": "server_error"}})])


# ===========================================================================
# OPEA: requests, responses, errors
# ===========================================================================

def test_chatqna_body_carries_retrieval_params():
    provider = opea()
    req = op("chatqna", None, messages="What is OPEA?", k=3, top_n=2, search_type="mmr", max_tokens=64,
             temperature=0.1, score_threshold=None)
    http = provider.build("chatqna", req, "rid")
    assert http.url == "http://localhost:8888/v1/chatqna" and "Authorization" not in http.headers
    assert http.json == {"messages": "What is OPEA?", "stream": False, "k": 3, "top_n": 2, "search_type": "mmr",
                         "max_tokens": 64, "temperature": 0.1}
    stream = provider.build("stream_chatqna", op("stream_chatqna", "m", messages=[{"role": "user", "content": "q"}]),
                            None)
    assert stream.stream == "sse" and stream.json["stream"] is True and stream.json["model"] == "m"
    assert stream.json["messages"] == [{"role": "user", "content": "q"}]
    for bad in (None, "  ", [], [{"role": "nobody", "content": "x"}]):
        with pytest.raises(errors.InvalidRequestError):
            provider.build("chatqna", op("chatqna", None, messages=bad), None)


def test_chatqna_parse_estimates_zero_usage():
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "chatqna",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Echo: What is OPEA?"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0}}
    result = opea().parse("chatqna", op("chatqna", None, messages="What is OPEA?"), response(200, body))
    assert result.text == "Echo: What is OPEA?" and result.model == "chatqna"
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.usage.details == {"estimated": True}
    body["usage"] = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    kept = opea().parse("chatqna", op("chatqna", None, messages="q"), response(200, body))
    assert kept.usage.total_tokens == 16 and not kept.usage.details.get("estimated")


def test_opea_llm_routes_and_both_answer_shapes():
    provider = opea(KEY, base_url="http://llm:9000/v1")
    http = provider.build("chat", chat("neural-chat"), None)
    assert http.url == "http://llm:9000/v1/chat/completions" and http.headers["Authorization"] == f"Bearer {KEY}"
    assert isinstance(http.json["messages"], list)
    complete = provider.build("complete", op("complete", "neural-chat", prompt="Once upon"), None)
    assert complete.url == "http://llm:9000/v1/chat/completions"
    assert complete.json["messages"] == "Once upon" and "prompt" not in complete.json
    text_completion = {"id": "cmpl-1", "object": "text_completion", "model": "neural-chat",
                       "choices": [{"index": 0, "text": " a time", "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}
    assert provider.parse("complete", complete, response(200, text_completion)).text == " a time"
    assert provider.parse("chat", chat("neural-chat"), response(200, text_completion)).text == " a time"
    decoder = provider.stream_decoder("stream_complete", complete, {})
    chunks = feed_all(decoder, [{"object": "text_completion", "choices": [{"index": 0, "text": "x"}]}, "[DONE]"])
    assert chunks[0].text == "x" and chunks[-1].done


@pytest.mark.parametrize("status, body, cls, needle", [
    (422, {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {}},
                      {"type": "int_type", "loc": ["body", "k"], "msg": "Input should be a valid integer"}]},
     errors.InvalidRequestError, "body.messages: Field required; body.k: Input should be a valid integer"),
    (400, {"detail": "search_type must be one of similarity"}, errors.InvalidRequestError, "search_type"),
    (404, {"detail": "Not Found"}, errors.NotFoundError, "Not Found"),
    (500, b"Internal Server Error", errors.ProviderError, "Internal Server Error"),
    (503, {"detail": "Service Unavailable"}, errors.ProviderOverloadedError, "Service Unavailable"),
])
def test_opea_fastapi_error_mapping(status, body, cls, needle):
    err = opea().parse_error(response(status, body))
    assert isinstance(err, cls) and needle in str(err) and err.status == status
    assert err.retryable is (status >= 500)


def test_fastapi_error_message_shapes():
    assert fastapi_error_message({"detail": [{"loc": ["body", "x"], "msg": "bad"}, "odd"]}) == "body.x: bad; odd"
    assert fastapi_error_message({"error": "x"}) is None
    assert fastapi_error_message("text") is None


@pytest.mark.parametrize("status, expected", [(200, True), (503, False), (500, False)])
def test_opea_health(status, expected):
    body = {"Service Title": "opea_service@chatqna", "Version": "1.0"} if status == 200 else b"down"
    transport = ScriptedTransport({"v1/health_check": response(status, body)})
    result, _ = asyncio.run(opea().execute("health", op("health"), None, transport))
    assert result.data is expected
    if expected:
        assert result.raw["service"]["Version"] == "1.0"


# ===========================================================================
# Against the fakes: the official SDK as reference, then our providers over HTTP
# ===========================================================================

@pytest.fixture(scope="module")
def ovms_fake():
    handle = start_fake("ovms")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def opea_fake():
    handle = start_fake("opea")
    yield handle
    handle.stop()


def test_openai_sdk_against_fake_ovms_v3(ovms_fake):
    openai = pytest.importorskip("openai")
    ovms_fake.reset()
    client = openai.OpenAI(base_url=f"{ovms_fake.root_url}/v3", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=20)
    assert reply.choices[0].message.content == "Echo: hello" and reply.usage.completion_tokens > 0
    pieces = [c for c in client.chat.completions.create(
        model="tiny-llm", messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True})]
    assert pieces[0].choices[0].delta.content is None  # OVMS's role-only first chunk
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == "Echo: hello"
    assert pieces[-1].usage.total_tokens == reply.usage.total_tokens
    emb = client.embeddings.create(model="tiny-embed", input=["a", "b"])  # the SDK asks for base64
    assert [len(d.embedding) for d in emb.data] == [384, 384]
    assert client.completions.create(model="tiny-llm", prompt="abc").choices[0].text == "Echo: abc"
    assert [m.id for m in client.models.list()][:2] == ["tiny-llm", "tiny-embed"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": "x"}],
                                       logit_bias={"1": 1})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])


def test_ovms_fake_protects_only_v3_when_started_with_a_key(ovms_fake):
    openai = pytest.importorskip("openai")
    ovms_fake.reset(valid_keys=[KEY])
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{ovms_fake.root_url}/v3", api_key="wrong-key-000000", max_retries=0
                          ).models.list()
        assert openai.OpenAI(base_url=f"{ovms_fake.root_url}/v3", api_key=KEY).models.list().data
        with urllib.request.urlopen(f"{ovms_fake.root_url}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200  # KServe stays open
    finally:
        ovms_fake.reset(valid_keys=[])


def test_openai_sdk_against_fake_opea_microservices(opea_fake):
    openai = pytest.importorskip("openai")
    opea_fake.reset()
    client = openai.OpenAI(base_url=f"{opea_fake.root_url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="neural-chat", messages=[{"role": "user", "content": "hi"}])
    assert reply.object == "chat.completion" and reply.choices[0].message.content == "Echo: hi"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="neural-chat", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    assert text == "Echo: hi"
    emb = client.embeddings.create(model="bge", input="hello")
    assert len(emb.data[0].embedding) == 768
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="neural-chat", messages=[], extra_body={"messages": None})


async def _run(provider, op_name, request):
    async with Transport(timeout_s=10) as transport:
        if op_name.startswith("stream_"):
            return [c async for c in provider.stream(op_name, request, "rid", transport)]
        result, _ = await provider.execute(op_name, request, "rid", transport)
        return result


def test_ovms_provider_against_fake(ovms_fake):
    ovms_fake.reset()
    provider = ovms(base_url=ovms_fake.root_url)
    result = asyncio.run(_run(provider, "infer", op("infer", "add-one",
                                                    inputs={"input": np.array([[1.5, 2.5]], dtype=np.float32)})))
    assert result.data["output"].tolist() == [[2.5, 3.5]] and result.raw["model_version"] == "2"
    lengths = asyncio.run(_run(provider, "infer", op("infer", "string-length",
                                                     inputs={"text": np.array(["a", "\u00e9\u00e9"])})))
    assert lengths.data["length"].tolist() == [1, 4]
    with pytest.raises(errors.InvalidRequestError, match="precision"):
        asyncio.run(_run(provider, "infer", op("infer", "add-one", inputs={"input": np.ones((1, 2))})))  # FP64
    with pytest.raises(errors.UnknownModelError):
        asyncio.run(_run(provider, "infer", op("infer", "add-one", version=7, inputs={"input": np.ones((1, 1),
                                                                                                       "f4")})))
    assert asyncio.run(_run(provider, "health", op("health", "add-one"))).data is True
    meta = asyncio.run(_run(provider, "model_info", op("model_info", "add-one"))).data
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, -1]}
    ovms_fake.controls(options={"unloaded_models": ["add-one"]})
    assert asyncio.run(_run(provider, "health", op("health", "add-one"))).data is False
    with pytest.raises(errors.ProviderError) as info:
        asyncio.run(_run(provider, "infer", op("infer", "add-one", inputs={"input": np.ones((1, 1), "f4")})))
    assert info.value.status == 500 and info.value.retryable
    ovms_fake.controls(options={"server_ready": False, "unloaded_models": None})
    assert asyncio.run(_run(provider, "health", op("health"))).data is False
    ovms_fake.reset()
    chunks = asyncio.run(_run(provider, "stream_chat", chat(stream=True)))
    assert "".join(c.text for c in chunks) == "Echo: Hi" and chunks[-1].usage.total_tokens > 0


def test_opea_provider_against_fake_chatqna(opea_fake):
    opea_fake.reset()
    provider = opea(base_url=opea_fake.root_url)
    question = "Tell me about café prices in Zürich"
    full = asyncio.run(_run(provider, "chatqna", op("chatqna", None, messages=question, k=6, top_n=6)))
    assert all(doc in full.text for doc in CORPUS)  # every escape-worthy document came back
    assert full.usage.details == {"estimated": True}
    chunks = asyncio.run(_run(provider, "stream_chatqna", op("stream_chatqna", None, messages=question, k=6,
                                                            top_n=6)))
    assert "".join(c.text for c in chunks) == full.text and len(chunks) > 2
    one = asyncio.run(_run(provider, "chatqna", op("chatqna", None, messages=question, top_n=1)))
    assert sum(doc in one.text for doc in CORPUS) == 1
    with pytest.raises(errors.InvalidRequestError, match="body.k"):
        asyncio.run(_run(provider, "chatqna", op("chatqna", None, messages=question, k="four")))
    opea_fake.controls(faults=[{"kind": "status", "status": 500, "body": "Internal Server Error", "count": 1}])
    with pytest.raises(errors.ProviderError, match="Internal Server Error") as info:
        asyncio.run(_run(provider, "chatqna", op("chatqna", None, messages=question)))
    assert info.value.retryable
    opea_fake.controls(faults=[{"kind": "drop_mid_stream", "after_chunks": 2, "count": 1}])
    with pytest.raises(errors.GatewayError) as info:
        asyncio.run(_run(provider, "stream_chatqna", op("stream_chatqna", None, messages=question)))
    assert info.value.retryable
    assert asyncio.run(_run(provider, "health", op("health"))).data is True
