"""Retry policy, server retry hints and retryability rules (core/backoff.py)."""
from __future__ import annotations

import ast
import asyncio
import builtins
import calendar
import concurrent.futures
import dataclasses
import errno
import json
import math
import pathlib
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.core import backoff
from ipfs_accelerate_py.core.backoff import (
    MAX_HONOURED_RETRY_AFTER,
    RetryPolicy,
    clamp_retry_after,
    decide,
    is_retryable_exception,
    is_retryable_status,
    retry_after_from_headers,
    retry_delay_from_google,
)


class FixedRng:
    """An rng whose every draw is ``value``, to pin jitter to its extremes."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


# ---------------------------------------------------------------------------
# RetryPolicy
# ---------------------------------------------------------------------------

def test_defaults_match_the_official_sdks() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.initial_retry_delay, policy.backoff_factor,
            policy.max_retry_delay, policy.jitter) == (3, 0.5, 2.0, 8.0, 0.25)


@pytest.mark.parametrize("attempt, expected", [
    (0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (50, 8.0),
])
def test_delay_without_jitter_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    assert RetryPolicy(jitter=0).delay(attempt) == expected


def test_delay_honours_a_custom_factor() -> None:
    policy = RetryPolicy(initial_retry_delay=1.0, backoff_factor=3.0, max_retry_delay=100.0, jitter=0)
    assert [policy.delay(n) for n in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


def test_factor_one_gives_a_constant_delay() -> None:
    policy = RetryPolicy(initial_retry_delay=2.0, backoff_factor=1.0, jitter=0)
    assert {policy.delay(n) for n in range(10)} == {2.0}


@pytest.mark.parametrize("draw, expected", [
    (0.0, 4.0),          # no reduction
    (0.5, 4.0 * 0.875),  # half of the 25 %
    (0.999999, 4.0 * (1 - 0.25 * 0.999999)),
])
def test_jitter_only_shortens_the_delay(draw: float, expected: float) -> None:
    assert RetryPolicy().delay(3, rng=FixedRng(draw)) == pytest.approx(expected)


def test_jitter_applies_to_the_capped_delay() -> None:
    assert RetryPolicy().delay(10, rng=FixedRng(0.5)) == pytest.approx(8.0 * 0.875)


def test_seeded_rng_makes_delays_reproducible() -> None:
    policy = RetryPolicy()
    first = [policy.delay(n, rng=random.Random(7)) for n in range(6)]
    second = [policy.delay(n, rng=random.Random(7)) for n in range(6)]
    assert first == second
    assert any(d != policy.with_overrides(jitter=0).delay(n) for n, d in enumerate(first))


def test_default_rng_is_the_random_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff.random, "random", lambda: 1.0)
    assert RetryPolicy().delay(0) == pytest.approx(0.5 * 0.75)


def test_huge_attempt_is_the_cap_not_an_overflow() -> None:
    assert RetryPolicy(jitter=0).delay(100_000) == 8.0
    assert RetryPolicy(jitter=0, backoff_factor=1.5).delay(10**9) == 8.0


def test_zero_initial_delay_never_waits() -> None:
    policy = RetryPolicy(initial_retry_delay=0.0)
    assert [policy.delay(n) for n in (0, 5, 10_000)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("attempt", [-1, 1.0, True, "1"])
def test_delay_rejects_a_bad_attempt(attempt: object) -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize("field, value", [
    ("max_retries", -1), ("max_retries", 1.5), ("max_retries", True), ("max_retries", "3"),
    ("initial_retry_delay", -0.1), ("initial_retry_delay", math.inf), ("initial_retry_delay", math.nan),
    ("initial_retry_delay", "0.5"),
    ("backoff_factor", 0.5), ("backoff_factor", 0), ("backoff_factor", -2.0), ("backoff_factor", math.inf),
    ("max_retry_delay", -1.0), ("max_retry_delay", 0.1),  # below initial_retry_delay
    ("jitter", -0.01), ("jitter", 1.01), ("jitter", math.nan), ("jitter", True),
])
def test_invalid_fields_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(errors.ConfigError) as info:
        RetryPolicy(**{field: value})
    assert field in str(info.value)
    assert info.value.details["field"] == field
    assert str(info.value).startswith("Configuration error")


@pytest.mark.parametrize("kwargs", [
    {"max_retries": 0}, {"initial_retry_delay": 0.0, "max_retry_delay": 0.0}, {"backoff_factor": 1.0},
    {"jitter": 0.0}, {"jitter": 1.0},
])
def test_boundary_values_are_valid(kwargs: dict) -> None:
    assert dataclasses.asdict(RetryPolicy(**kwargs)).items() >= kwargs.items()


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_retries = 5  # type: ignore[misc]


def test_with_overrides_returns_a_new_validated_policy() -> None:
    base = RetryPolicy()
    changed = base.with_overrides(max_retries=7, jitter=0.0)
    assert (changed.max_retries, changed.jitter, changed.max_retry_delay) == (7, 0.0, 8.0)
    assert base == RetryPolicy()
    with pytest.raises(errors.ConfigError, match="backoff_factor"):
        base.with_overrides(backoff_factor=0.9)


def test_with_overrides_rejects_unknown_fields() -> None:
    with pytest.raises(errors.ConfigError, match="max_retrys") as info:
        RetryPolicy().with_overrides(max_retrys=2)
    assert info.value.details["field"] == "max_retrys"


policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 10),
    initial_retry_delay=st.floats(0, 10, allow_nan=False),
    backoff_factor=st.floats(1, 10, allow_nan=False),
    max_retry_delay=st.floats(10, 300, allow_nan=False),
    jitter=st.floats(0, 1, allow_nan=False),
)


@given(policy=policies, attempt=st.integers(0, 100_000), seed=st.integers(0, 2**32))
def test_delay_is_always_within_zero_and_the_cap(policy: RetryPolicy, attempt: int, seed: int) -> None:
    delay = policy.delay(attempt, rng=random.Random(seed))
    base = policy.with_overrides(jitter=0.0).delay(attempt)
    assert 0.0 <= delay <= policy.max_retry_delay
    assert base * (1 - policy.jitter) - 1e-9 <= delay <= base


@given(policy=policies, attempt=st.integers(0, 2_000))
def test_delay_without_jitter_never_decreases(policy: RetryPolicy, attempt: int) -> None:
    policy = policy.with_overrides(jitter=0.0)
    assert policy.delay(attempt) <= policy.delay(attempt + 1)


# ---------------------------------------------------------------------------
# Retry-After headers
# ---------------------------------------------------------------------------

OCT_21_2015 = calendar.timegm((2015, 10, 21, 7, 28, 0))


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After-Ms": "250.5"}, 0.2505),
    ({"RETRY-AFTER-MS": "0"}, 0.0),
    ({"retry-after-ms": "2000", "retry-after": "30"}, 2.0),        # ms wins
    ({"retry-after": "30", "retry-after-ms": "2000"}, 2.0),        # whatever the order
    ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),          # bad ms falls back
    ({"Retry-After": "5"}, 5.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": " 7 "}, 7.0),
    ({"retry-after": "+4"}, 4.0),
    ({"retry-after": ".5"}, 0.5),
    ({"retry-after": "86400"}, 86400.0),                             # large is returned as-is
    ({"retry-after": "9" * 400}, math.inf),                          # beyond float: "forever"
    ({"retry-after-ms": "9" * 400}, math.inf),
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after-ms": "-100"}, 0.0),
    ({"retry-after": b"12"}, 12.0),
    ({"content-type": "application/json"}, None),
    ({}, None),
    (None, None),
])
def test_retry_after_numbers(headers: dict | None, expected: float | None) -> None:
    assert retry_after_from_headers(headers, now=0.0) == expected


@pytest.mark.parametrize("value", [
    "soon", "", "   ", "nan", "NaN", "inf", "-inf", "1_000", "1e3", "5 seconds", "0x10", "١٢",
    "Wed, 32 Oct 2015 07:28:00 GMT", "Xyz, 21 Foo 2015 07:28:00 GMT",
])
def test_garbage_retry_after_is_none(value: str) -> None:
    assert retry_after_from_headers({"retry-after": value}, now=0.0) is None


@pytest.fixture
def local_time_is_not_utc(monkeypatch: pytest.MonkeyPatch):
    """HTTP dates are GMT whatever the host's zone; CI hosts are often UTC and hide that."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is Unix-only")
    monkeypatch.setenv("TZ", "EST+05EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("date", [
    "Wed, 21 Oct 2015 07:28:00 GMT",      # RFC 7231 IMF-fixdate
    "Wednesday, 21-Oct-15 07:28:00 GMT",  # obsolete RFC 850
    "Wed Oct 21 07:28:00 2015",           # obsolete asctime, implicitly GMT
])
@pytest.mark.usefixtures("local_time_is_not_utc")
def test_retry_after_http_date_in_all_rfc7231_forms(date: str) -> None:
    assert retry_after_from_headers({"Retry-After": date}, now=OCT_21_2015 - 30) == 30.0


def test_retry_after_http_date_with_an_offset() -> None:
    headers = {"retry-after": "Wed, 21 Oct 2015 08:28:00 +0100"}
    assert retry_after_from_headers(headers, now=OCT_21_2015 - 10) == 10.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after_from_headers(headers, now=OCT_21_2015 + 3600) == 0.0


def test_retry_after_http_date_defaults_to_wall_clock_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff.time, "time", lambda: OCT_21_2015 - 42.0)
    assert retry_after_from_headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 42.0


def test_retry_after_reads_case_insensitive_multidicts() -> None:
    multidict = pytest.importorskip("multidict")
    headers = multidict.CIMultiDictProxy(multidict.CIMultiDict([("Retry-After", "9")]))
    assert retry_after_from_headers(headers) == 9.0


@pytest.mark.parametrize("value, expected", [
    (None, None), (0.0, 0.0), (0, 0.0), (30, 30.0), (MAX_HONOURED_RETRY_AFTER, 120.0),
    (120.001, None), (-0.5, None), (86400.0, None), (math.nan, None), (math.inf, None),
])
def test_clamp_retry_after(value: float | None, expected: float | None) -> None:
    assert clamp_retry_after(value) == expected


header_text = st.text(alphabet=st.characters(codec="latin-1"), max_size=40)


@given(ms=st.one_of(st.none(), header_text), seconds=st.one_of(st.none(), header_text),
       now=st.floats(0, 4e9))
def test_retry_after_never_raises_and_is_never_negative(ms: str | None, seconds: str | None,
                                                        now: float) -> None:
    headers = {k: v for k, v in (("retry-after-ms", ms), ("retry-after", seconds)) if v is not None}
    result = retry_after_from_headers(headers, now=now)
    assert result is None or result >= 0  # never NaN, never negative


# ---------------------------------------------------------------------------
# Google RetryInfo
# ---------------------------------------------------------------------------

def gemini_429(*details: object) -> dict:
    return {"error": {"code": 429, "message": "Resource has been exhausted",
                      "status": "RESOURCE_EXHAUSTED", "details": list(details)}}


RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content"}]}


@pytest.mark.parametrize("delay, expected", [
    ("17s", 17.0), ("1.5s", 1.5), ("0.250s", 0.25), ("0s", 0.0), (" 3s ", 3.0), ("2.s", 2.0),
    ({"seconds": 17, "nanos": 500_000_000}, 17.5),
    ({"seconds": "17"}, 17.0),
    ({"nanos": 250_000_000}, 0.25),
    ({"seconds": -5}, 0.0),
])
def test_google_retry_delay_formats(delay: object, expected: float) -> None:
    body = gemini_429(QUOTA_FAILURE, {"@type": RETRY_INFO, "retryDelay": delay})
    assert retry_delay_from_google(body) == pytest.approx(expected)


def test_google_retry_delay_from_json_text_bytes_and_stream_lists() -> None:
    body = gemini_429({"@type": RETRY_INFO, "retryDelay": "21s"})
    assert retry_delay_from_google(json.dumps(body)) == 21.0
    assert retry_delay_from_google(json.dumps(body).encode()) == 21.0
    assert retry_delay_from_google([body]) == 21.0


def test_google_retry_delay_without_type_tag_is_accepted() -> None:
    assert retry_delay_from_google(gemini_429({"retryDelay": "4s"})) == 4.0


@pytest.mark.parametrize("body", [
    None, 5, "not json", b"\xff\xfe", [], [None], {}, {"error": "quota"}, {"error": {"details": "x"}},
    gemini_429(), gemini_429(QUOTA_FAILURE), gemini_429(None, 3, "x"),
    gemini_429({"@type": RETRY_INFO, "retryDelay": "17"}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": "-1s"}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": "abc"}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": "\u0661\u0662s"}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": 17}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": None}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": {}}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": {"seconds": "x"}}),
    gemini_429({"@type": RETRY_INFO, "retryDelay": {"seconds": True}}),
    gemini_429({"@type": "type.googleapis.com/google.rpc.Help", "retryDelay": "5s"}),
    {"error": {"code": 429, "details": {"retryDelay": "5s"}}},
])
def test_google_retry_delay_is_none_for_any_other_shape(body: object) -> None:
    assert retry_delay_from_google(body) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["error", "details", "@type", "retryDelay", "seconds", "nanos"])
        | st.text(max_size=5),
        children, max_size=4),
    max_leaves=20,
)


@given(body=json_values)
def test_google_retry_delay_never_raises(body: object) -> None:
    result = retry_delay_from_google(body)
    assert result is None or result >= 0


# ---------------------------------------------------------------------------
# Retryable statuses and the x-should-retry override
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("status, retryable", [
    (408, True), (409, True), (429, True), (498, True), (500, True), (502, True), (503, True),
    (504, True), (529, True), (599, True),
    (200, False), (201, False), (301, False), (400, False), (401, False), (402, False), (403, False),
    (404, False), (405, False), (410, False), (413, False), (415, False), (422, False), (451, False),
    (499, False),
])
def test_is_retryable_status(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


@pytest.mark.parametrize("status, headers, retry", [
    (500, {"x-should-retry": "false"}, False),
    (429, {"X-Should-Retry": "FALSE"}, False),
    (400, {"x-should-retry": "true"}, True),
    (401, {"X-SHOULD-RETRY": " True "}, True),
    (500, {"x-should-retry": "maybe"}, True),   # unknown values fall back to the status
    (400, {"x-should-retry": "1"}, False),
    (503, None, True),
    (404, {}, False),
    (None, None, True),                          # no response at all: a transport failure
    (None, {"x-should-retry": "false"}, False),
])
def test_decide(status: int | None, headers: dict | None, retry: bool) -> None:
    assert decide(status, headers) is retry


# ---------------------------------------------------------------------------
# Retryable exceptions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc, retryable", [
    (errors.RateLimitError("slow down"), True),
    (errors.ProviderError("boom"), True),
    (errors.ProviderOverloadedError("busy"), True),
    (errors.TimeoutError("late"), True),
    (errors.ConnectionError("gone"), True),
    (errors.AuthenticationError("bad key"), False),
    (errors.InvalidRequestError("bad"), False),
    (errors.StreamInterruptedError("half an answer"), False),
    (errors.ProviderError("known permanent", retryable=False), False),
    (errors.InvalidRequestError("known transient", retryable=True), True),
])
def test_gateway_errors_decide_for_themselves(exc: BaseException, retryable: bool) -> None:
    assert is_retryable_exception(exc) is retryable


@pytest.mark.parametrize("exc", [
    builtins.ConnectionError("x"), ConnectionResetError(), ConnectionRefusedError(),
    ConnectionAbortedError(), BrokenPipeError(), builtins.TimeoutError(), asyncio.TimeoutError(),
    concurrent.futures.TimeoutError(),
    OSError(errno.ECONNRESET, "reset"), OSError(errno.ETIMEDOUT, "timed out"),
    OSError(errno.ENETUNREACH, "unreachable"), OSError(errno.EHOSTUNREACH, "no route"),
    OSError(errno.EPIPE, "pipe"),
])
def test_network_failures_are_retryable(exc: BaseException) -> None:
    assert is_retryable_exception(exc) is True


@pytest.mark.parametrize("exc", [
    ValueError("x"), KeyError("k"), RuntimeError("r"), TypeError("t"), Exception(),
    OSError(errno.ENOENT, "no file"), FileNotFoundError(), PermissionError(), OSError("no errno"),
    asyncio.CancelledError(), KeyboardInterrupt(), json.JSONDecodeError("bad", "", 0),
])
def test_other_exceptions_are_not_retryable(exc: BaseException) -> None:
    assert is_retryable_exception(exc) is False


# Look-alikes of aiohttp's hierarchy: the rule is by class name, so these must
# behave exactly like the real classes (checked against aiohttp below).
class ClientError(Exception): ...
class ClientConnectionError(ClientError): ...
class ServerConnectionError(ClientConnectionError): ...
class ServerDisconnectedError(ServerConnectionError): ...
class ServerFingerprintMismatch(ServerConnectionError): ...
class ClientPayloadError(ClientError): ...
class ClientResponseError(ClientError): ...
class ClientOSError(ClientConnectionError, OSError): ...
class ClientConnectorError(ClientOSError): ...
class ClientSSLError(ClientConnectorError): ...
class ClientConnectorCertificateError(ClientSSLError): ...
class MyTransportHiccup(ServerDisconnectedError): ...


@pytest.mark.parametrize("exc, retryable", [
    (ClientConnectionError(), True),
    (ServerDisconnectedError(), True),
    (ClientPayloadError(), True),
    (ClientOSError(errno.ENOENT, "even with a non-network errno"), True),
    (ClientConnectorError(), True),
    (MyTransportHiccup(), True),
    (ClientSSLError(errno.ECONNRESET, "tls"), False),
    (ClientConnectorCertificateError(), False),
    (ServerFingerprintMismatch(), False),
    (ClientResponseError(), False),
    (ClientError(), False),
])
def test_aiohttp_errors_by_class_name(exc: BaseException, retryable: bool) -> None:
    assert is_retryable_exception(exc) is retryable


@pytest.mark.parametrize("name, retryable", [
    ("ClientConnectionError", True), ("ServerDisconnectedError", True), ("ClientOSError", True),
    ("ClientPayloadError", True), ("ClientConnectorError", True), ("ServerTimeoutError", True),
    ("ClientConnectorDNSError", True), ("ConnectionTimeoutError", True), ("SocketTimeoutError", True),
    ("ClientSSLError", False), ("ClientConnectorCertificateError", False),
    ("ClientConnectorSSLError", False), ("ServerFingerprintMismatch", False),
    ("ClientResponseError", False), ("InvalidURL", False), ("ContentTypeError", False),
])
def test_real_aiohttp_classes(name: str, retryable: bool) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    cls = getattr(aiohttp, name, None)
    if cls is None:
        pytest.skip(f"aiohttp {aiohttp.__version__} has no {name}")
    exc = cls.__new__(cls)  # the rule looks at the type only; skip the fussy constructors
    assert is_retryable_exception(exc) is retryable


def imported_modules(path: str) -> set[str]:
    tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_backoff_module_stays_pure() -> None:
    imported = imported_modules(backoff.__file__)
    assert "email" in imported  # the parse found the imports at all
    assert not imported & {"ray", "aiohttp", "requests", "socket"}
