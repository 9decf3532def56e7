"""Circuit breaker: stop sending to an API key that keeps failing, then probe it.

One breaker guards one endpoint (provider, base URL, key). While it is OPEN the
router sends that key's traffic elsewhere instead of paying a timeout per
request; after ``reset_timeout`` a few probe requests decide whether the key is
back (CLOSED) or still broken (OPEN again).

The breaker is pure and single-threaded: the clock is injected, nothing sleeps,
and time only "passes" when a method is called, so OPEN -> HALF_OPEN happens
lazily on the first call after the timeout. It lives inside an async actor,
where one event loop serialises every call, so it takes no locks.

Contract for callers: every request that ``allow_request()`` admitted ends in
exactly one of ``record_success()``, ``record_failure()`` or ``cancel_probe()``
(use ``finally``). Outcomes are not tied to a request: in HALF_OPEN every
recorded outcome counts as a probe's, including a slow request admitted before
the circuit opened that only finishes now.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import ConfigError

__all__ = ["CircuitState", "CircuitConfig", "CircuitBreaker", "TransitionCallback"]


class CircuitState(str, Enum):
    """A str enum so states compare equal to, and serialise as, plain strings."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


TransitionCallback = Callable[[CircuitState, CircuitState, str], None]


def _invalid(field: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"CircuitConfig.{field} must be {rule} (got {value!r})",
                       details={"field": field})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class CircuitConfig:
    """When to open, how long to stay open, and how carefully to close again.

    ``failure_rate_threshold`` (off by default) catches the flaky key that
    alternates successes and failures, which never reaches
    ``failure_threshold`` consecutive failures yet wastes half its requests.
    """

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 2
    half_open_max_probes: int = 1
    failure_rate_threshold: float | None = None
    window_s: float = 60.0
    min_requests_in_window: int = 10

    def __post_init__(self) -> None:
        for field in ("failure_threshold", "success_threshold", "half_open_max_probes",
                      "min_requests_in_window"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise _invalid(field, "an integer >= 1", value)
        if not _is_finite(self.reset_timeout) or self.reset_timeout < 0:
            raise _invalid("reset_timeout", "a finite number >= 0", self.reset_timeout)
        if not _is_finite(self.window_s) or self.window_s <= 0:
            raise _invalid("window_s", "a finite number > 0", self.window_s)
        rate = self.failure_rate_threshold
        # 0 would open on the first full window even with no failures at all.
        if rate is not None and (not _is_finite(rate) or not 0 < rate <= 1):
            raise _invalid("failure_rate_threshold", "None or a number in (0, 1]", rate)

    def with_overrides(self, **overrides: Any) -> CircuitConfig:
        """A copy with some fields changed, validated like a fresh config."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"CircuitConfig has no field {key!r}", details={"field": key})
        return dataclasses.replace(self, **overrides)


class _OutcomeWindow:
    """Request and failure counts over the last ``span`` seconds, in O(1) memory.

    Outcomes are summed into ``buckets`` time slices instead of being stored one
    by one, so thousands of requests per second for days cost a fixed ~60
    counters. The price is granularity: an outcome leaves the window between
    ``span - span/buckets`` and ``span`` seconds after it was recorded.
    """

    def __init__(self, span: float, buckets: int = 60) -> None:
        self._width = span / buckets
        self._buckets = buckets
        self._slices: deque[list[int]] = deque()  # [slice index, requests, failures]
        self.requests = 0
        self.failures = 0

    def _index(self, now: float) -> int:
        return math.floor(now / self._width)

    def prune(self, now: float) -> None:
        oldest = self._index(now) - self._buckets + 1
        while self._slices and self._slices[0][0] < oldest:
            _, requests, failures = self._slices.popleft()
            self.requests -= requests
            self.failures -= failures

    def add(self, now: float, failed: bool) -> None:
        self.prune(now)
        index = self._index(now)
        # ">=" keeps the deque ordered even if a test clock steps backwards.
        if self._slices and self._slices[-1][0] >= index:
            current = self._slices[-1]
        else:
            current = [index, 0, 0]
            self._slices.append(current)
        current[1] += 1
        current[2] += int(failed)
        self.requests += 1
        self.failures += int(failed)

    def clear(self) -> None:
        self._slices.clear()
        self.requests = 0
        self.failures = 0


class CircuitBreaker:
    """The CLOSED -> OPEN -> HALF_OPEN state machine for one endpoint.

    ``on_transition(old, new, reason)`` is called once per state change, after
    the breaker is already consistent, so it may read ``metrics()``; an
    exception it raises propagates to whoever triggered the change.
    """

    def __init__(self, config: CircuitConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_transition: TransitionCallback | None = None) -> None:
        self.config = config if config is not None else CircuitConfig()
        self._clock = clock
        self._on_transition = on_transition
        self._state = CircuitState.CLOSED
        self._opened_at: float | None = None
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._window = _OutcomeWindow(self.config.window_s)
        self._state_changes = 0
        self._last_reason: str | None = None
        self._total_successes = 0
        self._total_failures = 0

    # -- reading -----------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state, after moving OPEN -> HALF_OPEN if the timeout passed."""
        self._advance(self._clock())
        return self._state

    def is_usable(self) -> bool:
        """Whether ``allow_request()`` would admit a request now, without taking a slot.

        Schedulers call this to rank endpoints; only the one chosen then calls
        ``allow_request()``.
        """
        self._advance(self._clock())
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.HALF_OPEN:
            return self._probes_in_flight < self.config.half_open_max_probes
        return False

    def time_until_retry(self) -> float:
        """Seconds until an OPEN circuit lets a probe through; 0 in any other state."""
        now = self._clock()
        self._advance(now)
        return self._time_until_retry(now)

    def metrics(self) -> dict[str, Any]:
        """A plain, picklable snapshot for stats endpoints and the router."""
        now = self._clock()
        self._advance(now)
        self._window.prune(now)
        requests, failures = self._window.requests, self._window.failures
        return {
            "state": self._state.value,
            "consecutive_failures": self._consecutive_failures,
            "recent_failures": failures,
            "recent_requests": requests,
            "failure_rate": failures / requests if requests else 0.0,
            "opened_at": self._opened_at,
            "time_until_retry": self._time_until_retry(now),
            "probes_in_flight": self._probes_in_flight,
            "state_changes": self._state_changes,
            "last_transition_reason": self._last_reason,
            "total_successes": self._total_successes,
            "total_failures": self._total_failures,
        }

    # -- admitting ---------------------------------------------------------

    def allow_request(self) -> bool:
        """Admit a request or not; in HALF_OPEN an admitted request holds a probe slot."""
        self._advance(self._clock())
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.HALF_OPEN \
                and self._probes_in_flight < self.config.half_open_max_probes:
            self._probes_in_flight += 1
            return True
        return False

    def cancel_probe(self) -> None:
        """Give back a probe slot for a request that was admitted but never sent.

        Without this, a request dropped before sending (queue timeout, caller
        cancelled) would hold the only probe slot and keep the circuit
        HALF_OPEN, and the key unused, forever.
        """
        self._advance(self._clock())
        if self._state is CircuitState.HALF_OPEN:
            self._release_probe()

    # -- outcomes ----------------------------------------------------------

    def record_success(self) -> None:
        """Count a successful call; enough of them in HALF_OPEN close the circuit."""
        now = self._clock()
        self._advance(now)
        self._total_successes += 1
        self._consecutive_failures = 0
        self._window.add(now, failed=False)
        if self._state is CircuitState.HALF_OPEN:
            self._release_probe()
            self._probe_successes += 1
            if self._probe_successes >= self.config.success_threshold:
                self._transition(CircuitState.CLOSED,
                                 f"{self._probe_successes} consecutive probe successes", now)
        elif self._state is CircuitState.CLOSED:
            # A success can still complete a window whose failure rate is too high.
            self._trip_on_failure_rate(now)

    def record_failure(self) -> None:
        """Count a failed call; in HALF_OPEN a single one reopens the circuit."""
        now = self._clock()
        self._advance(now)
        self._total_failures += 1
        self._consecutive_failures += 1
        self._window.add(now, failed=True)
        if self._state is CircuitState.HALF_OPEN:
            self._transition(CircuitState.OPEN, "probe failed", now)
        elif self._state is CircuitState.CLOSED:
            threshold = self.config.failure_threshold
            if self._consecutive_failures >= threshold:
                self._transition(CircuitState.OPEN, f"{threshold} consecutive failures", now)
            else:
                self._trip_on_failure_rate(now)
        # Already OPEN: a late failure must not push the reopening further out.

    # -- overrides ---------------------------------------------------------

    def force_open(self, reason: str) -> None:
        """Open now, whatever the counts: a rejected key (401/403) will not heal by itself.

        Forcing an already open circuit restarts its timeout, since the key was
        just rejected again.
        """
        now = self._clock()
        self._advance(now)
        if self._state is CircuitState.OPEN:
            self._opened_at = now
        else:
            self._transition(CircuitState.OPEN, reason, now)

    def reset(self) -> None:
        """Back to a fresh CLOSED circuit (an operator fixed the key); lifetime totals stay."""
        now = self._clock()
        self._advance(now)
        self._consecutive_failures = 0
        if self._state is CircuitState.CLOSED:
            self._window.clear()
        else:
            self._transition(CircuitState.CLOSED, "reset", now)

    # -- internals ---------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self._state is CircuitState.OPEN and self._opened_at is not None \
                and now - self._opened_at >= self.config.reset_timeout:
            self._transition(CircuitState.HALF_OPEN,
                             f"reset timeout of {self.config.reset_timeout:g}s elapsed", now)

    def _time_until_retry(self, now: float) -> float:
        if self._state is not CircuitState.OPEN or self._opened_at is None:
            return 0.0
        # Same arithmetic as _advance, so "wait > 0" and "still OPEN" always agree.
        return max(0.0, self.config.reset_timeout - (now - self._opened_at))

    def _release_probe(self) -> None:
        if self._probes_in_flight:
            self._probes_in_flight -= 1

    def _trip_on_failure_rate(self, now: float) -> None:
        threshold = self.config.failure_rate_threshold
        if threshold is None:
            return
        self._window.prune(now)
        requests, failures = self._window.requests, self._window.failures
        if requests >= self.config.min_requests_in_window and failures / requests >= threshold:
            self._transition(
                CircuitState.OPEN,
                f"failure rate {failures}/{requests} >= {threshold:g} "
                f"within {self.config.window_s:g}s", now)

    def _transition(self, new: CircuitState, reason: str, now: float) -> None:
        old = self._state
        self._state = new
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is CircuitState.OPEN:
            self._opened_at = now
        elif new is CircuitState.CLOSED:
            # Judge the closed circuit on what happens from now on, not on the
            # failures that opened it, or one more failure would reopen it.
            self._opened_at = None
            self._consecutive_failures = 0
            self._window.clear()
        self._state_changes += 1
        self._last_reason = reason
        if self._on_transition is not None:
            self._on_transition(old, new, reason)
