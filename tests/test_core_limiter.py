"""RPM/TPM limiter (core/limiter.py): header parsing, token bucket, reservations.

Everything runs on a fake clock.  The property tests state the limiter's
contract directly: whatever callers do, the usage it lets through in any
window is bounded by capacity + rate * window, and its levels are exactly
those of a bucket that had been charged the final usage from the start.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.core.limiter import (RateLimiter, RateLimitHeaders, Reservation, TokenBucket,
                                             parse_anthropic_rate_headers, parse_duration,
                                             parse_openai_rate_headers)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def simple_limiter(rpm: float | None = 60, tpm: float | None = 6000,
                   clock: FakeClock | None = None, **kw) -> RateLimiter:
    """No margin, 1 s burst: 1 request/s with capacity 1, 100 tokens/s with capacity 100."""
    return RateLimiter(rpm, tpm, burst_s=kw.pop("burst_s", 1.0), rate_margin=kw.pop("rate_margin", 0.0),
                       clock=clock or FakeClock(), **kw)


# ---------------------------------------------------------------------------
# parse_duration
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("12ms", 0.012), ("1s", 1.0), ("6m0s", 360.0), ("2m59.56s", 179.56), ("7.66s", 7.66),
    ("1h2m3s", 3723.0), ("1.5", 1.5), ("0", 0.0), ("20", 20.0), (" 1s ", 1.0), ("0s", 0.0),
    ("1m30s", 90.0), ("500us", 0.0005), ("250µs", 0.00025), ("100ns", 1e-7), (".5s", 0.5),
    ("1h", 3600.0), ("3m", 180.0),
])
def test_parse_duration_reads_go_durations_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", " ", "abc", "s", "1x", "1m5", "m1s", "-1s", "-1", "1e3", "inf", "nan", "1s ago", "1,5s",
    "1 s", "1S", "9" * 400,
])
def test_parse_duration_rejects_garbage(text: str) -> None:
    assert parse_duration(text) is None


def test_parse_duration_rejects_non_strings() -> None:
    assert parse_duration(None) is None  # type: ignore[arg-type]
    assert parse_duration(5) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Provider headers
# ---------------------------------------------------------------------------

def test_openai_headers_are_parsed_case_insensitively() -> None:
    parsed = parse_openai_rate_headers({
        "X-RateLimit-Limit-Requests": "10000", "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6ms", "x-ratelimit-limit-tokens": "200000",
        "X-RATELIMIT-REMAINING-TOKENS": "199000", "x-ratelimit-reset-tokens": "2m59.56s",
        "content-type": "application/json",
    })
    assert parsed == RateLimitHeaders(limit_requests=10000, remaining_requests=9999,
                                      reset_requests_s=pytest.approx(0.006), limit_tokens=200000,
                                      remaining_tokens=199000, reset_tokens_s=pytest.approx(179.56))


def test_openai_headers_partial_and_garbled_values_become_none() -> None:
    parsed = parse_openai_rate_headers({"x-ratelimit-remaining-tokens": "12",
                                        "x-ratelimit-remaining-requests": "lots",
                                        "x-ratelimit-reset-tokens": "soon"})
    assert parsed == RateLimitHeaders(remaining_tokens=12.0)


def test_openai_headers_absent_or_useless_give_none() -> None:
    assert parse_openai_rate_headers({}) is None
    assert parse_openai_rate_headers({"content-type": "text/plain"}) is None
    assert parse_openai_rate_headers({"x-ratelimit-remaining-tokens": "-3"}) is None


NOW_WALL = 1_704_067_200.0  # 2024-01-01T00:00:00Z


def test_anthropic_headers_resets_are_seconds_from_now() -> None:
    parsed = parse_anthropic_rate_headers({
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2024-01-01T00:00:30Z",
        "Anthropic-RateLimit-Tokens-Limit": "40000", "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2024-01-01T01:00:05.25+01:00",
    }, now_wall=NOW_WALL)
    assert parsed == RateLimitHeaders(limit_requests=50, remaining_requests=49, reset_requests_s=30.0,
                                      limit_tokens=40000, remaining_tokens=39000,
                                      reset_tokens_s=pytest.approx(5.25))


def test_anthropic_headers_take_the_tightest_token_family() -> None:
    parsed = parse_anthropic_rate_headers({
        "anthropic-ratelimit-tokens-limit": "100000", "anthropic-ratelimit-tokens-remaining": "90000",
        "anthropic-ratelimit-tokens-reset": "2024-01-01T00:00:50Z",
        "anthropic-ratelimit-input-tokens-limit": "80000",
        "anthropic-ratelimit-input-tokens-remaining": "70000",
        "anthropic-ratelimit-input-tokens-reset": "2024-01-01T00:00:40Z",
        "anthropic-ratelimit-output-tokens-limit": "16000",
        "anthropic-ratelimit-output-tokens-remaining": "1200",
        "anthropic-ratelimit-output-tokens-reset": "2024-01-01T00:00:12Z",
    }, now_wall=NOW_WALL)
    assert parsed is not None
    assert (parsed.limit_tokens, parsed.remaining_tokens, parsed.reset_tokens_s) == (16000, 1200, 12.0)
    assert parsed.remaining_requests is None


def test_anthropic_headers_fill_missing_limit_and_reset_from_other_families() -> None:
    parsed = parse_anthropic_rate_headers({
        "anthropic-ratelimit-output-tokens-remaining": "5",
        "anthropic-ratelimit-input-tokens-limit": "900", "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-input-tokens-reset": "2024-01-01T00:00:07Z",
        "anthropic-ratelimit-tokens-reset": "2024-01-01T00:00:03Z",
    }, now_wall=NOW_WALL)
    assert parsed == RateLimitHeaders(limit_tokens=900, remaining_tokens=5, reset_tokens_s=7.0)


def test_anthropic_reset_in_the_past_is_zero_and_garbage_is_none() -> None:
    parsed = parse_anthropic_rate_headers({
        "anthropic-ratelimit-requests-reset": "2023-12-31T23:59:00Z",
        "anthropic-ratelimit-tokens-reset": "tomorrow",
        "anthropic-ratelimit-tokens-remaining": "10",
    }, now_wall=NOW_WALL)
    assert parsed == RateLimitHeaders(reset_requests_s=0.0, remaining_tokens=10)


def test_anthropic_leap_second_and_missing_offset() -> None:
    parsed = parse_anthropic_rate_headers({
        "anthropic-ratelimit-requests-reset": "2024-01-01T00:00:59.5",
        "anthropic-ratelimit-tokens-reset": "2023-12-31T23:59:60Z",
    }, now_wall=NOW_WALL - 10)
    assert parsed is not None
    assert parsed.reset_requests_s == pytest.approx(69.5)
    assert parsed.reset_tokens_s == pytest.approx(10.0)


def test_anthropic_headers_absent_give_none_and_default_to_wall_clock() -> None:
    assert parse_anthropic_rate_headers({"x-ratelimit-remaining-tokens": "3"}) is None
    parsed = parse_anthropic_rate_headers({"anthropic-ratelimit-requests-reset": "2000-01-01T00:00:00Z"})
    assert parsed == RateLimitHeaders(reset_requests_s=0.0)


# ---------------------------------------------------------------------------
# TokenBucket
# ---------------------------------------------------------------------------

def test_bucket_starts_full_and_refills_continuously_up_to_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, capacity=10.0, clock=clock)
    assert bucket.available() == 10.0
    assert bucket.try_take(7)
    clock.advance(1.0)
    assert bucket.available() == pytest.approx(5.0)
    clock.advance(100.0)
    assert bucket.available() == 10.0


def test_bucket_try_take_is_all_or_nothing() -> None:
    bucket = TokenBucket(1.0, 5.0, clock=FakeClock())
    assert not bucket.try_take(6)
    assert bucket.available() == 5.0
    assert bucket.try_take(5)
    assert not bucket.try_take(0.5)
    assert bucket.try_take(0)


def test_bucket_take_runs_into_debt_repaid_by_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 5.0, clock=clock)
    bucket.take(8)
    assert bucket.available() == -3.0
    assert bucket.time_until(1) == pytest.approx(4.0)
    clock.advance(4.0)
    assert bucket.try_take(1)


def test_bucket_give_back_never_exceeds_capacity() -> None:
    bucket = TokenBucket(1.0, 5.0, clock=FakeClock())
    bucket.take(2)
    bucket.give_back(10)
    assert bucket.available() == 5.0


def test_bucket_lower_to_only_lowers() -> None:
    bucket = TokenBucket(1.0, 5.0, clock=FakeClock())
    bucket.lower_to(2)
    bucket.lower_to(4)
    assert bucket.available() == 2.0


def test_bucket_time_until() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, 4.0, clock=clock)
    assert bucket.time_until(4) == 0.0
    bucket.take(4)
    assert bucket.time_until(1) == pytest.approx(2.0)
    assert bucket.time_until(5) == math.inf  # more than the bucket can ever hold
    clock.advance(bucket.time_until(3))
    assert bucket.try_take(3)
    assert TokenBucket(0.0, 1.0, clock=clock).time_until(0.5) == 0.0
    empty = TokenBucket(0.0, 1.0, clock=clock)
    empty.take(1)
    assert empty.time_until(0.5) == math.inf


def test_bucket_hold_until_empties_and_delays_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 5.0, clock=clock)
    bucket.hold_until(clock.now + 3)
    assert bucket.available() == 0.0
    assert bucket.time_until(2) == pytest.approx(5.0)
    clock.advance(3)
    assert bucket.available() == 0.0
    clock.advance(2)
    assert bucket.available() == pytest.approx(2.0)


def test_bucket_ignores_a_clock_that_steps_backwards() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 5.0, clock=clock)
    bucket.take(5)
    clock.advance(-10)
    assert bucket.available() == 0.0
    clock.advance(12)  # 2 s past the original time, not 12
    assert bucket.available() == pytest.approx(2.0)


def test_bucket_reconfigure_keeps_fill_ratio() -> None:
    bucket = TokenBucket(1.0, 10.0, clock=FakeClock())
    bucket.take(7.5)
    bucket.reconfigure(rate_per_s=4.0, capacity=40.0)
    assert (bucket.available(), bucket.rate_per_s, bucket.capacity) == (10.0, 4.0, 40.0)


@pytest.mark.parametrize("rate, capacity",
                         [(-1, 1), (1, 0), (1, -1), (math.nan, 1), (1, math.inf), (True, 1)])
def test_bucket_rejects_invalid_shape(rate: float, capacity: float) -> None:
    with pytest.raises(errors.ConfigError):
        TokenBucket(rate, capacity, clock=FakeClock())


# ---------------------------------------------------------------------------
# RateLimiter: shape
# ---------------------------------------------------------------------------

def test_bucket_shape_follows_limits_margin_and_burst() -> None:
    limiter = RateLimiter(rpm=600, tpm=60_000, burst_s=2.0, rate_margin=0.05, clock=FakeClock())
    snap = limiter.snapshot()
    assert snap["requests_available"] == pytest.approx(19.0)   # 600/60 * 0.95 * 2
    assert snap["tokens_available"] == pytest.approx(2000.0)   # 60000/60 * 2: no margin
    admitted = 0
    while limiter.try_acquire() is not None:
        admitted += 1
    assert admitted == 19
    assert limiter.time_until_available() == pytest.approx(1 / 9.5)


def test_token_bucket_refills_at_the_margined_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=60_000, burst_s=2.0, rate_margin=0.05, clock=clock)
    limiter.reconcile(limiter.try_acquire(2000), 2000)  # type: ignore[arg-type]
    clock.advance(1.0)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(950.0)


def test_tiny_limits_still_admit_one_request() -> None:
    limiter = RateLimiter(rpm=3, tpm=30, clock=FakeClock())
    snap = limiter.snapshot()
    assert snap["requests_available"] == 1.0 and snap["tokens_available"] == 1.0
    assert limiter.try_acquire(1) is not None


def test_unlimited_limiter_admits_everything() -> None:
    limiter = RateLimiter(clock=FakeClock())
    for _ in range(1000):
        assert limiter.try_acquire(10**9) is not None
    assert limiter.headroom() == 1.0
    assert limiter.time_until_available(10**12) == 0.0
    snap = limiter.snapshot()
    assert snap["requests_available"] == math.inf and snap["rpm"] is None and snap["tpm"] is None


@pytest.mark.parametrize("kwargs", [
    {"rpm": 0}, {"rpm": -5}, {"tpm": math.nan}, {"tpm": math.inf}, {"rpm": True},
    {"burst_s": 0}, {"burst_s": -1.0}, {"rate_margin": 1.0}, {"rate_margin": -0.1},
])
def test_invalid_configuration_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(errors.ConfigError):
        RateLimiter(**kwargs, clock=FakeClock())


def test_negative_or_nan_token_counts_are_rejected_without_side_effects() -> None:
    limiter = simple_limiter()
    reservation = limiter.try_acquire(10)
    assert reservation is not None
    for bad in (-1, math.nan):
        with pytest.raises(ValueError):
            limiter.try_acquire(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            limiter.reconcile(reservation, bad)  # type: ignore[arg-type]
    limiter.reconcile(reservation, 4)  # still pending after the rejected calls
    assert limiter.snapshot()["tokens_available"] == pytest.approx(96.0)


# ---------------------------------------------------------------------------
# RateLimiter: admission and reconciliation
# ---------------------------------------------------------------------------

def test_try_acquire_takes_request_and_tokens_atomically() -> None:
    limiter = simple_limiter(rpm=120)  # 2 requests of capacity
    assert limiter.try_acquire(70) is not None
    assert limiter.try_acquire(70) is None  # tokens short: the request slot must stay
    snap = limiter.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (1.0, 30.0)
    reservation = limiter.try_acquire(30)
    assert isinstance(reservation, Reservation)
    assert (reservation.requests, reservation.tokens) == (1, 30)
    assert limiter.try_acquire(0) is None  # now the request bucket is empty


def test_reservation_ids_are_unique() -> None:
    limiter = simple_limiter(rpm=None, tpm=None)
    ids = {limiter.try_acquire().id for _ in range(100)}  # type: ignore[union-attr]
    assert len(ids) == 100


def test_estimates_above_capacity_are_clamped_and_overrun_becomes_debt() -> None:
    clock = FakeClock()
    limiter = simple_limiter(clock=clock)
    big = limiter.try_acquire(250)
    assert big is not None and big.tokens == 100  # reserved the whole bucket
    limiter.reconcile(big, 250)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(-150)
    assert limiter.try_acquire(1) is None
    assert limiter.time_until_available(1) == pytest.approx(1.51)
    clock.advance(1.51)
    assert limiter.try_acquire(1) is not None


def test_oversized_request_waits_for_a_full_bucket() -> None:
    clock = FakeClock()
    limiter = simple_limiter(rpm=None, clock=clock)
    limiter.reconcile(limiter.try_acquire(40), 40)  # type: ignore[arg-type]
    assert limiter.try_acquire(10_000) is None
    assert limiter.time_until_available(10_000) == pytest.approx(0.4)
    clock.advance(0.4)
    assert limiter.try_acquire(10_000) is not None


def test_reconcile_underrun_refunds_and_overrun_charges() -> None:
    limiter = simple_limiter(rpm=None)
    under = limiter.try_acquire(80)
    assert under is not None
    limiter.reconcile(under, 20)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(80.0)
    over = limiter.try_acquire(30)
    assert over is not None
    limiter.reconcile(over, 50)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(30.0)


def test_reconcile_and_cancel_are_idempotent_and_exclusive() -> None:
    limiter = simple_limiter(rpm=120)
    reservation = limiter.try_acquire(60)
    assert reservation is not None
    limiter.reconcile(reservation, 10)
    limiter.reconcile(reservation, 0)
    limiter.cancel(reservation)
    snap = limiter.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (1.0, pytest.approx(90.0))
    assert limiter.in_flight == 0


def test_cancel_returns_request_and_tokens() -> None:
    limiter = simple_limiter()
    reservation = limiter.try_acquire(60)
    assert reservation is not None and limiter.in_flight == 1
    limiter.cancel(reservation)
    snap = limiter.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (1.0, 100.0)
    assert limiter.try_acquire(100) is not None


def test_foreign_reservations_are_ignored() -> None:
    mine, other = simple_limiter(), simple_limiter()
    theirs = other.try_acquire(10)
    assert theirs is not None
    mine.try_acquire(50)
    mine.cancel(theirs)
    mine.reconcile(Reservation(id=theirs.id, tokens=999), 0)
    assert mine.snapshot()["tokens_available"] == pytest.approx(50.0)


def test_cancel_after_refill_does_not_count_the_slot_twice() -> None:
    """The refill already paid for A's slot; refunding it too would admit B and C at once."""
    clock = FakeClock()
    limiter = simple_limiter(tpm=None, clock=clock)  # 1 request/s, capacity 1
    a = limiter.try_acquire()
    clock.advance(5)
    b = limiter.try_acquire()
    assert a is not None and b is not None
    limiter.cancel(a)
    assert limiter.try_acquire() is None
    assert limiter.time_until_available() == pytest.approx(1.0)


def test_refund_is_exactly_what_the_bucket_would_hold_without_the_estimate() -> None:
    clock = FakeClock()
    limiter = simple_limiter(rpm=None, clock=clock)
    a = limiter.try_acquire(80)         # level 20
    clock.advance(0.5)                  # level 70: refill has covered 50 of A's 80
    b = limiter.try_acquire(60)         # level 10
    assert a is not None and b is not None
    limiter.cancel(a)
    # Without A: full at 100 through t=0.5, minus B's 60 -> 40 (a naive refund gives 90).
    assert limiter.snapshot()["tokens_available"] == pytest.approx(40.0)
    limiter.reconcile(b, 0)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(100.0)


def test_a_clipped_refund_also_uses_up_earlier_reservations_rights() -> None:
    clock = FakeClock()
    limiter = simple_limiter(rpm=None, clock=clock)
    a = limiter.try_acquire(10)          # level 90
    b = limiter.try_acquire(40)          # level 50
    clock.advance(0.2)                   # level 70
    c = limiter.try_acquire(10)          # level 60
    assert a is not None and b is not None and c is not None
    limiter.cancel(b)
    # Without B the bucket was full again at t=0.2 despite A: C leaves 90.
    assert limiter.snapshot()["tokens_available"] == pytest.approx(90.0)
    limiter.cancel(a)                    # that refill covered A as well: nothing more comes back
    assert limiter.snapshot()["tokens_available"] == pytest.approx(90.0)
    limiter.cancel(c)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(100.0)


def test_underrun_is_refunded_in_full_while_the_bucket_stays_busy() -> None:
    clock = FakeClock()
    limiter = simple_limiter(rpm=None, clock=clock)
    first = limiter.try_acquire(100)
    clock.advance(0.3)
    second = limiter.try_acquire(30)
    assert first is not None and second is not None
    limiter.reconcile(first, 80)   # with 80 from the start the bucket never filled up again
    assert limiter.snapshot()["tokens_available"] == pytest.approx(20.0)


def test_underrun_refund_stops_where_the_bucket_would_have_been_full() -> None:
    clock = FakeClock()
    limiter = simple_limiter(rpm=None, clock=clock)
    first = limiter.try_acquire(100)
    clock.advance(0.3)
    second = limiter.try_acquire(30)
    assert first is not None and second is not None
    limiter.reconcile(first, 10)   # 90 at t=0 would have been full again at t=0.3
    assert limiter.snapshot()["tokens_available"] == pytest.approx(70.0)


def test_time_until_available_is_zero_exactly_when_acquire_succeeds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=90, tpm=10_000, clock=clock)
    for tokens in (100, 5000, 50, 20_000, 0, 160):
        wait = limiter.time_until_available(tokens)
        if wait > 0:
            assert limiter.try_acquire(tokens) is None
            clock.advance(wait)
            assert limiter.time_until_available(tokens) == 0.0
        assert limiter.try_acquire(tokens) is not None


# ---------------------------------------------------------------------------
# RateLimiter: provider feedback
# ---------------------------------------------------------------------------

def test_observe_remaining_only_lowers() -> None:
    limiter = simple_limiter(rpm=600)
    limiter.observe_remaining(requests=3, tokens=40)
    limiter.observe_remaining(requests=9, tokens=None)
    limiter.observe_remaining(requests=-2.0, tokens=math.nan)
    snap = limiter.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (0.0, 40.0)


def test_update_from_headers_does_not_invent_limits() -> None:
    limiter = simple_limiter(rpm=None)
    limiter.update_from_headers(RateLimitHeaders(limit_requests=10, remaining_requests=0,
                                                 limit_tokens=1000, remaining_tokens=25))
    snap = limiter.snapshot()
    assert snap["rpm"] is None and snap["requests_available"] == math.inf
    assert snap["tokens_available"] == 25.0
    limiter.update_from_headers(None)
    unlimited = RateLimiter(clock=FakeClock())
    unlimited.update_from_headers(RateLimitHeaders(limit_tokens=10, remaining_tokens=0))
    assert unlimited.try_acquire(10**6) is not None


def test_headers_from_a_real_response_feed_the_limiter() -> None:
    limiter = RateLimiter(rpm=10_000, tpm=1_000_000, clock=FakeClock())
    limiter.update_from_headers(parse_openai_rate_headers({
        "x-ratelimit-remaining-requests": "2", "x-ratelimit-remaining-tokens": "500"}))
    assert limiter.try_acquire(400) is not None
    assert limiter.try_acquire(400) is None


def test_block_for_admits_nothing_until_it_ends_then_refills_from_empty() -> None:
    clock = FakeClock()
    limiter = simple_limiter(clock=clock)
    limiter.block_for(2.0)
    limiter.block_for(0.5)  # a shorter, later block never shortens the first
    assert limiter.try_acquire() is None
    assert limiter.headroom() == 0.0
    assert limiter.snapshot()["blocked_for"] == pytest.approx(2.0)
    assert limiter.time_until_available() == pytest.approx(3.0)  # 2 s held + 1 s to refill
    clock.advance(2.0)
    assert limiter.try_acquire() is None
    assert limiter.snapshot()["tokens_available"] == 0.0
    clock.advance(1.0)
    assert limiter.try_acquire(100) is not None


def test_block_for_holds_an_unlimited_limiter_too() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    for ignored in (0, -1, math.nan, math.inf):
        limiter.block_for(ignored)
    assert limiter.try_acquire() is not None
    limiter.block_for(1.5)
    assert limiter.try_acquire() is None
    assert limiter.time_until_available() == pytest.approx(1.5)
    clock.advance(1.5)
    assert limiter.try_acquire() is not None
    assert limiter.snapshot()["blocked_for"] == 0.0


# ---------------------------------------------------------------------------
# RateLimiter: introspection and reconfiguration
# ---------------------------------------------------------------------------

def test_headroom_is_the_tightest_axis() -> None:
    limiter = simple_limiter(rpm=600)  # 10 requests, 100 tokens
    assert limiter.headroom() == 1.0
    limiter.try_acquire(75)
    assert limiter.headroom() == pytest.approx(0.25)
    limiter.reconcile(limiter.try_acquire(0), 500)  # type: ignore[arg-type]
    assert limiter.headroom() == 0.0  # debt counts as none, not negative


def test_snapshot_is_plain_floats() -> None:
    snap = simple_limiter().snapshot()
    assert snap == {"requests_available": 1.0, "tokens_available": 100.0, "rpm": 60.0,
                    "tpm": 6000.0, "blocked_for": 0.0, "headroom": 1.0}
    assert all(type(value) is float for value in snap.values())


def test_configure_keeps_fill_ratio() -> None:
    limiter = simple_limiter(rpm=600)
    limiter.try_acquire(25)
    limiter.configure(tpm=12_000, burst_s=2.0)
    snap = limiter.snapshot()
    assert snap["tokens_available"] == pytest.approx(300.0)   # 75% of 400
    assert snap["requests_available"] == pytest.approx(18.0)  # 90% of 20
    assert limiter.burst_s == 2.0 and limiter.tpm == 12_000 and limiter.rpm == 600


def test_configure_adds_and_removes_axes() -> None:
    limiter = RateLimiter(clock=FakeClock())
    limiter.configure(rpm=60)
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is None
    limiter.configure(rpm=None)
    assert limiter.try_acquire() is not None


def test_configure_rejects_invalid_values_without_changing_anything() -> None:
    limiter = simple_limiter()
    with pytest.raises(errors.ConfigError):
        limiter.configure(rpm=120, burst_s=0)
    assert limiter.rpm == 60 and limiter.burst_s == 1.0


def test_reservations_survive_reconfiguration_without_refunds() -> None:
    limiter = simple_limiter(rpm=None)
    reservation = limiter.try_acquire(50)
    assert reservation is not None
    limiter.configure(tpm=12_000)          # 50/100 -> 100/200
    limiter.cancel(reservation)            # refund rights do not carry over
    assert limiter.snapshot()["tokens_available"] == pytest.approx(100.0)
    overrun = limiter.try_acquire(10)
    assert overrun is not None
    limiter.configure(tpm=6000)
    limiter.reconcile(overrun, 40)         # overruns are still charged
    assert limiter.snapshot()["tokens_available"] == pytest.approx(15.0)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

def request_shape(rpm: float, margin: float, burst_s: float) -> tuple[float, float]:
    """(rate, capacity) of the request bucket, restated from the documented formula."""
    rate = rpm / 60 * (1 - margin)
    return rate, max(1.0, rate * burst_s)


def token_shape(tpm: float, margin: float, burst_s: float) -> tuple[float, float]:
    return tpm / 60 * (1 - margin), max(1.0, tpm / 60 * burst_s)


# Two scales mixed: small capacities with short steps (partial refills, where
# refunds are subtle) and wide ranges (clamping, debt, idle periods).
rpms = st.sampled_from([30, 60, 120, 300]) | st.floats(1, 1200)
tpms = st.sampled_from([600, 1200]) | st.floats(60, 120_000)
bursts = st.sampled_from([1.0, 2.0, 4.0]) | st.floats(0.1, 5)
margins = st.just(0.0) | st.floats(0, 0.5)
amounts = st.integers(0, 25) | st.integers(0, 2500)
steps = st.sampled_from([0.05, 0.1, 0.2, 0.3, 0.5, 2.0]) | st.floats(0, 3)
SPEC_OPS = (
    st.tuples(st.just("acquire"), amounts),
    st.tuples(st.just("reconcile"), st.integers(0, 1000), amounts),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    st.tuples(st.just("again"), st.integers(0, 1000), amounts),
    st.tuples(st.just("advance"), steps),
)
FEEDBACK_OPS = (
    st.tuples(st.just("observe"), st.none() | st.floats(0, 30), st.none() | st.floats(0, 3000)),
    st.tuples(st.just("block"), st.floats(0, 2)),
)


def op_lists(*alternatives: st.SearchStrategy) -> st.SearchStrategy:
    # long enough for refill, re-admission and late refunds to interleave
    return st.lists(st.one_of(*alternatives), min_size=10, max_size=60)


@dataclass
class Charge:
    """Usage the provider sees at ``time``: a reservation's final amount, or an overrun."""
    time: float
    amount: float
    admission: bool


class Driver:
    """Applies operations to a limiter and keeps the test's own account of real usage.

    ``requests`` and ``tokens`` list charges in call order: each admission at
    its final amount (0 once cancelled, the actual usage once reconciled
    under the estimate) and each overrun when it became known.
    """

    def __init__(self, limiter: RateLimiter, clock: FakeClock) -> None:
        self.limiter, self.clock = limiter, clock
        self.requests: list[Charge] = []
        self.tokens: list[Charge] = []
        self.pending: list[tuple[Reservation, Charge, Charge]] = []
        self.settled: list[Reservation] = []

    def apply(self, op: tuple) -> None:
        kind, now = op[0], self.clock.now
        if kind == "acquire":
            reservation = self.limiter.try_acquire(op[1])
            if reservation is not None:
                request, tokens = Charge(now, 1.0, True), Charge(now, reservation.tokens, True)
                self.requests.append(request)
                self.tokens.append(tokens)
                self.pending.append((reservation, request, tokens))
        elif kind in ("reconcile", "cancel") and self.pending:
            reservation, request, tokens = self.pending.pop(op[1] % len(self.pending))
            self.settled.append(reservation)
            if kind == "cancel":
                self.limiter.cancel(reservation)
                request.amount = tokens.amount = 0.0
            else:
                self.limiter.reconcile(reservation, op[2])
                if op[2] <= reservation.tokens:
                    tokens.amount = op[2]
                else:
                    self.tokens.append(Charge(now, op[2] - reservation.tokens, False))
        elif kind == "again" and self.settled:  # settling twice changes nothing
            reservation = self.settled[op[1] % len(self.settled)]
            self.limiter.reconcile(reservation, op[2])
            self.limiter.cancel(reservation)
        elif kind == "advance":
            self.clock.advance(op[1])
        elif kind == "observe":
            self.limiter.observe_remaining(op[1], op[2])
        elif kind == "block":
            self.limiter.block_for(op[1])


def worst_window_excess(charges: list[Charge], rate: float, capacity: float) -> float:
    """max over windows (from any charge up to an admission) of used - (capacity + rate * T).

    Windows are taken in call order so that an overrun charged at the same
    instant as, but after, an admission is not counted against it: that is
    debt the limiter must repay before the *next* admission.
    """
    worst = -math.inf
    for end, last in enumerate(charges):
        if not last.admission:
            continue
        used = 0.0
        for start in range(end, -1, -1):
            used += charges[start].amount
            allowed = capacity + rate * (last.time - charges[start].time)
            worst = max(worst, used - allowed - 1e-6 * allowed)
    return worst


@settings(max_examples=400, deadline=None)
@given(rpm=st.none() | rpms, tpm=st.none() | tpms, burst_s=bursts, margin=margins,
       ops=op_lists(*SPEC_OPS) | op_lists(*SPEC_OPS, *FEEDBACK_OPS))
def test_admitted_usage_in_any_window_is_bounded(rpm, tpm, burst_s, margin, ops) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm, tpm, burst_s=burst_s, rate_margin=margin, clock=clock)
    driver = Driver(limiter, clock)
    for op in ops:
        driver.apply(op)  # never raises
        snap = limiter.snapshot()
        if rpm is not None:
            assert snap["requests_available"] <= request_shape(rpm, margin, burst_s)[1] * (1 + 1e-9)
        if tpm is not None:
            assert snap["tokens_available"] <= token_shape(tpm, margin, burst_s)[1] * (1 + 1e-9)
        assert 0.0 <= snap["headroom"] <= 1.0
    for charge in driver.tokens:  # estimates above capacity reserve exactly the capacity
        assert tpm is None or not charge.admission or charge.amount <= token_shape(tpm, margin, burst_s)[1]
    if rpm is not None:
        assert worst_window_excess(driver.requests, *request_shape(rpm, margin, burst_s)) <= 0
    if tpm is not None:
        assert worst_window_excess(driver.tokens, *token_shape(tpm, margin, burst_s)) <= 0


def replay_level(charges: list[Charge], rate: float, capacity: float, start: float, now: float) -> float:
    """The reference level: a bucket charged each reservation's final amount from the start
    (and each overrun when it became known)."""
    level, last = capacity, start
    for charge in charges:
        level = min(capacity, level + (charge.time - last) * rate) - charge.amount
        last = charge.time
    return min(capacity, level + (now - last) * rate)


# Small capacities, short steps: partial refills with several reservations in
# flight, where refunds go subtly wrong.  (The window test covers wide ranges.)
SMALL_WORLD_OPS = (
    st.tuples(st.just("acquire"), st.integers(0, 25)),
    st.tuples(st.just("reconcile"), st.integers(0, 1000), st.integers(0, 30)),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    st.tuples(st.just("again"), st.integers(0, 1000), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.sampled_from([0.05, 0.1, 0.2, 0.3, 0.5, 2.0]) | st.floats(0, 1)),
)


@settings(max_examples=500, deadline=None)
@given(rpm=st.sampled_from([30, 60, 120, 300]) | st.floats(6, 600),
       tpm=st.sampled_from([600, 1200]) | st.floats(300, 1500),
       burst_s=st.sampled_from([1.0, 2.0, 4.0]) | st.floats(0.5, 4),
       margin=margins, ops=op_lists(*SMALL_WORLD_OPS))
def test_levels_equal_a_replay_of_final_usage(rpm, tpm, burst_s, margin, ops) -> None:
    """Refunds are neither too generous (overshoot) nor too stingy (wasted capacity),
    and admission is decided by exactly that level."""
    clock = FakeClock()
    start = clock.now
    limiter = RateLimiter(rpm, tpm, burst_s=burst_s, rate_margin=margin, clock=clock)
    driver = Driver(limiter, clock)
    request_rate, request_capacity = request_shape(rpm, margin, burst_s)
    token_rate, token_capacity = token_shape(tpm, margin, burst_s)

    def levels() -> tuple[float, float]:
        return (replay_level(driver.requests, request_rate, request_capacity, start, clock.now),
                replay_level(driver.tokens, token_rate, token_capacity, start, clock.now))

    for op in ops:
        if op[0] == "acquire":
            need = min(op[1], token_capacity)
            request_level, token_level = levels()
            admitted_before = len(driver.requests)
            driver.apply(op)
            admitted = len(driver.requests) > admitted_before
            margin_r, margin_t = request_level - 1, token_level - need
            if min(abs(margin_r), abs(margin_t)) > 1e-6 * token_capacity:  # not on the edge
                assert admitted == (margin_r >= 0 and margin_t >= 0)
        else:
            driver.apply(op)
        request_level, token_level = levels()
        snap = limiter.snapshot()
        assert snap["requests_available"] == pytest.approx(request_level, rel=1e-6, abs=1e-6)
        assert snap["tokens_available"] == pytest.approx(token_level, rel=1e-6, abs=1e-4)


@settings(max_examples=200, deadline=None)
@given(rpm=st.none() | rpms, tpm=st.none() | tpms,
       wants=st.lists(st.integers(0, 10_000), min_size=1, max_size=20))
def test_waiting_time_until_available_always_admits(rpm, tpm, wants) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm, tpm, clock=clock)
    for tokens in wants:
        wait = limiter.time_until_available(tokens)
        assert 0 <= wait < math.inf
        clock.advance(wait)
        reservation = limiter.try_acquire(tokens)
        assert reservation is not None
        limiter.reconcile(reservation, tokens)
