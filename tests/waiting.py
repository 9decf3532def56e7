"""Polling for a condition in tests that drive real processes (actors, fakes, sockets).

Tests never assert on wall-clock time; when they must wait for another
process to get somewhere, they poll for the state itself and fail with what
never happened.
"""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], what: str, tries: int = 2000, pause: float = 0.01) -> Any:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` if none came."""
    for _ in range(tries):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"never happened: {what}")
