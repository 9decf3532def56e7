"""Per-key RPM / TPM admission: token buckets with reservation and reconciliation.

One ``RateLimiter`` guards one API key.  Before a request is sent it reserves
one request and an *estimate* of its tokens (``try_acquire``); when the response
reports the real usage the estimate is corrected (``reconcile``); a request that
was never sent hands its reservation back (``cancel``).  Providers' rate-limit
headers can only make the limiter more careful (``update_from_headers``), and a
429 with Retry-After stops admission outright (``block_for``).

Buckets run at ``limit / 60 * (1 - rate_margin)`` per second: the margin absorbs
the jitter between our admission clock and the provider's, which would
otherwise turn an exactly-at-the-limit schedule into a trickle of 429s.  A
bucket holds ``burst_s`` seconds of traffic, so bursts stay small.

Refunds are exact, not naive.  Handing a cancelled reservation back "now" would
count it twice when the bucket has meanwhile refilled to full: the refill
already paid for it.  So every in-flight reservation keeps a *refund right*:
the most that removing its take from history could raise today's level.  It
starts at ``capacity - level`` right after the take, shrinks whenever the level
climbs towards capacity (``right <= capacity - level`` at all times), and
other reservations' refunds shift it (see ``_Axis.refund``).  The refund given
is ``min(amount, right)``, which makes the level exactly what it would be had
the reservation asked only for what it used.  Rights are nondecreasing in
admission order, so exhausted ones form a prefix that is dropped eagerly.

The module is pure and single-threaded: the clock is injected, nothing sleeps,
and nothing locks (the limiter lives in an async actor whose event loop
serialises every call).  Contract for callers: every reservation ends in exactly
one ``reconcile`` or ``cancel`` (use ``finally``); a second call is a no-op.
"""
from __future__ import annotations

import itertools
import math
import numbers
import re
import time
from collections import OrderedDict
from dataclasses import astuple, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping

from ..errors import ConfigError

__all__ = [
    "parse_duration", "RateLimitHeaders", "parse_openai_rate_headers",
    "parse_anthropic_rate_headers", "TokenBucket", "Reservation", "RateLimiter",
]

Clock = Callable[[], float]

#: relative slack in level comparisons, so that waiting exactly
#: ``time_until(n)`` always admits ``n`` despite floating-point rounding
_EPS = 1e-9

# ---------------------------------------------------------------------------
# Header parsing
# ---------------------------------------------------------------------------

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"  # "ms" before "m" and "s": alternation is ordered
_PLAIN_RE = re.compile(_NUMBER)
_DURATION_RE = re.compile(rf"(?:{_NUMBER}{_UNIT})+")
_DURATION_PART_RE = re.compile(rf"({_NUMBER})({_UNIT})")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3,
           "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}


def parse_duration(value: str) -> float | None:
    """Seconds in a Go duration ("6m0s", "2m59.56s", "12ms") or a plain number ("1.5").

    OpenAI and Groq send their reset times this way.  Negative, non-finite and
    malformed values are None: a wrong reset time is worse than none.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _PLAIN_RE.fullmatch(text):
        seconds = float(text)
    elif _DURATION_RE.fullmatch(text):
        seconds = sum(float(number) * _UNIT_S[unit]
                      for number, unit in _DURATION_PART_RE.findall(text))
    else:
        return None
    return seconds if math.isfinite(seconds) else None


@dataclass(frozen=True)
class RateLimitHeaders:
    """What a provider said about one key's limits; None where it said nothing.

    Counts are in the provider's own window (per minute for most), resets are
    seconds from the moment the response was parsed.
    """

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(key).lower(): str(value) for key, value in headers.items()}


def _count(value: str | None) -> float | None:
    """A non-negative finite number, or None for a missing or garbled header."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _informative(result: RateLimitHeaders) -> RateLimitHeaders | None:
    return None if all(field is None for field in astuple(result)) else result


def parse_openai_rate_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (OpenAI, Groq, many clones).

    None when no header carries a usable value, so callers can tell "the
    provider reports nothing" from "the provider reports zero".
    """
    h = _lowered(headers)

    def reset(axis: str) -> float | None:
        raw = h.get(f"x-ratelimit-reset-{axis}")
        return None if raw is None else parse_duration(raw)

    return _informative(RateLimitHeaders(
        limit_requests=_count(h.get("x-ratelimit-limit-requests")),
        remaining_requests=_count(h.get("x-ratelimit-remaining-requests")),
        reset_requests_s=reset("requests"),
        limit_tokens=_count(h.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_count(h.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=reset("tokens"),
    ))


_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")


def _rfc3339_epoch(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp; a missing offset is read as UTC."""
    match = _RFC3339_RE.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    tz = timezone.utc
    if offset and offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        try:
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        except ValueError:
            return None
    leap = 1 if second == 60 else 0  # RFC 3339 allows a leap second; datetime does not
    try:
        stamp = datetime(year, month, day, hour, minute, second - leap, tzinfo=tz).timestamp()
    except ValueError:
        return None
    return stamp + leap + (float(fraction) if fraction else 0.0)


def parse_anthropic_rate_headers(headers: Mapping[str, str],
                                 now_wall: float | None = None) -> RateLimitHeaders | None:
    """``anthropic-ratelimit-*`` headers; resets are RFC 3339 instants made relative.

    Anthropic reports tokens, input tokens and output tokens separately; the
    limiter has one token axis, so the family with the least remaining wins
    (its limit and reset come along; missing ones fall back to the tightest
    limit and the latest reset of the other families).  Resets in the past are
    0.  ``now_wall`` is the wall clock (``time.time()``) the instants are
    compared with.
    """
    h = _lowered(headers)
    now = time.time() if now_wall is None else now_wall

    def family(name: str) -> tuple[float | None, float | None, float | None]:
        prefix = f"anthropic-ratelimit-{name}-"
        raw_reset = h.get(prefix + "reset")
        epoch = None if raw_reset is None else _rfc3339_epoch(raw_reset)
        reset = None if epoch is None else max(0.0, epoch - now)
        return _count(h.get(prefix + "limit")), _count(h.get(prefix + "remaining")), reset

    limit_requests, remaining_requests, reset_requests = family("requests")
    token_families = [family(name) for name in ("tokens", "input-tokens", "output-tokens")]
    tightest = min((f for f in token_families if f[1] is not None),
                   key=lambda f: f[1] or 0.0, default=(None, None, None))
    limits = [f[0] for f in token_families if f[0] is not None]
    resets = [f[2] for f in token_families if f[2] is not None]
    limit_tokens = tightest[0] if tightest[0] is not None else min(limits, default=None)
    reset_tokens = tightest[2] if tightest[2] is not None else max(resets, default=None)
    return _informative(RateLimitHeaders(
        limit_requests=limit_requests, remaining_requests=remaining_requests,
        reset_requests_s=reset_requests, limit_tokens=limit_tokens,
        remaining_tokens=tightest[1], reset_tokens_s=reset_tokens,
    ))


# ---------------------------------------------------------------------------
# Token bucket
# ---------------------------------------------------------------------------

def _finite(value: Any) -> bool:
    """A real number (numpy scalars included), not a bool, not inf or NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class TokenBucket:
    """A bucket of ``capacity`` units refilling continuously at ``rate_per_s``; starts full.

    The level never exceeds capacity but may go negative through ``take``:
    that is debt for usage that already happened (a response longer than
    estimated) and is repaid by refill before anything else is admitted.
    Time only advances when a method reads the clock; a clock that steps
    backwards is ignored rather than trusted.
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock = time.monotonic) -> None:
        self._rate, self._capacity = self._validated(rate_per_s, capacity)
        self._clock = clock
        self._level = self._capacity
        #: refill is accounted up to here; may lie in the future while held
        self._last = clock()

    @staticmethod
    def _validated(rate_per_s: float, capacity: float) -> tuple[float, float]:
        if not _finite(rate_per_s) or rate_per_s < 0:
            raise ConfigError(f"TokenBucket rate_per_s must be a finite number >= 0 (got {rate_per_s!r})")
        if not _finite(capacity) or capacity <= 0:
            raise ConfigError(f"TokenBucket capacity must be a finite number > 0 (got {capacity!r})")
        return float(rate_per_s), float(capacity)

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    def _refill(self) -> float:
        now = self._clock()
        if now > self._last:
            if self._level < self._capacity:
                self._level = min(self._capacity, self._level + (now - self._last) * self._rate)
            self._last = now
        return self._level

    def _enough(self, level: float, n: float) -> bool:
        return level + _EPS * self._capacity >= n

    def available(self) -> float:
        """The current level (negative while in debt)."""
        return self._refill()

    def try_take(self, n: float) -> bool:
        """Take ``n`` if the bucket holds it; otherwise take nothing."""
        if self._enough(self._refill(), n):
            self._level -= n
            return True
        return False

    def take(self, n: float) -> None:
        """Take ``n`` even if that runs into debt: for usage that already happened."""
        self._refill()
        self._level -= n

    def give_back(self, n: float) -> None:
        """Return ``n`` units, never beyond capacity."""
        self._level = min(self._capacity, self._refill() + n)

    def lower_to(self, level: float) -> None:
        """Lower the level to ``level``; a higher value changes nothing."""
        self._level = min(self._refill(), level)

    def hold_until(self, until: float) -> None:
        """Empty the bucket (keeping debt) and refill nothing before ``until``."""
        self._level = min(self._refill(), 0.0)
        self._last = max(self._last, until)

    def time_until(self, n: float) -> float:
        """Seconds until ``try_take(n)`` would succeed; ``math.inf`` if it never can."""
        level = self._refill()
        if self._enough(level, n):
            return 0.0
        if not self._enough(self._capacity, n) or self._rate == 0:
            return math.inf
        held = max(0.0, self._last - self._clock())
        return held + (n - level) / self._rate

    def reconfigure(self, rate_per_s: float, capacity: float) -> None:
        """Change rate and capacity, keeping the fill ratio (and any debt, scaled)."""
        rate, capacity = self._validated(rate_per_s, capacity)
        ratio = self._refill() / self._capacity
        self._rate, self._capacity = rate, capacity
        self._level = ratio * self._capacity


# ---------------------------------------------------------------------------
# Rate limiter
# ---------------------------------------------------------------------------

#: process-wide, so a reservation can never be mistaken for another limiter's
_reservation_ids = itertools.count(1)
_UNCHANGED: Any = object()


@dataclass(frozen=True)
class Reservation:
    """What ``try_acquire`` took: one request and ``tokens`` (the clamped estimate)."""

    id: int
    tokens: float
    requests: int = 1


class _Axis:
    """One limited quantity (requests or tokens): its bucket and the refund rights.

    ``_rights`` maps reservation id -> refund right, in admission order.  The
    invariant ``right <= capacity - level`` is restored (``_observe``) before
    every change of level, which is where the level peaks between changes.
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock) -> None:
        self.bucket = TokenBucket(rate_per_s, capacity, clock)
        self._rights: OrderedDict[int, float] = OrderedDict()

    def _observe(self) -> float:
        level = self.bucket.available()
        room = self.bucket.capacity - level
        for rid in reversed(self._rights):  # rights ascend: clip the newest until one fits
            if self._rights[rid] <= room:
                break
            self._rights[rid] = room
        self._drop_exhausted()
        return level

    def _drop_exhausted(self) -> None:
        while self._rights and next(iter(self._rights.values())) <= 0:
            self._rights.popitem(last=False)

    def has(self, n: float) -> bool:
        return self.bucket.time_until(n) == 0.0

    def reserve(self, rid: int, n: float) -> None:
        self._observe()
        self.bucket.take(n)
        self._rights[rid] = self.bucket.capacity - self.bucket.available()

    def charge(self, n: float) -> None:
        """Debt for usage beyond the reservation: it happened, so it always counts."""
        self._observe()
        self.bucket.take(n)

    def forget(self, rid: int) -> None:
        """The reservation is final as reserved: nothing to refund, others unaffected."""
        self._rights.pop(rid, None)

    def refund(self, rid: int, amount: float) -> None:
        """Rewrite history as if reservation ``rid`` had taken ``amount`` less.

        Refunds ``min(amount, right)``.  Later reservations never saw the
        rewritten take inside their own history, so their rights shrink by
        what the level just gained; earlier ones did, so theirs grow by
        ``amount`` but never beyond the refunded reservation's right.
        """
        self._observe()
        right = self._rights.pop(rid, None)
        if right is None or amount <= 0:
            return
        given = min(amount, right)
        self.bucket.give_back(given)
        for other in self._rights:
            value = self._rights[other]
            self._rights[other] = (value - given if other > rid
                                   else min(value + amount, right) - given)
        self._drop_exhausted()

    def lower_to(self, level: float) -> None:
        self._observe()
        self.bucket.lower_to(level)

    def hold_until(self, until: float) -> None:
        self._observe()
        self.bucket.hold_until(until)

    def reconfigure(self, rate_per_s: float, capacity: float) -> None:
        """New limits; refund rights are dropped because they have no meaning in the
        new bucket, and refunding too much is the one mistake a limiter must not make."""
        self.bucket.reconfigure(rate_per_s, capacity)
        self._rights.clear()

    def headroom(self) -> float:
        return min(1.0, max(0.0, self.bucket.available() / self.bucket.capacity))


def _check_amount(name: str, value: float) -> float:
    if not _finite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")
    return float(value)


def _check_limit(name: str, value: float | None) -> float | None:
    if value is not None and (not _finite(value) or value <= 0):
        raise ConfigError(f"RateLimiter {name} must be a number > 0 or None for unlimited "
                          f"(got {value!r})", details={"field": name})
    return None if value is None else float(value)


class RateLimiter:
    """RPM and TPM admission for one API key.

    ``None`` for a limit means that axis is unlimited.  Requests whose token
    estimate exceeds the token bucket's capacity reserve the whole capacity
    instead (they wait for a full bucket and empty it); ``reconcile`` then
    charges the rest as debt.  Without the clamp a large prompt could never be
    admitted at all.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 burst_s: float = 1.0, rate_margin: float = 0.05,
                 clock: Clock = time.monotonic) -> None:
        if not _finite(rate_margin) or not 0 <= rate_margin < 1:
            raise ConfigError(f"RateLimiter rate_margin must be in [0, 1) (got {rate_margin!r})",
                              details={"field": "rate_margin"})
        self._clock = clock
        self._margin = float(rate_margin)
        self._rpm: float | None = None
        self._tpm: float | None = None
        self._burst_s = 1.0
        self._requests: _Axis | None = None
        self._tokens: _Axis | None = None
        self._pending: dict[int, Reservation] = {}
        self._blocked_until = -math.inf
        self.configure(rpm=rpm, tpm=tpm, burst_s=burst_s)

    # -- configuration ------------------------------------------------------
    @property
    def rpm(self) -> float | None:
        return self._rpm

    @property
    def tpm(self) -> float | None:
        return self._tpm

    @property
    def burst_s(self) -> float:
        return self._burst_s

    def _shape(self, limit: float, requests: bool, burst_s: float) -> tuple[float, float]:
        """(rate per second, capacity) of one axis.

        Request capacity follows the margined rate; token capacity follows the
        nominal limit so that the largest prompt admitted without the clamp is
        not shaved by the margin too.
        """
        rate = limit / 60.0 * (1.0 - self._margin)
        per_burst = (rate if requests else limit / 60.0) * burst_s
        return rate, max(1.0, per_burst)

    def configure(self, *, rpm: float | None = _UNCHANGED, tpm: float | None = _UNCHANGED,
                  burst_s: float = _UNCHANGED) -> None:
        """Change limits at run time; each bucket keeps its current fill ratio.

        An axis that becomes limited starts full; one that becomes unlimited is
        dropped.  In-flight reservations lose their refund rights on a changed
        axis (see ``_Axis.reconfigure``) but still pay debt when they overrun.
        """
        new_rpm = self._rpm if rpm is _UNCHANGED else _check_limit("rpm", rpm)
        new_tpm = self._tpm if tpm is _UNCHANGED else _check_limit("tpm", tpm)
        new_burst = self._burst_s if burst_s is _UNCHANGED else burst_s
        if not _finite(new_burst) or new_burst <= 0:
            raise ConfigError(f"RateLimiter burst_s must be a number > 0 (got {new_burst!r})",
                              details={"field": "burst_s"})
        self._burst_s = float(new_burst)
        self._rpm, self._tpm = new_rpm, new_tpm
        self._requests = self._reshape(self._requests, new_rpm, True)
        self._tokens = self._reshape(self._tokens, new_tpm, False)

    def _reshape(self, axis: _Axis | None, limit: float | None, requests: bool) -> _Axis | None:
        if limit is None:
            return None
        rate, capacity = self._shape(limit, requests, self._burst_s)
        if axis is None:
            return _Axis(rate, capacity, self._clock)
        if (rate, capacity) != (axis.bucket.rate_per_s, axis.bucket.capacity):
            axis.reconfigure(rate, capacity)
        return axis

    # -- admission ----------------------------------------------------------
    def _axes(self, tokens: float) -> Iterator[tuple[_Axis, float]]:
        if self._requests is not None:
            yield self._requests, 1.0
        if self._tokens is not None:
            yield self._tokens, tokens

    def _reserved_tokens(self, tokens: float) -> float:
        """The estimate, clamped to the token capacity (see the class docstring)."""
        return tokens if self._tokens is None else min(tokens, self._tokens.bucket.capacity)

    def try_acquire(self, tokens: int = 0) -> Reservation | None:
        """Take one request and ``tokens`` from both buckets, or nothing at all."""
        need = self._reserved_tokens(_check_amount("tokens", tokens))
        if self._clock() < self._blocked_until:
            return None
        if not all(axis.has(amount) for axis, amount in self._axes(need)):
            return None
        reservation = Reservation(id=next(_reservation_ids), tokens=need)
        for axis, amount in self._axes(need):
            axis.reserve(reservation.id, amount)
        self._pending[reservation.id] = reservation
        return reservation

    def _settle(self, reservation: Reservation) -> bool:
        """Claim a reservation for its one final call; False if it is not (or no longer) ours."""
        if self._pending.get(reservation.id) != reservation:
            return False
        del self._pending[reservation.id]
        return True

    def reconcile(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reservation's token estimate by the usage the response reported.

        Overruns are charged even into debt (the usage happened); underruns are
        refunded as far as the refund right allows.  Idempotent.
        """
        actual = _check_amount("actual_tokens", actual_tokens)
        if not self._settle(reservation):
            return
        if self._requests is not None:
            self._requests.forget(reservation.id)
        if self._tokens is not None:
            if actual > reservation.tokens:
                self._tokens.forget(reservation.id)
                self._tokens.charge(actual - reservation.tokens)
            else:
                self._tokens.refund(reservation.id, reservation.tokens - actual)

    def cancel(self, reservation: Reservation) -> None:
        """The request was never sent: refund its request and tokens.  Idempotent."""
        if not self._settle(reservation):
            return
        for axis, amount in self._axes(reservation.tokens):
            axis.refund(reservation.id, amount)

    def time_until_available(self, tokens: int = 0) -> float:
        """0 if ``try_acquire(tokens)`` would succeed now, else seconds until it would.

        Exact when nothing else happens meanwhile; ``math.inf`` never occurs
        for a valid configuration because estimates are clamped to capacity.
        """
        need = self._reserved_tokens(_check_amount("tokens", tokens))
        blocked = max(0.0, self._blocked_until - self._clock())
        return max([blocked] + [axis.bucket.time_until(amount) for axis, amount in self._axes(need)])

    # -- provider feedback --------------------------------------------------
    def observe_remaining(self, requests: float | None, tokens: float | None) -> None:
        """Lower the levels to what the provider says is left; never raise them.

        A header can be stale (responses overtake each other), so believing a
        higher figure could overshoot; a lower one is always safe to believe.
        An unlimited axis has nothing to lower: limits are not invented from
        headers.
        """
        for axis, remaining in ((self._requests, requests), (self._tokens, tokens)):
            if axis is not None and remaining is not None and _finite(remaining):
                axis.lower_to(max(0.0, float(remaining)))

    def update_from_headers(self, headers: RateLimitHeaders | None) -> None:
        """Apply a response's parsed rate-limit headers (see ``observe_remaining``)."""
        if headers is not None:
            self.observe_remaining(headers.remaining_requests, headers.remaining_tokens)

    def block_for(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (a 429's Retry-After); buckets refill only after.

        Blocks only extend: an earlier, longer Retry-After still holds.
        """
        if not _finite(seconds) or seconds <= 0:
            return
        until = self._clock() + seconds
        self._blocked_until = max(self._blocked_until, until)
        for axis in (self._requests, self._tokens):
            if axis is not None:
                axis.hold_until(self._blocked_until)

    # -- introspection ------------------------------------------------------
    def headroom(self) -> float:
        """Fraction of capacity left on the tightest axis: 0 blocked or empty, 1 unlimited."""
        if self._clock() < self._blocked_until:
            return 0.0
        return min((axis.headroom() for axis in (self._requests, self._tokens) if axis is not None),
                   default=1.0)

    def snapshot(self) -> dict[str, float | None]:
        """Plain values for stats and the router: availability is ``inf`` when unlimited,
        ``rpm``/``tpm`` are None when unlimited."""
        def level(axis: _Axis | None) -> float:
            return math.inf if axis is None else axis.bucket.available()

        return {
            "requests_available": level(self._requests),
            "tokens_available": level(self._tokens),
            "rpm": self._rpm,
            "tpm": self._tpm,
            "blocked_for": max(0.0, self._blocked_until - self._clock()),
            "headroom": self.headroom(),
        }

    @property
    def in_flight(self) -> int:
        """Reservations neither reconciled nor cancelled yet."""
        return len(self._pending)
