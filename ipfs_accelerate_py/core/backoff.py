"""Retry policy: when a failed call is worth repeating, and how long to wait.

The numbers and rules follow the official OpenAI and Anthropic SDKs, so a call
through the gateway behaves like a call through the SDK the user already knows:
exponential backoff from 0.5 s doubling up to 8 s, minus up to 25 % jitter;
408/409/429/5xx retried; a server's ``x-should-retry`` header overrides the
status; a server's ``Retry-After`` hint is parsed here but honoured (or not) by
the caller, which alone knows whether another endpoint can take the request.

Everything here is pure: no I/O, no sleeping, randomness and wall-clock time
injectable, so the router and the tests decide when time passes.
"""
from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import dataclasses
import errno
import json
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

from ..errors import ConfigError, GatewayError

__all__ = [
    "RetryPolicy", "MAX_HONOURED_RETRY_AFTER", "retry_after_from_headers", "clamp_retry_after",
    "retry_delay_from_google", "is_retryable_status", "is_retryable_exception", "decide",
]

#: Longest server-requested wait worth honouring in-line; beyond it a caller is
#: better off failing over or surfacing the error than parking a request. Two
#: minutes is the OpenAI SDK's ``MAX_RETRY_AFTER_DELAY``.
MAX_HONOURED_RETRY_AFTER = 120.0


def _is_real(value: Any) -> bool:
    # bool is an int subclass, but ``jitter=True`` is a mistake, not a number.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(cls_name: str, field: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"{cls_name}.{field} must be {rule} (got {value!r})",
                       details={"field": field})


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait before each retry.

    Frozen so one policy can be shared by many endpoints and shipped between
    actors without anyone mutating it underneath the others.
    """

    max_retries: int = 3
    initial_retry_delay: float = 0.5
    backoff_factor: float = 2.0
    max_retry_delay: float = 8.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        # Validated here, once, so a bad YAML value fails at start-up with the
        # field's name instead of as an odd sleep deep inside a retry loop.
        name = type(self).__name__
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise _invalid(name, "max_retries", "an integer >= 0", self.max_retries)
        for field in ("initial_retry_delay", "max_retry_delay"):
            value = getattr(self, field)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise _invalid(name, field, "a finite number >= 0", value)
        if not _is_real(self.backoff_factor) or not math.isfinite(self.backoff_factor) \
                or self.backoff_factor < 1:
            raise _invalid(name, "backoff_factor", "a finite number >= 1", self.backoff_factor)
        if not _is_real(self.jitter) or not 0 <= self.jitter <= 1:
            raise _invalid(name, "jitter", "a number between 0 and 1", self.jitter)
        if self.max_retry_delay < self.initial_retry_delay:
            raise _invalid(name, "max_retry_delay",
                           f">= initial_retry_delay ({self.initial_retry_delay!r})",
                           self.max_retry_delay)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 is the first retry).

        Jitter only ever shortens the wait, so the cap is a true upper bound a
        caller can budget with, while many clients that failed together still
        spread out instead of hammering the provider in lock-step.
        """
        if not _is_int(attempt) or attempt < 0:
            raise ValueError(f"attempt must be an integer >= 0 (got {attempt!r})")
        base = self._capped_delay(attempt)
        if self.jitter == 0 or base == 0:
            return base
        draw = (rng if rng is not None else random).random()
        return base * (1.0 - self.jitter * draw)

    def _capped_delay(self, attempt: int) -> float:
        if self.initial_retry_delay == 0:
            return 0.0
        try:
            raw = self.initial_retry_delay * self.backoff_factor ** attempt
        except OverflowError:  # a huge attempt number is simply "the cap"
            return float(self.max_retry_delay)
        return float(min(self.max_retry_delay, raw))

    def with_overrides(self, **overrides: Any) -> RetryPolicy:
        """A copy with some fields changed, validated like a fresh policy.

        Per-endpoint settings are layered over the gateway defaults this way.
        """
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"{type(self).__name__} has no field {key!r}",
                                  details={"field": key})
        return dataclasses.replace(self, **overrides)


# ---------------------------------------------------------------------------
# Server hints: Retry-After and friends
# ---------------------------------------------------------------------------

# Strict on purpose: ``float()`` also accepts "nan", "inf", "1_0" and non-ASCII
# digits, none of which a server means as a delay.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)


def _parse_number(text: str) -> float | None:
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    # Plain dicts from tests and JSON are case-sensitive; aiohttp's are not.
    # Scanning once covers both without depending on aiohttp's types.
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            return value if isinstance(value, str) else str(value)
    return None


def retry_after_from_headers(headers: Mapping[str, str] | None,
                             now: float | None = None) -> float | None:
    """The wait in seconds a server asked for, or None if it asked for none.

    ``retry-after-ms`` wins over ``retry-after`` because it is the more precise
    of the two when a server (OpenAI, Anthropic) sends both. ``retry-after`` may
    be seconds or an HTTP date; ``now`` (epoch seconds) is only needed for the
    date form. Past dates and negative values mean "now" (0.0). Large values
    are returned as they are (a number too long for a float is ``inf``: the
    server asked for "a very long time", not for nothing); use
    ``clamp_retry_after`` to apply a ceiling.
    """
    if not headers:
        return None
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        value = _parse_number(millis)
        if value is not None:
            return max(0.0, value / 1000.0)
    text = _header(headers, "retry-after")
    if text is None:
        return None
    value = _parse_number(text)
    if value is not None:
        return max(0.0, value)
    return _seconds_until_http_date(text, now)


def _seconds_until_http_date(text: str, now: float | None) -> float | None:
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # older Pythons returned None instead of raising
        return None
    if when.tzinfo is None:  # asctime form carries no zone; HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def clamp_retry_after(value: float | None) -> float | None:
    """``value`` if it is a wait worth honouring in-line, else None.

    The SDKs ignore absurd hints (a misconfigured proxy saying "come back
    tomorrow") and fall back to their own backoff; None tells the caller to
    do the same.
    """
    if value is None or not 0.0 <= value <= MAX_HONOURED_RETRY_AFTER:
        return None
    return float(value)


_GOOGLE_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)s\s*", re.ASCII)


def retry_delay_from_google(body: Any) -> float | None:
    """The ``RetryInfo.retryDelay`` a Gemini/Google error body carries, in seconds.

    Google sends its retry hint in the JSON body rather than a header, and the
    free tier's per-minute quotas make it the difference between waiting 17 s
    and burning every retry in two seconds. Any unexpected shape yields None.
    """
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    # Streaming endpoints wrap the error in a one-element list.
    candidates = body if isinstance(body, list) else [body]
    for candidate in candidates:
        delay = _retry_delay_from_error(candidate)
        if delay is not None:
            return delay
    return None


def _retry_delay_from_error(body: Any) -> float | None:
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, dict) or "retryDelay" not in detail:
            continue
        kind = detail.get("@type")
        if kind is not None and not str(kind).endswith("google.rpc.RetryInfo"):
            continue
        delay = _parse_google_duration(detail["retryDelay"])
        if delay is not None:
            return delay
    return None


def _parse_google_duration(value: Any) -> float | None:
    if isinstance(value, str):
        match = _GOOGLE_DURATION.fullmatch(value)
        return float(match.group(1)) if match else None
    if isinstance(value, dict) and ("seconds" in value or "nanos" in value):
        seconds = _duration_part(value.get("seconds", 0))
        nanos = _duration_part(value.get("nanos", 0))
        if seconds is None or nanos is None:
            return None
        return max(0.0, seconds + nanos / 1e9)
    return None


def _duration_part(value: Any) -> float | None:
    # Protobuf JSON writes int64 as a string, so "17" is as valid as 17.
    if isinstance(value, str):
        return _parse_number(value)
    if _is_real(value) and math.isfinite(value):
        return float(value)
    return None


# ---------------------------------------------------------------------------
# What is worth retrying
# ---------------------------------------------------------------------------

#: 408 timeout, 409 lock conflict, 429 rate limit: the SDKs' list. 498 is what
#: Groq answers when flex capacity is exhausted, a rate limit by another name.
_RETRYABLE_STATUSES = frozenset({408, 409, 429, 498})


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status says "try again" rather than "your request is wrong"."""
    return status in _RETRYABLE_STATUSES or status >= 500


def decide(status: int | None, headers: Mapping[str, str] | None = None) -> bool:
    """Whether to retry a response, letting the server overrule the status.

    ``x-should-retry`` is how OpenAI and Anthropic say "this 500 will fail
    again" or "this 400 is transient"; the SDKs obey it, so we do. A None
    status means no response arrived at all, which is a transport failure and
    retried like one.
    """
    hint = _header(headers, "x-should-retry") if headers else None
    if hint is not None:
        hint = hint.strip().lower()
        if hint == "true":
            return True
        if hint == "false":
            return False
    return True if status is None else is_retryable_status(status)


_TIMEOUT_TYPES = (builtins.TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)

#: errno values of an OSError that describe a broken or unreachable peer.
_TRANSIENT_ERRNOS = frozenset(
    code for code in (getattr(errno, name, None) for name in (
        "ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "ENETDOWN",
        "ENETUNREACH", "ENETRESET", "EHOSTDOWN", "EHOSTUNREACH",
    )) if code is not None
)

# aiohttp's exception classes, recognised by name so core/ never imports it.
# The MRO is walked most-specific first, so the denied TLS/fingerprint errors
# (bad certificates do not heal on retry) win over the connection base classes
# they derive from.
_AIOHTTP_RETRYABLE = frozenset({
    "ClientConnectionError", "ClientOSError", "ClientConnectorError", "ServerConnectionError",
    "ServerDisconnectedError", "ServerTimeoutError", "ClientPayloadError",
})
_AIOHTTP_NOT_RETRYABLE = frozenset({
    "ClientSSLError", "ClientConnectorSSLError", "ClientConnectorCertificateError",
    "ServerFingerprintMismatch",
})


def is_retryable_exception(exc: BaseException) -> bool:
    """Whether an exception raised while calling a provider is worth retrying.

    Our own errors know the answer (``retryable``); for everything else only
    network trouble qualifies, because retrying a bug just repeats it.
    """
    if isinstance(exc, GatewayError):
        return bool(exc.retryable)
    for cls in type(exc).__mro__:
        if cls.__name__ in _AIOHTTP_NOT_RETRYABLE:
            return False
        if cls.__name__ in _AIOHTTP_RETRYABLE:
            return True
    if isinstance(exc, (builtins.ConnectionError, *_TIMEOUT_TYPES)):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS
