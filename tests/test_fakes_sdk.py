"""Wire faithfulness of the fake provider servers, proven with the official SDKs.

If the openai / groq / anthropic SDKs parse the fakes' answers (including
streams and errors) into their typed objects and exception classes, the
gateway's providers can trust the fakes.  The second half tests the shared
framework directly: token buckets, fault rules, stats, admin API, runner.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import pickle
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import groq
import httpx
import numpy as np
import openai
import pytest

from ipfs_accelerate_py.testing.fakes import base as fakebase
from ipfs_accelerate_py.testing.fakes.runner import (
    PROTOCOLS,
    FakeAdminError,
    FakeHandle,
    fingerprint,
    start_fake,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLAUDE_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLAUDE_MODEL = "claude-haiku-4-5"


def oai(fake: FakeHandle, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key=key, max_retries=0, timeout=10, **kw)


def claude(fake: FakeHandle, key: str, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key=key, max_retries=0, timeout=10, **kw)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body, following the general parsing rules."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        events.append((event, "\n".join(data)))
    return events


# =========================================================================== OpenAI SDK


def test_openai_chat_basic_usage_and_headers(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Be brief."}, *user("Hello there")],
        seed=7, user="u-1", logit_bias={"50256": -100}, temperature=0.2)
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content == "Echo: Hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == fakebase.count_tokens("Echo: Hello there")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    for name in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                 "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"):
        assert name in raw.headers
    assert raw.headers["x-request-id"].startswith("req_")
    echoed = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user("hi"), extra_headers={"X-Request-ID": "my-trace-42"})
    assert echoed.headers["x-request-id"] == "my-trace-42"


def test_openai_chat_tools(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    messages = user("What's the weather in Paris? Use get_weather.")
    resp = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # the tool result goes back and the model answers in text
    follow = client.chat.completions.create(model="gpt-4o", tools=[WEATHER_TOOL], messages=[
        *messages, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}])
    assert follow.choices[0].message.content == "Echo: 18C and sunny"
    # no mention, tool_choice auto -> plain text; tool_choice required -> a call anyway
    plain = client.chat.completions.create(model="gpt-4o", messages=user("Hi"), tools=[WEATHER_TOOL])
    assert plain.choices[0].message.tool_calls is None
    forced = client.chat.completions.create(model="gpt-4o", messages=user("Hi"), tools=[WEATHER_TOOL],
                                            tool_choice="required")
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    with pytest.raises(openai.BadRequestError):  # a tool answer nobody asked for
        client.chat.completions.create(model="gpt-4o", messages=[
            *user("x"), {"role": "tool", "tool_call_id": "call_nope", "content": "1"}])


def test_openai_json_modes(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=user("Reply in JSON please"),
                                          response_format={"type": "json_object"})
    assert json.loads(resp.choices[0].message.content) == {"echo": "Reply in JSON please"}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("no magic word"),
                                       response_format={"type": "json_object"})
    assert "json" in info.value.message.lower()
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
              "required": ["city", "days", "tags"], "additionalProperties": False,
              "$defs": {"tag": {"type": "string", "enum": ["sunny", "rainy"]}}}
    resp = client.chat.completions.create(
        model="gpt-4o-mini", messages=user("Forecast for Berlin"),
        response_format={"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema,
                                                                "strict": True}})
    assert json.loads(resp.choices[0].message.content) == {"city": "Berlin", "days": 1, "tags": ["sunny"]}


def test_openai_n_choices_and_max_tokens(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=user("Two please"), n=2)
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.message.content == "Echo: Two please" for c in resp.choices)
    assert resp.usage.completion_tokens == 2 * fakebase.count_tokens("Echo: Two please")
    cut = client.chat.completions.create(model="gpt-4o-mini", max_completion_tokens=3,
                                         messages=user("a rather long sentence that will be cut short"))
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="o3-mini", messages=user("x"), max_tokens=5)
    assert info.value.code == "unsupported_parameter"


def test_openai_stream_include_usage(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    fake_openai.controls(stream_chunks=5)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=user("Stream me a reply"), stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Stream me a reply"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == fakebase.count_tokens(text)
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage there is no usage chunk and no usage field at all
    raw = httpx.post(fake_openai.base_url + "/chat/completions", timeout=10,
                     headers={"Authorization": f"Bearer {fake_api_key}"},
                     json={"model": "gpt-4o-mini", "messages": user("hi"), "stream": True})
    events = sse_events(raw.content)
    assert events[-1] == (None, "[DONE]")
    assert all("usage" not in json.loads(d) for _, d in events[:-1])


def test_openai_stream_tool_calls(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    finish = None
    for chunk in client.chat.completions.create(model="gpt-4o", messages=user("get_weather for Rome"),
                                                tools=[WEATHER_TOOL], stream=True):
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            if delta_call.function.name:
                names[delta_call.index] = delta_call.function.name
            args[delta_call.index] = args.get(delta_call.index, "") + (delta_call.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    assert names == {0: "get_weather"}
    assert json.loads(args[0]) == {"city": "Rome"}
    assert finish == "tool_calls"


def test_openai_completions(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    resp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this", max_tokens=50)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "Echo: Say this"
    assert resp.choices[0].finish_reason == "stop"
    default_cut = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="word " * 40)
    assert default_cut.choices[0].finish_reason == "length"  # max_tokens defaults to 16
    assert default_cut.usage.completion_tokens == 16
    parts = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt=["a", "b"], max_tokens=20,
                                           stream=True, stream_options={"include_usage": True}))
    texts: dict[int, str] = {}
    for p in parts:
        for c in p.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: "Echo: a", 1: "Echo: b"}
    assert parts[-1].usage is not None and parts[-1].choices == []


def test_openai_embeddings_base64_matches_float(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    texts = ["the quick brown fox", "jumps over", "the quick brown fox"]
    default = client.embeddings.create(model="text-embedding-3-small", input=texts)  # SDK asks for base64
    floats = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    for a, b in zip(default.data, floats.data):
        assert len(a.embedding) == 1536
        assert a.embedding == b.embedding
    vec = np.array(floats.data[0].embedding)
    assert math.isclose(float(np.linalg.norm(vec)), 1.0, rel_tol=1e-5)
    assert floats.data[0].embedding == floats.data[2].embedding
    assert floats.usage.prompt_tokens == sum(fakebase.count_tokens(t) for t in texts)
    # the vector is a pure function of the text: this process computes the same one
    local = fakebase.embedding_vector("jumps over", 1536)
    assert np.array_equal(np.array(floats.data[1].embedding, dtype=np.float32), local)
    large = client.embeddings.create(model="text-embedding-3-large", input="x", encoding_format="float")
    assert len(large.data[0].embedding) == 3072
    short = client.embeddings.create(model="text-embedding-3-large", input="x", dimensions=256)
    assert len(short.data[0].embedding) == 256
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)


def test_openai_models_and_not_found(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o", "text-embedding-3-small", "whisper-1", "tiny-context"} <= set(ids)
    model = client.models.retrieve("gpt-4o")
    assert model.id == "gpt-4o" and model.object == "model" and model.owned_by
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-nope")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=user("x"))
    assert info.value.code == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"
    fake_openai.controls(extra_models={"my-finetune": {"context_window": 1000}})
    assert client.chat.completions.create(model="my-finetune", messages=user("ok")).choices[0].message.content


def test_openai_context_length_exceeded(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-context", messages=user("hello " * 9000))
    assert info.value.code == "context_length_exceeded"
    assert "8192" in info.value.message


def test_openai_images(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    by_url = client.images.generate(prompt="a red fox", model="dall-e-3", size="1024x1024")
    assert by_url.data[0].revised_prompt == "a red fox"
    with urllib.request.urlopen(by_url.data[0].url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.read().startswith(b"\x89PNG\r\n\x1a\n")
    inline = client.images.generate(prompt="a red fox", n=2, response_format="b64_json")
    assert len(inline.data) == 2
    png = base64.b64decode(inline.data[0].b64_json)
    assert png.startswith(b"\x89PNG") and png[12:16] == b"IHDR"
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", model="dall-e-2", size="1792x1024")


def test_openai_audio(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    wav = fakebase.tiny_png((1, 2, 3))  # any bytes do: the fake does not decode audio
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav))
    assert text.text.startswith("This is a fake transcription of speech.wav")
    plain = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav), response_format="text")
    assert isinstance(plain, str) and plain.strip() == text.text
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("speech.mp3", wav),
                                                 response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and verbose.segments and verbose.words
    translated = httpx.post(fake_openai.base_url + "/audio/translations", data={"model": "whisper-1"},
                            files={"file": ("speech.wav", wav)},
                            headers={"Authorization": f"Bearer {fake_api_key}"})
    assert "translation" in translated.json()["text"]  # (the SDK's translations API is deprecated)
    missing = httpx.post(fake_openai.base_url + "/audio/transcriptions", data={"model": "whisper-1"},
                         files={"other": ("x.txt", b"x")}, headers={"Authorization": f"Bearer {fake_api_key}"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "file"
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello world")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    assert speech.content[:2] == b"\xff\xfb"
    wav_out = client.audio.speech.create(model="tts-1", voice="nova", input="Hi", response_format="wav")
    assert wav_out.content[:4] == b"RIFF"


def test_openai_moderations(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    resp = client.moderations.create(model="omni-moderation-latest",
                                     input=["I will kill the process", "Have a nice day"])
    flagged, clean = resp.results
    assert flagged.flagged and flagged.categories.violence
    assert not clean.flagged
    raw = flagged.model_dump(by_alias=True)
    assert len(raw["categories"]) == 13 and "self-harm/intent" in raw["categories"]
    assert set(raw["category_scores"]) == set(raw["categories"])


def test_openai_rate_limit_errors(fake_openai: FakeHandle, fake_api_key: str) -> None:
    client = oai(fake_openai, fake_api_key)
    fake_openai.controls(faults=[{"kind": "status", "status": 429, "count": 1, "retry_after": 3}])
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("x"))
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.response.headers["retry-after-ms"] == "3000"
    assert info.value.code == "rate_limit_exceeded"
    # the token bucket: capacity 1, refill one per 100 s
    fake_openai.controls(limits={fake_api_key: {"rps": 0.01, "burst_s": 100}})
    client.chat.completions.create(model="gpt-4o-mini", messages=user("first"))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("second"))
    headers = info.value.response.headers
    assert info.value.body["type"] == "rate_limit_error"
    assert 90 <= int(headers["retry-after"]) <= 100
    assert 90_000 <= int(headers["retry-after-ms"]) <= 100_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "1"  # 0.01 rps = 0.6 rpm, reported as at least 1
    assert headers["x-ratelimit-reset-requests"].endswith("s")


def test_openai_authentication(fake_openai: FakeHandle, fake_api_key: str) -> None:
    good, bad = fake_api_key, "sk-wrong-key-000000000000"
    fake_openai.controls(valid_keys=[good])
    assert oai(fake_openai, good).chat.completions.create(model="gpt-4o-mini", messages=user("x"))
    with pytest.raises(openai.AuthenticationError) as info:
        oai(fake_openai, bad).chat.completions.create(model="gpt-4o-mini", messages=user("x"))
    assert info.value.code == "invalid_api_key"
    assert bad not in info.value.message and fingerprint(bad) in info.value.message
    missing = httpx.get(fake_openai.base_url + "/models")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.get(fake_openai.base_url + "/nowhere", headers={"Authorization": f"Bearer {good}"})
    assert unknown.status_code == 404
    assert unknown.json() == {"error": {"message": "Invalid URL (GET /v1/nowhere)",
                                        "type": "invalid_request_error", "param": None, "code": None}}


# =========================================================================== Groq SDK


def test_groq_chat_stream_and_models(fake_groq: FakeHandle, fake_api_key: str) -> None:
    assert fake_groq.base_url.endswith("/openai/v1")
    client = groq.Groq(base_url=fake_groq.root_url, api_key=fake_api_key, max_retries=0, timeout=10)
    resp = client.chat.completions.create(model="llama-3.3-70b-versatile", messages=user("Hello Groq"))
    assert resp.choices[0].message.content == "Echo: Hello Groq"
    usage = resp.usage
    assert usage.queue_time is not None and usage.total_time is not None
    assert math.isclose(usage.total_time, usage.prompt_time + usage.completion_time, abs_tol=1e-6)
    chunks = list(client.chat.completions.create(model="llama-3.3-70b-versatile", messages=user("Hello Groq"),
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: Hello Groq"
    assert chunks[0].x_groq.id.startswith("req_")
    assert chunks[-1].x_groq.usage.completion_tokens == usage.completion_tokens
    models = client.models.with_raw_response.list()
    first = json.loads(models.text())["data"][0]
    assert {"id", "object", "created", "owned_by", "active", "context_window", "max_completion_tokens"} <= set(first)
    assert any(m.id == "llama-3.1-8b-instant" for m in models.parse().data)
    with pytest.raises(groq.BadRequestError):
        client.chat.completions.create(model="llama-3.3-70b-versatile", messages=user("x"), n=2)
    with pytest.raises(groq.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=user("x"))
    fake_groq.controls(limits={fake_api_key: {"rps": 0.01, "burst_s": 100}})
    ok = client.chat.completions.with_raw_response.create(model="llama-3.1-8b-instant", messages=user("x"))
    assert ok.headers["x-ratelimit-limit-requests"] == str(round(0.01 * 86_400))  # Groq: per day
    with pytest.raises(groq.RateLimitError):
        client.chat.completions.create(model="llama-3.1-8b-instant", messages=user("x"))


def test_openai_sdk_against_groq_base_url(fake_groq: FakeHandle, fake_api_key: str) -> None:
    client = openai.OpenAI(base_url=fake_groq.base_url, api_key=fake_api_key, max_retries=0)
    assert client.chat.completions.create(model="llama-3.1-8b-instant", messages=user("hi")).choices[0]


# =========================================================================== Anthropic SDK


def test_claude_messages_create(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    raw = client.messages.with_raw_response.create(model=CLAUDE_MODEL, max_tokens=100, system="Be terse.",
                                                   messages=user("Hello Claude"))
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-haiku-4-5-20251001"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Echo: Hello Claude"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == fakebase.count_tokens("Echo: Hello Claude")
    assert raw.headers["request-id"].startswith("req_")
    assert raw.headers["anthropic-ratelimit-requests-limit"]
    assert raw.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    blocks = client.messages.create(model=CLAUDE_MODEL, max_tokens=100,
                                    system=[{"type": "text", "text": "Be terse."}],
                                    messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert blocks.content[0].text == "Echo: Hi"
    cut = client.messages.create(model=CLAUDE_MODEL, max_tokens=2, messages=user("one two three four five"))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    stop = client.messages.create(model=CLAUDE_MODEL, max_tokens=50, stop_sequences=["three"],
                                  messages=user("one two three four"))
    assert stop.stop_reason == "stop_sequence" and stop.stop_sequence == "three"
    assert stop.content[0].text == "Echo: one two "


def test_claude_tools_round_trip(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    question = user("What is the weather in Paris? Use get_weather.")
    msg = client.messages.create(model=CLAUDE_MODEL, max_tokens=200, tools=[CLAUDE_WEATHER_TOOL],
                                 messages=question)
    assert msg.stop_reason == "tool_use"
    tool_use = msg.content[0]
    assert tool_use.type == "tool_use" and tool_use.id.startswith("toolu_")
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "Paris"}
    answer = client.messages.create(model=CLAUDE_MODEL, max_tokens=200, tools=[CLAUDE_WEATHER_TOOL], messages=[
        *question, {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C"}]}])
    assert answer.stop_reason == "end_turn" and answer.content[0].text == "Echo: 18C"
    forced = client.messages.create(model=CLAUDE_MODEL, max_tokens=200, tools=[CLAUDE_WEATHER_TOOL],
                                    tool_choice={"type": "tool", "name": "get_weather"}, messages=user("hi"))
    assert forced.content[0].type == "tool_use"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=CLAUDE_MODEL, max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}])


def test_claude_stream(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    fake_claude.controls(stream_chunks=4)
    kwargs = {"model": CLAUDE_MODEL, "max_tokens": 100, "messages": user("Stream this for me")}
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    plain = client.messages.create(**kwargs)
    assert text == plain.content[0].text == "Echo: Stream this for me"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"
    with client.messages.stream(model=CLAUDE_MODEL, max_tokens=100, tools=[CLAUDE_WEATHER_TOOL],
                                messages=user("get_weather in Oslo")) as stream:
        tool_msg = stream.get_final_message()
    assert tool_msg.content[0].input == {"city": "Oslo"} and tool_msg.stop_reason == "tool_use"
    raw = httpx.post(fake_claude.root_url + "/v1/messages", timeout=10, json=dict(kwargs, stream=True),
                     headers={"x-api-key": fake_api_key, "anthropic-version": "2023-06-01"})
    events = sse_events(raw.content)
    names = [e for e, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 4 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(d)["type"] == e for e, d in events)
    assert "[DONE]" not in raw.text
    delta = json.loads(events[-2][1])
    assert delta["usage"]["output_tokens"] == plain.usage.output_tokens


def test_claude_count_tokens_and_models(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    kwargs = {"model": CLAUDE_MODEL, "system": "Be terse.", "tools": [CLAUDE_WEATHER_TOOL],
              "messages": user("How many tokens is this?")}
    counted = client.messages.count_tokens(**kwargs)
    sent = client.messages.create(max_tokens=50, **kwargs)
    assert counted.input_tokens == sent.usage.input_tokens > 0
    page = client.models.list(limit=3)
    assert len(page.data) == 3 and page.has_more and page.last_id == page.data[-1].id
    everything = [m.id for m in client.models.list(limit=3)]  # auto-pagination via after_id
    assert len(everything) == len(set(everything)) >= 8
    assert everything[:3] == [m.id for m in page.data]
    model = client.models.retrieve("claude-haiku-4-5")
    assert model.id == "claude-haiku-4-5-20251001" and model.type == "model" and model.display_name
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-nope", max_tokens=5, messages=user("x"))


def test_claude_request_validation(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=CLAUDE_MODEL, max_tokens=10,
                               messages=[{"role": "system", "content": "no"}, *user("x")])
    assert "system" in info.value.message
    url = fake_claude.root_url + "/v1/messages"
    body = {"model": CLAUDE_MODEL, "max_tokens": 5, "messages": user("x")}
    no_version = httpx.post(url, json=body, headers={"x-api-key": fake_api_key})
    assert no_version.status_code == 400
    err = no_version.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in err["error"]["message"] and err["request_id"].startswith("req_")
    headers = {"x-api-key": fake_api_key, "anthropic-version": "2023-06-01"}
    no_max = httpx.post(url, json={"model": CLAUDE_MODEL, "messages": user("x")}, headers=headers)
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    bearer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {fake_api_key}",
                                                 "anthropic-version": "2023-06-01"})
    assert bearer.status_code == 200
    no_key = httpx.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(fakebase.tiny_png((0, 0, 0))).decode()}}
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    ok = client.messages.create(model=CLAUDE_MODEL, max_tokens=20, messages=[
        {"role": "user", "content": [image, url_image, {"type": "text", "text": "Describe"}]}])
    assert ok.content[0].text == "Echo: Describe"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="tiny-context", max_tokens=10, messages=user("hello " * 9000))


def test_claude_overloaded_and_rate_limited(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    fake_claude.controls(faults=[{"kind": "status", "status": 529, "count": 1}])
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=CLAUDE_MODEL, max_tokens=10, messages=user("x"))
    assert isinstance(info.value, anthropic.OverloadedError)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    fake_claude.controls(limits={fake_api_key: {"rps": 0.01, "burst_s": 100}})
    client.messages.create(model=CLAUDE_MODEL, max_tokens=10, messages=user("x"))
    with pytest.raises(anthropic.RateLimitError) as rl:
        client.messages.create(model=CLAUDE_MODEL, max_tokens=10, messages=user("x"))
    headers = rl.value.response.headers
    assert 90 <= int(headers["retry-after"]) <= 100
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = headers["anthropic-ratelimit-requests-reset"]
    assert len(reset) == 20 and reset[10] == "T" and reset.endswith("Z")  # RFC 3339


def test_claude_error_event_mid_stream(fake_claude: FakeHandle, fake_api_key: str) -> None:
    client = claude(fake_claude, fake_api_key)
    fake_claude.controls(faults=[{"kind": "error_mid_stream", "count": 1, "after_chunks": 4}])
    received = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=CLAUDE_MODEL, max_tokens=100,
                                    messages=user("this stream will break")) as stream:
            for piece in stream.text_stream:
                received.append(piece)
    assert received  # some text arrived before the error event
    assert info.value.body["error"]["type"] == "overloaded_error"


# =========================================================================== framework


def _post_chat(fake: FakeHandle, key: str, stream: bool = False, timeout: float = 10) -> httpx.Response:
    return httpx.post(fake.base_url + "/chat/completions", timeout=timeout,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gpt-4o-mini", "messages": user("ping"), "stream": stream})


def test_token_bucket_admits_exactly_capacity_in_a_burst(fake_openai: FakeHandle, fake_api_key: str) -> None:
    # capacity 5 refilling one token per 20 s: a slow machine cannot sneak in a sixth
    fake_openai.controls(limits={fake_api_key: {"rps": 0.05, "burst_s": 100}})
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda _: _post_chat(fake_openai, fake_api_key).status_code, range(12)))
    assert sorted(statuses) == [200] * 5 + [429] * 7
    entry = fake_openai.key_stats(fake_api_key)
    assert (entry["requests"], entry["ok"], entry["429"], entry["errors"]) == (12, 5, 7, 0)
    other = "sk-test-other-key-0000099"
    assert _post_chat(fake_openai, other).status_code == 200  # buckets are per key


def test_token_bucket_refill_is_exact_on_an_injected_clock() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from ipfs_accelerate_py.testing.fakes.openai import OpenAIProtocol

    now = [1000.0]
    server = fakebase.FakeServer(OpenAIProtocol(), {"default_limit": {"rps": 2, "burst_s": 2.5}},
                                 clock=lambda: now[0])

    async def scenario() -> list[int]:
        async with TestClient(TestServer(server.make_app())) as client:
            async def burst(n: int) -> int:
                ok = 0
                for _ in range(n):
                    resp = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small",
                                                                     "input": "x"},
                                             headers={"Authorization": "Bearer sk-clock-key-000001"})
                    ok += resp.status == 200
                return ok
            first = await burst(10)          # capacity 2 * 2.5 = 5
            now[0] += 1.75                   # + 3.5 tokens -> 3 whole requests, 0.5 left over
            second = await burst(10)
            now[0] += 0.25                   # 0.5 + 0.5 = 1 token
            third = await burst(10)
            return [first, second, third]

    assert asyncio.run(scenario()) == [5, 3, 1]
    bucket = fakebase.TokenBucket(capacity=4, rate=1, now=0)
    assert [bucket.try_take(0) for _ in range(5)] == [True] * 4 + [False]
    assert math.isclose(bucket.wait_for(0, 1), 1.0) and math.isclose(bucket.time_to_full(0), 4.0)
    assert bucket.try_take(1.0) and not bucket.try_take(1.0)


def test_tokens_per_minute_limit(fake_openai: FakeHandle, fake_api_key: str) -> None:
    fake_openai.controls(limits={fake_api_key: {"rps": 100, "burst_s": 1, "tpm": 6}})
    first = _post_chat(fake_openai, fake_api_key)      # uses ~13 tokens: bucket goes into debt
    assert first.status_code == 200
    second = _post_chat(fake_openai, fake_api_key)
    assert second.status_code == 429
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "tokens per min" in second.json()["error"]["message"]
    assert fake_openai.key_stats(fake_api_key)["tokens"] == first.json()["usage"]["total_tokens"]


def test_fault_rules_are_consumed_in_order(fake_openai: FakeHandle, fake_api_key: str) -> None:
    other = "sk-test-untouched-key-0001"
    fake_openai.controls(faults=[
        {"kind": "status", "status": 500, "count": 1},
        {"kind": "status", "status": 503, "count": 2, "key": fake_api_key},
        {"kind": "status", "status": 404, "count": 1, "path": "/embeddings"},
        {"kind": "status", "status": 429, "count": 1, "retry_after": 0.25,
         "body": {"error": {"message": "custom", "type": "requests", "code": "rate_limit_exceeded"}}},
    ])
    assert _post_chat(fake_openai, other).status_code == 500
    assert _post_chat(fake_openai, other).status_code == 429  # the 503s belong to another key
    assert [_post_chat(fake_openai, fake_api_key).status_code for _ in range(3)] == [503, 503, 200]
    assert fake_openai.get_controls()["faults"][0]["path"] == "/embeddings"
    stats = fake_openai.stats()
    assert stats["by_status"] == {"200": 1, "429": 1, "500": 1, "503": 2}
    assert stats["faults_injected"] == {"status": 4}


def test_fault_custom_body_and_retry_after(fake_openai: FakeHandle, fake_api_key: str) -> None:
    fake_openai.controls(faults=[{"kind": "status", "status": 429, "count": 1, "retry_after": 0.25,
                                  "headers": {"x-should-retry": "false"},
                                  "body": {"error": {"message": "custom", "type": "tokens", "param": None,
                                                     "code": "rate_limit_exceeded"}}}])
    resp = _post_chat(fake_openai, fake_api_key)
    assert resp.status_code == 429
    assert resp.json()["error"]["message"] == "custom"
    assert resp.headers["retry-after"] == "0.25" and resp.headers["retry-after-ms"] == "250"
    assert resp.headers["x-should-retry"] == "false"


def test_fault_probability_is_seeded(fake_openai: FakeHandle, fake_api_key: str) -> None:
    def run() -> list[int]:
        fake_openai.reset(seed=1234, faults=[{"kind": "status", "status": 502, "probability": 0.5}])
        return [_post_chat(fake_openai, fake_api_key).status_code for _ in range(16)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 502}


def test_drop_mid_stream_truncates(fake_openai: FakeHandle, fake_api_key: str) -> None:
    fake_openai.controls(faults=[{"kind": "drop_mid_stream", "count": 1, "after_chunks": 3}])
    received = b""
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", fake_openai.base_url + "/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {fake_api_key}"},
                          json={"model": "gpt-4o-mini", "messages": user("drop me"), "stream": True}) as resp:
            assert resp.status_code == 200
            for part in resp.iter_bytes():
                received += part
    assert received.count(b"data: ") == 3 and b"[DONE]" not in received
    # the SDK sees a broken connection, not a silently short answer
    fake_openai.controls(faults=[{"kind": "drop_mid_stream", "count": 1}])
    with pytest.raises(openai.APIConnectionError):
        for _ in oai(fake_openai, fake_api_key).chat.completions.create(
                model="gpt-4o-mini", messages=user("drop me"), stream=True):
            pass
    # a non-streamed body is cut in half
    fake_openai.controls(faults=[{"kind": "drop_mid_stream", "count": 1}])
    with pytest.raises(httpx.HTTPError):
        _post_chat(fake_openai, fake_api_key)


def test_stall_hang_and_malformed(fake_openai: FakeHandle, fake_api_key: str) -> None:
    fake_openai.controls(faults=[{"kind": "stall_mid_stream", "count": 1, "after_chunks": 2}])
    received = b""
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", fake_openai.base_url + "/chat/completions", timeout=1.0,
                          headers={"Authorization": f"Bearer {fake_api_key}"},
                          json={"model": "gpt-4o-mini", "messages": user("stall"), "stream": True}) as resp:
            for part in resp.iter_bytes():
                received += part
    assert received.count(b"data: ") == 2
    fake_openai.controls(faults=[{"kind": "hang", "count": 1}])
    with pytest.raises(httpx.ReadTimeout):
        _post_chat(fake_openai, fake_api_key, timeout=0.5)
    fake_openai.controls(faults=[{"kind": "malformed", "count": 1}])
    bad = _post_chat(fake_openai, fake_api_key)
    assert bad.status_code == 200
    with pytest.raises(ValueError):
        json.loads(bad.content)
    assert _post_chat(fake_openai, fake_api_key).json()["object"] == "chat.completion"
    deadline = time.monotonic() + 10
    while fake_openai.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the hung handlers end once the server notices the clients left
    stats = fake_openai.stats()
    assert stats["in_flight"] == 0 and stats["unanswered"] == 1
    assert stats["faults_injected"] == {"stall_mid_stream": 1, "hang": 1, "malformed": 1}


def test_openai_error_mid_stream(fake_openai: FakeHandle, fake_api_key: str) -> None:
    fake_openai.controls(faults=[{"kind": "error_mid_stream", "count": 1, "status": 503}])
    with pytest.raises(openai.APIError) as info:
        for _ in oai(fake_openai, fake_api_key).chat.completions.create(
                model="gpt-4o-mini", messages=user("x"), stream=True):
            pass
    assert "overloaded" in info.value.message


def test_stats_never_contain_raw_keys(fake_openai: FakeHandle, fake_claude: FakeHandle) -> None:
    secret = "sk-proj-SECRET-do-not-leak-1234"
    fake_openai.controls(valid_keys=[secret], limits={secret: {"rps": 5}},
                         faults=[{"kind": "status", "status": 500, "count": 1, "key": secret}])
    _post_chat(fake_openai, secret)
    _post_chat(fake_openai, secret)
    _post_chat(fake_openai, "sk-proj-wrong-key-abcdef")
    for payload in (fake_openai.stats(), fake_openai.get_controls()):
        assert "SECRET" not in json.dumps(payload)
    stats = fake_openai.stats()
    assert stats["by_key"][fingerprint(secret)] == {"requests": 2, "ok": 1, "429": 0, "errors": 1,
                                                    "tokens": stats["by_key"][fingerprint(secret)]["tokens"]}
    assert fingerprint(secret) == "sk-...1234"
    assert stats["by_key"][fingerprint("sk-proj-wrong-key-abcdef")]["errors"] == 1
    short = fakebase.fingerprint("abc123")
    assert "abc123" not in short and short.startswith("***")
    httpx.post(fake_claude.root_url + "/v1/messages", json={},
               headers={"x-api-key": secret, "anthropic-version": "2023-06-01"})
    assert "SECRET" not in json.dumps(fake_claude.stats())


def test_admin_api_validation_and_reset(fake_openai: FakeHandle) -> None:
    with pytest.raises(FakeAdminError) as info:
        fake_openai.controls(latency_s="slow")
    assert info.value.status == 400
    with pytest.raises(FakeAdminError):
        fake_openai.controls(faults=[{"kind": "explode"}])
    with pytest.raises(FakeAdminError):
        fake_openai.controls(no_such_control=1)
    assert fake_openai.get_controls()["latency_s"] == 0.0  # a bad patch changes nothing
    fake_openai.controls(valid_keys=["sk-kept-across-reset-01"], chunk_delay_s=0.5,
                         faults=[{"kind": "hang"}])
    after = fake_openai.reset()
    assert after["valid_keys"] == [fingerprint("sk-kept-across-reset-01")]
    assert after["chunk_delay_s"] == 0.0 and after["faults"] == []
    assert fake_openai.reset(valid_keys=[], latency_s=0.01)["latency_s"] == 0.01
    assert fake_openai.health()["status"] == "ok"
    assert fake_openai.stats()["requests"] == 0


def test_concurrency_is_tracked(fake_openai: FakeHandle, fake_api_key: str) -> None:
    fake_openai.controls(latency_s=1.0)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: _post_chat(fake_openai, fake_api_key).status_code, range(4)))
    assert statuses == [200] * 4
    stats = fake_openai.stats()
    assert stats["max_concurrent"] >= 2 and stats["in_flight"] == 0


def test_content_helpers() -> None:
    assert fakebase.go_duration(0) == "0s"
    assert fakebase.go_duration(0.012) == "12ms"
    assert fakebase.go_duration(1) == "1s"
    assert fakebase.go_duration(7.66) == "7.66s"
    assert fakebase.go_duration(360) == "6m0s"
    assert fakebase.go_duration(179.56) == "2m59.56s"
    assert fakebase.go_duration(3600) == "1h0m0s"
    assert fakebase.split_chunks("abcdefg", 3) == ["abc", "de", "fg"]
    assert fakebase.split_chunks("ab", 8) == ["a", "b"]
    a = fakebase.embedding_vector("What is the capital of France?", 256)
    b = fakebase.embedding_vector("what is the capital of france", 256)
    c = fakebase.embedding_vector("Bananas are yellow", 256)
    assert float(a @ b) > 0.8 > 0.3 > abs(float(a @ c))
    calls = fakebase.choose_tool_calls(
        [fakebase.ToolSpec("get_weather", WEATHER_TOOL["function"]["parameters"]),
         fakebase.ToolSpec("get_time", {"type": "object", "properties": {"tz": {"type": "string"}}})],
        "get time and get weather in Lima", mode="auto")
    assert calls == [("get_weather", {"city": "Lima"}), ("get_time", {"tz": "Lima"})]


# =========================================================================== runner and CLI


def test_runner_handle_lifecycle() -> None:
    with pytest.raises(ValueError):
        start_fake("no-such-protocol")
    handle = start_fake("claude", controls={"stream_chunks": 3})
    try:
        assert handle.base_url == handle.root_url and handle.alive
        assert handle.get_controls()["stream_chunks"] == 3
        copy = pickle.loads(pickle.dumps(handle))
        assert copy.process is None and copy.stats()["requests"] == 0
        copy.stop()  # a copy does not own the process
        assert handle.alive
    finally:
        handle.stop()
    handle.stop()  # idempotent
    assert not handle.alive
    assert set(PROTOCOLS) >= {"openai", "groq", "claude"}


def test_cli_all_prints_urls_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ipfs_accelerate_py.testing.fakes", "all", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in PROTOCOLS]
        assert [line["protocol"] for line in lines] == list(PROTOCOLS)
        by_name = {line["protocol"]: line for line in lines}
        assert by_name["openai"]["base_url"].endswith("/v1")
        assert by_name["groq"]["base_url"].endswith("/openai/v1")
        assert by_name["claude"]["base_url"] == by_name["claude"]["root_url"]
        for line in lines:
            with urllib.request.urlopen(line["root_url"] + "/_fake/health", timeout=5) as resp:
                assert json.load(resp)["protocol"] == line["protocol"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
