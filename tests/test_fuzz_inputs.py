"""Bad input into ``Gateway.chat`` / ``Gateway.embed`` (issue 8, item 4).

Hypothesis throws wrong types, huge strings, unicode, deep nesting and missing
fields at the public API.  The contract: the call either succeeds or raises a
typed ``GatewayError``; never an untyped exception, never a 5xx-class error
that our own code caused (the fake upstream is healthy throughout), never an
open circuit (one caller's bad input must not take a key away from everyone
else), and the actors never crash: the router still answers ``ping`` and
``health`` and no actor was restarted.

``test_fuzz_chat`` / ``test_fuzz_embed`` / ``test_fuzz_routing_keywords``
cover the main input space; the tests at the end pin one former defect each
(non-JSON values, lone surrogates, deep nesting, bad timeouts and ids,
non-finite numbers) and ``test_fuzz_chat_wide`` throws all of them at once.  ``FUZZ_RANDOM=1
FUZZ_EXAMPLES=2000`` explores beyond CI's fixed 60 examples per test.
"""
from __future__ import annotations

import os
import uuid

import pytest
import ray
from collections import Counter

from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import ipfs_accelerate_py as ia
from ipfs_accelerate_py.testing.fakes.runner import start_fake

pytestmark = pytest.mark.ray

MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
ROLES = ["system", "developer", "user", "assistant", "tool"]
# fixed examples on CI; FUZZ_RANDOM=1 FUZZ_EXAMPLES=2000 explores further on a developer's machine
SETTINGS = dict(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _config(fake) -> dict:
    return {"namespace": f"test-fuzz-{uuid.uuid4().hex[:8]}",
            "retry": {"max_retries": 1, "initial_retry_delay": 0.01, "max_retry_delay": 0.02},
            # the default circuit (5 consecutive failures): bad input must never count as one
            "endpoints": [{"id": "main", "provider": "openai", "base_url": fake.base_url,
                           "api_key": f"sk-fuzz{uuid.uuid4().hex}", "models": [MODEL, EMBED_MODEL]}]}


@pytest.fixture(scope="module")
def fuzz_fake():
    fake = start_fake("openai")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def fuzz_env(ray_session, fuzz_fake):
    """One gateway for the property tests: each example checks the key stays CLOSED."""
    gw = ia.Gateway.start(_config(fuzz_fake), enable_metrics=False)
    pids = _pids(gw)
    yield gw, fuzz_fake, pids
    gw.shutdown()


@pytest.fixture
def fresh(make_gateway, fuzz_fake):
    """A gateway of its own for each defect test (a defect may leave the key's circuit open)."""
    return make_gateway(_config(fuzz_fake)), fuzz_fake


def _pids(gw) -> dict[str, int]:
    handles = {"router": gw.router,
               "main": ray.get_actor(f"{gw.name}:endpoint:main", namespace=gw.namespace)}
    return {name: ray.get(h.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
            for name, h in handles.items()}


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

safe_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
#: what str.isprintable() accepts: the request-id rule of the Serve app (see the request-id defect below)
printable_text = st.text(st.one_of(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp",
                                                                       "Zs")), st.just(" ")), max_size=40)
unicode_text = st.one_of(
    safe_text,
    st.sampled_from(["", " ", "\x00", "\u202e\u0301", "👩‍👩‍👧‍👦" * 20, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\ufeff", "\r\n\t",
                     "日本語のテキスト", "ﷺ" * 50, "a\u0000b\u0007c"]),
)
huge_text = st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "字", "😀 "]),
                      st.sampled_from([10_000, 200_000]))
finite_numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(st.none(), st.booleans(), finite_numbers, unicode_text)


def nested(depth_max: int):
    """JSON-shaped values nested up to ``depth_max`` levels."""
    def build(depth: int, leaf, container: str):
        value = leaf
        for _ in range(depth):
            value = [value] if container == "list" else {"type": "text", "text": "x", "k": value}
        return value
    return st.builds(build, st.integers(1, depth_max), scalars, st.sampled_from(["list", "dict"]))


json_values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(safe_text, kids, max_size=4)), max_leaves=12)
#: what JSON cannot carry (once the defects pinned at the end): bytes, sets, lone surrogates,
#: NaN/Infinity, nesting deeper than pickle or the Serve app allow
beyond_json = st.one_of(st.binary(max_size=8), st.sets(st.integers(), max_size=2),
                        st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
                        st.sampled_from([float("nan"), float("inf"), -float("inf")]), nested(2000))
any_value = st.one_of(json_values, huge_text, nested(100), beyond_json)

def mostly(valid, junk=None):
    """Usually a valid value, sometimes anything: most requests get past validation and reach the
    upstream, and each carries at most a few bad fields, so every layer sees bad input."""
    junk = junk if junk is not None else any_value
    # (st.one_of would not do: Hypothesis likes the last branch as much as the first)
    return st.integers(0, 15).flatmap(lambda roll: junk if roll in (7, 8) else valid)


def with_some(options: dict, max_size: int = 3):
    """A dict with up to ``max_size`` of ``options``' keys, each drawn from its own strategy."""
    return st.lists(st.sampled_from(sorted(options)), max_size=max_size, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: options[n] for n in names}))


text_content = st.one_of(safe_text.filter(str.strip), unicode_text, huge_text)
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text_content})
good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "system", "developer", "assistant"]),
     "content": st.one_of(text_content, text_content, st.lists(text_part, min_size=1, max_size=3))},
    optional={"name": mostly(st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True))})
message = st.one_of(
    good_message, good_message, good_message,
    st.fixed_dictionaries({"role": st.sampled_from(ROLES)},   # wrong types in known fields
                          optional={"content": any_value, "name": any_value, "tool_calls": any_value,
                                    "tool_call_id": any_value}),
    st.dictionaries(safe_text, any_value, max_size=3),        # missing fields, unknown fields
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(   # odd content parts
        st.one_of(text_part, st.dictionaries(safe_text, any_value, max_size=3), any_value), min_size=1,
        max_size=3)}),
    any_value,                                                # not a dict at all
)
messages = st.one_of(
    st.lists(good_message, min_size=1, max_size=3), st.lists(good_message, min_size=1, max_size=3),
    st.lists(message, max_size=4), st.lists(message, max_size=4),
    text_content, unicode_text, any_value,
)
models = mostly(st.sampled_from([MODEL, MODEL, "openai/" + MODEL, "main/" + MODEL]),
                st.one_of(unicode_text, huge_text, any_value))
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}}}}
chat_params = with_some({
    "temperature": mostly(st.floats(0, 2)), "top_p": mostly(st.floats(0, 1)),
    "top_k": mostly(st.integers(0, 50)), "max_tokens": mostly(st.integers(1, 64)),
    "max_completion_tokens": mostly(st.integers(1, 64)),
    "stop": mostly(st.one_of(safe_text, st.lists(safe_text, max_size=4))),
    "seed": mostly(st.integers(-2 ** 31, 2 ** 31)), "presence_penalty": mostly(st.floats(-2, 2)),
    "frequency_penalty": mostly(st.floats(-2, 2)), "n": st.one_of(st.integers(-3, 3), json_values),
    "tools": mostly(st.just([TOOL])), "tool_choice": mostly(st.sampled_from(["auto", "none", "required"])),
    "response_format": mostly(st.sampled_from([{"type": "text"}, {"type": "json_object"}])),
    "user": mostly(safe_text), "stream": st.booleans(),
    "stream_options": mostly(st.just({"include_usage": True})),
    "logit_bias": mostly(st.dictionaries(st.from_regex(r"[0-9]{1,5}", fullmatch=True),
                                         st.integers(-100, 100), max_size=2)),
    "metadata": mostly(st.dictionaries(safe_text, safe_text, max_size=3)),
    "extra": mostly(st.dictionaries(safe_text, json_values, max_size=2)),
    "priority": mostly(st.sampled_from(["HIGH", "NORMAL", "LOW", 0, 2])),
    "cache": st.booleans(), "x_custom": any_value,
})
embed_inputs = st.one_of(
    text_content, text_content, st.lists(text_content, min_size=1, max_size=5),
    st.lists(text_content, min_size=1, max_size=5), st.lists(unicode_text, max_size=5),
    st.lists(safe_text.filter(str.strip), min_size=2100, max_size=2100),  # above the provider's batch limit
    any_value, st.lists(any_value, max_size=3))
embed_params = with_some({
    "dimensions": mostly(st.integers(1, 1536)), "encoding_format": mostly(st.sampled_from(["float", "base64"])),
    "user": mostly(safe_text), "priority": mostly(st.sampled_from(["HIGH", "LOW"])),
    "x_custom": any_value, "extra": mostly(st.dictionaries(safe_text, json_values, max_size=2)),
})


# ---------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------

def _check(call, gw, kwargs, seen: Counter | None = None) -> None:
    try:
        result = call()
    except ia.GatewayError as exc:
        event(type(exc).__name__)
        if seen is not None:
            seen[type(exc).__name__] += 1
            if os.environ.get("FUZZ_DEBUG"):
                print("   ", type(exc).__name__, str(exc)[:150].replace("\n", " "))
        # our own code must not turn bad input into a provider failure, an open key or a hang
        assert not isinstance(exc, (ia.ProviderError, ia.CircuitOpenError, ia.ConnectionError)), repr(exc)
        assert not isinstance(exc, ia.TimeoutError) or "timeout_s" in kwargs, repr(exc)
        assert (exc.status or 400) < 500 or isinstance(exc, ia.TimeoutError), repr(exc)
        assert str(exc) and "Traceback" not in str(exc)
    except BaseException as exc:  # noqa: BLE001 - exactly what the contract forbids
        pytest.fail(f"untyped {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}")
    else:
        event("success")
        if seen is not None:
            seen["success"] += 1
        assert isinstance(result, (ia.ChatResponse, ia.EmbeddingResponse))
    # the key was not taken out of service by this input
    assert gw.circuit_state("main") == "CLOSED"


def _reached_upstream(seen: Counter) -> None:
    """The generated inputs are not all stopped by the first check: a fair share is sent upstream."""
    assert seen["success"] + seen["InvalidRequestError"] + seen["ContextLengthError"] > 0
    assert seen["success"] >= sum(seen.values()) // 10, dict(seen)


def _still_healthy(gw, pids) -> None:
    assert ray.get(gw.router.ping.remote(), timeout=30) == "pong"
    health = gw.health()
    assert health["status"] == "ok" and health["endpoints"] == {"main": "CLOSED"}
    assert gw.chat(MODEL, "still there?").text
    assert gw.embed(EMBED_MODEL, "still there?").embeddings
    assert _pids(gw) == pids, "an actor crashed and was restarted"
    info = gw.queue_info()
    assert info["size"] == 0 and info["active_requests"] == 0


def test_fuzz_chat(fuzz_env):
    gw, _, pids = fuzz_env
    seen: Counter = Counter()

    @settings(**SETTINGS)
    @given(model=models, msgs=messages, params=chat_params)
    def run(model, msgs, params):
        _check(lambda: gw.chat(model, msgs, **params), gw, params, seen)

    run()
    print("chat outcomes:", dict(seen))
    _reached_upstream(seen)
    _still_healthy(gw, pids)


def test_fuzz_embed(fuzz_env):
    gw, _, pids = fuzz_env
    seen: Counter = Counter()

    @settings(**SETTINGS)
    @given(model=mostly(st.sampled_from([EMBED_MODEL, "openai/" + EMBED_MODEL]), models), inputs=embed_inputs,
           params=embed_params)
    def run(model, inputs, params):
        _check(lambda: gw.embed(model, inputs, **params), gw, params, seen)

    run()
    print("embed outcomes:", dict(seen))
    _reached_upstream(seen)
    _still_healthy(gw, pids)


def test_fuzz_routing_keywords(fuzz_env):
    """priority / request_id / endpoint_id / timeout_s of the right type but any value."""
    gw, _, pids = fuzz_env
    seen: Counter = Counter()

    @settings(**SETTINGS)
    @given(priority=mostly(st.sampled_from([None, "HIGH", "low", " Normal ", 0, 1, 2]),
                           st.one_of(st.sampled_from([3, -1, "URGENT", ""]), unicode_text)),
           request_id=mostly(st.one_of(st.none(), printable_text.filter(bool),
                                       st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=250,
                                               max_size=256)),
                             st.one_of(st.just(""), st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                            min_size=257, max_size=300), unicode_text, any_value)),
           endpoint_id=mostly(st.sampled_from([None, "main"]), st.one_of(unicode_text, any_value)),
           timeout_s=mostly(st.one_of(st.none(), st.floats(min_value=0.5, max_value=1e9)),
                            st.one_of(st.sampled_from([0, -1, float("nan"), float("inf"), "abc", True]), any_value)))
    def run(priority, request_id, endpoint_id, timeout_s):
        kwargs = {k: v for k, v in {"priority": priority, "request_id": request_id, "endpoint_id": endpoint_id,
                                    "timeout_s": timeout_s}.items() if v is not None}
        _check(lambda: gw.chat(MODEL, "hi", **kwargs), gw, kwargs, seen)
        _check(lambda: gw.embed(EMBED_MODEL, "hi", **kwargs), gw, kwargs, seen)

    run()
    print("routing outcomes:", dict(seen))
    _reached_upstream(seen)
    _still_healthy(gw, pids)


# ---------------------------------------------------------------------------
# Former defects: each input class that once reached a provider as a 5xx
# ---------------------------------------------------------------------------

def _outcome(call):
    try:
        return call()
    except BaseException as exc:  # noqa: BLE001
        return exc


def test_unencodable_param_is_a_400_and_the_circuit_stays_closed(fresh):
    gw, _ = fresh
    outcomes = [_outcome(lambda v=v: gw.chat(MODEL, "hi", metadata=v))
                for v in (b"\xff", {1, 2}, object(), b"x", {3}, object())]
    assert all(isinstance(o, ia.InvalidRequestError) for o in outcomes), outcomes
    assert gw.circuit_state("main") == "CLOSED"


def test_lone_surrogate_is_a_400_not_a_provider_error(fresh):
    gw, _ = fresh
    chat = _outcome(lambda: gw.chat(MODEL, [{"role": "user", "content": "a\ud800b"}]))
    embed = _outcome(lambda: gw.embed(EMBED_MODEL, ["ok", "\udfff"]))
    assert isinstance(chat, ia.InvalidRequestError), repr(chat)
    assert isinstance(embed, ia.InvalidRequestError), repr(embed)


def test_deeply_nested_input_is_a_400_not_a_pickling_error(fresh):
    gw, _ = fresh
    part: object = {"type": "text", "text": "x"}
    for _ in range(2000):
        part = {"type": "text", "text": "x", "k": part}
    chat = _outcome(lambda: gw.chat(MODEL, [{"role": "user", "content": [part]}]))
    assert isinstance(chat, ia.InvalidRequestError), repr(chat)


def test_routing_keywords_of_the_wrong_type_are_400s(fresh):
    gw, _ = fresh
    outcomes = {
        "timeout_str": _outcome(lambda: gw.chat(MODEL, "hi", timeout_s="abc")),
        "timeout_negative": _outcome(lambda: gw.chat(MODEL, "hi", timeout_s=-1)),
        "timeout_nan": _outcome(lambda: gw.chat(MODEL, "hi", timeout_s=float("nan"))),
        "endpoint_list": _outcome(lambda: gw.chat(MODEL, "hi", endpoint_id=["main"])),
        "embed_endpoint_dict": _outcome(lambda: gw.embed(EMBED_MODEL, "hi", endpoint_id={"a": 1})),
    }
    wrong = {k: repr(v) for k, v in outcomes.items() if not isinstance(v, ia.InvalidRequestError)}
    assert not wrong, wrong


def test_request_id_with_control_characters_is_a_400(fresh):
    gw, _ = fresh
    outcomes = [_outcome(lambda rid=rid: gw.chat(MODEL, "hi", request_id=rid))
                for rid in ("abc\x14def", "line\nbreak", "tab\there", "nul\x00")]
    assert all(isinstance(o, ia.InvalidRequestError) for o in outcomes), outcomes
    assert gw.circuit_state("main") == "CLOSED"


def test_non_finite_numbers_never_reach_the_wire(fresh):
    gw, fake = fresh
    before = fake.stats()["requests"]
    outcomes = [_outcome(lambda: gw.chat(MODEL, "hi", temperature=float("nan"))),
                _outcome(lambda: gw.chat(MODEL, "hi", top_p=float("nan"))),
                _outcome(lambda: gw.chat(MODEL, "hi", metadata={"x": float("inf")}))]
    assert all(isinstance(o, ia.InvalidRequestError) for o in outcomes), outcomes
    assert fake.stats()["requests"] == before


wide_values = st.one_of(any_value, beyond_json, st.floats())


def test_fuzz_chat_wide(fresh):
    gw, _ = fresh

    @settings(**{**SETTINGS, "phases": (Phase.explicit, Phase.generate)})
    @given(model=st.just(MODEL), msgs=st.one_of(messages, st.lists(st.fixed_dictionaries(
               {"role": st.just("user"), "content": wide_values}), min_size=1, max_size=2)),
           params=st.dictionaries(st.sampled_from(["temperature", "metadata", "timeout_s", "endpoint_id",
                                                   "tool_choice"]), wide_values, max_size=2))
    def run(model, msgs, params):
        _check(lambda: gw.chat(model, msgs, **params), gw, params)

    run()
