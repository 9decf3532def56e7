"""One pickled blob per internal actor call, instead of Ray's per-argument serialization.

Why: Ray serializes every argument and return value on its own, through a
generic path (msgpack with a cloudpickle fallback for each object that is
not plain data) and records each one separately.  For our small dataclasses
that costs a few hundred microseconds per call across the two processes; one
C ``pickle.dumps`` of a tuple costs about ten, and Ray moves ``bytes``
untouched.  On the hot path (Gateway -> router -> endpoint actor and back)
that is measured in bench/overhead.py and bench/throughput.py.

Only internal hops use this.  The public actor methods
(``router.chat.remote(...)`` and friends) keep plain Python arguments and
return values, so user code never sees a blob.
"""
from __future__ import annotations

import pickle
from typing import Any

from ray import cloudpickle

#: what a standard pickle cannot handle but cloudpickle can (lambdas, local classes)
_NOT_PICKLABLE = (pickle.PicklingError, TypeError, AttributeError)


def pack(obj: Any) -> bytes:
    """Serialize ``obj`` for an internal call; what plain pickle refuses goes through
    cloudpickle, as Ray itself would have done.  Raises what cloudpickle raises
    for what cannot be serialized at all."""
    try:
        return pickle.dumps(obj, protocol=5)
    except _NOT_PICKLABLE:
        return cloudpickle.dumps(obj, protocol=5)


def unpack(blob: bytes) -> Any:
    return pickle.loads(blob)
