"""Circuit breaker state machine (core/circuit.py), driven by a fake clock."""
from __future__ import annotations

import ast
import dataclasses
import math
import pathlib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.core import circuit
from ipfs_accelerate_py.core.circuit import CircuitBreaker, CircuitConfig, CircuitState

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """An ``on_transition`` callback that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[CircuitState, CircuitState, str]] = []

    def __call__(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        self.calls.append((old, new, reason))

    @property
    def pairs(self) -> list[tuple[CircuitState, CircuitState]]:
        return [(old, new) for old, new, _ in self.calls]


def make(**overrides: object) -> tuple[CircuitBreaker, FakeClock, Recorder]:
    clock, recorder = FakeClock(), Recorder()
    breaker = CircuitBreaker(CircuitConfig().with_overrides(**overrides), clock=clock,
                             on_transition=recorder)
    return breaker, clock, recorder


def open_breaker(breaker: CircuitBreaker) -> None:
    breaker.force_open("test")


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(breaker.config.reset_timeout)
    assert breaker.state is HALF_OPEN


# ---------------------------------------------------------------------------
# States and configuration
# ---------------------------------------------------------------------------

def test_states_are_plain_strings() -> None:
    assert [s.value for s in CircuitState] == ["CLOSED", "OPEN", "HALF_OPEN"]
    assert CircuitState.HALF_OPEN == "HALF_OPEN"
    assert CircuitState("OPEN") is OPEN


def test_config_defaults() -> None:
    config = CircuitConfig()
    assert dataclasses.asdict(config) == {
        "failure_threshold": 5, "reset_timeout": 30.0, "success_threshold": 2,
        "half_open_max_probes": 1, "failure_rate_threshold": None, "window_s": 60.0,
        "min_requests_in_window": 10,
    }


@pytest.mark.parametrize("field, value", [
    ("failure_threshold", 0), ("failure_threshold", -1), ("failure_threshold", 2.5),
    ("failure_threshold", True), ("failure_threshold", "5"),
    ("reset_timeout", -1.0), ("reset_timeout", math.inf), ("reset_timeout", math.nan),
    ("reset_timeout", "30"),
    ("success_threshold", 0), ("success_threshold", 1.0),
    ("half_open_max_probes", 0), ("half_open_max_probes", None),
    ("failure_rate_threshold", 0.0), ("failure_rate_threshold", -0.1), ("failure_rate_threshold", 1.01),
    ("failure_rate_threshold", math.nan), ("failure_rate_threshold", "0.5"),
    ("window_s", 0.0), ("window_s", -60.0), ("window_s", math.inf),
    ("min_requests_in_window", 0), ("min_requests_in_window", 10.0),
])
def test_invalid_config_raises_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(errors.ConfigError) as info:
        CircuitConfig(**{field: value})
    assert field in str(info.value)
    assert info.value.details["field"] == field


@pytest.mark.parametrize("kwargs", [
    {"reset_timeout": 0.0}, {"failure_rate_threshold": 1.0}, {"failure_rate_threshold": 0.01},
    {"failure_threshold": 1, "success_threshold": 1, "half_open_max_probes": 1, "min_requests_in_window": 1},
    {"reset_timeout": 5}, {"window_s": 1},
])
def test_boundary_config_values_are_valid(kwargs: dict) -> None:
    assert dataclasses.asdict(CircuitConfig(**kwargs)).items() >= kwargs.items()


def test_config_with_overrides() -> None:
    base = CircuitConfig()
    changed = base.with_overrides(failure_threshold=3, failure_rate_threshold=0.5)
    assert changed.failure_threshold == 3 and changed.failure_rate_threshold == 0.5
    assert changed.reset_timeout == 30.0
    assert base == CircuitConfig()
    with pytest.raises(errors.ConfigError, match="success_threshold"):
        base.with_overrides(success_threshold=0)
    with pytest.raises(errors.ConfigError, match="threshhold"):
        base.with_overrides(failure_threshhold=3)


def test_default_breaker_uses_default_config_and_real_clock() -> None:
    breaker = CircuitBreaker()
    assert breaker.config == CircuitConfig()
    assert breaker.state is CLOSED and breaker.allow_request()


# ---------------------------------------------------------------------------
# CLOSED -> OPEN
# ---------------------------------------------------------------------------

def test_opens_after_consecutive_failures() -> None:
    breaker, clock, recorder = make(failure_threshold=3)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is CLOSED and breaker.allow_request()
    breaker.record_failure()
    assert breaker.state is OPEN
    assert recorder.calls == [(CLOSED, OPEN, "3 consecutive failures")]
    assert breaker.metrics()["opened_at"] == clock.now


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _, recorder = make(failure_threshold=3)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is CLOSED and recorder.calls == []
    assert breaker.metrics()["consecutive_failures"] == 0


def test_failure_rate_opens_a_flaky_circuit() -> None:
    breaker, _, recorder = make(failure_threshold=100, failure_rate_threshold=0.5, min_requests_in_window=10)
    for _ in range(4):
        breaker.record_failure()
        breaker.record_success()
    breaker.record_failure()          # 5 failures / 9 requests: too few to judge
    assert breaker.state is CLOSED
    breaker.record_success()          # 5 / 10 = 0.5: a success completes the window
    assert breaker.state is OPEN
    assert recorder.pairs == [(CLOSED, OPEN)]
    assert "failure rate 5/10" in recorder.calls[0][2]


def test_failure_rate_below_threshold_stays_closed() -> None:
    breaker, _, _ = make(failure_threshold=100, failure_rate_threshold=0.5, min_requests_in_window=10)
    for _ in range(50):
        breaker.record_failure()
        for _ in range(2):
            breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.metrics()["failure_rate"] == pytest.approx(1 / 3)


def test_failure_rate_is_ignored_when_not_configured() -> None:
    breaker, _, _ = make(failure_threshold=3)
    for _ in range(100):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.metrics()["failure_rate"] == pytest.approx(2 / 3)


def test_failures_older_than_the_window_do_not_count() -> None:
    breaker, clock, _ = make(failure_threshold=100, failure_rate_threshold=0.5,
                             min_requests_in_window=10, window_s=60.0)
    clock.now = 0.0
    for _ in range(9):
        breaker.record_failure()
    clock.advance(60.0)
    breaker.record_failure()
    assert breaker.state is CLOSED
    assert breaker.metrics()["recent_requests"] == 1


def test_window_granularity_is_one_sixtieth_of_the_window() -> None:
    breaker, clock, _ = make(window_s=60.0)
    clock.now = 0.5
    breaker.record_failure()
    clock.now = 59.999
    assert breaker.metrics()["recent_failures"] == 1
    clock.now = 60.0
    assert breaker.metrics()["recent_failures"] == 0


def test_window_memory_stays_bounded() -> None:
    window = circuit._OutcomeWindow(span=60.0)
    now = 0.0
    for i in range(200_000):   # ~4 hours at 14 requests per second
        now += 0.07
        window.add(now, failed=i % 3 == 0)
        assert len(window._slices) <= 60
    window.prune(now)
    assert window.requests == sum(s[1] for s in window._slices) <= 60 / 0.07 + 1
    assert window.failures == sum(s[2] for s in window._slices)


def test_window_tolerates_a_clock_stepping_backwards() -> None:
    window = circuit._OutcomeWindow(span=10.0)
    window.add(100.0, failed=True)
    window.add(95.0, failed=False)
    assert (window.requests, window.failures) == (2, 1)
    window.prune(120.0)
    assert (window.requests, window.failures, len(window._slices)) == (0, 0, 0)


# ---------------------------------------------------------------------------
# OPEN -> HALF_OPEN
# ---------------------------------------------------------------------------

def test_open_refuses_until_the_reset_timeout() -> None:
    breaker, clock, recorder = make(reset_timeout=30.0)
    open_breaker(breaker)
    opened_at = clock.now
    for elapsed in (0.0, 10.0, 29.999):
        clock.now = opened_at + elapsed
        assert not breaker.allow_request()
        assert not breaker.is_usable()
        assert breaker.state is OPEN
        assert breaker.time_until_retry() == pytest.approx(30.0 - elapsed)
    assert recorder.pairs == [(CLOSED, OPEN)]


def test_time_until_retry_never_exceeds_the_reset_timeout() -> None:
    breaker, clock, _ = make(reset_timeout=5.0)
    clock.now = 5.001   # opened_at + timeout - now would round up to 5.000000000000001
    open_breaker(breaker)
    assert breaker.time_until_retry() <= 5.0


def test_half_open_is_entered_lazily() -> None:
    breaker, clock, recorder = make(reset_timeout=30.0)
    open_breaker(breaker)
    clock.advance(31.0)
    assert recorder.pairs == [(CLOSED, OPEN)]        # nothing happens until someone looks
    assert breaker.state is HALF_OPEN
    assert recorder.pairs == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert recorder.calls[-1][2] == "reset timeout of 30s elapsed"
    assert breaker.time_until_retry() == 0.0


@pytest.mark.parametrize("method", ["allow_request", "is_usable", "time_until_retry", "metrics",
                                    "cancel_probe", "record_success"])
def test_every_entry_point_observes_the_timeout(method: str) -> None:
    breaker, clock, recorder = make(reset_timeout=5.0)
    open_breaker(breaker)
    clock.advance(5.0)
    getattr(breaker, method)()
    assert recorder.pairs[1] == (OPEN, HALF_OPEN)


def test_zero_reset_timeout_goes_straight_to_half_open() -> None:
    breaker, _, recorder = make(reset_timeout=0.0, failure_threshold=1)
    breaker.record_failure()
    assert breaker.allow_request()
    assert recorder.pairs == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_late_failure_while_open_does_not_delay_the_probe() -> None:
    breaker, clock, recorder = make(reset_timeout=30.0)
    open_breaker(breaker)
    opened_at = clock.now
    clock.advance(20.0)
    breaker.record_failure()       # a slow request admitted before the circuit opened
    breaker.record_success()
    assert breaker.metrics()["opened_at"] == opened_at
    assert breaker.time_until_retry() == pytest.approx(10.0)
    assert recorder.pairs == [(CLOSED, OPEN)]


# ---------------------------------------------------------------------------
# HALF_OPEN
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_admits_at_most_max_probes(probes: int) -> None:
    breaker, clock, _ = make(half_open_max_probes=probes, success_threshold=probes + 1)
    half_open(breaker, clock)
    assert [breaker.allow_request() for _ in range(probes + 2)] == [True] * probes + [False, False]
    assert not breaker.is_usable()
    assert breaker.metrics()["probes_in_flight"] == probes


def test_is_usable_does_not_take_a_slot() -> None:
    breaker, clock, _ = make()
    half_open(breaker, clock)
    assert breaker.is_usable() and breaker.is_usable()
    assert breaker.allow_request()
    assert not breaker.is_usable()


def test_cancel_probe_frees_the_slot() -> None:
    breaker, clock, recorder = make()
    half_open(breaker, clock)
    assert breaker.allow_request()
    assert not breaker.allow_request()
    breaker.cancel_probe()
    assert breaker.state is HALF_OPEN
    assert breaker.allow_request()
    assert breaker.metrics()["total_successes"] == 0
    assert recorder.pairs[-1] == (OPEN, HALF_OPEN)


def test_cancel_probe_outside_half_open_changes_nothing() -> None:
    breaker, _, recorder = make()
    breaker.cancel_probe()
    open_breaker(breaker)
    before = breaker.metrics()
    breaker.cancel_probe()
    assert breaker.metrics() == before
    assert recorder.pairs == [(CLOSED, OPEN)]


def test_extra_cancels_do_not_create_slots() -> None:
    breaker, clock, _ = make(half_open_max_probes=2, success_threshold=5)
    half_open(breaker, clock)
    for _ in range(3):
        breaker.cancel_probe()
    assert [breaker.allow_request() for _ in range(3)] == [True, True, False]


def test_success_threshold_probes_close_the_circuit() -> None:
    breaker, clock, recorder = make(success_threshold=3, failure_threshold=2)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(30.0)
    for _ in range(2):
        assert breaker.allow_request()
        breaker.record_success()
        assert breaker.state is HALF_OPEN
    assert breaker.allow_request()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert recorder.calls[-1] == (HALF_OPEN, CLOSED, "3 consecutive probe successes")
    metrics = breaker.metrics()
    assert metrics["opened_at"] is None and metrics["consecutive_failures"] == 0


def test_a_failed_probe_reopens_and_restarts_the_timeout() -> None:
    breaker, clock, recorder = make(success_threshold=2, reset_timeout=30.0)
    half_open(breaker, clock)
    assert breaker.allow_request()
    breaker.record_success()
    clock.advance(3.0)
    assert breaker.allow_request()
    breaker.record_failure()
    assert breaker.state is OPEN
    assert recorder.calls[-1] == (HALF_OPEN, OPEN, "probe failed")
    assert breaker.metrics()["opened_at"] == clock.now
    assert breaker.time_until_retry() == 30.0
    clock.advance(30.0)
    assert breaker.allow_request()
    breaker.record_success()     # the earlier probe success does not carry over
    assert breaker.state is HALF_OPEN


def test_closing_forgets_the_failures_that_opened_the_circuit() -> None:
    breaker, clock, _ = make(failure_threshold=3, failure_rate_threshold=0.5, min_requests_in_window=4,
                             success_threshold=1)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(30.0)
    assert breaker.allow_request()
    breaker.record_success()
    assert breaker.state is CLOSED
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CLOSED
    assert breaker.metrics()["recent_requests"] == 2


# ---------------------------------------------------------------------------
# force_open and reset
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("start", [CLOSED, HALF_OPEN])
def test_force_open_from_any_state(start: CircuitState) -> None:
    breaker, clock, recorder = make()
    if start is HALF_OPEN:
        half_open(breaker, clock)
        assert breaker.allow_request()
    breaker.force_open("401 from provider: key rejected")
    assert breaker.state is OPEN
    assert recorder.calls[-1] == (start, OPEN, "401 from provider: key rejected")
    assert breaker.metrics()["last_transition_reason"] == "401 from provider: key rejected"
    assert breaker.metrics()["probes_in_flight"] == 0


def test_force_open_when_open_restarts_the_timeout_without_a_transition() -> None:
    breaker, clock, recorder = make(reset_timeout=30.0)
    open_breaker(breaker)
    clock.advance(20.0)
    breaker.force_open("rejected again")
    assert recorder.pairs == [(CLOSED, OPEN)]
    assert breaker.time_until_retry() == 30.0


def test_force_open_after_the_timeout_goes_through_half_open() -> None:
    breaker, clock, recorder = make(reset_timeout=30.0)
    open_breaker(breaker)
    clock.advance(31.0)
    breaker.force_open("rejected again")
    assert recorder.pairs == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


@pytest.mark.parametrize("start", [OPEN, HALF_OPEN])
def test_reset_closes_and_keeps_lifetime_totals(start: CircuitState) -> None:
    breaker, clock, recorder = make(failure_threshold=2)
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    if start is HALF_OPEN:
        clock.advance(30.0)
        assert breaker.allow_request()
    breaker.reset()
    assert breaker.state is CLOSED
    assert recorder.calls[-1] == (start, CLOSED, "reset")
    metrics = breaker.metrics()
    assert (metrics["consecutive_failures"], metrics["recent_requests"], metrics["opened_at"]) == (0, 0, None)
    assert (metrics["total_successes"], metrics["total_failures"]) == (1, 2)


def test_reset_when_closed_clears_counts_without_a_transition() -> None:
    breaker, _, recorder = make(failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.reset()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CLOSED
    assert recorder.calls == []


# ---------------------------------------------------------------------------
# Metrics and callback
# ---------------------------------------------------------------------------

def test_metrics_snapshot() -> None:
    breaker, clock, _ = make(failure_threshold=3)
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_failure()
    opened_at = clock.now
    clock.advance(12.0)
    assert breaker.metrics() == {
        "state": "OPEN", "consecutive_failures": 3, "recent_failures": 3, "recent_requests": 4,
        "failure_rate": 0.75, "opened_at": opened_at, "time_until_retry": 18.0,
        "probes_in_flight": 0, "state_changes": 1, "last_transition_reason": "3 consecutive failures",
        "total_successes": 1, "total_failures": 3,
    }


def test_fresh_metrics() -> None:
    breaker, _, _ = make()
    metrics = breaker.metrics()
    assert metrics["state"] == "CLOSED" and metrics["failure_rate"] == 0.0
    assert metrics["last_transition_reason"] is None and metrics["state_changes"] == 0


def test_callback_sees_a_consistent_breaker_and_its_errors_propagate() -> None:
    seen: list[str] = []

    def callback(old: CircuitState, new: CircuitState, reason: str) -> None:
        seen.append(breaker.metrics()["state"])
        raise RuntimeError("metrics sink down")

    clock = FakeClock()
    breaker = CircuitBreaker(CircuitConfig(failure_threshold=1), clock=clock, on_transition=callback)
    with pytest.raises(RuntimeError):
        breaker.record_failure()
    assert seen == ["OPEN"]
    assert breaker.metrics()["total_failures"] == 1
    assert not breaker.allow_request()


def test_circuit_module_stays_pure() -> None:
    tree = ast.parse(pathlib.Path(circuit.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert "time" in imported  # the parse found the imports at all
    assert not imported & {"ray", "aiohttp", "requests", "socket", "asyncio"}


# ---------------------------------------------------------------------------
# Property: any sequence of operations only takes legal transitions
# ---------------------------------------------------------------------------

#: Transitions each operation may cause. Every entry point may first move
#: OPEN -> HALF_OPEN because the timeout is evaluated lazily.
ALLOWED = {
    "read": {(OPEN, HALF_OPEN)},
    "allow_request": {(OPEN, HALF_OPEN)},
    "cancel_probe": {(OPEN, HALF_OPEN)},
    "record_success": {(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (CLOSED, OPEN)},
    "record_failure": {(OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (CLOSED, OPEN)},
    "force_open": {(OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (CLOSED, OPEN)},
    "reset": {(OPEN, HALF_OPEN), (OPEN, CLOSED), (HALF_OPEN, CLOSED)},
}
LEGAL = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN), (OPEN, CLOSED)}

configs = st.builds(
    CircuitConfig,
    failure_threshold=st.integers(1, 4),
    reset_timeout=st.sampled_from([0.0, 1.0, 5.0, 30.0]),
    success_threshold=st.integers(1, 3),
    half_open_max_probes=st.integers(1, 3),
    failure_rate_threshold=st.none() | st.sampled_from([0.25, 0.5, 1.0]),
    window_s=st.sampled_from([1.0, 10.0, 60.0]),
    min_requests_in_window=st.integers(1, 5),
)


class BreakerMachine(RuleBasedStateMachine):
    """Drives a breaker with random operations against an independent model.

    The model follows the state only through ``on_transition`` and knows the
    contract: OPEN refuses until ``reset_timeout`` after it opened, and in
    HALF_OPEN each admitted probe holds a slot until an outcome or a cancel
    is recorded.
    """

    @initialize(config=configs)
    def setup(self, config: CircuitConfig) -> None:
        self.config = config
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker(config, clock=self.clock, on_transition=self.on_transition)
        self.model_state = CLOSED
        self.opened_at: float | None = None
        self.outstanding_probes = 0
        self.probe_successes = 0
        self.op_transitions: list[tuple[CircuitState, CircuitState]] = []
        self.transition_count = 0

    def on_transition(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        assert (old, new) in LEGAL
        assert old is self.model_state, "a transition was skipped or reported twice"
        assert isinstance(reason, str) and reason
        if (old, new) == (OPEN, HALF_OPEN):
            assert self.clock.now - self.opened_at >= self.config.reset_timeout
        self.model_state = new
        self.op_transitions.append((old, new))
        self.transition_count += 1
        if new is OPEN:
            self.opened_at = self.clock.now
        if new is HALF_OPEN:
            self.outstanding_probes = 0
            self.probe_successes = 0

    def run(self, op: str, call):
        self.op_transitions = []
        before = self.model_state
        result = call()
        assert set(self.op_transitions) <= ALLOWED[op], (op, self.op_transitions)
        # the state the operation itself acted on, after any lazy OPEN -> HALF_OPEN
        acted_on = HALF_OPEN if self.op_transitions[:1] == [(OPEN, HALF_OPEN)] else before
        return result, acted_on

    def must_stay_open(self) -> bool:
        return self.model_state is OPEN and self.clock.now - self.opened_at < self.config.reset_timeout

    @rule(seconds=st.sampled_from([0.0, 0.001, 0.5, 1.0, 4.999, 5.0, 29.0, 30.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def allow_request(self) -> None:
        stay_open = self.must_stay_open()
        admitted, acted_on = self.run("allow_request", self.breaker.allow_request)
        if stay_open:
            assert not admitted and self.op_transitions == []
        if acted_on is CLOSED:
            assert admitted
        elif acted_on is HALF_OPEN:
            assert admitted == (self.outstanding_probes < self.config.half_open_max_probes)
            if admitted:
                self.outstanding_probes += 1
        assert self.outstanding_probes <= self.config.half_open_max_probes

    @rule()
    def is_usable(self) -> None:
        stay_open = self.must_stay_open()
        usable, acted_on = self.run("read", self.breaker.is_usable)
        expected = {CLOSED: True, OPEN: False,
                    HALF_OPEN: self.outstanding_probes < self.config.half_open_max_probes}
        assert usable == expected[acted_on]
        assert not (stay_open and usable)

    def _resolve(self, op: str, call) -> CircuitState:
        _, acted_on = self.run(op, call)
        if acted_on is HALF_OPEN and self.model_state is HALF_OPEN:
            self.outstanding_probes = max(0, self.outstanding_probes - 1)
        return acted_on

    @rule()
    def record_success(self) -> None:
        acted_on = self._resolve("record_success", self.breaker.record_success)
        if acted_on is HALF_OPEN:
            self.probe_successes += 1
            closes = self.probe_successes >= self.config.success_threshold
            assert (self.model_state is CLOSED) == closes
        self.check_closed_after_outcome()

    @rule()
    def record_failure(self) -> None:
        self._resolve("record_failure", self.breaker.record_failure)
        self.check_closed_after_outcome()

    @rule()
    def cancel_probe(self) -> None:
        self._resolve("cancel_probe", self.breaker.cancel_probe)

    @rule(reason=st.sampled_from(["401 Unauthorized", "403 Forbidden"]))
    def force_open(self, reason: str) -> None:
        self.run("force_open", lambda: self.breaker.force_open(reason))
        assert self.model_state is OPEN
        # Forcing an already open circuit restarts its timeout without a transition.
        self.opened_at = self.clock.now

    @rule()
    def reset(self) -> None:
        self.run("reset", self.breaker.reset)
        assert self.model_state is CLOSED

    def check_closed_after_outcome(self) -> None:
        """After any outcome, a CLOSED breaker must not be over either threshold."""
        if self.model_state is not CLOSED:
            return
        metrics = self.breaker.metrics()
        assert metrics["consecutive_failures"] < self.config.failure_threshold
        rate = self.config.failure_rate_threshold
        if rate is not None and metrics["recent_requests"] >= self.config.min_requests_in_window:
            assert metrics["failure_rate"] < rate

    @invariant()
    def state_matches_the_reported_transitions(self) -> None:
        state, _ = self.run("read", lambda: self.breaker.state)
        assert state is self.model_state
        metrics = self.breaker.metrics()
        assert metrics["state_changes"] == self.transition_count
        assert metrics["probes_in_flight"] <= self.config.half_open_max_probes
        wait = metrics["time_until_retry"]
        if state is OPEN:
            assert 0 < wait <= self.config.reset_timeout
            assert wait == pytest.approx(self.config.reset_timeout - (self.clock.now - self.opened_at))
        else:
            assert wait == 0.0


TestBreakerStateMachine = BreakerMachine.TestCase
TestBreakerStateMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
