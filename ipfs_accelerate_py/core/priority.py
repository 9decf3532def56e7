"""Bounded HIGH / NORMAL / LOW queue for requests waiting for an endpoint.

The router keeps one queue per routing group (requests for one model can only
go to that model's endpoints, so one group's backlog must not block another's)
but one ``QueueBound`` for all of them: the bound protects the router's memory
and the callers' latency, which are shared.

HIGH is always dispatched before NORMAL before LOW, FIFO within a level.
Strict priority can starve LOW under sustained HIGH load; that is the intent
(LOW is for bulk jobs that have all night).

Removal of a waiting entry (a caller that gave up) is lazy: the entry is
marked dead and skipped when it reaches the head, and the deques are compacted
once dead entries outnumber live ones, so every operation is O(1) amortized.
Single-threaded by design: the router's event loop serialises every call.
"""
from __future__ import annotations

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

    def _acquire(self, force: bool = False) -> None:
        if not force and self._used >= self._maxsize:
            raise QueueFullError(
                f"request queue is full ({self._used} waiting); the limit is {self._maxsize}, "
                "retry later or raise the queue bound", retryable=True,
                details={"waiting": self._used, "maxsize": self._maxsize})
        self._used += 1

    def _release(self, count: int = 1) -> None:
        self._used = max(0, self._used - count)

    def __repr__(self) -> str:
        return f"QueueBound(used={self._used}, maxsize={self._maxsize})"


class _Entry(Generic[T]):
    """One waiting item; ``seq`` orders it within its level (push_front goes negative)."""

    __slots__ = ("item", "priority", "seq", "alive")

    def __init__(self, item: T, priority: Priority, seq: int) -> None:
        self.item, self.priority, self.seq, self.alive = item, priority, seq, True


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
    def push(self, item: T, priority: Any = Priority.NORMAL) -> None:
        """Queue ``item`` at the back of its level; QueueFullError if the bound is reached."""
        level = parse_priority(priority)
        if self._bound is not None:
            self._bound._acquire()
        entry = _Entry(item, level, self._next_back)
        self._next_back += 1
        self._add(entry, front=False)

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
        entry = _Entry(item, level, self._next_front)
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
