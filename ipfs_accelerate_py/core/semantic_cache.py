"""Semantic response cache: an exact tier, then a similarity tier.

The pure logic behind the SemanticCache actor (``actors/cache.py``) and
``Gateway.enable_semantic_cache``: no Ray, no I/O, the clock injected.  Not
thread-safe on purpose: the actor serializes calls.

Keys
----
A request is split three ways by ``key_for``:

* the **partition** -- everything that must be *identical* for two requests
  to share a reply: model, system/developer messages, earlier turns of the
  conversation, non-text parts (images) of the last turn, every sampling
  parameter (temperature, top_p, top_k, max_tokens, stop, seed, penalties, n),
  tools, tool_choice, response_format and provider-specific ``extra`` fields;
* the **exact hash** -- the partition plus the last turn, whitespace- and
  Unicode-normalized (case and punctuation kept: they can matter, and the
  similarity tier handles them anyway);
* the **text** the embedder sees -- the last user turn.

Why only the last turn is compared by meaning: a follow-up ("and in
Python?") means different things after different histories, and a long
shared history would dilute the one changed sentence inside a whole-
conversation embedding.  Earlier turns therefore sit in the partition and
must match exactly; the newest user message is the one a person rewords.

Lookup
------
1. exact tier: a dict lookup on the exact hash;
2. similarity tier, within the request's partition only: cosine similarity
   of the query vector with every candidate (one matrix-vector product over
   a float32 matrix of L2-normalized rows), best first; a candidate is a hit
   when its similarity reaches ``similarity_threshold`` *and* the near-miss
   guard (``embedders.salient_mismatch``) finds no salient difference --
   different numbers, negations, names, rare content words or direction.
   Because the guard requires the salient tokens of each prompt to occur in
   the other, inverted indexes over stored prompts' tokens first narrow the
   matrix rows to those that could pass -- an exact filter, no recall is
   lost -- and the product runs over those rows only (over the whole matrix
   when they are many, or when the guard is switched off).

What is stored
--------------
Only replies that are complete and replayable (``uncacheable_reason``):
finish reason one of the "natural stop" reasons, no tool calls, a non-empty
text, a single choice (``n`` <= 1; other choices' finish reasons are not
known, so their completeness cannot be checked), not itself a cache hit, and
a temperature at or below ``max_temperature`` when one is set.  There is no
temperature ceiling by default: temperature is part of the partition, and a
caller who samples for variety passes ``cache=False``.

Per-request bypass: ``cache=False`` (which the request builder puts in
``request.extra``) makes ``lookup`` return None and ``store`` refuse, without
counting a miss.  The ``cache`` key is a control, never part of the key.

Bounds
------
``cache_size`` entries at most (least recently *used* evicted first; a hit
refreshes recency), each alive ``ttl`` seconds from when it was stored.
Vectors live in per-partition matrices whose rows are reused after
removals (a free list), that grow by doubling up to ``cache_size`` rows and
shrink when three quarters are free, so memory stays proportional to the
live entries.  Each entry also keeps its reply (without the provider's raw
body) and its prompt's token analysis.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import numpy as np

from ..errors import ConfigError
from ..types import ChatRequest, ChatResponse, Message, StreamChunk
from .embedders import (
    Embedder,
    TextAnalysis,
    analyze,
    make_embedder,
    normalize_rows,
    salient_mismatch,
)

__all__ = [
    "SemanticCache", "CacheKey", "Hit", "as_stream", "uncacheable_reason", "cache_requested",
    "COMPLETE_FINISH_REASONS", "CONTROL_KEYS", "DEFAULT_THRESHOLD", "DEFAULT_CACHE_SIZE",
    "DEFAULT_TTL",
]

DEFAULT_THRESHOLD = 0.92
DEFAULT_CACHE_SIZE = 1000
DEFAULT_TTL = 3600.0

#: finish reasons that mean "the model ended its answer by itself", across
#: providers (OpenAI stop, Anthropic end_turn/stop_sequence, Gemini STOP,
#: TGI eos_token/stop_sequence); compared case-insensitively.  Anything else,
#: None included, cannot be shown to be complete and is not cached.
COMPLETE_FINISH_REASONS = frozenset({"stop", "end_turn", "stop_sequence", "eos", "eos_token",
                                     "complete", "completed", "finished"})

#: request.extra keys that steer the cache instead of the model
CONTROL_KEYS = frozenset({"cache"})

#: most candidates above the threshold checked by the guard per lookup
_MAX_GUARD_CHECKS = 32
_MIN_ROWS = 16
#: gather candidate rows only while they are at most this share of the matrix
_GATHER_FRACTION = 0.25
_MEMO_SIZE = 256


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheKey:
    """Where a request lives in the cache.

    ``partition``  hex digest of everything that must match exactly
    ``exact``      hex digest of the whole normalized request
    ``text``       the last user turn (Unicode/whitespace normalized, case
                   kept for the guard), or None when the similarity tier does
                   not apply (last turn not a user text message)
    """
    partition: str
    exact: str
    text: str | None


def _norm_ws(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _canon_value(value: Any) -> Any:
    """A JSON-able, order-independent form: floats that are whole numbers
    compare equal to ints (temperature 1 == 1.0), dict keys sorted."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _canon_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canon_value(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canon_value(dataclasses.asdict(value))
    return repr(value)


def _canon_content(content: Any) -> Any:
    if isinstance(content, str):
        return _norm_ws(content)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append({"type": "text", "text": _norm_ws(str(part.get("text", "")))})
            else:
                parts.append(_canon_value(part))
        return parts
    return _canon_value(content)


def _canon_message(m: Message) -> dict:
    out: dict[str, Any] = {"role": m.role, "content": _canon_content(m.content)}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments}
                             for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _digest(payload: Any) -> str:
    data = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def cache_requested(request: ChatRequest) -> bool:
    """False when the caller asked for this request to skip the cache (``cache=False``)."""
    flag = request.extra.get("cache", True) if isinstance(request.extra, Mapping) else True
    return flag is not False


def _key_for(request: ChatRequest) -> CacheKey:
    if not isinstance(request, ChatRequest):
        raise TypeError(f"expected a ChatRequest, got {type(request).__name__}")
    messages = list(request.messages)
    if not messages:
        raise ValueError("a request without messages has no cache key")
    last = messages[-1]
    system = [_canon_message(m) for m in messages[:-1] if m.role in ("system", "developer")]
    history = [_canon_message(m) for m in messages[:-1] if m.role not in ("system", "developer")]
    text: str | None = None
    non_text: Any = None
    if last.role == "user" and not last.tool_calls:
        if isinstance(last.content, str):
            text = _norm_ws(last.content)
        elif isinstance(last.content, list):
            text = _norm_ws(last.text())
            non_text = [_canon_value(p) for p in last.content
                        if not (isinstance(p, Mapping) and p.get("type") == "text")]
        if not text:
            text = None
    extra = {k: v for k, v in (request.extra or {}).items() if k not in CONTROL_KEYS}
    partition_payload = {
        "v": 1,
        "model": request.model.strip(),
        "system": system,
        "history": history,
        "last_role": last.role,
        "last_name": last.name,
        "last_non_text": non_text,
        "sampling": _canon_value({k: getattr(request, k) for k in (
            "temperature", "top_p", "top_k", "max_tokens", "stop", "seed",
            "presence_penalty", "frequency_penalty", "n")}),
        "tools": _canon_value(request.tools),
        "tool_choice": _canon_value(request.tool_choice),
        "response_format": _canon_value(request.response_format),
        "extra": _canon_value(extra),
    }
    partition = _digest(partition_payload)
    exact = _digest({"partition": partition, "last": _canon_message(last)})
    return CacheKey(partition=partition, exact=exact, text=text)


# ---------------------------------------------------------------------------
# Cacheability and replay
# ---------------------------------------------------------------------------

def uncacheable_reason(request: ChatRequest, response: ChatResponse,
                       max_temperature: float | None = None) -> str | None:
    """Why ``response`` must not be cached for ``request``, or None if it may.

    Reasons: ``"bypass"`` (cache=False), ``"not_a_response"``, ``"cached"``
    (already a cache hit: re-storing would extend its life), ``"incomplete"``
    (finish reason not a natural stop: truncated, filtered, interrupted or
    unknown), ``"tool_calls"`` (a tool call is an action with ids of its own,
    not an answer to replay), ``"multiple_choices"``, ``"empty"``,
    ``"temperature"`` (above ``max_temperature``).
    """
    if not cache_requested(request):
        return "bypass"
    if not isinstance(response, ChatResponse):
        return "not_a_response"
    if response.cached:
        return "cached"
    reason = response.finish_reason
    if not isinstance(reason, str) or reason.strip().lower() not in COMPLETE_FINISH_REASONS:
        return "incomplete"
    if response.tool_calls:
        return "tool_calls"
    if (request.n or 1) > 1 or len(response.choices) > 1:
        return "multiple_choices"
    if not response.text or not response.text.strip():
        return "empty"
    if max_temperature is not None and (request.temperature or 0.0) > max_temperature:
        return "temperature"
    return None


def _stored_copy(response: ChatResponse) -> ChatResponse:
    """What the cache keeps: the normalized answer, without the provider's
    raw body (large, and carrying another call's ids) and without the
    per-call request id and latency."""
    return dataclasses.replace(
        response, raw=None, request_id=None, latency_s=None,
        usage=copy.deepcopy(response.usage), tool_calls=[], choices=list(response.choices))


def _served_copy(stored: ChatResponse) -> ChatResponse:
    """A fresh copy for one caller: cached=True and cost 0 (nothing was spent)."""
    return dataclasses.replace(stored, cached=True, cost_usd=0.0,
                               usage=copy.deepcopy(stored.usage), tool_calls=[],
                               choices=list(stored.choices))


def as_stream(response: ChatResponse, chunk_chars: int = 64) -> list[StreamChunk]:
    """Replay a (cached) reply as stream chunks.

    Text is cut into pieces of about ``chunk_chars`` characters, preferring
    to end a piece after whitespace so words are not split; the pieces join
    back to exactly ``response.text``.  The last chunk has ``done=True`` and
    carries finish_reason, usage, cost and tool calls, like a live stream.
    """
    if isinstance(chunk_chars, bool) or not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive integer, got {chunk_chars!r}")
    def chunk(text: str = "", **final: Any) -> StreamChunk:
        return StreamChunk(text=text, model=response.model or None, request_id=response.request_id,
                           endpoint_id=response.endpoint_id, cached=response.cached, **final)

    chunks: list[StreamChunk] = []
    text = response.text or ""
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start:
                end = cut + 1
        chunks.append(chunk(text[start:end]))
        start = end
    chunks.append(chunk(done=True, finish_reason=response.finish_reason,
                        usage=copy.deepcopy(response.usage), cost_usd=response.cost_usd,
                        tool_calls=list(response.tool_calls) or None))
    return chunks


# ---------------------------------------------------------------------------
# Entries and the vector index
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """A cached reply found for a request.

    ``response`` is the caller's copy (cached=True, cost_usd=0.0, request_id
    None for the router to fill in); ``original_cost_usd`` is what the reply
    cost when it was made -- the money this hit saved.  ``similarity`` is 1.0
    for exact hits.  ``matched_text`` is the stored prompt a semantic hit
    matched, for logs and debugging.
    """
    response: ChatResponse
    kind: Literal["exact", "semantic"]
    similarity: float
    original_cost_usd: float | None
    age_s: float
    matched_text: str | None = None


@dataclass
class _Entry:
    exact: str
    partition: str
    response: ChatResponse
    cost: float | None
    created: float
    text: str | None
    analysis: TextAnalysis | None
    slot: int = -1


class _Partition:
    """The vectors of one partition: a float32 matrix plus inverted indexes.

    Slots are stable: a removed entry's row is zeroed (a zero row has
    similarity 0 and can never reach a positive threshold) and its slot goes
    on a free list that the next store reuses, so the rows in use never
    exceed the most entries the partition has held (at most ``cache_size``).
    Capacity doubles up to that bound, and the matrix is compacted to a
    smaller one only when three quarters of it are free, which is the one
    moment slots are renumbered.

    Two inverted indexes let a lookup multiply only the rows the near-miss
    guard could accept: ``postings`` (every token of a stored prompt ->
    slots) and ``salient_postings`` (salient tokens only), with
    ``salient_count`` per slot and ``bare`` (slots whose prompt has no
    salient token).
    """

    def __init__(self, dim: int, max_rows: int) -> None:
        self.dim = dim
        self.max_rows = max(_MIN_ROWS, max_rows)
        self.matrix = np.zeros((min(_MIN_ROWS, self.max_rows), dim), dtype=np.float32)
        self.keys: list[str | None] = []
        self.free: list[int] = []
        self.live = 0
        self.postings: dict[str, set[int]] = {}
        self.salient_postings: dict[str, set[int]] = {}
        self.salient_count: list[int] = []
        self.analyses: list[TextAnalysis | None] = []
        self.bare: set[int] = set()

    def add(self, key: str, vector: np.ndarray, analysis: TextAnalysis) -> int:
        if self.free:
            slot = self.free.pop()
            self.keys[slot] = key
            self.analyses[slot] = analysis
        else:
            slot = len(self.keys)
            if slot == self.matrix.shape[0]:
                capacity = min(max(self.matrix.shape[0] * 2, _MIN_ROWS), max(self.max_rows, slot + 1))
                grown = np.zeros((capacity, self.dim), dtype=np.float32)
                grown[:slot] = self.matrix[:slot]
                self.matrix = grown
            self.keys.append(key)
            self.analyses.append(analysis)
            self.salient_count.append(0)
        self.matrix[slot] = vector
        self._index(slot, analysis)
        self.live += 1
        return slot

    def _index(self, slot: int, analysis: TextAnalysis) -> None:
        for token in analysis.vocab:
            self.postings.setdefault(token, set()).add(slot)
        salient = {t for t, _ in analysis.salient}
        for token in salient:
            self.salient_postings.setdefault(token, set()).add(slot)
        self.salient_count[slot] = len(salient)
        if not salient:
            self.bare.add(slot)

    @staticmethod
    def _unindex(index: dict[str, set[int]], tokens: Any, slot: int) -> None:
        for token in tokens:
            posting = index.get(token)
            if posting is not None:
                posting.discard(slot)
                if not posting:
                    del index[token]

    def remove(self, slot: int) -> None:
        if self.keys[slot] is None:
            return
        analysis = self.analyses[slot]
        if analysis is not None:
            self._unindex(self.postings, analysis.vocab, slot)
            self._unindex(self.salient_postings, {t for t, _ in analysis.salient}, slot)
        self.bare.discard(slot)
        self.keys[slot] = None
        self.analyses[slot] = None
        self.salient_count[slot] = 0
        self.matrix[slot] = 0.0
        self.free.append(slot)
        self.live -= 1

    def needs_compaction(self) -> bool:
        return self.matrix.shape[0] > _MIN_ROWS and self.live * 4 < self.matrix.shape[0]

    def compact(self) -> dict[str, int]:
        """Move live rows into a smaller matrix; returns every live key's new slot."""
        live_slots = [i for i, k in enumerate(self.keys) if k is not None]
        capacity = max(_MIN_ROWS, 1 << max(0, (2 * len(live_slots) - 1)).bit_length())
        matrix = np.zeros((min(capacity, max(self.max_rows, len(live_slots))), self.dim),
                          dtype=np.float32)
        if live_slots:
            matrix[:len(live_slots)] = self.matrix[live_slots]
        keys = [self.keys[i] for i in live_slots]
        analyses = [self.analyses[i] for i in live_slots]
        self.matrix, self.keys, self.analyses, self.free = matrix, keys, analyses, []
        self.postings, self.salient_postings, self.bare = {}, {}, set()
        self.salient_count = [0] * len(keys)
        for slot, analysis in enumerate(analyses):
            assert analysis is not None
            self._index(slot, analysis)
        return {k: i for i, k in enumerate(keys) if k is not None}

    def candidate_rows(self, query: TextAnalysis) -> np.ndarray:
        """Slots the near-miss guard could accept for ``query`` (a superset).

        The guard needs every salient token of the query in the stored prompt
        and every salient token of the stored prompt in the query.  When the
        query has salient tokens, the first condition is an intersection of
        postings; when it has none, the second is checked by counting, for
        each stored prompt, how many of its salient tokens the query contains.
        """
        required = {t for t, _ in query.salient}
        if required:
            postings = []
            for token in required:
                posting = self.postings.get(token)
                if not posting:
                    return np.empty(0, dtype=np.intp)
                postings.append(posting)
            postings.sort(key=len)
            rows = set(postings[0])
            for posting in postings[1:]:
                rows &= posting
                if not rows:
                    break
        else:
            counts: dict[int, int] = {}
            for token in query.vocab:
                for slot in self.salient_postings.get(token, ()):
                    counts[slot] = counts.get(slot, 0) + 1
            rows = set(self.bare)
            rows.update(slot for slot, n in counts.items() if n == self.salient_count[slot])
        return np.fromiter(sorted(rows), dtype=np.intp, count=len(rows))

    def search(self, vector: np.ndarray, threshold: float,
               rows: np.ndarray | None) -> list[tuple[int, float]]:
        """(slot, similarity) at or above the threshold, best first; ``rows``
        limits the search to those slots (None: every slot)."""
        n = len(self.keys)
        if n == 0 or (rows is not None and len(rows) == 0):
            return []
        if rows is not None and len(rows) <= _GATHER_FRACTION * n:
            sims = self.matrix[rows] @ vector
            slots: np.ndarray | None = rows
        else:
            sims = self.matrix[:n] @ vector
            if rows is not None:
                mask = np.zeros(n, dtype=bool)
                mask[rows] = True
                sims = np.where(mask, sims, np.float32(-1.0))
            slots = None
        above = np.flatnonzero(sims >= threshold)
        if above.size == 0:
            return []
        if above.size > _MAX_GUARD_CHECKS:
            top = np.argpartition(sims[above], -_MAX_GUARD_CHECKS)[-_MAX_GUARD_CHECKS:]
            above = above[top]
        order = above[np.argsort(-sims[above], kind="stable")]
        if slots is None:
            return [(int(i), float(sims[i])) for i in order]
        return [(int(slots[i]), float(sims[i])) for i in order]


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------

class SemanticCache:
    """Exact + similarity response cache with TTL, LRU capacity and stats.

    ``similarity_threshold``  cosine similarity (0, 1] a stored prompt must
                              reach to answer a differently worded request
    ``cache_size``            most entries kept; least recently used go first
    ``ttl``                   seconds an entry lives from when it was stored
                              (None: until evicted)
    ``embedder``              an Embedder, a name for ``make_embedder`` or
                              None (the built-in hashing embedder)
    ``clock``                 monotonic seconds; injected so tests need no sleep
    ``near_miss_guard``       reject similar prompts whose salient tokens
                              differ (on by default; off only for experiments)
    ``max_temperature``       do not store replies sampled hotter than this
                              (None: no ceiling, see the module doc)
    """

    def __init__(self, similarity_threshold: float = DEFAULT_THRESHOLD,
                 cache_size: int = DEFAULT_CACHE_SIZE, ttl: float | None = DEFAULT_TTL,
                 embedder: "Embedder | str | None" = None,
                 clock: Callable[[], float] = time.monotonic, *,
                 near_miss_guard: bool = True, max_temperature: float | None = None) -> None:
        if isinstance(similarity_threshold, bool) or not isinstance(similarity_threshold, (int, float)) \
                or not (0.0 < similarity_threshold <= 1.0):
            raise ConfigError(f"similarity_threshold must be a number in (0, 1] "
                              f"(got {similarity_threshold!r})")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigError(f"cache_size must be a positive integer (got {cache_size!r})")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not math.isfinite(ttl) or ttl <= 0):
            raise ConfigError(f"ttl must be a positive number of seconds or None (got {ttl!r})")
        if max_temperature is not None and (isinstance(max_temperature, bool) or
                                            not isinstance(max_temperature, (int, float))
                                            or max_temperature < 0):
            raise ConfigError(f"max_temperature must be a non-negative number or None "
                              f"(got {max_temperature!r})")
        if not callable(clock):
            raise ConfigError("clock must be a callable returning seconds")
        self.similarity_threshold = float(similarity_threshold)
        self.cache_size = cache_size
        self.ttl = None if ttl is None else float(ttl)
        self.embedder: Embedder = make_embedder(embedder)
        self.near_miss_guard = bool(near_miss_guard)
        self.max_temperature = None if max_temperature is None else float(max_temperature)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._partitions: dict[str, _Partition] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._dim: int | None = None
        self._counters: dict[str, float] = {}
        self.reset_stats()

    # -- public API ---------------------------------------------------------

    def key_for(self, request: ChatRequest) -> CacheKey:
        """The partition, exact hash and similarity text of a request."""
        return _key_for(request)

    def lookup(self, request: ChatRequest, *, vector: Any = None) -> Hit | None:
        """The cached reply for ``request``, or None (a miss, or a bypass).

        ``vector`` is the request text's embedding when the caller computed
        it itself (an async embedding call in the actor); otherwise the
        embedder is called.  An embedder failure never fails the lookup: it
        is counted in ``embed_errors`` and the similarity tier is skipped.
        """
        if not cache_requested(request):
            self._counters["bypassed"] += 1
            return None
        now = self._clock()
        self._purge_expired(now)
        key = _key_for(request)
        entry = self._entries.get(key.exact)
        if entry is not None:
            if not self._expired(entry, now):
                return self._serve(entry, "exact", 1.0, now)
            self._remove(entry, "expirations")
        if key.text is None:
            return self._miss()
        partition = self._partitions.get(key.partition)
        if partition is None or partition.live == 0:
            return self._miss()
        query_vec = self._vector(key.text, vector)
        if query_vec is None or query_vec.shape[0] != partition.dim:
            return self._miss()
        query = analyze(key.text)
        rows = partition.candidate_rows(query) if self.near_miss_guard else None
        # Resolve slots to keys first: removing an expired candidate below may
        # compact the partition and renumber its slots.
        found = [(partition.keys[slot], sim)
                 for slot, sim in partition.search(query_vec, self.similarity_threshold, rows)]
        for exact, sim in found:
            if exact is None:
                continue
            candidate = self._entries.get(exact)
            if candidate is None:
                continue
            if self._expired(candidate, now):
                self._remove(candidate, "expirations")
                continue
            if self.near_miss_guard and candidate.analysis is not None \
                    and salient_mismatch(query, candidate.analysis) is not None:
                continue
            return self._serve(candidate, "semantic", min(1.0, sim), now)
        return self._miss()

    def store(self, request: ChatRequest, response: ChatResponse, *, vector: Any = None) -> bool:
        """Cache ``response`` as the reply to ``request``; False when it is
        not cacheable (see ``uncacheable_reason``).  Storing an existing exact
        key replaces its reply and restarts its TTL."""
        if uncacheable_reason(request, response, self.max_temperature) is not None:
            self._counters["rejected"] += 1
            return False
        now = self._clock()
        self._purge_expired(now)
        key = _key_for(request)
        old = self._entries.get(key.exact)
        if old is not None:
            self._remove(old, None)
        vec = self._vector(key.text, vector) if key.text is not None else None
        analysis = analyze(key.text) if key.text is not None else None
        while len(self._entries) >= self.cache_size:
            _, victim = next(iter(self._entries.items()))
            self._remove(victim, "evictions")
        cost = response.cost_usd if isinstance(response.cost_usd, (int, float)) \
            and not isinstance(response.cost_usd, bool) and math.isfinite(response.cost_usd) else None
        entry = _Entry(exact=key.exact, partition=key.partition, response=_stored_copy(response),
                       cost=cost, created=now, text=key.text, analysis=analysis)
        if vec is not None and analysis is not None:
            partition = self._partitions.get(key.partition)
            if partition is None:
                partition = self._partitions[key.partition] = _Partition(vec.shape[0], self.cache_size)
            if partition.dim == vec.shape[0]:
                entry.slot = partition.add(key.exact, vec, analysis)
        self._entries[key.exact] = entry
        if self.ttl is not None:
            self._expiry.append((now + self.ttl, key.exact))
            if len(self._expiry) > 2 * self.cache_size + 64:
                self._rebuild_expiry()
        self._counters["stores"] += 1
        return True

    def invalidate(self, request: ChatRequest) -> bool:
        """Forget the reply stored for exactly this request; True if there was one."""
        entry = self._entries.get(_key_for(request).exact)
        if entry is None:
            return False
        self._remove(entry, None)
        return True

    def clear(self, *, reset_stats: bool = False) -> None:
        """Drop every entry (and, if asked, the counters).  Counters survive a
        plain clear so that savings reported so far are not lost."""
        self._entries.clear()
        self._partitions.clear()
        self._expiry.clear()
        self._memo.clear()
        if reset_stats:
            self.reset_stats()

    def reset_stats(self) -> None:
        for name in ("hits", "misses", "exact_hits", "semantic_hits", "cost_savings", "evictions",
                     "expirations", "stores", "rejected", "bypassed", "embed_errors"):
            self._counters[name] = 0

    def stats(self) -> dict[str, Any]:
        """Counters and settings: hits, misses, hit_rate (0..1 over lookups
        that were not bypassed), exact_hits, semantic_hits, cost_savings (USD:
        the original cost of every reply served from cache), entries,
        evictions, expirations, stores, rejected (not cacheable), bypassed,
        embed_errors, partitions, and the settings in force."""
        c = self._counters
        lookups = c["hits"] + c["misses"]
        out: dict[str, Any] = {name: int(value) for name, value in c.items() if name != "cost_savings"}
        out["cost_savings"] = float(c["cost_savings"])
        out["hit_rate"] = (c["hits"] / lookups) if lookups else 0.0
        out["entries"] = len(self._entries)
        out["partitions"] = len(self._partitions)
        out["similarity_threshold"] = self.similarity_threshold
        out["cache_size"] = self.cache_size
        out["ttl"] = self.ttl
        out["embedder"] = getattr(self.embedder, "name", type(self.embedder).__name__)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals ----------------------------------------------------------

    def _miss(self) -> Hit | None:
        """Count a miss; returns None so callers can ``return self._miss()``."""
        self._counters["misses"] += 1
        return None

    def _serve(self, entry: _Entry, kind: Literal["exact", "semantic"], sim: float, now: float) -> Hit:
        self._entries.move_to_end(entry.exact)
        self._counters["hits"] += 1
        self._counters[f"{kind}_hits"] += 1
        if entry.cost is not None:
            self._counters["cost_savings"] += entry.cost
        return Hit(response=_served_copy(entry.response), kind=kind, similarity=sim,
                   original_cost_usd=entry.cost, age_s=max(0.0, now - entry.created),
                   matched_text=entry.text if kind == "semantic" else None)

    def _vector(self, text: str | None, given: Any) -> np.ndarray | None:
        """The query/entry vector: the caller's, the memo's, or a fresh embedding."""
        if text is None:
            return None
        try:
            if given is not None:
                rows = normalize_rows(given, self._dim)
                if rows.shape[0] != 1:
                    raise ValueError(f"expected one vector, got {rows.shape[0]}")
                vec = rows[0]
            elif text in self._memo:
                self._memo.move_to_end(text)
                return self._memo[text]
            else:
                vec = normalize_rows(self.embedder.embed([text]), self._dim)[0]
        except Exception:  # noqa: BLE001 - a cache must never fail the call it speeds up
            self._counters["embed_errors"] += 1
            return None
        if self._dim is None:
            self._dim = int(vec.shape[0])
        self._memo[text] = vec
        if len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)
        return vec

    def _expired(self, entry: _Entry, now: float) -> bool:
        return self.ttl is not None and now >= entry.created + self.ttl

    def _purge_expired(self, now: float) -> None:
        if self.ttl is None:
            return
        while self._expiry and self._expiry[0][0] <= now:
            _, exact = self._expiry.popleft()
            entry = self._entries.get(exact)
            if entry is not None and self._expired(entry, now):
                self._remove(entry, "expirations")

    def _rebuild_expiry(self) -> None:
        assert self.ttl is not None
        live = sorted((e.created + self.ttl, e.exact) for e in self._entries.values())
        self._expiry = deque(live)

    def _remove(self, entry: _Entry, counter: str | None) -> None:
        self._entries.pop(entry.exact, None)
        if counter is not None:
            self._counters[counter] += 1
        if entry.slot < 0:
            return
        partition = self._partitions.get(entry.partition)
        if partition is None:
            return
        partition.remove(entry.slot)
        entry.slot = -1
        if partition.live == 0:
            del self._partitions[entry.partition]
        elif partition.needs_compaction():
            for exact, slot in partition.compact().items():
                live = self._entries.get(exact)
                if live is not None:
                    live.slot = slot
