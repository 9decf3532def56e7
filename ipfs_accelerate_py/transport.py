"""The one place that does HTTP.

Providers describe a call as an ``HttpRequest`` and read an ``HttpResponse``;
this module moves the bytes with aiohttp and frames streams (SSE, NDJSON).
It never raises on an HTTP status: deciding what a 429 or a 503 means is the
provider's job.  It raises only the library's ``TimeoutError`` and
``ConnectionError`` for failures below HTTP.
"""
from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping


@dataclass
class FormField:
    """One part of a multipart/form-data body."""
    name: str
    value: str | bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: bytes | None = None
    form: list[FormField] | None = None
    params: dict[str, str] | None = None
    #: how to frame a streaming response body; None reads the whole body
    stream: Literal["sse", "ndjson"] | None = None

    def __repr__(self) -> str:  # headers hold keys: never show them
        return f"HttpRequest({self.method} {self.url})"


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]          # keys lower-cased
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON, or None when it is empty or not JSON."""
        if not self.body:
            return None
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {len(self.body)} bytes)"


@dataclass
class SseEvent:
    data: str
    event: str | None = None
    id: str | None = None


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}
