"""One pickled blob per internal actor call, instead of Ray's per-argument serialization.

Why: Ray serializes every argument and return value on its own, through a
generic path (msgpack with a cloudpickle fallback for each object that is
not plain data) and records each one separately.  For our small dataclasses
that costs a few hundred microseconds per call across the two processes;
one cloudpickle of the whole tuple costs 20-30, and Ray moves ``bytes``
untouched.  On the hot path (Gateway -> router -> endpoint actor and back)
that is measured in bench/overhead.py and bench/throughput.py.

cloudpickle, not plain pickle: a request may carry objects of classes
defined in the caller's script or notebook (``__main__``), which plain
pickle records by a name the receiving process cannot resolve; cloudpickle
sends them by value, as Ray itself would.

Only internal hops use this.  The public actor methods
(``router.chat.remote(...)`` and friends) keep plain Python arguments and
return values, so user code never sees a blob.  In a batch every item is its
own blob, so one item that cannot be serialized fails alone.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable

from ray import cloudpickle

#: the router methods a Gateway sends as one blob each (request_packed, request_many, lanes)
REQUEST_METHODS = frozenset({"chat", "complete", "embed", "call"})


def pack(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)


def unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


def pack_or(obj: Any, fallback: Callable[[Exception], Any]) -> bytes:
    """``pack(obj)``, or ``pack(fallback(exc))`` when ``obj`` cannot be serialized."""
    try:
        return pack(obj)
    except Exception as exc:  # noqa: BLE001 - anything pickling raises goes to the fallback
        return pack(fallback(exc))


def unpack_or(blob: bytes, fallback: Callable[[Exception], Any]) -> Any:
    """``unpack(blob)``, or ``fallback(exc)`` when it cannot be read back (an
    exception type whose ``__init__`` does not take its own ``args``, say)."""
    try:
        return unpack(blob)
    except Exception as exc:  # noqa: BLE001
        return fallback(exc)
