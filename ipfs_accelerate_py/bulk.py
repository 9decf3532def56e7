"""Bulk inference: JSONL files and Ray Datasets through the shared router.

JSONL (``run_bulk`` / ``ipfs-accelerate bulk``)
------------------------------------------------
Each input line is one chat or embedding request, in either shape::

    {"custom_id": "a1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [...], "max_tokens": 64}}     # OpenAI batch file
    {"custom_id": "a2", "model": "gpt-4o-mini", "messages": [...]}               # plain chat
    {"model": "text-embedding-3-small", "input": ["x", "y"]}                     # plain embeddings

``custom_id`` defaults to ``line-<n>`` (1-based line number); a custom_id used
twice is refused before anything is sent.  Blank lines are skipped.  A line
that is not valid JSON, or not a valid request, is not refused: it gets its
own result line with an ``InvalidRequestError`` whose ``details.line`` is the
line number (custom_id ``line-<n>`` when none can be read), so one bad line
never stops a million-line job.

Every finished line appends one JSON line to the results file::

    {"custom_id": "a1", "response": {"status_code": 200, "request_id": "...",
       "body": {<chat.completion or embedding list, with usage>, "endpoint_id", "cost_usd", "request_id"}},
     "error": null}
    {"custom_id": "a2", "response": null,
     "error": {"type": "RateLimitError", "message": "Rate limit exceeded: ...", "status": 429,
               "retryable": true, ...}}                                     # GatewayError.to_dict()

Write-ahead guarantee: the results file is the only state.  A line is done
iff a complete, parseable result line with its custom_id is in the file.
Each result line is written with one ``write`` as soon as its request ends
(so a killed process loses only requests still in flight) and ``fsync``-ed
in batches (every 50 lines or 200 ms, and always before returning, also on
Ctrl-C/SIGTERM), so after a machine crash at most the last 200 ms of lines
are missing -- and are simply redone.  Rerunning the same command resumes: a
torn last line left by a crash is truncated away, finished lines are skipped,
every custom_id ends up in the file exactly once.  ``retry_failed=True``
drops the error lines (atomically: rewrite + rename) and reruns them.

Memory stays flat: the input is streamed twice (a validation pass, then the
run), at most ``concurrency`` requests are in flight, and the only
per-line state is a 16-byte digest of each custom_id.

Ray Data (``chat_dataset`` / ``embed_dataset``)
-----------------------------------------------
``map_batches`` with a callable class that attaches to the running gateway
(``Gateway.connect``) in each Ray Data worker and sends a batch's rows
concurrently, so a Dataset job shares the cluster-wide per-key actors (and
their rate limits) with every other job.  Failed rows get an ``error``
column (JSON of ``GatewayError.to_dict()``), never dropped.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import struct
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import errors
from .core.priority import parse_priority

__all__ = [
    "run_bulk", "arun_bulk", "BulkSummary", "BulkInputError", "BulkInterrupted",
    "chat_dataset", "embed_dataset", "format_stats_table", "endpoint_rows",
    "DEFAULT_CONCURRENCY", "FSYNC_EVERY_LINES", "FSYNC_EVERY_S",
]

DEFAULT_CONCURRENCY = 256
#: fsync the results file after this many lines ...
FSYNC_EVERY_LINES = 50
#: ... or this many seconds, whichever comes first (and always before returning)
FSYNC_EVERY_S = 0.2
#: a request rejected with QueueFullError (the router's queue is shared) is re-sent this many times
QUEUE_FULL_RETRIES = 20

CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
EMBED_URLS = ("/v1/embeddings", "/embeddings")
#: request keys that steer the router rather than the model; a line may set them
_ROUTING_KEYS = ("priority", "timeout_s", "endpoint_id")
_DROPPED_KEYS = ("stream", "stream_options")


class BulkInputError(errors.InvalidRequestError):
    """The input or results file cannot be used at all (nothing was sent)."""
    prefix = "Invalid bulk input"


class BulkInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped a run; finished lines are written and synced.
    ``summary`` tells what was done; rerun the same command to resume."""

    def __init__(self, summary: "BulkSummary") -> None:
        super().__init__("bulk run interrupted; rerun the same command to resume")
        self.summary = summary


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

@dataclass
class BulkSummary:
    input_path: str
    output_path: str
    #: non-blank input lines
    total_lines: int = 0
    #: lines that already had a result before this run
    already_done: int = 0
    #: lines sent (or answered with an input error) in this run
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    #: of ``failed``: lines that were not valid JSON / not a valid request
    invalid_lines: int = 0
    #: custom_ids whose error result was dropped to re-run them (``retry_failed``)
    retried_failed: int = 0
    #: bytes of a torn last line removed from the results file
    truncated_bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    interrupted: bool = False
    #: lines still without a result (non-zero only after an interruption)
    remaining: int = 0
    #: per endpoint, counters of the key actors over this run (see ``endpoint_rows``)
    endpoints: dict[str, dict] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def rate_per_s(self) -> float:
        return self.submitted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["total_tokens"] = self.total_tokens
        return out

    def table(self) -> str:
        """The per-key table (endpoint, key fingerprint, requests, ok, failed, 429s, tokens, cost, p50)."""
        return format_stats_table(list(self.endpoints.values()))

    def report(self) -> str:
        """Human-readable summary: totals line, then the per-key table."""
        state = "interrupted" if self.interrupted else "done"
        lines = [
            f"bulk {state}: {self.succeeded} ok, {self.failed} failed"
            + (f" ({self.invalid_lines} invalid input lines)" if self.invalid_lines else "")
            + f", {self.already_done} already done, {self.remaining} remaining "
            f"of {self.total_lines} lines in {self.elapsed_s:.1f}s ({self.rate_per_s:.1f} req/s)",
            f"tokens: {self.input_tokens} in + {self.output_tokens} out = {self.total_tokens}; "
            f"cost ${self.cost_usd:.6f}",
            f"results: {self.output_path}",
        ]
        if self.truncated_bytes:
            lines.append(f"(removed a torn last line of {self.truncated_bytes} bytes left by an earlier crash)")
        if self.retried_failed:
            lines.append(f"(re-ran {self.retried_failed} lines that had failed before)")
        if self.endpoints:
            lines.append("per key, over this run (includes other jobs sharing the keys meanwhile):")
            lines.append(self.table())
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Per-key table from gw.stats()
# ---------------------------------------------------------------------------

_COUNTERS = ("total_requests", "successful_requests", "failed_requests", "rate_limited",
             "input_tokens", "output_tokens", "total_tokens", "cost_usd")


def _bucket_quantile(buckets: Mapping[str, int], q: float, max_s: float | None) -> float | None:
    items = []
    for bound, count in buckets.items():
        if count > 0:
            items.append((float("inf") if bound == "+Inf" else float(bound), count))
    total = sum(c for _, c in items)
    if not total:
        return None
    items.sort()
    seen = 0
    for bound, count in items:
        seen += count
        if seen >= q * total:
            return max_s if bound == float("inf") else bound
    return max_s


def endpoint_rows(after: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Per-endpoint rows from ``gw.stats()`` (``after``), minus an earlier
    snapshot (``before``) when given, so a run reports its own window even when
    the key actors served other work before.  Each row: endpoint_id, key,
    provider, requests, ok, failed, rate_limited, input/output/total tokens,
    cost_usd, p50_s."""
    prev = (before or {}).get("endpoints", {}) or {}
    rows: dict[str, dict] = {}
    for eid, cur in ((after or {}).get("endpoints") or {}).items():
        if not isinstance(cur, Mapping) or "error" in cur:
            rows[eid] = {"endpoint_id": eid, "key": "?", "provider": "?", "requests": 0, "ok": 0, "failed": 0,
                         "rate_limited": 0, "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                         "cost_usd": 0.0, "p50_s": None, "unavailable": True}
            continue
        old = prev.get(eid) if isinstance(prev.get(eid), Mapping) and "error" not in prev.get(eid, {}) else {}
        # a restarted actor starts from zero: then the delta is the current value
        restarted = bool(old) and cur.get("total_requests", 0) < old.get("total_requests", 0)
        base = {} if restarted else old
        d = {k: (cur.get(k, 0) or 0) - (base.get(k, 0) or 0) for k in _COUNTERS}
        cur_b = dict((cur.get("latency") or {}).get("buckets") or {})
        old_b = dict((base.get("latency") or {}).get("buckets") or {})
        delta_b = {k: v - old_b.get(k, 0) for k, v in cur_b.items()}
        rows[eid] = {
            "endpoint_id": eid, "key": cur.get("key", "?"), "provider": cur.get("provider", "?"),
            "requests": d["total_requests"], "ok": d["successful_requests"], "failed": d["failed_requests"],
            "rate_limited": d["rate_limited"], "input_tokens": d["input_tokens"],
            "output_tokens": d["output_tokens"], "total_tokens": d["total_tokens"],
            "cost_usd": round(d["cost_usd"], 8),
            "p50_s": _bucket_quantile(delta_b, 0.5, (cur.get("latency") or {}).get("max_s")),
        }
    return rows


def _fmt_latency(value: float | None) -> str:
    if value is None:
        return "-"
    return f"<={value * 1000:.0f}ms" if value < 1 else f"<={value:.1f}s"


def format_stats_table(rows: list[Mapping[str, Any]]) -> str:
    """A plain-text table of ``endpoint_rows`` values (or anything with the same keys)."""
    head = ("endpoint", "key", "requests", "ok", "failed", "429s", "tokens", "cost_usd", "p50")
    body = [(str(r.get("endpoint_id")), str(r.get("key")), str(r.get("requests", 0)), str(r.get("ok", 0)),
             str(r.get("failed", 0)), str(r.get("rate_limited", 0)), str(r.get("total_tokens", 0)),
             f"{float(r.get('cost_usd') or 0.0):.6f}", _fmt_latency(r.get("p50_s"))) for r in rows]
    if rows:
        body.append(("TOTAL", "", *(str(sum(int(r.get(k, 0) or 0) for r in rows))
                                    for k in ("requests", "ok", "failed", "rate_limited", "total_tokens")),
                     f"{sum(float(r.get('cost_usd') or 0.0) for r in rows):.6f}", ""))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    numeric = {2, 3, 4, 5, 6, 7}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    return "\n".join(s.rstrip() for s in out)


# ---------------------------------------------------------------------------
# Input lines
# ---------------------------------------------------------------------------

@dataclass
class _Item:
    line: int
    custom_id: str
    kind: str = "chat"            # "chat" | "embed"
    model: str = ""
    payload: Any = None           # messages or input
    params: dict = field(default_factory=dict)
    encoding_format: str | None = None
    error: errors.GatewayError | None = None


def _invalid(line: int, message: str, code: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(f"line {line}: {message}", code=code, details={"line": line})


def _parse_line(raw: bytes, line: int, model_override: str | None) -> _Item | None:
    """One input line -> an _Item (with ``error`` set when the line is unusable); None for blank lines."""
    default_id = f"line-{line}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Item(line, default_id, error=_invalid(line, f"not UTF-8 ({exc.reason})", "invalid_encoding"))
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return _Item(line, default_id, error=_invalid(line, f"not valid JSON ({exc})", "invalid_json"))
    if not isinstance(obj, dict):
        return _Item(line, default_id, error=_invalid(
            line, f"expected a JSON object, got {type(obj).__name__}", "invalid_line"))
    cid = obj.get("custom_id", default_id)
    if isinstance(cid, int) and not isinstance(cid, bool):
        cid = str(cid)
    if not isinstance(cid, str) or not cid:
        return _Item(line, default_id, error=_invalid(line, "custom_id must be a non-empty string", "invalid_custom_id"))
    item = _Item(line, cid)
    if "body" in obj or "url" in obj:  # OpenAI batch-file shape
        method = obj.get("method", "POST")
        if not isinstance(method, str) or method.upper() != "POST":
            item.error = _invalid(line, f"method must be POST, got {method!r}", "invalid_method")
            return item
        url = obj.get("url")
        if url in CHAT_URLS:
            item.kind = "chat"
        elif url in EMBED_URLS:
            item.kind = "embed"
        else:
            item.error = _invalid(line, f"url must be one of {', '.join(CHAT_URLS[:1] + EMBED_URLS[:1])}, "
                                        f"got {url!r}", "invalid_url")
            return item
        body = obj.get("body")
        if not isinstance(body, dict):
            item.error = _invalid(line, "body must be a JSON object", "invalid_body")
            return item
        fields = dict(body)
    else:  # plain shape
        fields = {k: v for k, v in obj.items() if k != "custom_id"}
        if "messages" in fields:
            item.kind = "chat"
        elif "input" in fields:
            item.kind = "embed"
        else:
            item.error = _invalid(line, "a request needs 'messages' (chat) or 'input' (embeddings), or the "
                                        "batch shape {custom_id, method, url, body}", "invalid_line")
            return item
    key = "messages" if item.kind == "chat" else "input"
    if key not in fields:
        item.error = _invalid(line, f"{'/v1/chat/completions' if key == 'messages' else '/v1/embeddings'} "
                                    f"needs '{key}'", "missing_" + key)
        return item
    item.payload = fields.pop(key)
    model = model_override or fields.get("model")
    fields.pop("model", None)
    if not isinstance(model, str) or not model.strip():
        item.error = _invalid(line, "no model: set 'model' in the line or pass --model", "missing_model")
        return item
    item.model = model
    for k in _DROPPED_KEYS:
        fields.pop(k, None)
    if item.kind == "embed":
        item.encoding_format = fields.get("encoding_format")
    item.params = fields
    return item


def _iter_input(path: Path, model: str | None) -> Iterator[_Item]:
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            item = _parse_line(raw, n, model)
            if item is not None:
                yield item


def _digest(custom_id: str) -> bytes:
    return hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _DigestSet:
    """A frozen set of 16-byte digests in one sorted numpy array (16 bytes per id)."""

    def __init__(self, digests: bytes | bytearray = b"") -> None:
        import numpy as np  # noqa: PLC0415 - numpy is a dependency; keep module import light
        self._np = np
        arr = np.frombuffer(bytes(digests), dtype="S16")
        self._a = np.unique(arr)

    def __len__(self) -> int:
        return int(self._a.shape[0])

    def __contains__(self, digest: bytes) -> bool:
        if not len(self):
            return False
        q = self._np.frombuffer(digest, dtype="S16")
        i = int(self._np.searchsorted(self._a, q)[0])
        return i < len(self) and bool((self._a[i:i + 1] == q)[0])


# ---------------------------------------------------------------------------
# Results file
# ---------------------------------------------------------------------------

def _result_status(raw: bytes) -> tuple[str, bool] | None:
    """(custom_id, ok) of a complete result line, None if it is not one."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        return None
    if "response" not in obj and "error" not in obj:
        return None
    ok = obj.get("error") is None and isinstance(obj.get("response"), dict)
    return obj["custom_id"], ok


@dataclass
class _ResultsScan:
    done: _DigestSet
    failed_ids: int
    lines: int
    truncated_bytes: int
    needs_newline: bool


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise BulkInputError(f"results file {path} is being written by another bulk run; "
                             f"wait for it or choose another output file") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path.parent), os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def _open_results(path: Path, retry_failed: bool) -> tuple[int, _ResultsScan, int]:
    """Open (create) and lock the results file, repair a torn tail, optionally
    drop error lines; returns (fd for appending, scan, custom_ids whose errors were dropped)."""
    import numpy as np  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _lock(fd, path)
        digests = bytearray()
        oks = bytearray()
        good_end = 0
        offset = 0
        needs_newline = False
        bad: list[int] = []
        with os.fdopen(os.dup(fd), "rb") as fh:
            fh.seek(0)
            for n, raw in enumerate(fh, 1):
                offset += len(raw)
                complete = raw.endswith(b"\n")
                status = _result_status(raw) if raw.strip() else None
                if status is None:
                    if complete and raw.strip():
                        bad.append(n)
                    elif complete:  # an empty line: harmless
                        good_end = offset
                    continue
                cid, ok = status
                digests += _digest(cid)
                oks.append(1 if ok else 0)
                good_end = offset
                needs_newline = not complete
        size = offset
        if bad:
            raise BulkInputError(
                f"results file {path} has {len(bad)} line(s) that are not bulk results (first: line {bad[0]}); "
                f"refusing to append to it -- is it the right file?")
        truncated = size - good_end
        if truncated:  # a torn last line from a crash: nothing after it, never a complete line
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        arr = np.frombuffer(bytes(digests), dtype="S16")
        ok_arr = np.frombuffer(bytes(oks), dtype=np.uint8).astype(bool)
        # the last line of a custom_id decides its state
        rev = arr[::-1]
        uniq, first_rev = np.unique(rev, return_index=True)
        last_idx = len(arr) - 1 - first_rev
        final_ok = ok_arr[last_idx] if len(arr) else ok_arr
        failed = int((~final_ok).sum()) if len(arr) else 0
        dropped = 0
        if retry_failed and (failed or len(uniq) != len(arr)):
            keep = np.zeros(len(arr), dtype=bool)
            keep[last_idx[final_ok]] = True
            fd, _ = _compact(fd, path, keep)
            ok_digests = uniq[final_ok]
            scan = _ResultsScan(_DigestSet(ok_digests.tobytes()), 0, int(keep.sum()), truncated, False)
            return fd, scan, failed
        scan = _ResultsScan(_DigestSet(bytes(digests)), failed, len(arr), truncated, needs_newline)
        return fd, scan, dropped
    except BaseException:
        os.close(fd)
        raise


def _compact(fd: int, path: Path, keep: Any) -> tuple[int, int]:
    """Rewrite the results file with only the ``keep`` result lines (atomic
    rename; the new file is locked before it becomes visible)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    new_fd = os.open(str(tmp), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    dropped = 0
    try:
        _lock(new_fd, tmp)
        i = 0
        with os.fdopen(os.dup(fd), "rb") as src, os.fdopen(os.dup(new_fd), "ab") as dst:
            src.seek(0)
            for raw in src:
                if not raw.strip() or _result_status(raw) is None:
                    continue
                if keep[i]:
                    dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
                else:
                    dropped += 1
                i += 1
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
        _fsync_dir(path)
    except BaseException:
        os.close(new_fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    return new_fd, dropped


class _Writer:
    """Appends result lines: one write per line, fsync every N lines / S seconds."""

    def __init__(self, fd: int, *, every_lines: int = FSYNC_EVERY_LINES, every_s: float = FSYNC_EVERY_S,
                 needs_newline: bool = False) -> None:
        self.fd = fd
        self.every_lines = every_lines
        self.every_s = every_s
        self.unsynced = 0
        self.last_sync = time.monotonic()
        self.lines = 0
        if needs_newline:
            self._write_all(b"\n")

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def write(self, obj: Mapping[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
        self._write_all(data)
        self.lines += 1
        self.unsynced += 1
        self.maybe_sync()

    def maybe_sync(self) -> None:
        if self.unsynced and (self.unsynced >= self.every_lines
                              or time.monotonic() - self.last_sync >= self.every_s):
            self.sync()

    def sync(self) -> None:
        if self.unsynced:
            os.fsync(self.fd)
            self.unsynced = 0
        self.last_sync = time.monotonic()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            os.close(self.fd)


# ---------------------------------------------------------------------------
# Result lines
# ---------------------------------------------------------------------------

def _chat_body(r: Any) -> dict:
    texts = list(r.choices) if getattr(r, "choices", None) else [r.text]
    choices = []
    for i, text in enumerate(texts):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if i == 0 and r.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in r.tool_calls]
        choices.append({"index": i, "message": message, "finish_reason": r.finish_reason, "logprobs": None})
    return {
        "id": f"chatcmpl-{r.request_id}", "object": "chat.completion", "created": int(time.time()),
        "model": r.model, "choices": choices, "usage": r.usage.to_openai(),
        "endpoint_id": r.endpoint_id, "provider": r.provider, "cost_usd": r.cost_usd,
        "request_id": r.request_id, "latency_s": r.latency_s, "cached": r.cached,
    }


def _embedding_value(vec: list[float], encoding_format: str | None) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
    return list(vec)


def _embed_body(r: Any, encoding_format: str | None) -> dict:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _embedding_value(v, encoding_format)}
                 for i, v in enumerate(r.embeddings)],
        "model": r.model,
        "usage": {"prompt_tokens": r.usage.prompt_tokens, "total_tokens": r.usage.total_tokens},
        "endpoint_id": r.endpoint_id, "provider": r.provider, "cost_usd": r.cost_usd,
        "request_id": r.request_id, "latency_s": r.latency_s, "cached": r.cached,
    }


def _as_gateway_error(exc: BaseException, request_id: str | None = None) -> errors.GatewayError:
    if isinstance(exc, errors.GatewayError):
        return exc
    try:
        from ray.exceptions import RayError  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        RayError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, RayError):
        return errors.ConnectionError(f"{type(exc).__name__}: {exc}"[:2000], request_id=request_id,
                                      code="ray_error")
    return errors.GatewayError(f"{type(exc).__name__}: {exc}"[:2000], request_id=request_id,
                               code="internal_error", details={"exception": type(exc).__name__})


def _error_dict(err: errors.GatewayError, line: int) -> dict:
    data = err.to_dict()
    data["details"] = {**(data.get("details") or {}), "line": line}
    return data


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

class _Run:
    def __init__(self, summary: BulkSummary, gateway: Any, items: Iterator[_Item], done: _DigestSet,
                 writer: _Writer, *, priority: str, concurrency: int, bar: Any) -> None:
        self.s = summary
        self.gw = gateway
        self.items = items
        self.done = done
        self.writer = writer
        self.priority = priority
        self.concurrency = concurrency
        self.bar = bar
        self.fatal: BaseException | None = None
        self._last_postfix = 0.0
        from ray.exceptions import RayTaskError  # noqa: PLC0415

        from .gateway import _ROUTER_GONE, ROUTER_RECOVERY_S, _unwrap  # noqa: PLC0415
        self._task_error, self._gone, self._recovery_s, self._unwrap = (
            RayTaskError, _ROUTER_GONE, ROUTER_RECOVERY_S, _unwrap)

    # -- one request ----------------------------------------------------------
    async def _invoke(self, method: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self._recovery_s
        queue_full = 0
        while True:
            ref = getattr(self.gw.router, method).remote(*args, **kwargs)
            try:
                return await ref
            except asyncio.CancelledError:
                _cancel_quietly(ref)
                raise
            except self._gone:
                if time.monotonic() > deadline:
                    raise errors.ConnectionError("the gateway router is gone and did not come back",
                                                 request_id=kwargs.get("request_id")) from None
                await asyncio.get_running_loop().run_in_executor(None, self.gw._reattach, deadline)
            except self._task_error as exc:
                err = self._unwrap(exc)
                if isinstance(err, errors.QueueFullError) and queue_full < QUEUE_FULL_RETRIES:
                    queue_full += 1  # the router's queue is shared with other jobs: wait, re-send
                    await asyncio.sleep(min(5.0, 0.25 * 2 ** min(queue_full, 5)))
                    continue
                raise err from None

    async def _one(self, item: _Item) -> dict:
        params = dict(item.params)
        routing = {k: params.pop(k) for k in _ROUTING_KEYS if k in params}
        routing.setdefault("priority", self.priority)
        rid = params.pop("request_id", None)
        rid = rid if isinstance(rid, str) and rid else f"bulk_{uuid.uuid4().hex[:24]}"
        try:
            if item.kind == "chat":
                r = await self._invoke("chat", item.model, item.payload, request_id=rid, **routing, **params)
                body = _chat_body(r)
            else:
                r = await self._invoke("embed", item.model, item.payload, request_id=rid, **routing, **params)
                body = _embed_body(r, item.encoding_format)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed error line
            err = _as_gateway_error(exc, rid).with_context(request_id=rid)
            return {"custom_id": item.custom_id, "response": None, "error": _error_dict(err, item.line)}
        self.s.input_tokens += int(r.usage.prompt_tokens or 0)
        self.s.output_tokens += int(r.usage.completion_tokens or 0)
        self.s.cost_usd += float(r.cost_usd or 0.0)
        return {"custom_id": item.custom_id,
                "response": {"status_code": 200, "request_id": r.request_id, "body": body},
                "error": None}

    def _record(self, result: dict) -> None:
        self.writer.write(result)
        self.s.submitted += 1
        if result["error"] is None:
            self.s.succeeded += 1
        else:
            self.s.failed += 1
        self.s.remaining = max(0, self.s.remaining - 1)
        if self.bar is not None:
            self.bar.update(1)
            now = time.monotonic()
            if now - self._last_postfix >= 0.5:
                self._last_postfix = now
                self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"ok={self.s.succeeded} failed={self.s.failed} tokens={self.s.total_tokens} "
                f"cost=${self.s.cost_usd:.4f}", refresh=False)

    async def _worker(self, item: _Item, sem: asyncio.Semaphore) -> None:
        try:
            result = await self._one(item)
        finally:
            sem.release()
        self._record(result)

    async def _syncer(self) -> None:
        while True:
            await asyncio.sleep(self.writer.every_s)
            self.writer.maybe_sync()

    def _on_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            self.fatal = task.exception()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        installed = False
        previous = None
        if threading.current_thread() is threading.main_thread() and me is not None:
            try:
                previous = signal.getsignal(signal.SIGTERM)
                loop.add_signal_handler(signal.SIGTERM, me.cancel)
                installed = True
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                pass  # a loop without signal handlers (Windows): SIGTERM keeps its default
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()
        syncer = asyncio.ensure_future(self._syncer())
        try:
            for n, item in enumerate(self.items):
                if self.fatal is not None:
                    break
                if n % 1000 == 999:
                    await asyncio.sleep(0)  # long stretches of finished lines: let answers in meanwhile
                if _digest(item.custom_id) in self.done:
                    continue
                if item.error is not None:
                    self.s.invalid_lines += 1
                    self._record({"custom_id": item.custom_id, "response": None,
                                  "error": _error_dict(item.error, item.line)})
                    continue
                await sem.acquire()
                task = asyncio.ensure_future(self._worker(item, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(self._on_done)
            while tasks and self.fatal is None:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
            if self.fatal is not None:
                raise self.fatal
        except BaseException:
            # Ctrl-C, SIGTERM or a fatal error: what finished is written; the rest is
            # cancelled (the router drops queued requests) and redone on the next run
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            syncer.cancel()
            self._postfix()
            self.writer.sync()
            if installed:
                loop.remove_signal_handler(signal.SIGTERM)
                if previous is not None:  # e.g. Ray's own driver handler
                    signal.signal(signal.SIGTERM, previous)


def _cancel_quietly(ref: Any) -> None:
    try:
        import ray  # noqa: PLC0415
        ray.cancel(ref)
    except Exception:  # noqa: BLE001 - the call may be finished or the actor gone
        pass


def _scan_input(path: Path, model: str | None, done: _DigestSet) -> tuple[int, int]:
    """Validation pass: (non-blank lines, lines without a result); refuses duplicate custom_ids."""
    import numpy as np  # noqa: PLC0415

    digests = bytearray()
    total = pending = 0
    for item in _iter_input(path, model):
        d = _digest(item.custom_id)
        digests += d
        total += 1
        if d not in done:
            pending += 1
    arr = np.frombuffer(bytes(digests), dtype="S16")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        dup = _DigestSet(uniq[counts > 1].tobytes())
        seen: dict[str, list[int]] = {}
        for item in _iter_input(path, model):
            if _digest(item.custom_id) in dup:
                seen.setdefault(item.custom_id, []).append(item.line)
        shown = "; ".join(f"{cid!r} on lines {', '.join(map(str, lines[:5]))}"
                          for cid, lines in list(seen.items())[:5])
        more = f" (and {len(seen) - 5} more)" if len(seen) > 5 else ""
        raise BulkInputError(f"{path}: {len(seen)} custom_id(s) used more than once: {shown}{more}; "
                             f"every line needs its own custom_id (results are keyed by it)",
                             code="duplicate_custom_id", details={"duplicates": list(seen)[:100]})
    return total, pending


def _make_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # noqa: PLC0415
    return tqdm(total=total, unit="req", desc="bulk", dynamic_ncols=True, mininterval=0.5, smoothing=0.1,
                file=sys.stderr)


def _get_gateway(gateway: Any, config: Any, namespace: str | None, name: str | None) -> Any:
    from .gateway import Gateway  # noqa: PLC0415
    if gateway is not None:
        return gateway
    if config is None and (namespace or name):
        return Gateway.connect(namespace or "ipfs_accelerate", name or "ia")
    return Gateway.start(config)


def _prepare(input_path: Any, output_path: Any, model: str | None, priority: Any, concurrency: int,
             retry_failed: bool) -> tuple[BulkSummary, Path, int, _ResultsScan, int, int]:
    inp, out = Path(input_path), Path(output_path)
    if not inp.is_file():
        raise BulkInputError(f"input file {inp} does not exist", code="input_not_found")
    if out.exists() and out.resolve() == inp.resolve():
        raise BulkInputError("the results file must not be the input file")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise BulkInputError(f"concurrency must be a positive whole number, got {concurrency!r}")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise BulkInputError("model must be a non-empty string")
    parse_priority(priority)
    summary = BulkSummary(input_path=str(inp), output_path=str(out))
    fd, scan, dropped = _open_results(out, retry_failed)
    try:
        total, pending = _scan_input(inp, model, scan.done)
    except BaseException:
        os.close(fd)
        raise
    summary.total_lines = total
    summary.already_done = total - pending
    summary.remaining = pending
    summary.truncated_bytes = scan.truncated_bytes
    summary.retried_failed = dropped
    return summary, inp, fd, scan, total, pending


def run_bulk(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], gateway: Any = None, *,
             config: Any = None, model: str | None = None, priority: Any = "LOW",
             concurrency: int = DEFAULT_CONCURRENCY, progress: bool = True, retry_failed: bool = False,
             namespace: str | None = None, name: str | None = None) -> BulkSummary:
    """Run every request of ``input_path`` (JSONL) through the gateway and
    append one result line per request to ``output_path``; resumable.

    ``gateway``: a running ``Gateway``; else one is started from ``config``
    (YAML path, dict, GatewayConfig; None = environment discovery) or, when only
    ``namespace``/``name`` are given, the running one is attached.  ``model``
    overrides every line's model.  At most ``concurrency`` requests are in
    flight.  Raises ``BulkInputError`` before sending anything if the input is
    unusable (missing, duplicate custom_ids) and ``BulkInterrupted`` (a
    ``KeyboardInterrupt`` carrying the summary) on Ctrl-C/SIGTERM after
    writing and syncing every finished line.
    """
    summary, inp, fd, scan, total, pending = _prepare(input_path, output_path, model, priority, concurrency,
                                                      retry_failed)
    writer = _Writer(fd, needs_newline=scan.needs_newline)
    started = time.monotonic()
    bar = None
    gw = None
    before: dict = {}
    try:
        if pending:
            gw = _get_gateway(gateway, config, namespace, name)
            before = _stats_quietly(gw)
            started = time.monotonic()  # elapsed/rate measure the requests, not the set-up
            bar = _make_bar(pending, progress)
            run = _Run(summary, gw, _iter_input(inp, model), scan.done, writer,
                       priority=priority, concurrency=concurrency, bar=bar)
            asyncio.run(run.main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
        _finish(summary, writer, bar, gw, before, started)
        raise BulkInterrupted(summary) from None
    except BaseException:
        _finish(summary, writer, bar, gw, before, started)
        raise
    _finish(summary, writer, bar, gw, before, started)
    return summary


async def arun_bulk(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], gateway: Any = None,
                    **kwargs: Any) -> BulkSummary:
    """``run_bulk`` for code already inside an event loop (runs it in a thread)."""
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: run_bulk(input_path, output_path, gateway, **kwargs))


def _stats_quietly(gw: Any) -> dict:
    try:
        return gw.stats()
    except Exception:  # noqa: BLE001 - the table is a report, never a reason to fail
        return {}


def _finish(summary: BulkSummary, writer: _Writer, bar: Any, gw: Any, before: dict, started: float) -> None:
    try:
        writer.close()
    finally:
        if bar is not None:
            bar.close()
        summary.elapsed_s = time.monotonic() - started
        summary.cost_usd = round(summary.cost_usd, 8)
        if gw is not None:
            after = _stats_quietly(gw)
            if after:
                summary.endpoints = endpoint_rows(after, before)


# ---------------------------------------------------------------------------
# Ray Data
# ---------------------------------------------------------------------------

def _to_py(value: Any) -> Any:
    """numpy/arrow values of a Ray Data batch -> plain Python (lists, dicts, str)."""
    try:
        import numpy as np  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        np = None  # type: ignore[assignment]
    if np is not None:
        if isinstance(value, np.ndarray):
            return [_to_py(v) for v in value.tolist()]
        if isinstance(value, np.generic):
            return value.item()
    if isinstance(value, Mapping):
        return {k: _to_py(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_py(v) for v in value]
    return value


class _DatasetFn:
    """The map_batches callable: attaches to the gateway once per Ray Data worker."""

    def __init__(self, kind: str, namespace: str, name: str, model: str, column: str, column_is_prompt: bool,
                 output_column: str, priority: Any, inputs_per_request: int, params: dict) -> None:
        from .gateway import Gateway  # noqa: PLC0415
        self.kind = kind
        self.model = model
        self.column = column
        self.column_is_prompt = column_is_prompt
        self.output_column = output_column
        self.priority = priority
        self.inputs_per_request = max(1, int(inputs_per_request))
        self.params = dict(params)
        self.gw = Gateway.connect(namespace, name)

    def _gather(self, calls: list[tuple[str, tuple, dict]]) -> list[Any]:
        """Send every call at once, then collect: each result or its typed error."""
        import ray  # noqa: PLC0415
        from ray.exceptions import RayTaskError  # noqa: PLC0415

        from .gateway import _ROUTER_GONE, ROUTER_RECOVERY_S, _unwrap  # noqa: PLC0415

        def submit(call: tuple[str, tuple, dict]) -> Any:
            method, args, kwargs = call
            return getattr(self.gw.router, method).remote(*args, **kwargs)

        refs = [submit(c) for c in calls]
        out: list[Any] = []
        for call, ref in zip(calls, refs):
            deadline = time.monotonic() + ROUTER_RECOVERY_S
            while True:
                try:
                    out.append(ray.get(ref))
                    break
                except RayTaskError as exc:
                    out.append(_as_gateway_error(_unwrap(exc), call[2].get("request_id")))
                    break
                except _ROUTER_GONE:
                    if time.monotonic() > deadline:
                        out.append(errors.ConnectionError("the gateway router is gone and did not come back"))
                        break
                    self.gw._reattach(deadline)
                    ref = submit(call)
                except Exception as exc:  # noqa: BLE001
                    out.append(_as_gateway_error(exc, call[2].get("request_id")))
                    break
        return out

    def _kwargs(self) -> dict:
        return {"priority": self.priority, "request_id": f"data_{uuid.uuid4().hex[:24]}", **self.params}

    def __call__(self, batch: dict) -> dict:
        import numpy as np  # noqa: PLC0415

        values = [_to_py(v) for v in batch[self.column]]
        n = len(values)
        if self.kind == "chat":
            calls = []
            for v in values:
                messages = [{"role": "user", "content": v}] if self.column_is_prompt else v
                calls.append(("chat", (self.model, messages), self._kwargs()))
            results = self._gather(calls)
            texts, errs, eids, rids, pt, ct, cost = ([] for _ in range(7))
            for r in results:
                if isinstance(r, errors.GatewayError):
                    texts.append(None)
                    errs.append(json.dumps(r.to_dict(), default=str))
                    eids.append(r.endpoint_id)
                    rids.append(r.request_id)
                    pt.append(None)
                    ct.append(None)
                    cost.append(None)
                else:
                    texts.append(r.text)
                    errs.append(None)
                    eids.append(r.endpoint_id)
                    rids.append(r.request_id)
                    pt.append(int(r.usage.prompt_tokens or 0))
                    ct.append(int(r.usage.completion_tokens or 0))
                    cost.append(r.cost_usd)
            out = dict(batch)
            out[self.output_column] = np.array(texts, dtype=object)
            out["error"] = np.array(errs, dtype=object)
            out["endpoint_id"] = np.array(eids, dtype=object)
            out["request_id"] = np.array(rids, dtype=object)
            out["prompt_tokens"] = np.array(pt, dtype=object)
            out["completion_tokens"] = np.array(ct, dtype=object)
            out["cost_usd"] = np.array(cost, dtype=object)
            return out
        # embeddings: rows go in chunks of inputs_per_request; a chunk refused as
        # invalid is re-sent row by row so one bad row cannot fail its neighbours
        vectors: list[Any] = [None] * n
        errs_: list[Any] = [None] * n
        eids_: list[Any] = [None] * n
        chunks = [list(range(i, min(n, i + self.inputs_per_request))) for i in range(0, n, self.inputs_per_request)]
        calls = [("embed", (self.model, [values[i] for i in chunk]), self._kwargs()) for chunk in chunks]
        results = self._gather(calls)
        retry_rows: list[int] = []
        for chunk, r in zip(chunks, results):
            if isinstance(r, errors.InvalidRequestError) and len(chunk) > 1:
                retry_rows.extend(chunk)
                continue
            self._fill_embed(chunk, r, vectors, errs_, eids_)
        if retry_rows:
            singles = self._gather([("embed", (self.model, [values[i]]), self._kwargs()) for i in retry_rows])
            for i, r in zip(retry_rows, singles):
                self._fill_embed([i], r, vectors, errs_, eids_)
        out = dict(batch)
        out[self.output_column] = np.array(vectors, dtype=object)
        out["error"] = np.array(errs_, dtype=object)
        out["endpoint_id"] = np.array(eids_, dtype=object)
        return out

    @staticmethod
    def _fill_embed(rows: list[int], r: Any, vectors: list, errs_: list, eids_: list) -> None:
        if isinstance(r, errors.GatewayError):
            text = json.dumps(r.to_dict(), default=str)
            for i in rows:
                errs_[i] = text
                eids_[i] = r.endpoint_id
            return
        if len(r.embeddings) != len(rows):
            err = errors.ProviderError(f"expected {len(rows)} embeddings, got {len(r.embeddings)}",
                                       endpoint_id=r.endpoint_id, request_id=r.request_id)
            for i in rows:
                errs_[i] = json.dumps(err.to_dict(), default=str)
            return
        for i, vec in zip(rows, r.embeddings):
            vectors[i] = [float(x) for x in vec]
            eids_[i] = r.endpoint_id


def _dataset_target(gateway: Any, namespace: str | None, name: str | None) -> tuple[str, str]:
    if gateway is not None:
        return gateway.namespace, gateway.name
    return namespace or "ipfs_accelerate", name or "ia"


def _map(ds: Any, fn_args: tuple, *, concurrency: int, batch_size: int) -> Any:
    import ray.data  # noqa: PLC0415
    if not isinstance(concurrency, int) or concurrency < 1:
        raise errors.InvalidRequestError(f"concurrency must be a positive whole number, got {concurrency!r}")
    return ds.map_batches(_DatasetFn, fn_constructor_args=fn_args, batch_size=batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=0)


def chat_dataset(ds: Any, model: str, *, messages_column: str | None = None, prompt_column: str | None = None,
                 output_column: str = "response", namespace: str | None = None, name: str | None = None,
                 gateway: Any = None, priority: Any = "LOW", concurrency: int = 2, batch_size: int = 64,
                 **params: Any) -> Any:
    """Chat completions for every row of a Ray Dataset, through the shared router.

    Each row's ``messages_column`` (default "messages": a list of
    ``{"role", "content"}``) or ``prompt_column`` (a string, one user turn) is
    sent to ``model`` with ``params`` (temperature, max_tokens, ...).  Returns
    a lazy Dataset with the input columns plus ``output_column`` (the text),
    ``error`` (None, or the JSON of the typed error), ``endpoint_id``,
    ``request_id``, ``prompt_tokens``, ``completion_tokens``, ``cost_usd``.
    ``concurrency`` Ray Data workers (0 CPUs each) attach to the gateway named
    ``namespace``/``name`` (or ``gateway``'s) and each sends its batch's
    ``batch_size`` rows at once.
    """
    if messages_column and prompt_column:
        raise errors.InvalidRequestError("give messages_column or prompt_column, not both")
    column = prompt_column or messages_column or "messages"
    parse_priority(priority)
    ns, nm = _dataset_target(gateway, namespace, name)
    return _map(ds, ("chat", ns, nm, model, column, bool(prompt_column), output_column, priority, 1, params),
                concurrency=concurrency, batch_size=batch_size)


def embed_dataset(ds: Any, model: str, *, text_column: str = "text", output_column: str = "embedding",
                  namespace: str | None = None, name: str | None = None, gateway: Any = None,
                  priority: Any = "LOW", concurrency: int = 2, batch_size: int = 64, inputs_per_request: int = 16,
                  **params: Any) -> Any:
    """Embeddings for every row's ``text_column`` (a string), through the shared router.

    Rows are sent ``inputs_per_request`` texts per upstream request.  Returns
    the input columns plus ``output_column`` (list of floats or None),
    ``error`` (None or the JSON of the typed error) and ``endpoint_id``.
    """
    parse_priority(priority)
    ns, nm = _dataset_target(gateway, namespace, name)
    return _map(ds, ("embed", ns, nm, model, text_column, False, output_column, priority, inputs_per_request,
                     params), concurrency=concurrency, batch_size=batch_size)
