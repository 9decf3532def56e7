"""Many small actor calls as one: the sending side (Outbox) and the answering side (finished_groups).

Why: on a 2-core machine an actor call costs about a millisecond of CPU
across the two processes, more than the work most of our calls carry.  Under
load, the calls made in one pass of the event loop (the router leasing many
requests to one key, a Serve replica or async driver sending many requests to
the router) leave as one call, and the answers come back in a few groups.
A lone call is never delayed by more than one loop iteration, and an answer
waits at most ``linger_s`` for its siblings.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

Item = TypeVar("Item")


class Outbox(Generic[Item]):
    """Collects the items ``put`` in one event-loop pass and hands them to ``send``
    together, each with the future its caller awaits.  ``send`` must settle every
    future it is given (result or exception)."""

    def __init__(self, send: Callable[[list[tuple[Item, asyncio.Future]]], None]) -> None:
        self._send = send
        self._items: list[tuple[Item, asyncio.Future]] = []

    def put(self, item: Item) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._items.append((item, future))
        if len(self._items) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch = [(item, future) for item, future in self._items if not future.done()]  # callers gone
        self._items = []
        if not batch:
            return
        try:
            self._send(batch)
        except Exception as exc:  # noqa: BLE001 - a loop callback: nobody else would tell the callers
            for _, future in batch:
                settle(future, error=exc)


async def finished_groups(tasks: list[asyncio.Future], linger_s: float) -> AsyncIterator[list[int]]:
    """Yield the indexes of ``tasks`` in groups as they finish: once one is done,
    the others get ``linger_s`` to finish too, so siblings share one reply.
    If the consumer stops early, the unfinished tasks are cancelled."""
    index = {task: i for i, task in enumerate(tasks)}
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if pending and linger_s > 0:
                more, pending = await asyncio.wait(pending, timeout=linger_s)
                done |= more
            yield sorted(index[task] for task in done)
    finally:
        for task in pending:  # the caller went away: nobody will read these answers
            task.cancel()


async def settle_from_stream(stream: AsyncIterator[Any], futures: list[asyncio.Future],
                             read: Callable[[int, bytes], tuple[BaseException | None, Any]],
                             unanswered: Callable[[int], BaseException]) -> None:
    """Resolve ``futures`` from a stream of ``[(index, blob)]`` groups, each blob read by
    ``read(index, blob) -> (error, value)``.  If the stream breaks, every caller not yet
    answered gets that failure; if it just ends, ``unanswered(index)``."""
    failure: BaseException | None = None
    try:
        async for ref in stream:
            for index, blob in await ref:
                error, value = read(index, blob)
                settle(futures[index], value=value, error=error)
    except Exception as exc:  # noqa: BLE001 - every unanswered caller gets it
        failure = exc
    for index, future in enumerate(futures):
        settle(future, error=failure or unanswered(index))


def settle(future: asyncio.Future, *, value: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless its caller already left."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
