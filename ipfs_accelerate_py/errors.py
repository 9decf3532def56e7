"""The error taxonomy.

Every error is a ``GatewayError``, itself a ``ValueError``: code written for the
seed API catches ``ValueError`` and greps the message for "Authentication error"
or "Rate limit", and it keeps working.  Each error carries where it happened
(provider, endpoint_id, status, request_id) and whether retrying can help, so
the router decides from the type, never from message text.

Messages never contain an API key: every constructor runs the text through
``redact``, which removes registered secrets and anything shaped like a
provider key.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Iterable

__all__ = [
    "GatewayError", "AuthenticationError", "PermissionDeniedError", "RateLimitError",
    "InvalidRequestError", "UnknownModelError", "ContextLengthError", "ProviderError",
    "ProviderOverloadedError", "TimeoutError", "ConnectionError", "CircuitOpenError",
    "QueueFullError", "UnsupportedOperationError", "ConfigError", "StreamInterruptedError",
    "NotFoundError", "redact", "register_secret", "error_from_dict",
]

# ---------------------------------------------------------------------------
# Secret redaction
# ---------------------------------------------------------------------------

_KEY_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}"      # Anthropic
    r"|sk-(?:proj-)?[A-Za-z0-9_\-]{16,}"  # OpenAI
    r"|gsk_[A-Za-z0-9]{16,}"           # Groq
    r"|hf_[A-Za-z0-9]{16,}"            # Hugging Face
    r"|AIza[0-9A-Za-z_\-]{20,}"        # Google
    r"|(?<=[Bb]earer )[A-Za-z0-9._\-]{12,})"
)
_registered: set[str] = set()
_registered_lock = threading.Lock()
_registered_re: re.Pattern[str] | None = None


def register_secret(secret: str | None) -> None:
    """Remember a secret so that ``redact`` removes it wherever it appears.

    Called by config for every key it loads, so even keys with no recognisable
    shape (a fake server's, a self-hosted TGI token) never leak through errors.
    """
    global _registered_re
    if not secret or len(secret) < 4:
        return
    with _registered_lock:
        if secret in _registered:
            return
        _registered.add(secret)
        ordered = sorted(_registered, key=len, reverse=True)
        _registered_re = re.compile("|".join(re.escape(s) for s in ordered))


def fingerprint(secret: str | None) -> str:
    """A short, non-reversible label for a key: ``sk-...a1b2``."""
    if not secret:
        return "<none>"
    head = secret[:3] if len(secret) >= 12 else ""
    tail = secret[-4:] if len(secret) >= 12 else ""
    return f"{head}...{tail}" if head else "***"


def redact(text: Any, extra: Iterable[str] = ()) -> str:
    """Return ``text`` as a string with every known or key-shaped secret removed."""
    s = str(text)
    for secret in extra:
        if secret and len(secret) >= 4 and secret in s:
            s = s.replace(secret, fingerprint(secret))
    pattern = _registered_re
    if pattern is not None:
        s = pattern.sub(lambda m: fingerprint(m.group(0)), s)
    return _KEY_PATTERNS.sub(lambda m: fingerprint(m.group(0)), s)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class GatewayError(ValueError):
    """Base of every error the library raises on purpose."""

    prefix = "Gateway error"
    default_retryable = False
    default_status: int | None = None
    #: the OpenAI error "type" used when this error is sent over HTTP by Serve
    openai_type = "api_error"

    def __init__(self, message: str = "", *, provider: str | None = None,
                 endpoint_id: str | None = None, status: int | None = None,
                 request_id: str | None = None, retryable: bool | None = None,
                 retry_after: float | None = None, code: str | None = None,
                 details: dict | None = None) -> None:
        message = redact(message)
        text = message if message.startswith(self.prefix) else f"{self.prefix}: {message}"
        super().__init__(text)
        self.message = text
        self.provider = provider
        self.endpoint_id = endpoint_id
        self.status = status if status is not None else self.default_status
        self.request_id = request_id
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.code = code
        self.details = details or {}

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        bits = [repr(self.message)]
        for name in ("provider", "endpoint_id", "status", "request_id"):
            value = getattr(self, name)
            if value is not None:
                bits.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(bits)})"

    # Errors cross process boundaries (Ray), so they must pickle with all fields.
    def __reduce__(self):
        return (_rebuild_error, (type(self), self.to_dict()))

    def to_dict(self) -> dict:
        return {
            "type": type(self).__name__, "message": self.message, "provider": self.provider,
            "endpoint_id": self.endpoint_id, "status": self.status, "request_id": self.request_id,
            "retryable": self.retryable, "retry_after": self.retry_after, "code": self.code,
            "details": self.details,
        }

    def with_context(self, **fields: Any) -> "GatewayError":
        """Fill in fields that are still unknown (never overwrite what is known)."""
        for name, value in fields.items():
            if value is not None and getattr(self, name, None) is None:
                setattr(self, name, value)
        return self


def _rebuild_error(cls: type, data: dict) -> GatewayError:
    data = dict(data)
    data.pop("type", None)
    message = data.pop("message", "")
    err = cls.__new__(cls)
    GatewayError.__init__(err, message, **data)
    return err


class AuthenticationError(GatewayError):
    prefix = "Authentication error"
    default_status = 401
    openai_type = "authentication_error"


class PermissionDeniedError(GatewayError):
    prefix = "Permission denied"
    default_status = 403
    openai_type = "permission_error"


class RateLimitError(GatewayError):
    prefix = "Rate limit exceeded"
    default_status = 429
    default_retryable = True
    openai_type = "rate_limit_error"


class InvalidRequestError(GatewayError):
    prefix = "Invalid request"
    default_status = 400
    openai_type = "invalid_request_error"


class NotFoundError(InvalidRequestError):
    prefix = "Not found"
    default_status = 404
    openai_type = "not_found_error"


class UnknownModelError(NotFoundError):
    prefix = "Unknown model"
    default_status = 404
    openai_type = "model_not_found"

    def __init__(self, message: str = "", *, suggestions: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        if suggestions is not None:
            self.details = {**self.details, "suggestions": list(suggestions)}

    @property
    def suggestions(self) -> list[str]:
        return list(self.details.get("suggestions", []))


class ContextLengthError(InvalidRequestError):
    prefix = "Context length exceeded"
    default_status = 400
    openai_type = "context_length_exceeded"


class ProviderError(GatewayError):
    """The provider failed (5xx) or answered with something we cannot use."""
    prefix = "Provider error"
    default_status = 502
    default_retryable = True
    openai_type = "api_error"


class ProviderOverloadedError(ProviderError):
    prefix = "Provider overloaded"
    default_status = 529
    openai_type = "overloaded_error"


class StreamInterruptedError(ProviderError):
    """The stream broke after the caller already received part of the answer."""
    prefix = "Stream interrupted"
    default_status = 502
    default_retryable = False


class TimeoutError(GatewayError):  # noqa: A001 - deliberate: the library's own timeout
    prefix = "Timeout"
    default_status = 504
    default_retryable = True
    openai_type = "timeout_error"


class ConnectionError(GatewayError):  # noqa: A001 - deliberate: the library's own
    prefix = "Connection error"
    default_status = 502
    default_retryable = True
    openai_type = "api_connection_error"


class CircuitOpenError(GatewayError):
    prefix = "Circuit open"
    default_status = 503
    default_retryable = True
    openai_type = "service_unavailable"


class QueueFullError(GatewayError):
    prefix = "Queue full"
    default_status = 429
    default_retryable = True
    openai_type = "rate_limit_error"


class UnsupportedOperationError(GatewayError):
    prefix = "Unsupported operation"
    default_status = 400
    openai_type = "invalid_request_error"


class ConfigError(GatewayError):
    prefix = "Configuration error"
    default_status = None
    openai_type = "invalid_request_error"


_BY_NAME = {cls.__name__: cls for cls in [
    GatewayError, AuthenticationError, PermissionDeniedError, RateLimitError,
    InvalidRequestError, NotFoundError, UnknownModelError, ContextLengthError, ProviderError,
    ProviderOverloadedError, StreamInterruptedError, TimeoutError, ConnectionError,
    CircuitOpenError, QueueFullError, UnsupportedOperationError, ConfigError,
]}


def error_from_dict(data: dict) -> GatewayError:
    """Rebuild an error written by ``GatewayError.to_dict`` (bulk output, HTTP)."""
    cls = _BY_NAME.get(data.get("type", ""), GatewayError)
    return _rebuild_error(cls, data)


def error_for_status(status: int, message: str, **kw: Any) -> GatewayError:
    """The error class a plain HTTP status maps to, for providers with no richer signal."""
    if status == 401:
        cls: type[GatewayError] = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 408:
        cls = TimeoutError
    elif status == 413:
        cls = InvalidRequestError
    elif status == 429:
        cls = RateLimitError
    elif status in (503, 529):
        cls = ProviderOverloadedError
    elif status == 504:
        cls = TimeoutError
    elif status >= 500 or status in (409, 498):
        cls = ProviderError
    elif 400 <= status < 500:
        cls = InvalidRequestError
    else:
        cls = ProviderError
    kw.setdefault("status", status)
    if status in (409, 498):
        kw.setdefault("retryable", True)
    return cls(message, **kw)
