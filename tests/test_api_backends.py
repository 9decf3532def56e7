"""The seed-compatible facade (ipfs_accelerate_py.api_backends) against the fakes.

What is checked here is the facade's own contract, beyond the quickstart's
examples (tests/test_seed_quickstart.py): how instances map to gateways and
when those stop; where endpoints come from (metadata, resources,
environment, defaults); that every settable attribute changes what the
runtime does (priority order, queue bound, concurrency, retries, circuit);
keys by name; handlers in sync and async code; and each class's own methods.
Every assertion about the wire is read back from the fake servers.
"""
from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import ray

import ipfs_accelerate_py as ia
from ipfs_accelerate_py.actors.naming import ENDPOINT_MAX_CONCURRENCY, router_name
from ipfs_accelerate_py.api_backends import (EndpointHandler, PendingResult, claude, close_all, gemini,
                                             hf_tei, hf_tgi, llvm, ollama, opea, openai_api, ovms, s3_kit)
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

MSG = [{"role": "user", "content": "hello there"}]
_PROVIDER_VARS = re.compile(r"^(OPENAI|ANTHROPIC|CLAUDE|GROQ|GOOGLE|GEMINI|HF|TGI|TEI|OLLAMA|LLVM|OVMS|OPEA|S3|"
                            r"AWS|IPFS_ACCELERATE)_")


def key(tag: str) -> str:
    """A fresh key whose fake-stats fingerprint (first 3 + last 4 characters) is unique."""
    return f"{tag}-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeHandle]]:
    handles: dict[str, FakeHandle] = {}
    try:
        for protocol in ("openai", "claude", "gemini", "ollama", "hf_tgi", "hf_tei", "llvm", "ovms", "opea"):
            handles[protocol] = start_fake(protocol)
        yield handles
    finally:
        for handle in handles.values():
            handle.stop()


@pytest.fixture
def f(fakes: dict[str, FakeHandle]) -> dict[str, FakeHandle]:
    for handle in fakes.values():
        handle.reset(valid_keys=[])
    return fakes


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if _PROVIDER_VARS.match(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    close_all()


def openai_client(f: dict[str, FakeHandle], api_key: str | None = None, **metadata: Any) -> openai_api:
    return openai_api(resources={}, metadata={"openai_api_key": api_key or key("sk-test"),
                                              "openai_base_url": f["openai"].base_url, **metadata})


def router_alive(client: Any) -> bool:
    gw = client._shared._gateway
    assert gw is not None
    try:
        ray.get_actor(router_name(gw.name), namespace=gw.namespace)
        return True
    except ValueError:
        return False


def hold_one_slot(client: Any, fake: FakeHandle, count: int = 1, seconds: float = 4.0) -> str:
    """Make the next ``count`` upstream calls hang until the endpoint's timeout
    (``seconds``), so requests behind them really wait, however slow this
    machine is; returns the endpoint id.  Hung calls fail with a Timeout and
    are not retried."""
    (eid,) = client.get_queue_info()["endpoints"]
    client.gateway.configure_endpoint(eid, timeout_s=seconds)
    client.max_retries = 0
    fake.controls(faults=[{"kind": "hang", "count": count}])
    return eid


def call_quietly(client: Any, *args: Any, **kwargs: Any) -> None:
    """A request on a thread whose failure (a hung call's timeout) is expected."""
    try:
        client.chat(*args, **kwargs)
    except ia.TimeoutError:
        pass


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# Instances and gateways
# ---------------------------------------------------------------------------

def test_instances_with_the_same_configuration_share_one_gateway(f):
    token = key("sk-test")
    a, b = openai_client(f, token), openai_client(f, token)
    other = openai_client(f)
    assert a._shared is b._shared and a._shared is not other._shared
    assert not a._shared.started  # nothing starts before a call needs the runtime
    a.chat("gpt-4o-mini", MSG)
    b.chat("gpt-4o-mini", MSG)
    assert b.get_stats()["total_requests"] == 2  # one gateway, one set of counters
    b.max_retries = 1
    assert a.max_retries == 1  # settings belong to the gateway, so every view agrees
    gw = a.gateway
    assert gw.namespace.startswith(f"ipfs_accelerate_seed_{os.getpid()}_") and gw.name.startswith("openai-")
    other.chat("gpt-4o-mini", MSG)
    assert other.gateway.name != gw.name and other.gateway.namespace == gw.namespace

    a.close()
    assert router_alive(b)  # b still uses it
    b.close()
    assert b._shared._gateway is None
    with pytest.raises(ValueError):
        ray.get_actor(router_name(gw.name), namespace=gw.namespace)


def test_an_instance_that_is_garbage_collected_releases_its_gateway(f):
    client = openai_client(f)
    client.chat("gpt-4o-mini", MSG)
    gw = client.gateway
    del client
    gc.collect()
    with pytest.raises(ValueError):
        ray.get_actor(router_name(gw.name), namespace=gw.namespace)


def test_context_manager_and_close_all(f):
    with openai_client(f) as client:
        client.chat("gpt-4o-mini", MSG)
        client.add_api_key("named", key("sk-test"))
        shared = client._shared
    assert shared._gateway is None and shared.key_names == {}  # the runtime state went with the gateway
    with pytest.raises(ia.ConfigError, match="was closed"):
        client.chat("gpt-4o-mini", MSG)
    with pytest.raises(ia.ConfigError, match="was closed"):
        client.max_retries = 1
    again = openai_client(f)
    again.chat("gpt-4o-mini", MSG)
    again.max_retries = 1
    close_all()
    assert again._shared._gateway is None
    assert again.max_retries == 3  # back to the configured value, like the gateway that will start
    assert again.chat("gpt-4o-mini", MSG)["text"] == "Echo: hello there"  # a view outlives close_all
    assert again.gateway.configure()["max_retries"] == 3
    close_all()  # the restarted gateway is registered again, so this stops it too
    assert again._shared._gateway is None


def test_catalog_only_use_never_imports_ray():
    code = ("from ipfs_accelerate_py.api_backends import groq\n"
            "import sys\n"
            "client = groq(resources={}, metadata={'groq_api_key': 'gsk_x'})\n"
            "assert client.list_models('vision') and client.is_compatible_model('llama3-8b-8192', 'chat')\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(
        Path(__file__).resolve().parents[1])})


# ---------------------------------------------------------------------------
# Where endpoints come from
# ---------------------------------------------------------------------------

def test_environment_discovery_is_per_class(f, monkeypatch):
    token = key("hf_token")
    monkeypatch.setenv("HF_API_TOKEN", token)
    monkeypatch.setenv("HF_TGI_URL", f["hf_tgi"].base_url)
    monkeypatch.setenv("HF_TEI_URL", f["hf_tei"].base_url)
    monkeypatch.setenv("OPENAI_API_KEY", key("sk-test"))
    tgi, tei = hf_tgi(), hf_tei()
    assert [(ep.provider, ep.base_url) for ep in tgi._shared.config.endpoints] == [("hf_tgi", f["hf_tgi"].base_url)]
    assert [(ep.provider, ep.base_url) for ep in tei._shared.config.endpoints] == [("hf_tei", f["hf_tei"].base_url)]
    assert tgi.generate_text(None, "from env")["generated_text"] == "Echo: from env"
    assert len(tei.generate_embedding(None, "from env")) == 384
    assert f["hf_tgi"].key_stats(token)["ok"] == 1 and f["hf_tei"].key_stats(token)["ok"] >= 1


def test_metadata_keys_resources_and_fallbacks(f, monkeypatch):
    # the generic "api_base" key means this class's own base-URL key
    client = openai_api(resources={}, metadata={"openai_api_key": key("sk-test"), "api_base": f["openai"].base_url})
    assert client.chat("gpt-4o-mini", MSG)["text"] == "Echo: hello there"
    # an endpoint id equal to the provider name is renamed, so "openai/<model>" routes by provider
    assert [ep.id for ep in client._shared.config.endpoints] == ["openai-1"]
    # metadata without this class's keys falls back to the environment
    env_key = key("sk-env")
    monkeypatch.setenv("OPENAI_API_KEY", env_key)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    assert openai_api(resources={}, metadata={"groq_api_key": "gsk_x"}).chat("gpt-4o-mini", MSG)["text"]
    assert f["openai"].key_stats(env_key)["ok"] == 1
    # self-hosted servers listed in resources, as the seed's resources dict did
    tgi = hf_tgi(resources={"tgi_endpoints": [["mistralai/Mistral-7B-Instruct-v0.2", f["hf_tgi"].base_url]]},
                 metadata={})
    assert tgi.chat(None, MSG)["text"] == "Echo: hello there"  # the resource's model is the default
    # self-hosted classes default to the provider's local URL; hosted ones have nothing to call
    assert [ep.base_url for ep in ollama()._shared.config.endpoints] == [None]
    monkeypatch.delenv("OPENAI_API_KEY")
    bare = openai_api()
    assert bare._shared.config.endpoints == []
    with pytest.raises(ia.UnknownModelError, match="no endpoints are configured"):
        bare.chat("gpt-4o-mini", MSG)


def test_missing_model_is_a_clear_error(f):
    client = ollama(resources={}, metadata={"ollama_api_url": f["ollama"].root_url})
    with pytest.raises(ia.InvalidRequestError, match="name a model"):
        client.chat(None, MSG)


# ---------------------------------------------------------------------------
# Settings change what the runtime does
# ---------------------------------------------------------------------------

def test_high_priority_requests_overtake_queued_low_ones(f):
    client = openai_client(f)
    client.max_concurrent_requests = 1
    hold_one_slot(client, f["openai"])
    finished: list[str] = []

    def send(tag: str, priority: str) -> None:
        call_quietly(client, "gpt-4o-mini", [{"role": "user", "content": tag}], priority=priority, request_id=tag)
        finished.append(tag)

    threads = [threading.Thread(target=send, args=("blocker", "NORMAL"))]
    threads[0].start()
    wait_for(lambda: client.get_queue_info()["active_requests"] == 1)
    for tag, priority in (("low0", "LOW"), ("low1", "LOW"), ("high0", "HIGH"), ("high1", "HIGH")):
        threads.append(threading.Thread(target=send, args=(tag, priority)))
        threads[-1].start()
    wait_for(lambda: client.get_queue_status()["high_priority"] == 2 and client.get_queue_status()["low_priority"] == 2)
    status = client.get_queue_status()
    assert status["size"] == 4 and status["active_requests"] == 1 and status["normal_priority"] == 0
    for thread in threads:
        thread.join(60)
    assert finished[0] == "blocker"
    assert set(finished[1:3]) == {"high0", "high1"} and set(finished[3:]) == {"low0", "low1"}


def test_queue_size_bounds_waiting_requests(f):
    client = openai_client(f)
    client.max_concurrent_requests = 1
    client.queue_size = 1
    hold_one_slot(client, f["openai"])
    threads = [threading.Thread(target=call_quietly, args=(client, "gpt-4o-mini", MSG)) for _ in range(2)]
    threads[0].start()
    wait_for(lambda: client.get_queue_info()["active_requests"] == 1)
    threads[1].start()
    wait_for(lambda: client.get_queue_info()["size"] == 1)
    with pytest.raises(ValueError, match="^Queue full") as info:
        client.chat("gpt-4o-mini", MSG)
    assert isinstance(info.value, ia.QueueFullError)
    for thread in threads:
        thread.join(60)
    assert client.get_queue_info()["capacity"] == 1 and client.queue_size == 1


def test_queue_enabled_false_stops_waiting_for_a_concurrency_slot(f):
    client = openai_client(f)
    client.max_concurrent_requests = 2
    (eid,) = client.get_queue_info()["endpoints"]
    client.queue_enabled = False
    assert client.get_queue_info()["endpoints"][eid]["max_concurrent"] == ENDPOINT_MAX_CONCURRENCY
    # concurrency set while the queue is off is remembered, and applied when it is back on
    client.max_concurrent_requests = 3
    added = client.create_endpoint(api_key=key("sk-test"))
    assert client.get_queue_info()["endpoints"][added]["max_concurrent"] == ENDPOINT_MAX_CONCURRENCY
    client.gateway.configure_endpoint(eid, timeout_s=4.0)
    client.max_retries = 0
    f["openai"].controls(faults=[{"kind": "hang", "count": 5}])
    threads = [threading.Thread(target=call_quietly, args=(client, "gpt-4o-mini", MSG), kwargs={"endpoint_id": eid})
               for _ in range(5)]
    for thread in threads:
        thread.start()
    wait_for(lambda: client.get_queue_info()["endpoints"][eid]["in_flight"] == 5)  # more than 3 at once
    for thread in threads:
        thread.join(60)
    client.queue_enabled = True
    info = client.get_queue_info()
    assert info["endpoints"][eid]["max_concurrent"] == 3 and info["endpoints"][added]["max_concurrent"] == 3
    assert info["queue_enabled"] is True and info["max_concurrent_requests"] == 3
    with pytest.raises(ValueError, match="queue_enabled must be True or False"):
        client.queue_enabled = "no"


def test_max_retries_and_backoff_settings_drive_retries(f):
    client = openai_client(f)
    client.max_retries = 0
    f["openai"].controls(faults=[{"kind": "status", "status": 500, "count": 2}])
    with pytest.raises(ia.ProviderError):
        client.chat("gpt-4o-mini", MSG)
    assert f["openai"].stats()["by_status"] == {"500": 1}
    f["openai"].reset()
    client.initial_retry_delay = 0.01
    client.max_retry_delay = 0.02
    client.backoff_factor = 1.5
    client.max_retries = 2
    f["openai"].controls(faults=[{"kind": "status", "status": 500, "count": 2}])
    assert client.chat("gpt-4o-mini", MSG)["text"] == "Echo: hello there"
    assert f["openai"].stats()["by_status"] == {"500": 2, "200": 1}
    settings = client.gateway.configure()
    assert (settings["max_retries"], settings["initial_retry_delay"], settings["max_retry_delay"],
            settings["backoff_factor"]) == (2, 0.01, 0.02, 1.5)
    with pytest.raises(ValueError):
        client.backoff_factor = 0.5  # validated by the runtime's retry policy


def test_circuit_settings_open_the_circuit_and_metrics_are_percentages(f):
    client = openai_client(f)
    client.max_retries = 0
    client.circuit_failure_threshold = 2
    client.circuit_reset_timeout = 60
    f["openai"].controls(faults=[{"kind": "status", "status": 500, "count": 100}])
    for _ in range(2):
        with pytest.raises(ia.ProviderError):
            client.chat("gpt-4o-mini", MSG)
    assert client.get_circuit_state() == "OPEN" and client.circuit_state == "OPEN"
    metrics = client.get_circuit_metrics()
    assert metrics["recent_failures"] == 2 and metrics["failure_rate"] == pytest.approx(100.0)
    (eid,) = metrics["endpoints"]
    assert client.get_circuit_metrics(eid)["failure_rate"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        client.chat("gpt-4o-mini", MSG)  # refused without calling the failing server
    assert f["openai"].stats()["requests"] == 2
    # another key keeps the instance usable: the aggregate state follows the healthy endpoint
    f["openai"].reset()
    client.add_api_key("spare", key("sk-test"))
    assert client.get_circuit_state() == "CLOSED"
    assert client.get_circuit_state(eid) == "OPEN"
    assert client.chat("gpt-4o-mini", MSG)["text"] == "Echo: hello there"


# ---------------------------------------------------------------------------
# Keys and endpoints
# ---------------------------------------------------------------------------

def test_api_keys_by_name_and_selection_strategy(f):
    client = openai_client(f)
    first, second, replacement = key("sk-k1"), key("sk-k2"), key("sk-k2b")
    client.add_api_key("first", first)
    client.add_api_key("second", second)
    client.key_selection_strategy = "round-robin"
    for _ in range(6):
        client.chat("gpt-4o-mini", MSG)
    usage = client.get_key_usage_stats()
    assert usage["first"]["requests"] >= 1 and usage["second"]["requests"] >= 1
    assert sum(u["requests"] for u in usage.values()) == 6 and len(usage) == 3
    client.add_api_key("second", replacement)  # a name used again replaces its key
    client.chat("gpt-4o-mini", MSG, api_key_name="second")
    assert f["openai"].key_stats(replacement)["ok"] == 1
    assert client.get_stats()["endpoints_count"] == 3
    with pytest.raises(ia.InvalidRequestError, match="no API key named 'third'; key names: first, second"):
        client.chat("gpt-4o-mini", MSG, api_key_name="third")
    with pytest.raises(ia.InvalidRequestError, match="not both"):
        client.chat("gpt-4o-mini", MSG, api_key_name="first", endpoint_id="openai-1")
    with pytest.raises(ValueError):
        client.key_selection_strategy = "lottery"
    assert client.key_selection_strategy == "round-robin"


def test_create_endpoint_set_api_key_and_stats(f):
    client = openai_client(f)
    custom = client.create_endpoint(endpoint_id="my-endpoint", api_key=key("sk-own"), max_concurrent_requests=7)
    assert custom == "my-endpoint"
    assert client.get_queue_info()["endpoints"]["my-endpoint"]["max_concurrent"] == 7
    client.chat("gpt-4o-mini", MSG, endpoint_id=custom)
    assert client.get_stats(custom)["total_requests"] == 1
    totals = client.get_stats()
    assert totals["endpoints_count"] == 2 and totals["total_requests"] == 1
    assert totals["total_tokens"] == client.get_usage_stats()["total_tokens"] > 0
    with pytest.raises(ValueError, match="already exists"):
        client.create_endpoint(endpoint_id="my-endpoint")
    new_key = key("sk-new")
    client.set_api_key(new_key)
    ids = set(client.get_queue_info()["endpoints"])
    assert "openai-1" not in ids and len(ids) == 1  # every configured endpoint was replaced
    client.chat("gpt-4o-mini", MSG)
    later = client.create_endpoint()  # endpoints made afterwards use the new key
    client.chat("gpt-4o-mini", MSG, endpoint_id=later)
    assert f["openai"].key_stats(new_key)["ok"] == 2


def test_create_endpoint_retry_overrides_apply_to_that_endpoint(f):
    client = openai_client(f)
    eid = client.create_endpoint(api_key=key("sk-test"), max_retries=0)
    f["openai"].controls(faults=[{"kind": "status", "status": 500, "count": 1}])
    with pytest.raises(ia.ProviderError):
        client.chat("gpt-4o-mini", MSG, endpoint_id=eid)


# ---------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------

def test_handlers_are_sync_outside_a_loop_and_awaitable_inside(f):
    client = openai_client(f)
    url, api_key, handler, queue, batch_size = client.init(model_name="gpt-4o-mini")
    assert isinstance(handler, EndpointHandler) and url == f["openai"].base_url and api_key is None
    response = handler("plain call")
    assert isinstance(response, ia.ChatResponse) and response["text"] == "Echo: plain call"

    async def inside_a_loop() -> tuple[Any, Any, list[str]]:
        pending = handler("not awaited")
        assert isinstance(pending, PendingResult)
        text = pending["text"]  # used like the response: waits for it (on another loop, no deadlock)
        assert pending.get("no such field", "fallback") == "fallback" and "text" in pending
        awaited = await handler([{"role": "user", "content": "awaited"}], parameters={"temperature": 0.1})
        many = await asyncio.gather(*(handler(f"n{i}") for i in range(5)))
        return text, awaited, [r["text"] for r in many]

    text, awaited, many = asyncio.run(inside_a_loop())
    assert text == "Echo: not awaited" and awaited["text"] == "Echo: awaited"
    assert many == [f"Echo: n{i}" for i in range(5)]
    assert queue.qsize() == 0 and not queue.full() and queue.empty() and batch_size == 1
    assert client.get_stats()["total_requests"] == 8


def test_streaming_completion_and_embedding_handlers(f):
    client = openai_client(f)
    stream = client.init(model_name="gpt-4o-mini", endpoint_type="streaming")[2]("stream me")
    chunks = list(stream)
    assert "".join(c["text"] for c in chunks) == "Echo: stream me" and chunks[-1]["done"]

    async def consume() -> str:
        return "".join([c["text"] async for c in stream])

    assert asyncio.run(consume()) == "Echo: stream me"
    completion = client.create_endpoint_handler("completion", "gpt-3.5-turbo-instruct")
    assert completion("Say this is a test")["text"]
    embedding = client.create_endpoint_handler("embedding", "text-embedding-3-small")
    assert len(embedding("vector please")["embedding"]) == 1536
    assert embedding.batch_size == 2048  # OpenAI's per-request input limit
    assert f["openai"].stats()["by_path"] == {"/v1/chat/completions": 2, "/v1/completions": 1, "/v1/embeddings": 1}
    with pytest.raises(ia.InvalidRequestError, match="endpoint_type must be one of"):
        client.init(endpoint_type="telepathy")


def test_completion_handler_falls_back_to_chat_where_there_is_no_completion_api(f):
    client = claude(resources={}, metadata={"anthropic_api_key": key("sk-ant"),
                                            "anthropic_base_url": f["claude"].base_url})
    handler = client.create_endpoint_handler("completion")
    assert handler("complete this")["text"]
    assert f["claude"].stats()["by_path"] == {"/v1/messages": 1}


def test_init_reuses_the_endpoint_for_the_same_url_and_key(f):
    client = openai_client(f)
    other_key = key("sk-init")
    for _ in range(3):
        _, _, handler, _, _ = client.init(api_key=other_key, model_name="gpt-4o-mini")
        handler("again")
    assert client.get_stats()["endpoints_count"] == 2
    assert f["openai"].key_stats(other_key)["ok"] == 3
    # the configured url and key are the configured endpoint itself
    configured = client._shared.template
    assert client.init(endpoint_url=f["openai"].base_url, api_key=configured.api_key.get())[2].endpoint_id == "openai-1"


def test_vision_handler_sends_the_image(f):
    from PIL import Image
    client = gemini(resources={}, metadata={"google_api_key": key("AIzaSyTEST"), "gemini_base_url": f["gemini"].base_url})
    handler = client.init(model_name="gemini-2.0-flash", endpoint_type="vision")[2]
    image = Image.new("RGB", (4, 4), (0, 128, 255))
    assert handler("What colour is this?", image_data=image)["text"]
    turns = client._messages("What colour is this?", image_data=[image, b"\x89PNG\r\n\x1a\n" + b"\0" * 16])
    parts = turns[-1]["content"]
    assert parts[0] == {"type": "text", "text": "What colour is this?"}
    assert [p["image_url"]["url"][:22] for p in parts[1:]] == ["data:image/png;base64,"] * 2
    with pytest.raises(ia.InvalidRequestError):
        client._messages("bad", image_data=12345)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def test_a_bad_key_is_an_authentication_error_that_never_shows_the_key(f):
    good, bad = key("sk-good"), key("sk-bad")
    f["openai"].controls(valid_keys=[good])
    client = openai_client(f, bad)
    with pytest.raises(ValueError) as info:
        client.chat("gpt-4o-mini", MSG)
    assert "Authentication error" in str(info.value) and isinstance(info.value, ia.AuthenticationError)
    assert bad not in str(info.value) and bad not in repr(client.get_stats())
    assert openai_client(f, good).chat("gpt-4o-mini", MSG)["text"] == "Echo: hello there"


# ---------------------------------------------------------------------------
# Each class's own methods
# ---------------------------------------------------------------------------

def test_hf_tgi_and_tei_specifics(f):
    tgi = hf_tgi(resources={}, metadata={"hf_tgi_url": f["hf_tgi"].base_url})
    generated = tgi.generate_text("any", "Write a haiku", parameters={"max_new_tokens": 20})
    assert generated["generated_text"] == "Echo: Write a haiku"
    assert generated["details"]["finish_reason"] and generated["details"]["usage"]["completion_tokens"] > 0
    assert "".join(c["text"] for c in tgi.stream_chat(None, MSG)) == "Echo: hello there"
    tei = hf_tei(resources={}, metadata={"tei_base_url": f["hf_tei"].base_url})
    vectors = tei.batch_embed(None, [f"text {i}" for i in range(40)])
    assert len(vectors) == 40 and tei.calculate_similarity(vectors[0], vectors[0]) == pytest.approx(1.0)
    assert f["hf_tei"].stats()["by_path"]["/embed"] == 2  # split at the server's batch limit
    assert tei.create_remote_text_embedding_endpoint_handler().batch_size == tei.provider_class().max_embed_batch


def test_ollama_and_llvm_specifics(f):
    client = ollama(resources={}, metadata={"ollama_api_url": f["ollama"].root_url + "/api",
                                            "ollama_model": "llama3.2"})
    assert "llama3.2:latest" in {m["id"] for m in client.list_models()}
    assert client.chat(None, MSG)["text"] == "Echo: hello there"  # ollama_model is the default
    backend = llvm(resources={}, metadata={"llvm_base_url": f["llvm"].base_url, "llvm_default_model": "llvm-model-1"})
    assert backend.test_endpoint() is True
    assert backend.chat(None, MSG, {"max_tokens": 20})["model"] == "llvm-model-1"
    info = backend.get_model_info("llvm-broken-model")
    assert info["status"] == "error" and info["model_id"] == "llvm-broken-model"
    with pytest.raises(ia.UnknownModelError):
        backend.run_inference("no-such-model", "hi")
    dead = llvm(resources={}, metadata={"llvm_base_url": "http://127.0.0.1:9"})
    dead.max_retries = 0
    assert dead.test_endpoint() is False


def test_ovms_and_opea_specifics(f):
    import numpy as np
    server = ovms(resources={}, metadata={"ovms_base_url": f["ovms"].root_url})
    assert server.chat("tiny-llm", MSG)["text"] == "Echo: hello there"
    out = server.infer("add-one", {"input": np.array([[1.0, 2.0]], dtype=np.float32)})
    assert out["output"].tolist() == [[2.0, 3.0]]
    assert server.get_model_info("add-one").data["platform"] == "OpenVINO"
    service = opea(resources={}, metadata={"opea_base_url": f["opea"].root_url})
    answer = service.chatqna("What is OPEA?")
    assert answer["text"].startswith("Echo: What is OPEA? Context:")
    streamed = "".join(c["text"] for c in service.stream_chatqna("What is OPEA?"))
    assert streamed == answer["text"]
    assert service.chat("Intel/neural-chat-7b-v3-3", MSG)["text"]


def test_s3_kit_with_the_seed_method_names(tmp_path):
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from ipfs_accelerate_py.testing.s3server import start_s3_server

    server = start_s3_server()
    try:
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1", aws_access_key_id="ref",
                     aws_secret_access_key="ref", config=Config(s3={"addressing_style": "path"})
                     ).create_bucket(Bucket="models")
        kit = s3_kit(resources={}, metadata={"s3cfg": {"accessKey": "AKIATESTSEED0001", "secretKey": key("secret"),
                                                       "endpoint": server.endpoint_url, "bucket": "models"}})
        source = tmp_path / "weights.bin"
        source.write_bytes(os.urandom(4096))
        uploaded = kit.upload_file(str(source), "models", "tiny/weights.bin")
        assert uploaded["size"] == 4096
        listing = kit.list_objects("models", prefix="tiny/")
        assert listing["KeyCount"] == 1 and listing["Contents"][0]["Key"] == "tiny/weights.bin"
        assert kit.head_object("models", "tiny/weights.bin")["ContentLength"] == 4096
        with urllib.request.urlopen(kit.create_presigned_url("models", "tiny/weights.bin", expiration=60)) as resp:
            assert resp.read() == source.read_bytes()
        target = tmp_path / "copy.bin"
        assert kit.download_file("models", "tiny/weights.bin", str(target))["verified"] is True
        assert target.read_bytes() == source.read_bytes()
        kit.delete_object("models", "tiny/weights.bin")
        assert kit.list_objects("models")["KeyCount"] == 0
        assert kit.get_stats()["total_requests"] >= 6  # S3 calls are routed and counted like model calls
    finally:
        close_all()
        server.stop()


def test_every_response_type_supports_dict_style_get():
    from ipfs_accelerate_py.types import (ChatResponse, EmbeddingResponse, ModelInfo, OperationResponse,
                                          StreamChunk)
    assert ChatResponse(text="x").get("usage")["total_tokens"] == 0
    assert ChatResponse(text="x").get("missing", "d") == "d"
    assert StreamChunk(text="a", done=True).get("done") is True
    assert EmbeddingResponse(embeddings=[[1.0]]).get("embedding") == [1.0]
    assert ModelInfo(id="m").get("id") == "m"
    assert OperationResponse(op="images", data={"urls": ["u"]}).get("urls") == ["u"]
