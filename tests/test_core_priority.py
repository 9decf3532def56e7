"""Bounded priority queue (core/priority.py)."""
from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.core.priority import Priority, PriorityQueue, QueueBound, parse_priority

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


class Ticket:
    """A waiting caller: equal tickets are still different callers."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ticket) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]  # like a mutable dataclass: unhashable

    def __repr__(self) -> str:
        return f"Ticket({self.name!r})"


# ---------------------------------------------------------------------------
# Priority
# ---------------------------------------------------------------------------

def test_priority_values_sort_high_first() -> None:
    assert (HIGH, NORMAL, LOW) == (0, 1, 2)
    assert sorted([LOW, HIGH, NORMAL]) == [HIGH, NORMAL, LOW]


@pytest.mark.parametrize("value, expected", [
    (HIGH, HIGH), (LOW, LOW), ("HIGH", HIGH), ("high", HIGH), (" Normal ", NORMAL), ("LOW", LOW),
    ("low\n", LOW), (0, HIGH), (1, NORMAL), (2, LOW), (None, NORMAL),
])
def test_parse_priority_accepts_names_ints_and_none(value: object, expected: Priority) -> None:
    assert parse_priority(value) is expected


@pytest.mark.parametrize("value", ["urgent", "", "  ", 3, -1, True, False, 1.0, "0", "HIGHEST", [], b"HIGH"])
def test_parse_priority_rejects_everything_else(value: object) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        parse_priority(value)
    message = str(info.value)
    assert message.startswith("Invalid request:")
    assert repr(value) in message
    for name in ("HIGH", "NORMAL", "LOW"):
        assert name in message
    assert info.value.status == 400 and not info.value.retryable


# ---------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------

def test_high_before_normal_before_low_and_fifo_within_a_level() -> None:
    queue: PriorityQueue[str] = PriorityQueue()
    for item, priority in [("l1", LOW), ("n1", NORMAL), ("h1", HIGH), ("l2", LOW), ("h2", "high"),
                           ("n2", None)]:
        queue.push(item, priority)
    assert list(queue) == ["h1", "h2", "n1", "n2", "l1", "l2"]
    assert [queue.pop() for _ in range(6)] == [("h1", HIGH), ("h2", HIGH), ("n1", NORMAL),
                                               ("n2", NORMAL), ("l1", LOW), ("l2", LOW)]


def test_push_default_priority_is_normal() -> None:
    queue: PriorityQueue[str] = PriorityQueue()
    queue.push("a")
    assert queue.peek() == ("a", NORMAL)


def test_push_front_goes_to_the_head_of_its_own_level_only() -> None:
    queue: PriorityQueue[str] = PriorityQueue()
    queue.push("h", HIGH)
    queue.push("n1", NORMAL)
    queue.push("n2", NORMAL)
    queue.push_front("retry1", NORMAL)
    queue.push_front("retry2", NORMAL)
    assert list(queue) == ["h", "retry2", "retry1", "n1", "n2"]


def test_peek_does_not_remove_and_empty_queue_raises_index_error() -> None:
    queue: PriorityQueue[str] = PriorityQueue()
    with pytest.raises(IndexError):
        queue.pop()
    with pytest.raises(IndexError):
        queue.peek()
    queue.push("a", LOW)
    assert queue.peek() == ("a", LOW)
    assert queue.peek() == ("a", LOW)
    assert len(queue) == 1


def test_invalid_priority_on_push_leaves_queue_and_bound_untouched() -> None:
    bound = QueueBound(3)
    queue: PriorityQueue[str] = PriorityQueue(bound=bound)
    with pytest.raises(errors.InvalidRequestError):
        queue.push("a", "urgent")
    assert len(queue) == 0 and bound.used == 0


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------

def test_push_beyond_maxsize_is_a_retryable_queue_full_error() -> None:
    queue: PriorityQueue[str] = PriorityQueue(maxsize=2)
    queue.push("a", HIGH)
    queue.push("b", NORMAL)
    with pytest.raises(errors.QueueFullError) as info:
        queue.push("c", NORMAL)  # nothing lower than NORMAL waits
    assert "queue is full (2 waiting)" in str(info.value)
    assert str(info.value).startswith("Queue full:")
    assert info.value.retryable and info.value.status == 429
    with pytest.raises(errors.QueueFullError):
        queue.push("c", LOW)
    assert list(queue) == ["a", "b"]
    queue.pop()
    assert queue.push("c", LOW) is None
    assert list(queue) == ["b", "c"]


def test_a_higher_push_at_the_bound_evicts_the_newest_lower_entry() -> None:
    queue: PriorityQueue[str] = PriorityQueue(maxsize=4)
    for item, priority in [("l1", LOW), ("n1", NORMAL), ("l2", LOW), ("l3", LOW)]:
        assert queue.push(item, priority) is None
    assert queue.push("h1", HIGH) == "l3"  # the LOW that waited least
    assert queue.push("n2", NORMAL) == "l2"
    assert queue.push("h2", HIGH) == "l1"
    assert queue.push("h3", HIGH) == "n2"  # no LOW left: the newest NORMAL goes
    assert list(queue) == ["h1", "h2", "h3", "n1"]
    assert queue.bound is not None and queue.bound.used == 4
    assert queue.push("h4", HIGH) == "n1"
    with pytest.raises(errors.QueueFullError):
        queue.push("h5", HIGH)  # only HIGH waits: a peer is never evicted
    assert list(queue) == ["h1", "h2", "h3", "h4"]


def test_eviction_searches_every_queue_on_the_bound_and_spares_retries() -> None:
    bound = QueueBound(4)
    first: PriorityQueue[str] = PriorityQueue(bound=bound)
    second: PriorityQueue[str] = PriorityQueue(bound=bound)
    first.push("first-low-old", LOW)
    second.push_front("second-low-retry", LOW)
    second.push("second-low-new", LOW)
    first.push("first-normal", NORMAL)
    assert first.push("h1", HIGH) == "second-low-new"  # newest LOW across both queues
    assert first.push("h2", HIGH) == "first-low-old"  # fresh entries before a retry
    assert first.push("h3", HIGH) == "second-low-retry"
    assert list(second) == [] and bound.used == 4
    assert list(first) == ["h1", "h2", "h3", "first-normal"]


def test_no_eviction_while_over_a_lowered_bound() -> None:
    bound = QueueBound(3)
    queue: PriorityQueue[str] = PriorityQueue(bound=bound)
    for item in ("a", "b", "c"):
        queue.push(item, LOW)
    bound.maxsize = 2
    with pytest.raises(errors.QueueFullError):
        queue.push("h", HIGH)  # evicting one would still leave the queue over its bound
    assert list(queue) == ["a", "b", "c"] and bound.used == 3
    queue.pop()
    assert queue.push("h", HIGH) == "c"
    assert list(queue) == ["h", "b"]


def test_one_bound_shared_by_several_queues() -> None:
    bound = QueueBound(3)
    first: PriorityQueue[str] = PriorityQueue(bound=bound)
    second: PriorityQueue[str] = PriorityQueue(bound=bound)
    first.push("a")
    second.push("b")
    second.push("c")
    assert (bound.used, bound.free) == (3, 0)
    with pytest.raises(errors.QueueFullError, match=r"queue is full \(3 waiting\)"):
        first.push("d")
    assert second.pop() == ("b", NORMAL)
    first.push("d")
    assert (len(first), len(second), bound.used) == (2, 1, 3)
    assert first.bound is bound


def test_push_front_may_exceed_the_bound_and_is_counted() -> None:
    queue: PriorityQueue[str] = PriorityQueue(maxsize=1)
    queue.push("a")
    queue.push_front("retry", HIGH)
    assert queue.bound is not None and queue.bound.used == 2 and queue.bound.free == 0
    with pytest.raises(errors.QueueFullError):
        queue.push("b")
    queue.pop()
    with pytest.raises(errors.QueueFullError):  # still 1 waiting of 1
        queue.push("b")
    queue.pop()
    queue.push("b")


def test_maxsize_can_change_at_run_time() -> None:
    bound = QueueBound(3)
    queue: PriorityQueue[int] = PriorityQueue(bound=bound)
    for i in range(3):
        queue.push(i)
    bound.maxsize = 1
    assert (bound.used, bound.free, bound.maxsize) == (3, 0, 1)
    queue.pop()
    queue.pop()
    with pytest.raises(errors.QueueFullError):
        queue.push(9)
    bound.maxsize = 5
    queue.push(9)
    assert bound.free == 3


@pytest.mark.parametrize("maxsize", [-1, 1.5, "3", True, None])
def test_invalid_maxsize_is_a_config_error(maxsize: object) -> None:
    with pytest.raises(errors.ConfigError):
        QueueBound(maxsize)  # type: ignore[arg-type]
    bound = QueueBound(1)
    with pytest.raises(errors.ConfigError):
        bound.maxsize = maxsize  # type: ignore[assignment]
    assert bound.maxsize == 1


def test_zero_maxsize_admits_only_retries() -> None:
    queue: PriorityQueue[str] = PriorityQueue(maxsize=0)
    with pytest.raises(errors.QueueFullError):
        queue.push("a")
    queue.push_front("retry")
    assert list(queue) == ["retry"]


def test_maxsize_and_bound_together_are_rejected() -> None:
    with pytest.raises(errors.ConfigError):
        PriorityQueue(maxsize=3, bound=QueueBound(3))


def test_unbounded_queue_has_no_bound() -> None:
    queue: PriorityQueue[int] = PriorityQueue()
    for i in range(10_000):
        queue.push(i, LOW)
    assert len(queue) == 10_000 and queue.bound is None


# ---------------------------------------------------------------------------
# Removal, clearing, inspection
# ---------------------------------------------------------------------------

def test_remove_withdraws_a_waiting_item_and_frees_its_slot() -> None:
    bound = QueueBound(3)
    queue: PriorityQueue[Ticket] = PriorityQueue(bound=bound)
    a, b, c = Ticket("a"), Ticket("b"), Ticket("c")
    for ticket in (a, b, c):
        queue.push(ticket, NORMAL)
    assert queue.remove(b) is True
    assert queue.remove(b) is False
    assert list(queue) == [a, c] and len(queue) == 2 and bound.used == 2
    assert queue.counts() == {"HIGH": 0, "NORMAL": 2, "LOW": 0}
    assert queue.pop() == (a, NORMAL)
    assert queue.remove(a) is False  # already dispatched
    assert queue.pop() == (c, NORMAL)
    assert not queue


def test_remove_matches_identity_not_equality() -> None:
    queue: PriorityQueue[Ticket] = PriorityQueue()
    first, twin = Ticket("same"), Ticket("same")
    queue.push(first)
    queue.push(twin)
    assert queue.remove(Ticket("same")) is False
    assert queue.remove(twin) is True
    assert queue.pop()[0] is first


def test_remove_of_an_object_queued_twice_takes_the_one_dispatched_first() -> None:
    queue: PriorityQueue[Ticket] = PriorityQueue()
    ticket, other = Ticket("t"), Ticket("o")
    queue.push(ticket, NORMAL)
    queue.push(other, NORMAL)
    queue.push(ticket, LOW)
    queue.push(ticket, HIGH)
    assert queue.remove(ticket)  # the HIGH copy
    assert queue.remove(ticket)  # then the NORMAL one, ahead of the LOW copy
    assert [(item.name, priority) for item, priority in (queue.pop(), queue.pop())] == [
        ("o", NORMAL), ("t", LOW)]


def test_removed_head_is_skipped_by_peek_and_pop() -> None:
    queue: PriorityQueue[Ticket] = PriorityQueue()
    head, rest = Ticket("h"), Ticket("n")
    queue.push(head, HIGH)
    queue.push(rest, NORMAL)
    assert queue.remove(head)
    assert queue.peek() == (rest, NORMAL)
    assert queue.pop() == (rest, NORMAL)
    with pytest.raises(IndexError):
        queue.pop()


def test_mass_removal_compacts_storage() -> None:
    queue: PriorityQueue[Ticket] = PriorityQueue()
    tickets = [Ticket(str(i)) for i in range(1000)]
    for ticket in tickets:
        queue.push(ticket, LOW)
    for ticket in tickets[1:]:
        assert queue.remove(ticket)
    assert list(queue) == [tickets[0]]
    assert sum(len(level) for level in queue._levels) <= 64  # dead entries do not pile up


def test_clear_returns_items_in_dispatch_order_and_frees_the_bound() -> None:
    bound = QueueBound(10)
    queue: PriorityQueue[str] = PriorityQueue(bound=bound)
    other: PriorityQueue[str] = PriorityQueue(bound=bound)
    other.push("elsewhere")
    gone = "".join(["go", "ne"])  # a distinct object, removed by identity
    for item, priority in [("l", LOW), ("h", HIGH), ("n", NORMAL), (gone, HIGH)]:
        queue.push(item, priority)
    assert queue.remove(gone)
    assert queue.clear() == ["h", "n", "l"]
    assert len(queue) == 0 and not queue and bound.used == 1
    assert queue.counts() == {"HIGH": 0, "NORMAL": 0, "LOW": 0}
    queue.push("again", LOW)
    assert queue.pop() == ("again", LOW)


def test_len_bool_and_counts() -> None:
    queue: PriorityQueue[int] = PriorityQueue()
    assert not queue and len(queue) == 0
    queue.push(1, HIGH)
    queue.push(2, LOW)
    queue.push(3, LOW)
    assert queue and len(queue) == 3
    assert queue.counts() == {"HIGH": 1, "NORMAL": 0, "LOW": 2}


# ---------------------------------------------------------------------------
# Model-based: two queues sharing a bound behave like sorted lists
# ---------------------------------------------------------------------------

class SharedBoundMachine(RuleBasedStateMachine):
    """Compares two queues on one bound with a plain reference model."""

    @initialize(maxsize=st.integers(0, 6))
    def start(self, maxsize: int) -> None:
        self.bound = QueueBound(maxsize)
        self.queues: list[PriorityQueue[Ticket]] = [PriorityQueue(bound=self.bound) for _ in range(2)]
        #: per queue: [(priority, order, ticket)] kept sorted in dispatch order
        self.models: list[list[tuple[int, int, Ticket]]] = [[], []]
        self.back, self.front = 0, 0
        self.everything: list[Ticket] = []
        #: id(ticket) -> admission order across both queues
        self.stamps: dict[int, int] = {}

    def _new_ticket(self) -> Ticket:
        ticket = Ticket(str(len(self.everything)))
        self.everything.append(ticket)
        self.stamps[id(ticket)] = len(self.everything)
        return ticket

    def _waiting(self) -> int:
        return sum(len(model) for model in self.models)

    def _victim(self, priority: Priority) -> tuple[int, int] | None:
        """(queue, position) of the entry a ``priority`` push evicts: lowest level below
        it, fresh (order > 0) before retries, newest first."""
        candidates = [(entry[0], entry[1] > 0, self.stamps[id(entry[2])], owner, position)
                      for owner, model in enumerate(self.models)
                      for position, entry in enumerate(model) if entry[0] > priority]
        if not candidates:
            return None
        *_, owner, position = max(candidates)
        return owner, position

    @rule(which=st.integers(0, 1), priority=st.sampled_from(list(Priority)))
    def push(self, which: int, priority: Priority) -> None:
        ticket = self._new_ticket()
        evicted = None
        if self._waiting() >= self.bound.maxsize:
            victim = self._victim(priority) if self._waiting() <= self.bound.maxsize else None
            if victim is None:
                with pytest.raises(errors.QueueFullError):
                    self.queues[which].push(ticket, priority)
                return
            owner, position = victim
            evicted = self.models[owner].pop(position)[2]
        assert self.queues[which].push(ticket, priority) is evicted
        self.back += 1
        self.models[which].append((priority, self.back, ticket))
        self.models[which].sort(key=lambda entry: entry[:2])

    @rule(which=st.integers(0, 1), priority=st.sampled_from(list(Priority)))
    def push_front(self, which: int, priority: Priority) -> None:
        ticket = self._new_ticket()
        self.queues[which].push_front(ticket, priority)
        self.front -= 1
        self.models[which].append((priority, self.front, ticket))
        self.models[which].sort(key=lambda entry: entry[:2])

    @rule(which=st.integers(0, 1))
    def pop(self, which: int) -> None:
        model = self.models[which]
        if not model:
            with pytest.raises(IndexError):
                self.queues[which].pop()
            return
        priority, _, ticket = model.pop(0)
        item, got = self.queues[which].pop()
        assert item is ticket and got == priority

    @precondition(lambda self: self.everything)
    @rule(which=st.integers(0, 1), index=st.integers(0, 10_000))
    def remove(self, which: int, index: int) -> None:
        ticket = self.everything[index % len(self.everything)]
        model = self.models[which]
        position = next((i for i, entry in enumerate(model) if entry[2] is ticket), None)
        assert self.queues[which].remove(ticket) is (position is not None)
        if position is not None:
            del model[position]

    @rule(which=st.integers(0, 1))
    def clear(self, which: int) -> None:
        expected = [entry[2] for entry in self.models[which]]
        assert self.queues[which].clear() == expected
        self.models[which] = []

    @rule(maxsize=st.integers(0, 6))
    def resize(self, maxsize: int) -> None:
        self.bound.maxsize = maxsize

    @invariant()
    def matches_model(self) -> None:
        for queue, model in zip(self.queues, self.models, strict=True):
            assert [item for item in queue] == [entry[2] for entry in model]
            assert len(queue) == len(model) and bool(queue) == bool(model)
            assert queue.counts() == {p.name: sum(1 for e in model if e[0] == p) for p in Priority}
            if model:
                assert queue.peek() == (model[0][2], model[0][0])
        assert self.bound.used == self._waiting()
        assert self.bound.free == max(0, self.bound.maxsize - self._waiting())


TestSharedBound = SharedBoundMachine.TestCase
TestSharedBound.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
