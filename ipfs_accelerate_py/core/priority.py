"""Bounded HIGH / NORMAL / LOW queue for requests waiting for an endpoint.

The router keeps one queue per routing group (requests for one model can only
go to that model's endpoints, so one group's backlog must not block another's)
but one ``QueueBound`` for all of them: the bound protects the router's memory
and the callers' latency, which are shared.

HIGH is always dispatched before NORMAL before LOW, FIFO within a level.
Strict priority can starve LOW under sustained HIGH load; that is the intent
(LOW is for bulk jobs that have all night).

Admission is priority-aware too: when the bound is reached, a push makes room
by evicting the newest waiting entry of a strictly lower level (LOW first,
then NORMAL), from any queue sharing the bound, and hands it back to the
caller to fail.  Otherwise a LOW bulk flood that fills the queue would turn
every interactive HIGH request into a QueueFullError, which is the opposite
of what priorities promise.  The newest entry goes because it has waited
least, so FIFO order among the survivors is kept.

Removal of a waiting entry (a caller that gave up) is lazy: the entry is
marked dead and skipped when it reaches the head, and the deques are compacted
once dead entries outnumber live ones, so every operation is O(1) amortized.
Single-threaded by design: the router's event loop serialises every call.
"""
from __future__ import annotations

import weakref
from collections import deque
from enum import IntEnum
from itertools import chain
from typing import Any, Generic, Iterator, TypeVar

from ..errors import ConfigError, InvalidRequestError, QueueFullError

__all__ = ["Priority", "parse_priority", "QueueBound", "PriorityQueue"]

T = TypeVar("T")


class Priority(IntEnum):
    """Lower value dispatches first, so priorities sort naturally."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


_VALID = "HIGH, NORMAL, LOW (or 0, 1, 2)"


def parse_priority(value: Any) -> Priority:
    """A Priority from what users write: a Priority, a name in any case, 0/1/2 or None.

    None means NORMAL, so an absent ``X-Priority`` header or keyword is the
    default.  Anything else is an InvalidRequestError naming the valid values:
    a typo must not silently demote (or promote) a request.
    """
    if value is None:
        return Priority.NORMAL
    if isinstance(value, Priority):
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        if name in Priority.__members__:
            return Priority[name]
    elif isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return Priority(value)
    raise InvalidRequestError(f"invalid priority {value!r}; valid values are {_VALID}",
                              code="invalid_priority")


def _check_maxsize(maxsize: Any) -> int:
    if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
        raise ConfigError(f"queue maxsize must be an integer >= 0 (got {maxsize!r})",
                          details={"field": "maxsize"})
    return maxsize


class QueueBound:
    """A limit on waiting entries shared by any number of queues.

    ``used`` may exceed ``maxsize``: after ``maxsize`` is lowered at run time,
    or through ``push_front`` (see there).  New pushes then fail until enough
    entries have left.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = _check_maxsize(maxsize)
        self._used = 0
        self._stamps = 0
        #: the queues sharing this bound, searched for an entry to evict
        self._queues: weakref.WeakSet[PriorityQueue[Any]] = weakref.WeakSet()

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self._maxsize = _check_maxsize(value)

    @property
    def used(self) -> int:
        return self._used

    @property
    def free(self) -> int:
        return max(0, self._maxsize - self._used)

    def _stamp(self) -> int:
        """Admission order across every queue sharing the bound (newest = largest)."""
        self._stamps += 1
        return self._stamps

    def _full_error(self) -> QueueFullError:
        return QueueFullError(
            f"request queue is full ({self._used} waiting); the limit is {self._maxsize}, "
            "retry later or raise the queue bound", retryable=True,
            details={"waiting": self._used, "maxsize": self._maxsize})

    def _acquire(self, force: bool = False) -> None:
        if not force and self._used >= self._maxsize:
            raise self._full_error()
        self._used += 1

    def _evict_below(self, level: Priority) -> Any:
        """Make room for a ``level`` entry by evicting the newest entry of the lowest
        level below it; returns the evicted item, or raises QueueFullError."""
        if self._used <= self._maxsize:  # not over a lowered bound: one eviction makes room
            for victim_level in sorted((p for p in Priority if p > level), reverse=True):
                newest: tuple[tuple[bool, int], PriorityQueue[Any], _Entry[Any]] | None = None
                for queue in self._queues:
                    entry = queue._newest(victim_level)
                    if entry is not None and (newest is None or _eviction_rank(entry) > newest[0]):
                        newest = (_eviction_rank(entry), queue, entry)
                if newest is not None:
                    _, queue, entry = newest
                    queue._evict(entry)  # releases one unit of the bound
                    return entry.item
        raise self._full_error()

    def _release(self, count: int = 1) -> None:
        self._used = max(0, self._used - count)

    def __repr__(self) -> str:
        return f"QueueBound(used={self._used}, maxsize={self._maxsize})"


def _eviction_rank(entry: "_Entry[Any]") -> tuple[bool, int]:
    """Fresh entries before retries (a retry was admitted and has already waited), newest first."""
    return (entry.seq >= 0, entry.stamp)


class _Entry(Generic[T]):
    """One waiting item; ``seq`` orders it within its level (push_front goes negative)."""

    __slots__ = ("item", "priority", "seq", "alive", "stamp")

    def __init__(self, item: T, priority: Priority, seq: int, stamp: int = 0) -> None:
        self.item, self.priority, self.seq, self.alive = item, priority, seq, True
        self.stamp = stamp


class PriorityQueue(Generic[T]):
    """HIGH before NORMAL before LOW, FIFO within a level, optionally bounded.

    Pass ``maxsize`` for a queue with its own bound, ``bound`` to share one
    with other queues, or neither for an unbounded queue.  ``remove`` matches
    by identity: the router removes the very ticket it pushed, and two equal
    tickets are still two different waiting callers.
    """

    def __init__(self, maxsize: int | None = None, bound: QueueBound | None = None) -> None:
        if maxsize is not None and bound is not None:
            raise ConfigError("pass either maxsize or a shared bound, not both")
        self._bound = bound if bound is not None else (
            QueueBound(maxsize) if maxsize is not None else None)
        if self._bound is not None:
            self._bound._queues.add(self)
        self._levels: tuple[deque[_Entry[T]], ...] = tuple(deque() for _ in Priority)
        self._live = [0] * len(Priority)
        self._dead = 0
        self._next_back = 0
        self._next_front = -1
        #: id(item) -> its live entries; holding the entry keeps the id from being reused
        self._index: dict[int, list[_Entry[T]]] = {}

    @property
    def bound(self) -> QueueBound | None:
        return self._bound

    # -- adding -------------------------------------------------------------
    def push(self, item: T, priority: Any = Priority.NORMAL) -> T | None:
        """Queue ``item`` at the back of its level.

        At the bound, the newest waiting entry of a lower level (from any
        queue sharing the bound) is evicted to make room and returned: the
        caller owns telling its owner.  With nothing lower waiting, the push
        fails with QueueFullError and nothing changes.
        """
        level = parse_priority(priority)
        evicted: T | None = None
        stamp = 0
        if self._bound is not None:
            if self._bound._used >= self._bound._maxsize:
                evicted = self._bound._evict_below(level)
            self._bound._acquire(force=True)
            stamp = self._bound._stamp()
        entry = _Entry(item, level, self._next_back, stamp)
        self._next_back += 1
        self._add(entry, front=False)
        return evicted

    def push_front(self, item: T, priority: Any = Priority.NORMAL) -> None:
        """Put ``item`` back at the head of its level, even past the bound.

        For retries: the request was admitted once and has already waited its
        turn; refusing it now would turn a transient upstream error into a
        QueueFullError the caller never earned, and sending it to the back
        would punish it for the endpoint's failure.
        """
        level = parse_priority(priority)
        if self._bound is not None:
            self._bound._acquire(force=True)
        entry = _Entry(item, level, self._next_front, self._bound._stamp() if self._bound else 0)
        self._next_front -= 1
        self._add(entry, front=True)

    def _add(self, entry: _Entry[T], front: bool) -> None:
        queue = self._levels[entry.priority]
        queue.appendleft(entry) if front else queue.append(entry)
        self._live[entry.priority] += 1
        self._index.setdefault(id(entry.item), []).append(entry)

    # -- taking -------------------------------------------------------------
    def _head(self) -> _Entry[T]:
        for queue in self._levels:
            while queue and not queue[0].alive:
                queue.popleft()
                self._dead -= 1
            if queue:
                return queue[0]
        raise IndexError("pop from an empty priority queue")

    def peek(self) -> tuple[T, Priority]:
        """The next (item, priority) without removing it; IndexError when empty."""
        entry = self._head()
        return entry.item, entry.priority

    def pop(self) -> tuple[T, Priority]:
        """Remove and return the next (item, priority); IndexError when empty."""
        entry = self._head()
        self._levels[entry.priority].popleft()
        self._retire(entry)
        return entry.item, entry.priority

    def remove(self, item: T) -> bool:
        """Withdraw ``item`` (the entry that would dispatch first); False if not waiting."""
        entries = self._index.get(id(item))
        if not entries:
            return False
        entry = min(entries, key=lambda e: (e.priority, e.seq))
        self._retire(entry)
        self._dead += 1
        self._compact_if_sparse()
        return True

    def _newest(self, level: Priority) -> _Entry[T] | None:
        """The entry of ``level`` to evict first: the newest fresh one, else the newest retry."""
        if not self._live[level]:
            return None
        newest: _Entry[T] | None = None
        for entry in reversed(self._levels[level]):
            if not entry.alive:
                continue
            if entry.seq >= 0:
                return entry  # back-pushed entries sit in admission order: the last live one wins
            if newest is None or entry.stamp > newest.stamp:
                newest = entry  # only retries (pushed to the front) wait in this level
        return newest

    def _evict(self, entry: _Entry[T]) -> None:
        self._retire(entry)
        self._dead += 1
        self._compact_if_sparse()

    def clear(self) -> list[T]:
        """Remove everything; returns the items in dispatch order."""
        items = list(self)
        if self._bound is not None:
            self._bound._release(len(items))
        for queue in self._levels:
            queue.clear()
        self._live = [0] * len(Priority)
        self._dead = 0
        self._index.clear()
        return items

    def _retire(self, entry: _Entry[T]) -> None:
        """Account for an entry leaving (popped or removed); it stays in its deque only if dead."""
        entry.alive = False
        self._live[entry.priority] -= 1
        if self._bound is not None:
            self._bound._release()
        entries = self._index[id(entry.item)]
        entries.remove(entry)  # almost always the only one
        if not entries:
            del self._index[id(entry.item)]

    def _compact_if_sparse(self) -> None:
        if self._dead > max(32, len(self)):
            self._levels = tuple(deque(e for e in queue if e.alive) for queue in self._levels)
            self._dead = 0

    # -- inspection ---------------------------------------------------------
    def __len__(self) -> int:
        return sum(self._live)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[T]:
        """Items in dispatch order (a snapshot is not taken: do not mutate while iterating)."""
        return (entry.item for entry in chain.from_iterable(self._levels) if entry.alive)

    def counts(self) -> dict[str, int]:
        return {level.name: self._live[level] for level in Priority}

    def __repr__(self) -> str:
        return f"PriorityQueue({self.counts()}, bound={self._bound!r})"
