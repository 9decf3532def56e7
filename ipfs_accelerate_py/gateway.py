"""Gateway: the driver-side facade over the router actor.

Sync and async methods with the router's keyword arguments, typed errors
unwrapped from Ray's wrappers, and one extra guarantee: if the router actor
dies while a call is in flight, the call is repeated (same request id) once
the router is back, so a caller sees each request end exactly once.
"""
from __future__ import annotations

import asyncio
import pickle
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping

import ray
from ray.exceptions import RayActorError, RayTaskError

try:
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]

from . import errors
from .actors import runtime, wire
from .actors.coalesce import Outbox, settle, settle_from_stream
from .actors.lane import AsyncLaneClient, LaneAddress, LaneCallFailed, LaneClient, LaneUnavailable
from .actors._errors import unwrap
from .config import GatewayConfig, load_config
from .types import ChatResponse, EmbeddingResponse, ModelInfo, OperationResponse, StreamChunk

_ROUTER_GONE = (RayActorError, ActorUnavailableError)
#: how long a call waits for a crashed router to come back
ROUTER_RECOVERY_S = 60.0
#: how often a Gateway re-checks whether an embedding batcher is running
BATCHER_LOOKUP_S = 5.0
#: after the router's lane did not answer (or lanes are off), Ray calls only for this long;
#: an address that keeps not answering waits twice as long each time, up to LANE_RETRY_MAX_S
LANE_RETRY_S = 30.0
LANE_RETRY_MAX_S = 600.0
#: how long asking the router for its lane address may take before the call goes by Ray
LANE_INFO_TIMEOUT_S = 5.0


_unwrap = unwrap


def _value_of(blob: bytes) -> Any:
    """The answer in the router's packed ``(error, answer)``, or its error raised."""
    error, value = _read_answer(blob)
    if error is not None:
        raise error
    return value


def _router_failed(exc: LaneCallFailed) -> errors.ProviderError:
    return errors.ProviderError(f"the router failed the request: {exc}", retryable=False)


def _read_answer(blob: bytes) -> tuple[BaseException | None, Any]:
    """The router's packed ``(error, answer)`` for one request."""
    return wire.unpack_or(blob, lambda exc: (errors.ProviderError(
        f"the router's answer could not be read: {type(exc).__name__}", retryable=False), None))


class Gateway:
    """Handle on a running gateway.  Create with ``Gateway.start`` or ``Gateway.connect``."""

    def __init__(self, router: Any, *, namespace: str, name: str, config: GatewayConfig | None = None) -> None:
        self._router = router
        self.namespace = namespace
        self.name = name
        self.config = config
        self._batcher_handle: Any = None
        self._batcher_seen_at = 0.0
        self._outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Outbox[bytes]] = (
            weakref.WeakKeyDictionary())
        self._forget_lanes()

    def _forget_lanes(self) -> None:
        # the direct lane into the router (actors/lane.py): its address, a blocking client
        # for sync calls, one async client per event loop
        self._lane_address: LaneAddress | None = None
        self._lane_retry_at = 0.0
        self._lane_unreachable = 0
        self._lane_lock = threading.Lock()
        self._lane: LaneClient | None = None
        self._alanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncLaneClient] = (
            weakref.WeakKeyDictionary())
        self._alane_fetches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future] = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        return f"Gateway(name={self.name!r}, namespace={self.namespace!r})"

    def __getstate__(self) -> dict:
        # a Gateway passed to a Ray task travels without this process's outboxes and lanes
        lanes = ("_lane_address", "_lane_retry_at", "_lane_unreachable", "_lane_lock", "_lane", "_alanes",
                 "_alane_fetches")
        return {**{k: v for k, v in self.__dict__.items() if k not in lanes}, "_outboxes": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._outboxes = weakref.WeakKeyDictionary()
        self._forget_lanes()

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    def start(cls, config: GatewayConfig | Mapping | str | Path | None = None, *,
              ray_init: Mapping[str, Any] | None = None, enable_metrics: bool = True,
              **overrides: Any) -> "Gateway":
        """Start the actor system for ``config`` (dict, YAML path, GatewayConfig,
        or None for environment/.env discovery), or attach to the router already
        running under the same name and namespace."""
        cfg = config if isinstance(config, GatewayConfig) and not overrides else load_config(config, **overrides)
        runtime.ensure_ray(**dict(ray_init or {}))
        router = runtime.start_router(cfg, enable_metrics=enable_metrics)
        return cls(router, namespace=cfg.namespace, name=cfg.name, config=cfg)

    @classmethod
    def connect(cls, namespace: str = "ipfs_accelerate", name: str = "ia", *,
                timeout_s: float = 30.0) -> "Gateway":
        """Attach to a gateway another job started in the cluster."""
        runtime.ensure_ray()
        return cls(runtime.get_router(namespace, name, timeout_s), namespace=namespace, name=name)

    @property
    def router(self) -> Any:
        """The router actor handle: ``ray.get(gw.router.chat.remote(...))`` works from any task."""
        return self._router

    def shutdown(self) -> None:
        """Stop the router and every endpoint actor of this gateway."""
        try:
            ray.get(self._router.shutdown_endpoints.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - shutting down what is already gone is fine
            pass
        try:
            ray.kill(self._router, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        self._close_lanes()
        self._forget_lanes()

    def _close_lanes(self) -> None:
        if self._lane is not None:
            self._lane.close()
        for _ in range(3):  # another thread may add a loop's lane meanwhile
            try:
                lanes = list(self._alanes.items())
                break
            except RuntimeError:
                continue
        else:
            lanes = []
        for loop, lane in lanes:
            if not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(lane.abort)
                except RuntimeError:  # the loop closed meanwhile: so did its connection
                    pass

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- plumbing ----------------------------------------------------------------
    def _reattach(self, deadline: float) -> None:
        self._router = runtime.get_router(self.namespace, self.name, max(1.0, deadline - time.monotonic()))

    def _check_recovery(self, deadline: float, delivered: int = 0, request_id: str | None = None) -> None:
        """The router vanished mid-call: give up (raise) or let the caller wait and repeat."""
        if delivered:
            raise errors.StreamInterruptedError(f"the router died after {delivered} chunks",
                                                request_id=request_id) from None
        if time.monotonic() > deadline:
            raise errors.ConnectionError("the gateway router is gone and did not come back") from None

    def _submit(self, method: str, args: tuple, kwargs: dict) -> Any:
        """Start a router call; arguments Ray cannot serialize are the caller's error."""
        try:
            return getattr(self._router, method).remote(*args, **kwargs)
        except (pickle.PicklingError, RecursionError, TypeError) as exc:
            raise errors.InvalidRequestError(f"the request could not be serialized: {type(exc).__name__}",
                                             code="invalid_request") from None

    def _call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        if method in wire.REQUEST_METHODS:
            return self._request(self._pack(method, args, kwargs))
        deadline = time.monotonic() + ROUTER_RECOVERY_S
        while True:
            try:
                return ray.get(self._submit(method, args, kwargs))
            except _ROUTER_GONE:
                self._check_recovery(deadline)
                self._reattach(deadline)
            except RayTaskError as exc:
                raise _unwrap(exc) from None

    def _request(self, call: bytes) -> Any:
        """One packed request: over the lane when it is open, else (and whenever the
        lane fails) by a Ray call, with the same blob and so the same request id."""
        answer = self._by_lane(call)
        deadline = time.monotonic() + ROUTER_RECOVERY_S
        while answer is None:
            try:
                answer = ray.get(self._router.request_packed.remote(call))
            except _ROUTER_GONE:
                self._check_recovery(deadline)
                self._reattach(deadline)
            except RayTaskError as exc:
                raise _unwrap(exc) from None
        return _value_of(answer)

    async def _acall(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        call = self._pack(method, args, kwargs) if method in wire.REQUEST_METHODS else None
        if call is not None:
            answer = await self._aby_lane(call)
            if answer is not None:
                return _value_of(answer)
        deadline = time.monotonic() + ROUTER_RECOVERY_S
        while True:
            try:
                if call is not None:
                    return await self._requests_outbox().put(call)
                return await self._submit(method, args, kwargs)
            except _ROUTER_GONE:
                self._check_recovery(deadline)
                await asyncio.get_running_loop().run_in_executor(None, self._reattach, deadline)
            except RayTaskError as exc:
                raise _unwrap(exc) from None

    # -- the direct lane into the router (actors/lane.py) ---------------------------------
    def _by_lane(self, call: bytes) -> bytes | None:
        """The router's answer over the lane; None: send it by Ray instead."""
        lane = self._lane
        if lane is None or lane.closed:
            # one thread asks the router; the others meanwhile go by Ray, not wait
            if not self._lane_lock.acquire(blocking=False):
                return None
            try:
                lane = self._lane
                if lane is None or lane.closed:
                    address = self._lane_address or self._fetch_lane_address()
                    if address is None:
                        return None
                    lane = self._lane = LaneClient(address)
            finally:
                self._lane_lock.release()
        try:
            answer = lane.call(call)
            self._lane_unreachable = 0
            return answer
        except LaneUnavailable as exc:
            self._lane_failed(exc, current=self._lane is lane)
            return None
        except LaneCallFailed as exc:
            raise _router_failed(exc) from None

    async def _aby_lane(self, call: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        lane = self._alanes.get(loop)
        if lane is None or lane.closed:
            address = self._lane_address or await self._afetch_lane_address(loop)
            if address is None:
                return None
            lane = self._alanes.get(loop)
            if lane is None or lane.closed or lane.address != address:
                lane = self._alanes[loop] = AsyncLaneClient(address)
        try:
            answer = await lane.call(call)
            self._lane_unreachable = 0
            return answer
        except LaneUnavailable as exc:
            current = self._alanes.get(loop) is lane
            if current and exc.kind != "size":
                self._alanes.pop(loop, None)
            self._lane_failed(exc, current=current)
            return None
        except LaneCallFailed as exc:
            raise _router_failed(exc) from None

    def _lane_failed(self, exc: LaneUnavailable, *, current: bool) -> None:
        """This request now goes by Ray; decide what the next one does (the first caller
        to see a lane fail decides, not every caller that was waiting on it).

        A request the lane lost after sending ("broken") is sent again by Ray, as Ray
        itself re-sends a task whose actor died: if the router had started it, the
        closed connection cancelled it there, though an attempt already on its way
        upstream may still have reached the provider."""
        if exc.kind == "size" or not current:
            return  # too big for a frame (the lane is fine), or already decided
        self._lane_address = None  # ask the router again (by Ray, which waits for a restart)
        if exc.kind == "connect":
            # once: a restarted router listens elsewhere, so just ask again; twice in a
            # row: this address does not answer (a network that does not route there)
            self._lane_unreachable += 1
            if self._lane_unreachable > 1:
                self._lane_retry_at = time.monotonic() + min(
                    LANE_RETRY_MAX_S, LANE_RETRY_S * 2 ** (self._lane_unreachable - 2))
        elif exc.kind == "refused":  # the router is turning lanes off
            self._lane_retry_at = time.monotonic() + LANE_RETRY_S

    def _fetch_lane_address(self) -> LaneAddress | None:
        if time.monotonic() < self._lane_retry_at:
            return None
        try:
            address = ray.get(self._router.lane_info.remote(), timeout=LANE_INFO_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - router gone or slow: the Ray path deals with it
            address = None
        return self._note_lane_address(address)

    async def _afetch_lane_address(self, loop: asyncio.AbstractEventLoop) -> LaneAddress | None:
        if time.monotonic() < self._lane_retry_at:
            return None
        fetch = self._alane_fetches.get(loop)
        if fetch is None:  # many requests start at once: one question for all of them
            fetch = self._alane_fetches[loop] = asyncio.ensure_future(self._ask_lane_info())
            fetch.add_done_callback(lambda _: self._alane_fetches.pop(loop, None))
        return await asyncio.shield(fetch)

    async def _ask_lane_info(self) -> LaneAddress | None:
        try:
            address = await asyncio.wait_for(self._router.lane_info.remote(), LANE_INFO_TIMEOUT_S)
        except Exception:  # noqa: BLE001
            address = None
        return self._note_lane_address(address)

    def _note_lane_address(self, address: LaneAddress | None) -> LaneAddress | None:
        self._lane_address = address
        if address is None:  # lanes off, or the router did not answer: Ray calls for a while
            self._lane_retry_at = time.monotonic() + LANE_RETRY_S
        return address

    # -- async requests: one router call per event-loop pass ----------------------------
    def _requests_outbox(self) -> Outbox[bytes]:
        """The requests async callers make in one event-loop pass (a Serve replica or an
        asyncio job with many in flight) go to the router as one call (coalesce.py)."""
        loop = asyncio.get_running_loop()
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = Outbox(self._send_requests)
        return outbox

    @staticmethod
    def _pack(method: str, args: tuple, kwargs: dict) -> bytes:
        try:
            return wire.pack((method, args, kwargs))
        except (pickle.PicklingError, RecursionError, TypeError, AttributeError) as exc:
            raise errors.InvalidRequestError(f"the request could not be serialized: {type(exc).__name__}",
                                             code="invalid_request") from None

    def _send_requests(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        if len(batch) == 1:
            call, future = batch[0]
            asyncio.ensure_future(self._settle_request(self._router.request_packed.remote(call), future))
        else:
            stream = self._router.request_many.remote([call for call, _ in batch])
            asyncio.ensure_future(self._settle_requests(stream, [future for _, future in batch]))

    @staticmethod
    async def _settle_request(ref: Any, future: asyncio.Future) -> None:
        try:
            error, value = _read_answer(await ref)
        except Exception as exc:  # noqa: BLE001 - _acall decides (router gone -> send again)
            settle(future, error=exc)
        else:
            settle(future, value=value, error=error)

    @staticmethod
    async def _settle_requests(stream: Any, futures: list[asyncio.Future]) -> None:
        await settle_from_stream(stream, futures, read=lambda _, blob: _read_answer(blob),
                                 unanswered=lambda _: errors.ConnectionError(
                                     "the router ended a batch without answering this request", retryable=True))

    def _stream(self, method: str, /, *args: Any, **kwargs: Any) -> Iterator[StreamChunk]:
        deadline = time.monotonic() + ROUTER_RECOVERY_S
        delivered = 0
        while True:
            try:
                for ref in self._submit(method, args, kwargs):
                    chunk = ray.get(ref)
                    delivered += 1
                    yield chunk
                return
            except _ROUTER_GONE:
                self._check_recovery(deadline, delivered, kwargs.get("request_id"))
                self._reattach(deadline)
            except RayTaskError as exc:
                raise _unwrap(exc) from None

    async def _astream(self, method: str, /, *args: Any, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        deadline = time.monotonic() + ROUTER_RECOVERY_S
        delivered = 0
        while True:
            try:
                async for ref in self._submit(method, args, kwargs):
                    chunk = await ref
                    delivered += 1
                    yield chunk
                return
            except _ROUTER_GONE:
                self._check_recovery(deadline, delivered, kwargs.get("request_id"))
                await asyncio.get_running_loop().run_in_executor(None, self._reattach, deadline)
            except RayTaskError as exc:
                raise _unwrap(exc) from None

    @staticmethod
    def _with_id(kwargs: dict) -> dict:
        # fixed before the first try, so a repeat after a router crash keeps the id
        if not kwargs.get("request_id"):
            kwargs["request_id"] = f"req_{uuid.uuid4().hex[:24]}"
        return kwargs

    # -- requests: sync --------------------------------------------------------------
    def chat(self, model: str, messages: Any, **kwargs: Any) -> ChatResponse:
        return self._call("chat", model, messages, **self._with_id(kwargs))

    def complete(self, model: str, prompt: Any, **kwargs: Any) -> ChatResponse:
        return self._call("complete", model, prompt, **self._with_id(kwargs))

    def embed(self, model: str, input: Any, **kwargs: Any) -> EmbeddingResponse:
        batcher = self._batcher_for(input, kwargs)
        if batcher is not None:
            try:
                return ray.get(batcher.embed.remote(model, input, **kwargs))
            except _ROUTER_GONE:
                self._batcher_seen_at = 0.0  # disabled or restarting: the router path always works
            except RayTaskError as exc:
                raise _unwrap(exc) from None
        return self._call("embed", model, input, **self._with_id(kwargs))

    def _batcher_for(self, input: Any, kwargs: dict) -> Any:
        """The batcher actor when batching is on and this call can be coalesced.

        Single texts go straight to it (one actor hop instead of two through
        the router); its handle is looked up by name at most every few seconds.
        """
        if kwargs.get("endpoint_id") or kwargs.get("batching") is False:
            return None
        if not (isinstance(input, str) or (isinstance(input, list) and len(input) == 1)):
            return None
        now = time.monotonic()
        if now - self._batcher_seen_at > BATCHER_LOOKUP_S:
            try:
                self._batcher_handle = ray.get_actor(f"{self.name}:batcher", namespace=self.namespace)
            except ValueError:
                self._batcher_handle = None
            self._batcher_seen_at = now
        return self._batcher_handle

    def call(self, op: str, /, model: str | None = None, **kwargs: Any) -> Any:
        """Any other operation: images, transcribe, speech, moderate, rerank, infer, s3_* ..."""
        return self._call("call", op, model, **self._with_id(kwargs))

    def stream_call(self, op: str, /, model: str | None = None, **kwargs: Any) -> Iterator[StreamChunk]:
        """Any other streaming operation (e.g. OPEA's stream_chatqna)."""
        return self._stream("stream_call", op, model, **self._with_id(kwargs))

    def stream_chat(self, model: str, messages: Any, **kwargs: Any) -> Iterator[StreamChunk]:
        return self._stream("stream_chat", model, messages, **self._with_id(kwargs))

    def stream_complete(self, model: str, prompt: Any, **kwargs: Any) -> Iterator[StreamChunk]:
        return self._stream("stream_complete", model, prompt, **self._with_id(kwargs))

    # -- requests: async ----------------------------------------------------------------
    async def achat(self, model: str, messages: Any, **kwargs: Any) -> ChatResponse:
        return await self._acall("chat", model, messages, **self._with_id(kwargs))

    async def acomplete(self, model: str, prompt: Any, **kwargs: Any) -> ChatResponse:
        return await self._acall("complete", model, prompt, **self._with_id(kwargs))

    async def aembed(self, model: str, input: Any, **kwargs: Any) -> EmbeddingResponse:
        batcher = self._batcher_for(input, kwargs)
        if batcher is not None:
            try:
                return await batcher.embed.remote(model, input, **kwargs)
            except _ROUTER_GONE:
                self._batcher_seen_at = 0.0
            except RayTaskError as exc:
                raise _unwrap(exc) from None
        return await self._acall("embed", model, input, **self._with_id(kwargs))

    async def acall(self, op: str, /, model: str | None = None, **kwargs: Any) -> Any:
        return await self._acall("call", op, model, **self._with_id(kwargs))

    async def astream_chat(self, model: str, messages: Any, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        async for chunk in self._astream("stream_chat", model, messages, **self._with_id(kwargs)):
            yield chunk

    async def astream_complete(self, model: str, prompt: Any, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        async for chunk in self._astream("stream_complete", model, prompt, **self._with_id(kwargs)):
            yield chunk

    async def astream_call(self, op: str, /, model: str | None = None, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        async for chunk in self._astream("stream_call", op, model, **self._with_id(kwargs)):
            yield chunk

    async def alist_models(self, live: bool = False) -> list[ModelInfo]:
        return await self._acall("list_models", live)

    async def astats(self, endpoint_id: str | None = None) -> dict:
        return await self._acall("stats", endpoint_id)

    async def ahealth(self) -> dict:
        return await self._acall("health")

    async def aqueue_info(self) -> dict:
        return await self._acall("queue_info")

    # -- management -------------------------------------------------------------------
    def list_models(self, live: bool = False) -> list[ModelInfo]:
        return self._call("list_models", live)

    def stats(self, endpoint_id: str | None = None) -> dict:
        return self._call("stats", endpoint_id)

    def reset_stats(self) -> None:
        self._call("reset_stats")

    def queue_info(self) -> dict:
        return self._call("queue_info")

    def circuit_state(self, endpoint_id: str | None = None) -> Any:
        return self._call("circuit_state", endpoint_id)

    def circuit_metrics(self, endpoint_id: str | None = None) -> Any:
        return self._call("circuit_metrics", endpoint_id)

    def health(self) -> dict:
        return self._call("health")

    def endpoints(self) -> list[dict]:
        return self._call("endpoints")

    def add_endpoint(self, endpoint: Mapping[str, Any]) -> dict:
        return self._call("add_endpoint", dict(endpoint))

    def add_api_key(self, name: str, api_key: str, *, like: str | None = None, provider: str | None = None,
                    **fields: Any) -> dict:
        """Add another key for a provider already served (copies an existing endpoint's settings)."""
        return self._call("add_api_key", name, api_key, like=like, provider=provider, **fields)

    def key_usage_stats(self) -> dict:
        return self._call("key_usage_stats")

    def remove_endpoint(self, endpoint_id: str) -> bool:
        return self._call("remove_endpoint", endpoint_id)

    def set_strategy(self, name: str) -> str:
        return self._call("set_strategy", name)

    def configure(self, **settings: Any) -> dict:
        """Router settings at run time: queue_size, strategy, retry policy fields."""
        return self._call("configure", **settings)

    def enable_semantic_cache(self, similarity_threshold: float = 0.92, cache_size: int = 1000,
                              ttl: float | None = 3600.0, embedding_model: str | None = None) -> dict:
        """Answer repeated and near-repeated chat requests from one cluster-wide cache.

        ``embedding_model``: None for the built-in embedder (no download, no
        server), "minilm" for the local sentence-transformers model (the
        ``minilm`` extra), or any embedding model this gateway serves."""
        return self._call("enable_cache", similarity_threshold, cache_size, ttl, embedding_model)

    def disable_semantic_cache(self) -> None:
        self._call("disable_cache")

    def cache_stats(self) -> dict:
        return self._call("cache_stats")

    def clear_cache(self) -> None:
        self._call("clear_cache")

    def enable_embedding_batching(self, max_batch_size: int = 20, batch_timeout: float = 0.1,
                                  auto_batching: bool = True) -> dict:
        """Coalesce concurrent single-text embeds per model into upstream batches."""
        settings = self._call("enable_batching", max_batch_size, batch_timeout, auto_batching)
        self._batcher_seen_at = 0.0
        return settings

    def disable_embedding_batching(self) -> None:
        self._call("disable_batching")
        self._batcher_seen_at = 0.0

    def batching_stats(self) -> dict:
        return self._call("batching_stats")

    def configure_endpoint(self, endpoint_id: str, **changes: Any) -> dict:
        """Endpoint limits at run time: max_concurrent_requests, rpm, tpm, circuit fields, timeouts."""
        return self._call("configure_endpoint", endpoint_id, **changes)


__all__ = ["Gateway", "ChatResponse", "EmbeddingResponse", "OperationResponse", "StreamChunk"]
