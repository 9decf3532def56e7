"""Ray wraps an exception raised in an actor call in RayTaskError (once per hop);
callers of this library want the typed error itself."""
from __future__ import annotations

from ray.exceptions import RayTaskError


def unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc
