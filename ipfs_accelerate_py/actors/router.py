"""RouterActor: priority queues, key selection, failover and retries.

Every request runs as one coroutine here: validate, resolve the model to the
endpoints that serve it, wait for a *lease* on an endpoint, make one attempt
through that endpoint's actor, and on failure decide whether to fail over to
another key at once, back off, or give up with the typed error.

The dispatcher hands out leases in global priority order (HIGH before NORMAL
before LOW, FIFO within a level) and only to endpoints that can take the
request now: circuit not open, not cooling down after a 429, limiter headroom
and a free concurrency slot.  Requests wait here, in the router's bounded
queues, instead of hammering a provider that has already said "slow down".
The router keeps a shadow of each key's limiter so it schedules without
asking; the endpoint actors stay the authority and correct the shadow with
the state snapshot that comes back with every answer.
"""
from __future__ import annotations

import asyncio
import difflib
import heapq
import itertools
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import ray
from ray.exceptions import RayActorError, RayTaskError

try:  # Ray >= 2.10 distinguishes a temporarily unreachable actor
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]

from .. import errors
from ..config import EndpointConfig, GatewayConfig
from ..core.backoff import RetryPolicy
from ..core.limiter import RateLimiter
from ..core.priority import Priority, PriorityQueue, QueueBound, parse_priority
from ..core.selection import EndpointView, make_strategy
from ..providers.base import canonical_name, get_provider_class
from ..types import (STREAMING_OPERATIONS, ChatRequest, ChatResponse, EmbeddingRequest, ModelInfo,
                     OperationRequest, StreamChunk, Usage, build_chat_request, build_embedding_request,
                     validate_sampling_params)
from . import metrics, naming, wire
from .coalesce import Outbox, finished_groups, settle, settle_from_stream
from .lane import AsyncLaneClient, LaneAddress, LaneCallFailed, LaneServer, LaneUnavailable, node_host
from ._errors import unwrap
from .endpoint import EndpointActor, Outcome

log = logging.getLogger(__name__)

_ACTOR_GONE = (RayActorError, ActorUnavailableError)
#: if every key is open for longer than this, fail at once instead of queueing
FAIL_FAST_OPEN_S = 1.0
#: request_many holds a finished answer this long for its siblings (as EndpointActor.execute_many)
REQUEST_REPLY_LINGER_S = 0.001
#: a restarting endpoint actor is left alone this long before the next try
ACTOR_RESTART_PAUSE_S = 0.2
#: after an endpoint's lane could not be opened, its requests take Ray calls this long,
#: doubling with each failure in a row up to the max
LANE_REOPEN_PAUSE_S = 1.0
LANE_REOPEN_MAX_S = 60.0
#: asking an endpoint actor for its lane gives up after this long (Ray calls meanwhile)
LANE_INFO_TIMEOUT_S = 5.0
#: how long a starting endpoint waits for its lane before taking requests by Ray
LANE_OPEN_WAIT_S = 2.0


# ---------------------------------------------------------------------------
# The router's view of one endpoint
# ---------------------------------------------------------------------------

class _Slot:
    def __init__(self, info: dict, handle: Any) -> None:
        self.id: str = info["id"]
        self.handle = handle
        self.provider: str = info["provider"]
        self.provider_cls = get_provider_class(self.provider)
        self.models: list[str] = list(info.get("models") or [])
        self.default_model: str | None = info.get("default_model")
        self.weight = float(info.get("weight") or 1.0)
        self.max_concurrent = int(info.get("max_concurrent_requests") or 1)
        self.shadow = RateLimiter(info.get("rpm"), info.get("tpm"), burst_s=float(info.get("burst_s") or 1.0))
        self.shadow_has_tpm = bool(info.get("tpm"))
        self.in_flight = 0
        self.circuit = "CLOSED"
        self.retry_at = 0.0
        self.cooldown_until = 0.0
        self.last_error: str | None = None
        #: the actor's process has answered once; until then it gets no requests
        self.up = False
        #: this endpoint's own RetryPolicy fields over the gateway's (max_retries, delays)
        self.retry_overrides: dict = dict(info.get("retry") or {})
        #: attempts leased to this key in the current event-loop pass, sent as one call
        self.outbox: Outbox[_Job] | None = None
        #: the direct socket into the endpoint actor (lane.py); None: attempts go as Ray calls
        self.lane: AsyncLaneClient | None = None
        self.lane_opening: asyncio.Task | None = None
        self.lane_retry_at = 0.0
        self.lane_failures = 0

    def close_lane(self) -> None:
        """New attempts go by Ray; the ones already on the lane finish there."""
        if self.lane is not None:
            self.lane.retire()
            self.lane = None

    def serves(self, model: str | None) -> bool:
        if model is None:
            return True
        if self.models:
            return model in self.models
        return self.provider_cls.claims_model(model)

    def state(self, now: float, est_tokens: int) -> tuple[str, float]:
        """(kind, seconds to wait): ok, busy (wait for a completion), open,
        cool (after a 429) or limit (rate-limit headroom)."""
        if not self.up:
            return "busy", math.inf  # the dispatcher is woken when the actor is up
        if self.circuit == "OPEN":
            if now < self.retry_at:
                return "open", self.retry_at - now
            if self.in_flight > 0:  # one probe at a time
                return "busy", math.inf
        elif self.circuit == "HALF_OPEN" and self.in_flight > 0:
            return "busy", math.inf
        if now < self.cooldown_until:
            return "cool", self.cooldown_until - now
        if self.in_flight >= self.max_concurrent:
            return "busy", math.inf
        wait = self.shadow.time_until_available(est_tokens)
        if wait > 0:
            return "limit", wait
        return "ok", 0.0

    def apply(self, state: dict | None, now: float) -> None:
        if not state:
            return
        self.circuit = state.get("circuit", self.circuit)
        self.retry_at = now + float(state.get("retry_in") or 0.0)
        self.cooldown_until = max(self.cooldown_until, now + float(state.get("cooldown_s") or 0.0))
        self.shadow.observe_remaining(state.get("requests_available"), state.get("tokens_available"))
        if state.get("max_concurrent"):
            self.max_concurrent = int(state["max_concurrent"])

    def view(self) -> EndpointView:
        return EndpointView(id=self.id, in_flight=self.in_flight, max_concurrent=self.max_concurrent,
                            weight=self.weight, headroom=self.shadow.headroom())


@dataclass(eq=False)
class _Job:
    op: str
    request: Any
    priority: Priority
    request_id: str
    group: tuple[str, ...]
    est_tokens: int
    deadline: float
    lease: asyncio.Future | None = None
    avoid: set[str] = field(default_factory=set)
    retries: int = 0
    failovers: int = 0
    last_error: errors.GatewayError | None = None
    seq: int = 0
    #: the shadow-limiter reservation of the current attempt
    reservation: Any = None
    #: the current attempt has left for its endpoint actor
    sent: bool = False


# ---------------------------------------------------------------------------
# The actor
# ---------------------------------------------------------------------------

class RouterActor:
    def __init__(self, config: GatewayConfig, *, enable_metrics: bool = True) -> None:
        self.config = config
        self.namespace = config.namespace
        self.name = config.name
        self.retry = RetryPolicy(**config.retry)
        self.strategy = make_strategy(config.strategy)
        self.aliases = dict(config.aliases)
        self.bound = QueueBound(config.queue_size)
        self._queues: dict[tuple[str, ...], PriorityQueue[_Job]] = {}
        self._slots: dict[str, _Slot] = {}
        self._seq = itertools.count()
        # request ids: a random per-incarnation prefix and a counter (uuid4 per request costs more)
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._enable_metrics = enable_metrics
        self._metrics = metrics.RouterMetrics(self.name) if enable_metrics else None
        self._last_depth_report = 0.0
        self.counters = {"submitted": 0, "succeeded": 0, "failed": 0, "retries": 0, "failovers": 0,
                         "rejected_queue_full": 0, "evicted": 0, "streams": 0,
                         # callers that left before their answer (submitted = succeeded + failed +
                         # cancelled); of those, how many had an attempt already sent upstream
                         "cancelled": 0, "cancelled_in_flight": 0,
                         # upstream attempts; of those, the ones carried by direct lanes (lane.py),
                         # and the Ray actor calls that carried the others (see _execute)
                         "attempts": 0, "lane_attempts": 0, "endpoint_calls": 0,
                         # requests that reached this router by lane
                         "lane_requests": 0}
        self._ready: asyncio.Task | None = None
        self._startups: set[asyncio.Task] = set()
        self._batcher: Any = None
        self._cache: Any = None
        self._cache_stores: set[asyncio.Task] = set()
        self._batching: dict = {"auto_batching": True}
        self.direct_lane = bool(getattr(config, "direct_lane", True))
        self._lane: LaneServer | None = None
        for ep in config.endpoints:
            if ep.enabled:
                self._attach(ep)

    def __repr__(self) -> str:
        return f"RouterActor(name={self.name!r}, namespace={self.namespace!r}, endpoints={len(self._slots)})"

    # -- endpoint registry -------------------------------------------------------
    def _attach(self, ep: EndpointConfig) -> _Slot:
        handle = _create_endpoint_actor(self.config, ep, self._enable_metrics)
        info = {"id": ep.id, "provider": canonical_name(ep.provider), "models": ep.models,
                "default_model": ep.default_model, "rpm": ep.rpm, "tpm": ep.tpm, "burst_s": ep.burst_s,
                "max_concurrent_requests": ep.max_concurrent_requests, "weight": ep.weight,
                "retry": dict(ep.retry or {})}
        slot = _Slot(info, handle)
        self._slots[ep.id] = slot
        return slot

    async def _ensure_ready(self) -> None:
        """Re-attach to endpoints added at run time by an earlier incarnation of
        this router (it may have been restarted after a crash)."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._discover())
        if self._ready.done():
            self._ready.result()  # the hot path: no awaiting once discovery has finished
        else:
            await asyncio.shield(self._ready)

    def _watch_startup(self, slot: _Slot) -> None:
        async def wait_up() -> None:
            while slot.id in self._slots and not slot.up:
                try:
                    await slot.handle.ready.remote()
                except Exception:  # noqa: BLE001 - still starting or restarting; ask again
                    await asyncio.sleep(0.2)
                    continue
                # its lane first, so that the first requests already take it (a lane that is
                # slow to open keeps opening in the background; requests go by Ray meanwhile)
                self._open_lane(slot)
                if slot.lane_opening is not None:
                    await asyncio.wait({slot.lane_opening}, timeout=LANE_OPEN_WAIT_S)
                slot.up = True
            self._pump()

        task = asyncio.ensure_future(wait_up())
        self._startups.add(task)
        task.add_done_callback(self._startups.discard)

    async def wait_ready(self, timeout_s: float = 60.0) -> dict:
        """Wait until every endpoint actor is up (Gateway.start uses this)."""
        await self._ensure_ready()
        deadline = time.monotonic() + timeout_s
        while any(not s.up for s in self._slots.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {s.id: s.up for s in self._slots.values()}

    async def _discover(self) -> None:
        for slot in list(self._slots.values()):
            if not slot.up:
                self._watch_startup(slot)
        batching = self.config.batching
        if self._batcher is None and (batching.enabled or
                                      _named_actor_exists(f"{self.name}:batcher", self.namespace)):
            # a batcher that survived a router restart keeps its own (possibly changed) settings
            await self._start_batcher(batching.max_batch_size, batching.batch_timeout, batching.auto_batching)
        cache = self.config.cache
        if self._cache is None and (cache.enabled or _named_actor_exists(f"{self.name}:cache", self.namespace)):
            await self._start_cache(cache.similarity_threshold, cache.cache_size, cache.ttl,
                                    cache.embedding_model, replace=False)
        prefix = naming.endpoint_prefix(self.config)
        try:
            named = ray.util.list_named_actors(all_namespaces=True)
        except Exception:  # noqa: BLE001 - discovery is best effort
            return
        for entry in named:
            if entry.get("namespace") != self.namespace or not entry["name"].startswith(prefix):
                continue
            endpoint_id = entry["name"][len(prefix):]
            if endpoint_id in self._slots:
                continue
            try:
                handle = ray.get_actor(entry["name"], namespace=self.namespace)
                info = await handle.describe.remote()
            except Exception:  # noqa: BLE001 - a dying actor is simply not re-attached
                continue
            slot = self._slots[endpoint_id] = _Slot(info, handle)
            slot.up = True

    async def add_endpoint(self, endpoint: dict | EndpointConfig) -> dict:
        await self._ensure_ready()
        ep = endpoint if isinstance(endpoint, EndpointConfig) else _endpoint_from_dict(endpoint, self.config)
        if ep.id in self._slots:
            raise errors.ConfigError(f"endpoint id {ep.id!r} already exists")
        slot = self._attach(ep)
        await slot.handle.ready.remote()
        slot.up = True
        self._pump()
        return await slot.handle.describe.remote()

    async def add_api_key(self, name: str, api_key: str, *, like: str | None = None,
                          provider: str | None = None, **fields: Any) -> dict:
        """Another key for a provider already served: a new endpoint named ``name``
        that copies the provider, base URL, models and limits of ``like`` (or of
        the first endpoint of ``provider``)."""
        await self._ensure_ready()
        template = self._slot(like) if like else next(
            (s for s in self._slots.values() if provider is None or s.provider == canonical_name(provider)), None)
        if template is None:
            raise errors.ConfigError(f"no endpoint to copy for key {name!r}; add one with add_endpoint first")
        info = await template.handle.describe.remote()
        spec = {"id": name, "provider": info["provider"], "base_url": info["base_url"], "api_key": api_key,
                "models": info["models"], "default_model": info["default_model"], "rpm": info["rpm"],
                "tpm": info["tpm"], "burst_s": info["burst_s"], "weight": info["weight"],
                "max_concurrent_requests": info["max_concurrent_requests"], **fields}
        return await self.add_endpoint({k: v for k, v in spec.items() if v is not None})

    async def key_usage_stats(self) -> dict:
        """Per key: requests, tokens and cost (the seed's get_key_usage_stats)."""
        stats = await self.stats()
        return {eid: {"key": s.get("key"), "requests": s.get("total_requests", 0),
                      "tokens": s.get("total_tokens", 0), "cost": s.get("cost_usd", 0.0)}
                for eid, s in stats["endpoints"].items() if "error" not in s}

    async def remove_endpoint(self, endpoint_id: str) -> bool:
        await self._ensure_ready()
        slot = self._slots.pop(endpoint_id, None)
        if slot is None:
            raise errors.NotFoundError(f"no endpoint {endpoint_id!r}; endpoints: {', '.join(sorted(self._slots))}")
        slot.close_lane()
        try:
            await slot.handle.close.remote()
        except Exception:  # noqa: BLE001
            pass
        ray.kill(slot.handle, no_restart=True)
        self._pump()  # requests that only this endpoint could serve fail now
        return True

    async def endpoints(self) -> list[dict]:
        await self._ensure_ready()
        return list(await asyncio.gather(*(s.handle.describe.remote() for s in self._slots.values())))

    async def set_strategy(self, name: str) -> str:
        self.strategy = make_strategy(name)
        return self.strategy.name

    async def configure(self, **settings: Any) -> dict:
        """Change router settings at run time (queue bound, retry policy)."""
        if "queue_size" in settings:
            size = int(settings.pop("queue_size"))
            if size < 1:
                raise errors.ConfigError("queue_size must be at least 1")
            self.bound.maxsize = size
        retry_fields = {k: settings.pop(k) for k in list(settings) if k in RetryPolicy.__dataclass_fields__}
        if retry_fields:
            self.retry = self.retry.with_overrides(**retry_fields)
        if "strategy" in settings:
            self.strategy = make_strategy(settings.pop("strategy"))
        if "direct_lane" in settings:
            value = settings.pop("direct_lane")
            if not isinstance(value, bool):
                raise errors.ConfigError(f"direct_lane must be true or false, got {value!r}")
            self._set_direct_lane(value)
        if settings:
            raise errors.ConfigError(f"unknown router settings: {', '.join(sorted(settings))}")
        return {"queue_size": self.bound.maxsize, "strategy": self.strategy.name, "direct_lane": self.direct_lane,
                **{k: getattr(self.retry, k) for k in RetryPolicy.__dataclass_fields__}}

    async def configure_endpoint(self, endpoint_id: str, **changes: Any) -> dict:
        slot = self._slot(endpoint_id)
        info = await slot.handle.configure.remote(**changes)
        slot.max_concurrent = int(info["max_concurrent_requests"])
        if any(k in changes for k in ("rpm", "tpm", "burst_s")):
            slot.shadow.configure(rpm=info["rpm"], tpm=info["tpm"], burst_s=info["burst_s"])
            slot.shadow_has_tpm = bool(info["tpm"])
        self._pump()
        return info

    def _slot(self, endpoint_id: str) -> _Slot:
        if endpoint_id not in self._slots:
            raise errors.NotFoundError(
                f"no endpoint {endpoint_id!r}; endpoints: {', '.join(sorted(self._slots)) or 'none'}")
        return self._slots[endpoint_id]

    # -- model resolution ----------------------------------------------------------
    def _resolve(self, op: str, model: str | None, *, endpoint_id: str | None = None,
                 provider: str | None = None) -> tuple[tuple[str, ...], str | None]:
        """The endpoints that can run ``op`` for ``model`` and the model name to send upstream."""
        upstream = model
        if endpoint_id is not None:
            slot = self._slot(endpoint_id)
            candidates = [slot]
            if model and "/" in model and model.split("/", 1)[0] in (slot.provider, slot.id):
                upstream = model.split("/", 1)[1]
        else:
            if model is not None:
                model = self.aliases.get(model, model)
                upstream = model
            candidates = []
            if provider is not None:
                want = canonical_name(provider)
                candidates = [s for s in self._slots.values() if s.provider == want]
                if model is not None:
                    candidates = [s for s in candidates if not s.models or model in s.models]
            elif model is not None and "/" in model:
                prefix, rest = model.split("/", 1)
                if prefix in self._slots:
                    candidates, upstream = [self._slots[prefix]], rest
                else:
                    want = canonical_name(prefix)
                    by_provider = [s for s in self._slots.values() if s.provider == want]
                    if by_provider:
                        upstream = rest
                        candidates = [s for s in by_provider if not s.models or rest in s.models]
            if not candidates and model is not None:
                explicit = [s for s in self._slots.values() if model in s.models]
                candidates = explicit or [s for s in self._slots.values() if not s.models and s.serves(model)]
            if model is None and not candidates and provider is None:
                candidates = list(self._slots.values())
        if not candidates:
            raise self._unknown_model(model)
        able = [s for s in candidates if s.provider_cls.supports(op)]
        if not able:
            providers = sorted({s.provider for s in candidates})
            supported = sorted(set().union(*(s.provider_cls.operations for s in candidates)))
            raise errors.UnsupportedOperationError(
                f"{op!r} is not supported for {model or 'this request'} (providers: {', '.join(providers)}; "
                f"they support {', '.join(supported)})")
        return tuple(sorted(s.id for s in able)), upstream

    def _unknown_model(self, model: str | None) -> errors.UnknownModelError:
        known = sorted(self._known_models())
        close = difflib.get_close_matches(model or "", known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            f"; configured models: {', '.join(known[:20])}" if known else "; no endpoints are configured")
        return errors.UnknownModelError(f"no endpoint serves {model!r}{hint}", suggestions=close)

    def _known_models(self) -> set[str]:
        names = set(self.aliases)
        for s in self._slots.values():
            names.update(s.models)
            names.update(f"{s.provider}/{m}" for m in s.models)
            if s.default_model:
                names.add(s.default_model)
        return names

    # -- direct lanes (lane.py): the same blobs as request_packed / execute_packed ----
    async def lane_info(self) -> LaneAddress | None:
        """Where a Gateway reaches ``request_packed`` without a Ray call; None when
        direct lanes are off (the Gateway then makes Ray calls)."""
        if not self.direct_lane:
            return None
        if self._lane is None:
            self._lane = LaneServer(self._request_by_lane, host=node_host())
        return await self._lane.start()

    async def _request_by_lane(self, call: bytes) -> bytes:
        self.counters["lane_requests"] += 1
        return await self.request_packed(call)

    def _set_direct_lane(self, on: bool) -> None:
        self.direct_lane = on
        if not on:
            # gently: requests already on a lane finish there, new ones go by Ray
            server, self._lane = self._lane, None
            if server is not None:
                server.drain()
            for slot in self._slots.values():
                slot.close_lane()
        else:
            for slot in self._slots.values():
                self._open_lane(slot)

    def _open_lane(self, slot: _Slot) -> None:
        """Ask the endpoint actor for its lane in the background; until it is open
        (and whenever it breaks) attempts go as Ray calls."""
        if (not self.direct_lane or slot.lane_opening is not None or time.monotonic() < slot.lane_retry_at
                or (slot.lane is not None and not slot.lane.closed)):
            return

        async def open_lane() -> None:
            try:
                address = await asyncio.wait_for(slot.handle.lane_info.remote(), LANE_INFO_TIMEOUT_S)
                if self.direct_lane and self._slots.get(slot.id) is slot and address is not None:
                    slot.lane = AsyncLaneClient(address)
            except Exception as exc:  # noqa: BLE001 - the Ray path keeps working meanwhile
                slot.lane_retry_at = time.monotonic() + LANE_REOPEN_PAUSE_S
                log.debug("endpoint %s: no lane (%s)", slot.id, type(exc).__name__)
            finally:
                slot.lane_opening = None

        slot.lane_opening = asyncio.ensure_future(open_lane())

    # -- the public operations --------------------------------------------------------
    async def request_packed(self, call: bytes) -> bytes:
        """chat, complete, embed or call for the Gateway facade: the arguments come as
        one blob, the answer leaves as one packed ``(error, answer)`` pair (wire.py)."""
        try:
            answer: tuple[BaseException | None, Any] = (None, await self._request(call))
        except Exception as exc:  # noqa: BLE001 - the caller's error travels in the answer
            answer = (exc, None)
        return _pack_answer(answer)

    @ray.method(max_task_retries=0)  # the Gateway re-sends what was not answered
    async def request_many(self, calls: list[bytes]) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Several ``request_packed`` calls in one (coalesce.py): the requests an async
        caller makes in one event-loop pass.  Yields ``[(index, packed (error, answer))]``
        groups as they finish; an error is the one that caller would have seen."""
        tasks = [asyncio.ensure_future(self._request(call)) for call in calls]
        async for group in finished_groups(tasks, REQUEST_REPLY_LINGER_S):
            yield [(i, _pack_answer(_result_of(tasks[i]))) for i in group]

    async def _request(self, call: bytes) -> Any:
        try:
            method, args, kwargs = wire.unpack(call)
        except Exception as exc:  # noqa: BLE001
            raise errors.InvalidRequestError(f"the request could not be read: {type(exc).__name__}",
                                             code="invalid_request") from None
        if method not in wire.REQUEST_METHODS:
            raise errors.InvalidRequestError(f"{method!r} is not a request method", code="invalid_request")
        return await getattr(self, method)(*args, **kwargs)

    async def chat(self, model: str, messages: Any, *, priority: Any = None, request_id: str | None = None,
                   endpoint_id: str | None = None, timeout_s: float | None = None, cache: bool = True,
                   **params: Any):
        request = build_chat_request(model, messages, params)
        use_cache = await self._cache_applies(cache, "chat", request, endpoint_id)
        if use_cache:
            hit = await self._cache.lookup.remote(request)
            if hit is not None:
                return self._served_from_cache(hit[0], request_id)
        response = await self._submit("chat", request, model, priority, request_id, endpoint_id, timeout_s)
        if use_cache:
            self._store_in_cache(request, response)
        return response

    # -- semantic cache ------------------------------------------------------------------
    async def _cache_applies(self, cache: bool, op: str, request: ChatRequest, endpoint_id: str | None) -> bool:
        await self._ensure_ready()
        if self._cache is None or cache is False:
            return False
        _, upstream = self._resolve(op, request.model, endpoint_id=endpoint_id)
        request.model = upstream or request.model  # one partition per upstream model, however it was named
        if self._cache_stores:
            # read-your-writes: a caller's next request sees the reply its last one stored
            await asyncio.wait(list(self._cache_stores))
        return True

    def _store_in_cache(self, request: ChatRequest, response: Any) -> None:
        """Store without delaying the caller; clear_cache waits for these first."""
        async def store() -> None:
            try:
                await self._cache.store.remote(request, response)
            except Exception as exc:  # noqa: BLE001 - a failed store only costs a future hit
                log.debug("cache store failed: %s", errors.redact(unwrap(exc)))

        task = asyncio.ensure_future(store())
        self._cache_stores.add(task)
        task.add_done_callback(self._cache_stores.discard)

    def _served_from_cache(self, response: Any, request_id: str | None) -> Any:
        response.request_id = request_id or f"req_{self._id_prefix}{next(self._ids):x}"
        response.cached = True
        self.counters["cache_hits"] = self.counters.get("cache_hits", 0) + 1
        return response

    async def enable_cache(self, similarity_threshold: float = 0.92, cache_size: int = 1000,
                           ttl: float | None = 3600.0, embedding_model: str | None = None) -> dict:
        await self._ensure_ready()
        return await self._start_cache(similarity_threshold, cache_size, ttl, embedding_model, replace=True)

    async def _start_cache(self, similarity_threshold: float, cache_size: int, ttl: float | None,
                           embedding_model: str | None, replace: bool) -> dict:
        from .cache import SemanticCacheActor
        name = f"{self.name}:cache"
        if replace and _named_actor_exists(name, self.namespace):
            ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
            self._cache = None
        if self._cache is None:
            me = ray.get_runtime_context().current_actor
            cls = ray.remote(SemanticCacheActor)
            self._cache = cls.options(**naming.helper_actor_options(self.config, "cache")).remote(
                me, similarity_threshold=similarity_threshold, cache_size=cache_size, ttl=ttl,
                embedding_model=embedding_model)
        try:
            return await self._cache.settings.remote()
        except RayTaskError as exc:  # a bad setting surfaces as the typed error
            self._cache = None
            raise unwrap(exc) from None

    async def disable_cache(self) -> None:
        await self._ensure_ready()
        if self._cache is not None:
            ray.kill(self._cache, no_restart=True)
            self._cache = None

    async def cache_stats(self) -> dict:
        await self._ensure_ready()
        if self._cache is None:
            return {"enabled": False, "hits": 0, "misses": 0, "hit_rate": 0.0, "exact_hits": 0,
                    "semantic_hits": 0, "cost_savings": 0.0, "entries": 0}
        return {"enabled": True, **(await self._cache.stats.remote())}

    async def clear_cache(self) -> None:
        await self._ensure_ready()
        if self._cache is not None:
            if self._cache_stores:
                await asyncio.gather(*list(self._cache_stores), return_exceptions=True)
            await self._cache.clear.remote()

    async def complete(self, model: str, prompt: Any, *, priority: Any = None, request_id: str | None = None,
                       endpoint_id: str | None = None, timeout_s: float | None = None, **params: Any):
        _check_prompt(prompt, params)
        request = OperationRequest(op="complete", model=model, params={"prompt": prompt, **params})
        return await self._submit("complete", request, model, priority, request_id, endpoint_id, timeout_s)

    async def embed(self, model: str, input: Any, *, priority: Any = None, request_id: str | None = None,
                    endpoint_id: str | None = None, timeout_s: float | None = None, batching: bool = True,
                    **params: Any):
        request = build_embedding_request(model, input, params)
        await self._ensure_ready()
        if batching and endpoint_id is None and self._batcher is not None and self._batching["auto_batching"]:
            self._resolve("embed", model)  # unknown models fail here, not inside a batch
            try:
                return await self._batcher.embed.remote(model, request.input, priority=priority,
                                                        request_id=request_id, **params)
            except RayTaskError as exc:
                raise unwrap(exc) from None
        return await self._submit("embed", request, model, priority, request_id, endpoint_id, timeout_s)

    async def embed_batch_limit(self, model: str) -> int | None:
        """The most inputs one upstream embedding call may carry for ``model``."""
        group, _ = self._resolve("embed", model)
        limits = [self._slots[i].provider_cls.max_embed_batch for i in group]
        known = [n for n in limits if n]
        return min(known) if known else None

    # -- embedding batching ------------------------------------------------------------
    async def enable_batching(self, max_batch_size: int = 20, batch_timeout: float = 0.1,
                              auto_batching: bool = True) -> dict:
        await self._ensure_ready()
        await self._start_batcher(max_batch_size, batch_timeout, auto_batching)
        # an explicit call always applies its settings, also to a batcher that outlived a router restart
        self._batching = await self._batcher.configure.remote(max_batch_size, batch_timeout, auto_batching)
        return dict(self._batching)

    async def _start_batcher(self, max_batch_size: int, batch_timeout: float, auto_batching: bool) -> dict:
        from .batcher import EmbeddingBatcher
        if self._batcher is None:
            me = ray.get_runtime_context().current_actor
            cls = ray.remote(EmbeddingBatcher)
            name = f"{self.name}:batcher"
            existed = _named_actor_exists(name, self.namespace)
            self._batcher = cls.options(**naming.helper_actor_options(self.config, "batcher")).remote(
                me, max_batch_size=max_batch_size, batch_timeout=batch_timeout, auto_batching=auto_batching)
            if existed:
                self._batching = await self._batcher.configure.remote()
                return dict(self._batching)
        self._batching = await self._batcher.configure.remote(max_batch_size, batch_timeout, auto_batching)
        return dict(self._batching)

    async def disable_batching(self) -> None:
        await self._ensure_ready()
        if self._batcher is not None:
            ray.kill(self._batcher, no_restart=True)
            self._batcher = None

    async def batching_stats(self) -> dict:
        await self._ensure_ready()
        if self._batcher is None:
            return {"enabled": False, "batches": 0, "batched_requests": 0, "avg_batch_size": 0.0,
                    "upstream_calls_saved": 0, "estimated_savings": {"upstream_requests": 0, "cost_usd": 0.0}}
        return {"enabled": True, **(await self._batcher.stats.remote())}

    @ray.method(max_task_retries=0)  # a stream is never replayed: see Gateway._stream
    async def stream_call(self, op: str, model: str | None = None, *, provider: str | None = None,
                          priority: Any = None, request_id: str | None = None, endpoint_id: str | None = None,
                          timeout_s: float | None = None, **params: Any) -> AsyncIterator[StreamChunk]:
        """Any other streaming operation (OPEA's stream_chatqna), routed like stream_chat."""
        if op not in STREAMING_OPERATIONS or op == "stream_chat":
            raise errors.InvalidRequestError(
                f"{op!r} is not a streaming operation; streaming operations: {', '.join(STREAMING_OPERATIONS)}")
        request = OperationRequest(op=op, model=model, params=params)
        async for chunk in self._stream(op, request, model, priority, request_id, endpoint_id, timeout_s,
                                        provider=provider):
            yield chunk

    async def call(self, op: str, model: str | None = None, *, provider: str | None = None,
                   priority: Any = None, request_id: str | None = None, endpoint_id: str | None = None,
                   timeout_s: float | None = None, **params: Any):
        """Any other operation (images, speech, rerank, S3 ...), routed like chat."""
        if op in ("chat", "embed") or op in STREAMING_OPERATIONS:
            raise errors.InvalidRequestError(f"use the dedicated method for {op!r}")
        request = OperationRequest(op=op, model=model, params=params)
        return await self._submit(op, request, model, priority, request_id, endpoint_id, timeout_s,
                                  provider=provider)

    @ray.method(max_task_retries=0)  # a stream is never replayed: see Gateway._stream
    async def stream_chat(self, model: str, messages: Any, *, priority: Any = None,
                          request_id: str | None = None, endpoint_id: str | None = None,
                          timeout_s: float | None = None, cache: bool = True,
                          **params: Any) -> AsyncIterator[StreamChunk]:
        params.pop("stream", None)
        request = build_chat_request(model, messages, {**params, "stream": True})
        use_cache = await self._cache_applies(cache, "stream_chat", request, endpoint_id)
        if use_cache:
            hit = await self._cache.lookup.remote(request)
            if hit is not None:
                response = self._served_from_cache(hit[0], request_id)
                from ..core.semantic_cache import as_stream  # numpy: only where a cache is used
                for chunk in as_stream(response):
                    chunk.request_id, chunk.cached = response.request_id, True
                    yield chunk
                return
        pieces: list[str] = []
        async for chunk in self._stream("stream_chat", request, model, priority, request_id, endpoint_id,
                                        timeout_s):
            pieces.append(chunk.text)
            if use_cache and chunk.done:
                # only a stream that reached its end marker is complete enough to cache
                self._store_in_cache(request, ChatResponse(
                    text="".join(pieces), model=chunk.model or request.model, usage=chunk.usage or Usage(),
                    finish_reason=chunk.finish_reason, cost_usd=chunk.cost_usd, endpoint_id=chunk.endpoint_id))
            yield chunk

    @ray.method(max_task_retries=0)  # a stream is never replayed: see Gateway._stream
    async def stream_complete(self, model: str, prompt: Any, *, priority: Any = None,
                              request_id: str | None = None, endpoint_id: str | None = None,
                              timeout_s: float | None = None, **params: Any) -> AsyncIterator[StreamChunk]:
        _check_prompt(prompt, params)
        request = OperationRequest(op="stream_complete", model=model, params={"prompt": prompt, **params})
        async for chunk in self._stream("stream_complete", request, model, priority, request_id, endpoint_id,
                                        timeout_s):
            yield chunk

    # -- one request, start to finish ---------------------------------------------------
    def _new_job(self, op: str, request: Any, model: str | None, priority: Any, request_id: str | None,
                 endpoint_id: str | None, timeout_s: float | None, provider: str | None = None) -> _Job:
        prio = parse_priority(priority)
        if request_id is not None and (not isinstance(request_id, str) or not request_id or len(request_id) > 256
                                       or not request_id.isprintable()):
            raise errors.InvalidRequestError(
                "request_id must be a non-empty printable string of at most 256 characters", code="invalid_request_id")
        for label, value in (("endpoint_id", endpoint_id), ("provider", provider)):
            if value is not None and not isinstance(value, str):
                raise errors.InvalidRequestError(f"{label} must be a string", code=f"invalid_{label}")
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                      or not math.isfinite(timeout_s) or timeout_s <= 0):
            raise errors.InvalidRequestError("timeout_s must be a positive number of seconds", code="invalid_timeout")
        rid = request_id or f"req_{self._id_prefix}{next(self._ids):x}"
        group, upstream = self._resolve(op, model, endpoint_id=endpoint_id, provider=provider)
        if upstream is not None and hasattr(request, "model"):
            request.model = upstream
        # a token estimate is only needed where some key has a TPM budget
        needs_tokens = any(self._slots[i].shadow_has_tpm for i in group)
        est = _estimate(self._slots[group[0]], op, request) if needs_tokens else 0
        deadline = time.monotonic() + float(timeout_s or self.config.request_timeout_s)
        return _Job(op=op, request=request, priority=prio, request_id=rid, group=group, est_tokens=est,
                    deadline=deadline, seq=next(self._seq))

    async def _submit(self, op: str, request: Any, model: str | None, priority: Any, request_id: str | None,
                      endpoint_id: str | None, timeout_s: float | None, provider: str | None = None):
        await self._ensure_ready()
        job = self._new_job(op, request, model, priority, request_id, endpoint_id, timeout_s, provider)
        self.counters["submitted"] += 1
        retrying = False
        while True:
            slot = await self._lease(job, front=retrying)
            job.sent = False
            try:
                outcome = await self._execute(slot, job)
            except (*_ACTOR_GONE, LaneUnavailable):
                outcome = self._actor_gone(slot, job)
            except asyncio.CancelledError:
                self._release(slot, job, None)
                self._cancelled(in_flight=job.sent)
                raise
            except Exception as exc:  # noqa: BLE001 - never leave the slot taken
                outcome = Outcome(error=self._call_failed(slot, job, exc))
            self._release(slot, job, outcome)
            if outcome.error is None:
                self.counters["succeeded"] += 1
                self._finished("ok")
                return outcome.value
            delay = self._decide(job, slot, outcome.error)
            if delay is None:
                self.counters["failed"] += 1
                self._finished(type(outcome.error).__name__)
                raise outcome.error
            if delay > 0:
                await self._back_off(delay)
            retrying = True

    async def _stream(self, op: str, request: Any, model: str | None, priority: Any, request_id: str | None,
                      endpoint_id: str | None, timeout_s: float | None,
                      provider: str | None = None) -> AsyncIterator[StreamChunk]:
        await self._ensure_ready()
        job = self._new_job(op, request, model, priority, request_id, endpoint_id, timeout_s, provider)
        self.counters["submitted"] += 1
        self.counters["streams"] += 1
        retrying = False
        while True:
            slot = await self._lease(job, front=retrying)
            delivered = 0
            outcome: Outcome | None = None
            try:
                async for ref in slot.handle.stream.remote(op, job.request, job.request_id, job.est_tokens):
                    item = await ref
                    if isinstance(item, Outcome):
                        outcome = item
                        break
                    delivered += 1
                    yield item
            except _ACTOR_GONE:
                outcome = self._actor_gone(slot, job)
            except (asyncio.CancelledError, GeneratorExit):
                self._release(slot, job, None)
                self._cancelled(in_flight=True)
                raise
            except Exception as exc:  # noqa: BLE001 - never leave the slot taken
                outcome = Outcome(error=self._call_failed(slot, job, exc))
            if outcome is None:
                outcome = Outcome(error=errors.StreamInterruptedError(
                    "stream from the endpoint ended without its final status", endpoint_id=slot.id,
                    request_id=job.request_id))
            self._release(slot, job, outcome)
            if outcome.error is None:
                self.counters["succeeded"] += 1
                self._finished("ok")
                return
            err = outcome.error
            if delivered:
                # part of the answer already reached the caller: never retry, never truncate silently
                self.counters["failed"] += 1
                self._finished("StreamInterruptedError")
                raise errors.StreamInterruptedError(
                    f"stream broke after {delivered} chunks: {err}", provider=err.provider,
                    endpoint_id=err.endpoint_id or slot.id, request_id=job.request_id, status=err.status)
            delay = self._decide(job, slot, err)
            if delay is None:
                self.counters["failed"] += 1
                self._finished(type(err).__name__)
                raise err
            if delay > 0:
                await self._back_off(delay)
            retrying = True

    # -- dispatch: one actor call per key per event-loop pass --------------------------
    def _execute(self, slot: _Slot, job: _Job) -> asyncio.Future:
        """The Outcome of one attempt on ``slot``.

        Attempts leased to the same key in one pass of the event loop (a pump
        hands out many leases at once under load) leave as one
        ``execute_many`` call (coalesce.py).
        """
        if slot.outbox is None:
            slot.outbox = Outbox(lambda batch: self._send(slot, batch))
        return slot.outbox.put(job)

    def _send(self, slot: _Slot, batch: list[tuple[_Job, asyncio.Future]]) -> None:
        sendable: list[tuple[bytes, _Job, asyncio.Future]] = []
        for job, future in batch:
            try:
                sendable.append((wire.pack((job.op, job.request, job.request_id, job.est_tokens)), job, future))
            except Exception as exc:  # noqa: BLE001 - this request alone cannot travel
                settle(future, error=errors.InvalidRequestError(
                    f"the request could not be serialized: {type(exc).__name__}", code="invalid_request",
                    request_id=job.request_id))
        if not sendable:
            return
        for _, job, _ in sendable:
            job.sent = True
        self.counters["attempts"] += len(sendable)
        if slot.lane is not None and slot.lane.closed:
            slot.close_lane()
        lane = slot.lane
        if lane is None:
            self._open_lane(slot)
            self._send_by_ray(slot, sendable)
            return
        self.counters["lane_attempts"] += len(sendable)
        for call, job, future in sendable:
            self._attempt_by_lane(slot, lane, job, call, future)

    def _send_by_ray(self, slot: _Slot, sendable: list[tuple[bytes, _Job, asyncio.Future]]) -> None:
        self.counters["endpoint_calls"] += 1
        if len(sendable) == 1:
            call, job, future = sendable[0]
            asyncio.ensure_future(self._settle_one(slot, job, slot.handle.execute_packed.remote(call), future))
        else:
            stream = slot.handle.execute_many.remote([call for call, _, _ in sendable])
            asyncio.ensure_future(self._settle_many(slot, stream, [(job, future) for _, job, future in sendable]))

    def _attempt_by_lane(self, slot: _Slot, lane: AsyncLaneClient, job: _Job, call: bytes,
                         future: asyncio.Future) -> None:
        """One attempt over the lane; a caller that leaves cancels it in the endpoint too.
        An attempt the lane could not send goes by Ray as it is; one the lane lost
        after sending counts as the actor gone (re-dispatched, as on the Ray path)."""
        async def attempt() -> None:
            try:
                blob = await lane.call(call)
            except asyncio.CancelledError:
                return
            except LaneUnavailable as exc:
                if exc.kind != "size":
                    self._lane_lost(slot, lane, exc.kind)
                if exc.kind == "broken":
                    settle(future, error=exc)
                    return
                self.counters["lane_attempts"] -= 1  # this attempt never left by lane
                if future.done():  # its caller left meanwhile: no attempt at all
                    self.counters["attempts"] -= 1
                else:
                    self._send_by_ray(slot, [(call, job, future)])
            except LaneCallFailed as exc:
                # the endpoint failed it; not retried: it may have been served upstream
                # (an answer too big for a frame)
                settle(future, error=errors.ProviderError(
                    f"endpoint {slot.id} failed the attempt: {errors.redact(str(exc))[:500]}", retryable=False,
                    endpoint_id=slot.id, request_id=job.request_id))
            except Exception as exc:  # noqa: BLE001 - anything else: treat the lane as broken
                log.warning("endpoint %s: lane failed unexpectedly: %s", slot.id, type(exc).__name__)
                self._lane_lost(slot, lane, "broken")
                settle(future, error=LaneUnavailable(f"lane failed: {type(exc).__name__}", "broken"))
            else:
                slot.lane_failures = 0
                settle(future, value=wire.unpack_or(blob, self._unreadable(slot, job)))

        task = asyncio.ensure_future(attempt())
        future.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)

    def _lane_lost(self, slot: _Slot, lane: AsyncLaneClient, why: str) -> None:
        """Stop using ``lane`` (the first of its callers to fail decides) and ask Ray for the
        address again: a restarted actor listens somewhere else.  An address that does
        not answer twice in a row is left alone for a while, doubling up to a minute."""
        if slot.lane is not lane:
            return
        slot.close_lane()
        if why == "connect":
            slot.lane_failures += 1
            if slot.lane_failures > 1:
                slot.lane_retry_at = time.monotonic() + min(
                    LANE_REOPEN_MAX_S, LANE_REOPEN_PAUSE_S * 2 ** (slot.lane_failures - 2))

    @staticmethod
    def _unreadable(slot: _Slot, job: _Job) -> Callable[[Exception], Outcome]:
        """The Outcome for an answer that came back but cannot be read: served
        upstream already, so not retried (that would pay the provider twice)."""
        return lambda exc: Outcome(error=errors.ProviderError(
            f"the answer of endpoint {slot.id} could not be read: {type(exc).__name__}", retryable=False,
            endpoint_id=slot.id, request_id=job.request_id))

    @classmethod
    async def _settle_one(cls, slot: _Slot, job: _Job, ref: Any, future: asyncio.Future) -> None:
        try:
            blob = await ref
        except Exception as exc:  # noqa: BLE001 - the caller decides (actor gone -> re-dispatch)
            settle(future, error=exc)
        else:
            settle(future, value=wire.unpack_or(blob, cls._unreadable(slot, job)))

    @classmethod
    async def _settle_many(cls, slot: _Slot, stream: Any, batch: list[tuple[_Job, asyncio.Future]]) -> None:
        await settle_from_stream(
            stream, [future for _, future in batch],
            read=lambda i, blob: (None, wire.unpack_or(blob, cls._unreadable(slot, batch[i][0]))),
            unanswered=lambda i: errors.ProviderError(
                f"endpoint {slot.id} ended a batch without answering this request",
                endpoint_id=slot.id, request_id=batch[i][0].request_id))

    def _actor_gone(self, slot: _Slot, job: _Job) -> Outcome:
        """The endpoint actor died with our request in flight: Ray restarts it;
        the request is re-dispatched (the caller sees it complete once)."""
        slot.cooldown_until = time.monotonic() + ACTOR_RESTART_PAUSE_S
        err = errors.ConnectionError(f"endpoint actor {slot.id} died; re-dispatching", endpoint_id=slot.id,
                                     request_id=job.request_id, retryable=True, code="actor_died")
        return Outcome(error=err)

    @staticmethod
    def _call_failed(slot: _Slot, job: _Job, exc: Exception) -> errors.GatewayError:
        """What an actor call that failed without an Outcome means for the caller."""
        if isinstance(exc, errors.GatewayError):
            return exc
        return errors.ProviderError(f"the call to endpoint {slot.id} failed: {type(exc).__name__}: "
                                    f"{errors.redact(str(exc))}", endpoint_id=slot.id, request_id=job.request_id)

    def _decide(self, job: _Job, slot: _Slot, err: errors.GatewayError) -> float | None:
        """None to give up, else seconds to wait before the next attempt."""
        err.with_context(request_id=job.request_id)
        job.last_error = err
        job.avoid.add(slot.id)
        slot.last_error = str(err)
        key_problem = isinstance(err, (errors.AuthenticationError, errors.PermissionDeniedError)) or (
            isinstance(err, errors.RateLimitError) and not err.retryable)
        if not err.retryable and not key_problem:
            return None
        policy = self.retry.with_overrides(**slot.retry_overrides) if slot.retry_overrides else self.retry
        now = time.monotonic()
        others = [s for s in (self._slots.get(i) for i in job.group) if s is not None and s.id != slot.id
                  and s.state(now, job.est_tokens)[0] != "open"]
        failover = key_problem or isinstance(err, (errors.RateLimitError, errors.CircuitOpenError)) or (
            err.code == "actor_died")
        if key_problem and not others:
            return None
        if failover:
            job.failovers += 1
            self.counters["failovers"] += 1
            if job.failovers > policy.max_retries + 2 * len(job.group):
                return None
            if self._metrics:
                self._metrics.retry(type(err).__name__)
            return 0.0  # the endpoint's own state (cooldown/open) keeps it out of the next lease
        job.retries += 1
        self.counters["retries"] += 1
        if job.retries > policy.max_retries:
            return None
        if self._metrics:
            self._metrics.retry(type(err).__name__)
        if others:
            return 0.0  # prefer another key right away
        if err.retry_after is not None and 0 <= err.retry_after <= 120:
            return err.retry_after
        return policy.delay(job.retries - 1)

    # -- leasing ---------------------------------------------------------------------
    async def _lease(self, job: _Job, front: bool = False) -> _Slot:
        loop = asyncio.get_running_loop()
        job.lease = loop.create_future()
        queue = self._queues.get(job.group)
        if queue is None:
            queue = self._queues[job.group] = PriorityQueue(bound=self.bound)
        if front:
            queue.push_front(job, job.priority)
        else:
            try:
                evicted = queue.push(job, job.priority)
            except errors.QueueFullError as exc:
                self.counters["rejected_queue_full"] += 1
                self._lease_failed(exc)
                exc.with_context(request_id=job.request_id)
                raise
            if evicted is not None:
                self._fail_evicted(evicted, job.priority)
        self._pump()
        try:
            return await job.lease
        except errors.GatewayError as exc:  # deadline, no endpoint left, displaced by a higher priority
            self._lease_failed(exc)
            raise
        except asyncio.CancelledError:
            self._cancelled(in_flight=False)
            if job.lease.done() and not job.lease.cancelled() and job.lease.exception() is None:
                self._release(job.lease.result(), job, None)  # leased just as the caller left
            else:
                q = self._queues.get(job.group)
                if q is not None:
                    q.remove(job)
            raise

    async def _back_off(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._cancelled(in_flight=False)
            raise

    def _cancelled(self, in_flight: bool) -> None:
        """The caller left (ray.cancel, a closed HTTP connection, a cancelled lane call)
        before its answer.  An attempt sent by lane is cancelled in the endpoint too; one
        sent as a Ray call runs to its end upstream and its answer is dropped."""
        self.counters["cancelled"] += 1
        self.counters["cancelled_in_flight"] += int(in_flight)
        self._finished("cancelled")

    def _lease_failed(self, exc: errors.GatewayError) -> None:
        self.counters["failed"] += 1
        self._finished(type(exc).__name__)

    def _fail_evicted(self, victim: _Job, by: Priority) -> None:
        """A waiting lower-priority job made room for a ``by`` one: it fails as if it
        had met a full queue, and its caller may retry later."""
        self.counters["rejected_queue_full"] += 1
        self.counters["evicted"] += 1
        if victim.lease is not None and not victim.lease.done():
            victim.lease.set_exception(errors.QueueFullError(
                f"request queue is full; this {victim.priority.name} request was displaced by a "
                f"{by.name} one, retry later or raise the queue bound", retryable=True,
                request_id=victim.request_id,
                details={"maxsize": self.bound.maxsize, "displaced_by": by.name}))

    def _release(self, slot: _Slot, job: _Job, outcome: Outcome | None) -> None:
        """End one attempt: free the slot, settle the shadow reservation with the
        real usage, and take in the endpoint's state."""
        slot.in_flight = max(0, slot.in_flight - 1)
        reservation, job.reservation = job.reservation, None
        if outcome is not None:
            usage = getattr(outcome.value, "usage", None)
            if reservation is not None and usage is not None and usage.total_tokens:
                slot.shadow.reconcile(reservation, usage.total_tokens)
            slot.apply(outcome.state, time.monotonic())
        self._pump()

    def _pump(self) -> None:
        """Hand out leases in global priority order to every job that can run now."""
        now = time.monotonic()
        heads: list[tuple[int, int, tuple[str, ...]]] = []
        for group, queue in self._queues.items():
            if not queue:
                continue
            job, prio = queue.peek()
            heapq.heappush(heads, (int(prio), job.seq, group))
        wake = math.inf
        while heads:
            _, _, group = heapq.heappop(heads)
            queue = self._queues[group]
            job, _ = queue.peek()
            if job.lease is None or job.lease.done():
                queue.pop()
            elif now >= job.deadline:
                queue.pop()
                job.lease.set_exception(job.last_error or errors.TimeoutError(
                    "request reached its deadline before an endpoint became free", request_id=job.request_id))
            else:
                slot, wait = self._choose(job, now)
                if slot is None:
                    if wait is None:
                        queue.pop()
                        job.lease.set_exception(self._no_endpoint_error(job))
                    else:
                        wake = min(wake, now + wait, job.deadline)
                        continue  # this group is blocked; others may still run
                else:
                    queue.pop()
                    slot.in_flight += 1
                    job.reservation = slot.shadow.try_acquire(job.est_tokens)
                    job.lease.set_result(slot)
            if queue:
                nxt, prio = queue.peek()
                heapq.heappush(heads, (int(prio), nxt.seq, group))
        self._schedule(wake)
        self._report_depth(now)

    def _choose(self, job: _Job, now: float) -> tuple[_Slot | None, float | None]:
        """(slot, None) to run now; (None, seconds) to wait; (None, None) to fail now."""
        usable: list[_Slot] = []
        wait = math.inf
        open_waits: list[float] = []
        alive = 0
        for endpoint_id in job.group:
            slot = self._slots.get(endpoint_id)
            if slot is None:
                continue
            alive += 1
            kind, seconds = slot.state(now, job.est_tokens)
            if kind == "ok":
                usable.append(slot)
            elif kind == "open":
                open_waits.append(seconds)
                wait = min(wait, seconds)
            else:
                wait = min(wait, seconds)
        if usable:
            preferred = [s for s in usable if s.id not in job.avoid] or usable
            chosen = self.strategy.select([s.view() for s in preferred])
            if chosen is not None:
                return self._slots[chosen.id], None
            return None, 0.05
        if alive == 0:
            return None, None
        if len(open_waits) == alive and min(open_waits) > FAIL_FAST_OPEN_S:
            return None, None
        return None, wait

    def _no_endpoint_error(self, job: _Job) -> errors.GatewayError:
        if job.last_error is not None and not isinstance(job.last_error, errors.CircuitOpenError):
            return job.last_error
        slots = [self._slots[i] for i in job.group if i in self._slots]
        if not slots:
            return errors.UnknownModelError(
                f"the endpoints that served this request were removed ({', '.join(job.group)})",
                request_id=job.request_id)
        reasons = "; ".join(f"{s.id}: {s.last_error}" for s in slots if s.last_error)
        retry = min(max(0.0, s.retry_at - time.monotonic()) for s in slots)
        return errors.CircuitOpenError(
            f"every endpoint for this request is open ({', '.join(s.id for s in slots)}); retry in "
            f"{retry:.0f}s" + (f"; last errors: {reasons}" if reasons else ""),
            request_id=job.request_id, retry_after=retry)

    def _schedule(self, at: float) -> None:
        if at == math.inf:
            return
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_at(loop.time() + max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._pump()

    def _report_depth(self, now: float) -> None:
        if self._metrics is None or now - self._last_depth_report < 0.5:
            return
        self._last_depth_report = now
        self._metrics.depth(self._queue_counts())

    def _finished(self, outcome: str) -> None:
        if self._metrics:
            self._metrics.finished(outcome)

    # -- introspection ----------------------------------------------------------------
    def _queue_counts(self) -> dict[str, int]:
        totals = {"HIGH": 0, "NORMAL": 0, "LOW": 0}
        for queue in self._queues.values():
            for level, n in queue.counts().items():
                totals[level] += n
        return totals

    async def queue_info(self) -> dict:
        await self._ensure_ready()
        counts = self._queue_counts()
        return {
            "size": sum(counts.values()), "capacity": self.bound.maxsize, "by_priority": counts,
            "active_requests": sum(s.in_flight for s in self._slots.values()),
            "endpoints": {s.id: {"in_flight": s.in_flight, "max_concurrent": s.max_concurrent,
                                 "circuit": s.circuit} for s in self._slots.values()},
        }

    async def stats(self, endpoint_id: str | None = None) -> dict:
        await self._ensure_ready()
        if endpoint_id is not None:
            return await self._slot(endpoint_id).handle.stats.remote()
        ids = list(self._slots)
        results = await asyncio.gather(*(self._slots[i].handle.stats.remote() for i in ids),
                                       return_exceptions=True)
        per = {i: (r if not isinstance(r, BaseException) else {"error": errors.redact(r)[:200]})
               for i, r in zip(ids, results)}
        totals = {k: sum(p.get(k, 0) for p in per.values() if "error" not in p)
                  for k in ("total_requests", "successful_requests", "failed_requests", "rate_limited",
                            "input_tokens", "output_tokens", "total_tokens")}
        totals["cost_usd"] = round(sum(p.get("cost_usd", 0.0) for p in per.values() if "error" not in p), 8)
        return {"endpoints_count": len(per), **totals, "router": dict(self.counters),
                "queue": self._queue_counts(), "strategy": self.strategy.name, "endpoints": per}

    async def reset_stats(self) -> None:
        await asyncio.gather(*(s.handle.reset_stats.remote() for s in self._slots.values()))
        for k in self.counters:
            self.counters[k] = 0

    async def circuit_state(self, endpoint_id: str | None = None) -> Any:
        await self._ensure_ready()
        if endpoint_id is not None:
            return await self._slot(endpoint_id).handle.circuit_state.remote()
        ids = list(self._slots)
        states = await asyncio.gather(*(self._slots[i].handle.circuit_state.remote() for i in ids))
        return dict(zip(ids, states))

    async def circuit_metrics(self, endpoint_id: str | None = None) -> Any:
        await self._ensure_ready()
        if endpoint_id is not None:
            return await self._slot(endpoint_id).handle.circuit_metrics.remote()
        ids = list(self._slots)
        result = await asyncio.gather(*(self._slots[i].handle.circuit_metrics.remote() for i in ids))
        return dict(zip(ids, result))

    async def list_models(self, live: bool = False) -> list[ModelInfo]:
        """Models the gateway routes: configured ones, plus each endpoint's live
        list when ``live`` (for endpoints whose provider can list models)."""
        await self._ensure_ready()
        seen: dict[tuple[str, str], ModelInfo] = {}
        for s in self._slots.values():
            for m in s.models:
                seen.setdefault((s.provider, m), ModelInfo(id=m, provider=s.provider, endpoint_id=s.id))
        for alias, target in self.aliases.items():
            seen.setdefault(("alias", alias), ModelInfo(id=alias, provider="alias", description=f"alias of {target}"))
        if live:
            calls = [(s, self._submit("models", OperationRequest(op="models"), None, "HIGH", None, s.id, None))
                     for s in self._slots.values() if s.provider_cls.supports("models")]
            results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
            for (s, _), res in zip(calls, results):
                if isinstance(res, BaseException):
                    continue
                for info in res:
                    info.endpoint_id = info.endpoint_id or s.id
                    info.provider = info.provider or s.provider
                    seen.setdefault((s.provider, info.id), info)
        return list(seen.values())

    async def health(self) -> dict:
        await self._ensure_ready()
        states = await self.circuit_state()
        healthy = [i for i, st in states.items() if st != "OPEN"]
        return {"status": "ok" if healthy else "degraded", "endpoints": states,
                "healthy_endpoints": len(healthy), "queue": self._queue_counts()}

    async def ping(self) -> str:
        return "pong"

    async def shutdown_endpoints(self) -> int:
        """Kill every endpoint actor and helper actor (used by Gateway.shutdown)."""
        await self.disable_batching()
        await self.disable_cache()
        n = 0
        for slot in list(self._slots.values()):
            slot.close_lane()
            try:
                await slot.handle.close.remote()
            except Exception:  # noqa: BLE001
                pass
            ray.kill(slot.handle, no_restart=True)
            n += 1
        self._slots.clear()
        for queue in self._queues.values():
            for job in queue.clear():
                if job.lease is not None and not job.lease.done():
                    job.lease.set_exception(errors.CircuitOpenError("the gateway is shutting down",
                                                                    request_id=job.request_id))
        return n


def _estimate(slot: _Slot, op: str, request: Any) -> int:
    """Tokens to reserve for one request (an estimate must never fail a request)."""
    if not isinstance(request, (ChatRequest, EmbeddingRequest)):
        return 0
    try:
        return int(slot.provider_cls.estimate_tokens(op, request))
    except Exception:  # noqa: BLE001
        return 0


def _pack_answer(answer: tuple[BaseException | None, Any]) -> bytes:
    return wire.pack_or(answer, lambda exc: (errors.ProviderError(
        f"the answer could not be serialized: {type(exc).__name__}", retryable=False), None))


def _result_of(task: asyncio.Future) -> tuple[BaseException | None, Any]:
    """(error, answer) of a finished request task, for request_many."""
    if task.cancelled():
        return errors.ProviderError("the request was cancelled in the router"), None
    exc = task.exception()
    return (exc, None) if exc is not None else (None, task.result())


def _endpoint_from_dict(data: dict, config: GatewayConfig) -> EndpointConfig:
    from ..config import endpoint_from_dict
    return endpoint_from_dict(data, defaults=config.endpoint_defaults)


def _create_endpoint_actor(config: GatewayConfig, ep: EndpointConfig, enable_metrics: bool):
    cls = ray.remote(EndpointActor)
    return cls.options(**naming.endpoint_actor_options(config, ep.id)).remote(
        ep, config.circuit, enable_metrics=enable_metrics)


def _named_actor_exists(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


def _check_prompt(prompt: Any, params: dict) -> None:
    ok = isinstance(prompt, str) and prompt.strip() or (
        isinstance(prompt, list) and prompt and all(isinstance(p, str) and p for p in prompt))
    if not ok:
        raise errors.InvalidRequestError("prompt must be a non-empty string or a list of non-empty strings",
                                         code="invalid_prompt")
    validate_sampling_params(params)
