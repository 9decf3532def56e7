"""EndpointActor: the one place an API key is governed for the whole cluster.

One actor per (provider, base_url, key).  It owns the key's circuit breaker,
RPM/TPM limiter, concurrency limit, counters and HTTP session.  It makes
exactly one upstream attempt per call: retrying and failing over need a view
across keys, which only the router has.  Every answer carries a small state
snapshot so the router can schedule without extra calls.

The class is plain Python; ``runtime.py`` turns it into a Ray actor.  That
keeps it constructible in a unit test without a cluster.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .. import errors
from ..config import EndpointConfig
from ..core import pricing, tokens
from ..core.circuit import CircuitBreaker, CircuitConfig, CircuitState
from ..core.limiter import RateLimiter
from ..core.stats import EndpointCounters
from ..providers.base import get_provider_class
from ..transport import Transport
from ..types import ChatRequest, ChatResponse, EmbeddingResponse, OperationResponse, StreamChunk, Usage
from . import metrics, wire
from .coalesce import finished_groups
from .lane import LaneAddress, LaneServer, node_host

log = logging.getLogger(__name__)

#: after a 429 without Retry-After, how long the key rests before the next try
DEFAULT_RATE_LIMIT_COOLDOWN_S = 1.0
#: execute_many holds a finished answer this long for siblings to finish too (bench/throughput.py)
BATCH_REPLY_LINGER_S = 0.001


@dataclass
class Outcome:
    """What an endpoint call returns: a value or a typed error, plus its state."""
    value: Any = None
    error: errors.GatewayError | None = None
    state: dict = field(default_factory=dict)


class EndpointActor:
    def __init__(self, endpoint: EndpointConfig, circuit_defaults: dict | None = None,
                 *, enable_metrics: bool = True) -> None:
        self.config = endpoint
        self.id = endpoint.id
        self.provider = get_provider_class(endpoint.provider)(endpoint)
        self.transport = Transport(timeout_s=endpoint.timeout_s)
        circuit_settings = {**(circuit_defaults or {}), **(endpoint.circuit or {})}
        self.circuit = CircuitBreaker(CircuitConfig(**circuit_settings), on_transition=self._on_transition)
        self.limiter = RateLimiter(endpoint.rpm, endpoint.tpm, burst_s=endpoint.burst_s)
        self.max_concurrent = int(endpoint.max_concurrent_requests)
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self.in_flight = 0
        self.cooldown_until = 0.0
        self.counters = EndpointCounters()
        self.started_at = time.time()
        self._metrics = metrics.EndpointMetrics(self.id, self.provider.name) if enable_metrics else None
        self._lane: LaneServer | None = None

    def __repr__(self) -> str:  # shows up in Ray's error traces: never the key
        return f"EndpointActor(id={self.id!r}, provider={self.provider.name!r}, key={self.config.fingerprint})"

    # -- introspection -------------------------------------------------------
    async def ready(self) -> bool:
        return True

    def snapshot(self) -> dict:
        now = time.monotonic()
        limits = self.limiter.snapshot()
        return {
            "id": self.id,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "circuit": self.circuit.state.value,
            "retry_in": self.circuit.time_until_retry(),
            "cooldown_s": max(0.0, self.cooldown_until - now),
            "requests_available": limits.get("requests_available"),
            "tokens_available": limits.get("tokens_available"),
            "headroom": self.limiter.headroom(),
        }

    async def get_snapshot(self) -> dict:
        return self.snapshot()

    async def describe(self) -> dict:
        """Everything the router needs to schedule this key, and nothing secret."""
        cfg = self.config
        return {
            "id": cfg.id, "provider": self.provider.name, "base_url": self.provider.base_url,
            "models": list(cfg.models), "default_model": cfg.default_model, "rpm": cfg.rpm, "tpm": cfg.tpm,
            "burst_s": cfg.burst_s, "max_concurrent_requests": self.max_concurrent, "weight": cfg.weight,
            "key": cfg.fingerprint, "operations": sorted(self.provider.operations),
            "retry": dict(cfg.retry or {}),
        }

    async def stats(self) -> dict:
        out = self.counters.to_dict()
        out.update({
            "endpoint_id": self.id, "provider": self.provider.name, "base_url": self.provider.base_url,
            "key": self.config.fingerprint, "models": list(self.config.models),
            "in_flight": self.in_flight, "max_concurrent_requests": self.max_concurrent,
            "circuit": self.circuit.metrics(), "limiter": self.limiter.snapshot(),
            "cooldown_s": max(0.0, self.cooldown_until - time.monotonic()),
            "uptime_s": time.time() - self.started_at,
        })
        out["circuit"]["state"] = self.circuit.state.value
        return out

    async def reset_stats(self) -> None:
        self.counters.reset()

    async def circuit_state(self) -> str:
        return self.circuit.state.value

    async def circuit_metrics(self) -> dict:
        m = self.circuit.metrics()
        m["state"] = self.circuit.state.value
        return m

    async def reset_circuit(self) -> None:
        self.circuit.reset()

    async def configure(self, **changes: Any) -> dict:
        """Change limits at run time (seed code sets attributes like max_concurrent_requests)."""
        if "max_concurrent_requests" in changes:
            new = int(changes.pop("max_concurrent_requests"))
            if new < 1:
                raise errors.ConfigError("max_concurrent_requests must be at least 1")
            self._slots = _resize_semaphore(self._slots, self.max_concurrent, new)
            self.max_concurrent = new
            self.config.max_concurrent_requests = new
        limit_keys = {k: changes.pop(k) for k in ("rpm", "tpm", "burst_s") if k in changes}
        if limit_keys:
            self.limiter.configure(**limit_keys)
            for k, v in limit_keys.items():
                setattr(self.config, k, v)
        circuit_keys = {k: changes.pop(k) for k in list(changes) if k in CircuitConfig.__dataclass_fields__}
        if circuit_keys:
            self.circuit.config = self.circuit.config.with_overrides(**circuit_keys)
        if "timeout_s" in changes:
            self.config.timeout_s = float(changes.pop("timeout_s"))
        if "stream_timeout_s" in changes:
            self.config.stream_timeout_s = float(changes.pop("stream_timeout_s"))
        if changes:
            raise errors.ConfigError(f"cannot change {', '.join(sorted(changes))} at run time")
        return await self.describe()

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.close()
        await self.transport.close()

    async def lane_info(self) -> LaneAddress:
        """Where a router reaches ``execute_packed`` without a Ray call (lane.py)."""
        if self._lane is None:
            self._lane = LaneServer(self.execute_packed, host=node_host())
        return await self._lane.start()

    # -- the call --------------------------------------------------------------
    async def execute(self, op: str, request: Any, request_id: str | None,
                      est_tokens: int | None = None) -> Outcome:
        """One upstream attempt.  Never raises for upstream trouble: the typed
        error comes back inside the Outcome with the state snapshot."""
        started = time.monotonic()
        gate = await self._enter(op, request, request_id, est_tokens)
        if isinstance(gate, Outcome):
            return gate
        reservation = gate
        try:
            result, headers = await self.provider.execute(op, request, request_id, self.transport)
        except asyncio.CancelledError:
            self._abandon(reservation)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed error
            err = self._on_failure(exc, reservation, started, request_id)
            return Outcome(error=err, state=self.snapshot())
        finally:
            self._leave()
        self._read_rate_headers(headers)
        self._on_success(result, request, reservation, started, request_id)
        return Outcome(value=result, state=self.snapshot())

    async def execute_packed(self, call: bytes) -> bytes:
        """``execute`` for the router: arguments and Outcome as one blob (wire.py)."""
        op, request, request_id, est_tokens = wire.unpack(call)
        outcome = await self.execute(op, request, request_id, est_tokens)
        return wire.pack_or(outcome, self._unsendable(request_id))

    async def execute_many(self, calls: list[bytes]) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Run several ``execute`` calls at once; yield ``[(index, packed Outcome)]``
        groups as they finish.  Each of ``calls`` is a packed ``execute`` argument
        tuple (wire.py).

        Why: a Ray actor call costs about a millisecond of CPU across the two
        processes, several times what the upstream request itself costs us.
        The router sends the requests it leases to this key in one event-loop
        pass as one call.  Results stream back in groups of whatever finished
        within a millisecond of each other, so a fast answer never waits
        for a slow one by more than that.
        """
        unpacked: list[tuple[str, Any, str | None, int | None]] = [wire.unpack(call) for call in calls]
        tasks = [asyncio.ensure_future(self.execute(op, request, request_id, est))
                 for op, request, request_id, est in unpacked]
        async for group in finished_groups(tasks, BATCH_REPLY_LINGER_S):
            yield [(i, wire.pack_or(self._outcome_of(tasks[i], unpacked[i][2]), self._unsendable(unpacked[i][2])))
                   for i in group]

    def _unsendable(self, request_id: str | None) -> Callable[[Exception], Outcome]:
        """The Outcome in place of one that cannot be serialized: the request was
        served, so it is not retried (that would pay the provider twice)."""
        return lambda exc: Outcome(error=errors.ProviderError(
            f"endpoint {self.id}: the answer could not be serialized: {type(exc).__name__}",
            retryable=False, provider=self.provider.name, endpoint_id=self.id, request_id=request_id),
            state=self.snapshot())

    def _outcome_of(self, task: asyncio.Task, request_id: str | None) -> Outcome:
        """A finished ``execute`` task as an Outcome; it only raises on bugs, which
        must still reach the one caller they belong to and not the whole batch."""
        exc = errors.ProviderError("the call was cancelled") if task.cancelled() else task.exception()
        if exc is None:
            return task.result()
        log.error("endpoint %s: execute failed unexpectedly: %s", self.id, errors.redact(repr(exc)))
        err = errors.ProviderError(f"unexpected {type(exc).__name__} in endpoint {self.id}: "
                                   f"{errors.redact(str(exc))}", provider=self.provider.name,
                                   endpoint_id=self.id, request_id=request_id)
        return Outcome(error=err, state=self.snapshot())

    async def stream(self, op: str, request: Any, request_id: str | None,
                     est_tokens: int | None = None) -> AsyncIterator[Any]:
        """Yield StreamChunks, then one final Outcome (error or None) with the state."""
        started = time.monotonic()
        gate = await self._enter(op, request, request_id, est_tokens)
        if isinstance(gate, Outcome):
            yield gate
            return
        reservation = gate
        pieces: list[str] = []
        final: StreamChunk | None = None
        settled = False  # circuit/limiter told the outcome exactly once, whatever happens
        finished = False
        try:
            async for chunk in self.provider.stream(op, request, request_id, self.transport,
                                                    on_headers=self._read_rate_headers):
                chunk.request_id = request_id
                chunk.endpoint_id = self.id
                if chunk.text:
                    pieces.append(chunk.text)
                if chunk.done:
                    final = chunk
                    self._complete_stream_usage(chunk, request, "".join(pieces))
                yield chunk
            finished = True
        except Exception as exc:  # noqa: BLE001
            settled = True
            err = self._on_failure(exc, reservation, started, request_id)
            self._leave()
            yield Outcome(error=err, state=self.snapshot())
            return
        finally:
            if not settled and not finished:
                # cancelled or closed early by the consumer: release the probe and the slot
                settled = True
                self._abandon(reservation)
                self._leave()
        if settled:
            return
        self._leave()
        if final is None:
            err = self._on_failure(errors.ProviderError(
                "stream ended without a final chunk", provider=self.provider.name),
                reservation, started, request_id)
            yield Outcome(error=err, state=self.snapshot())
            return
        result = ChatResponse(text="".join(pieces), model=final.model or getattr(request, "model", ""),
                              usage=final.usage or Usage(), finish_reason=final.finish_reason)
        self._on_success(result, request, reservation, started, request_id, fill=False)
        yield Outcome(state=self.snapshot())

    # -- admission -------------------------------------------------------------
    async def _enter(self, op: str, request: Any, request_id: str | None, est_tokens: int | None):
        """Circuit, limiter and slot, in that order; an Outcome means 'refused'."""
        if not self.circuit.allow_request():
            return Outcome(error=errors.CircuitOpenError(
                f"endpoint {self.id} is open after repeated failures; retry in "
                f"{self.circuit.time_until_retry():.1f}s", provider=self.provider.name,
                endpoint_id=self.id, request_id=request_id, retry_after=self.circuit.time_until_retry()),
                state=self.snapshot())
        if est_tokens is None:
            est_tokens = self.provider.estimate_tokens(op, request) if self.config.tpm else 0
        deadline = time.monotonic() + max(1.0, self.config.timeout_s)
        reservation = None
        try:
            while True:
                reservation = self.limiter.try_acquire(est_tokens)
                if reservation is not None:
                    break
                wait = self.limiter.time_until_available(est_tokens)
                if time.monotonic() + wait > deadline:
                    self.circuit.cancel_probe()
                    return Outcome(error=errors.RateLimitError(
                        f"endpoint {self.id} has no rate-limit capacity for {wait:.1f}s",
                        provider=self.provider.name, endpoint_id=self.id, request_id=request_id,
                        retry_after=wait), state=self.snapshot())
                await asyncio.sleep(max(wait, 0.001))
            # several routers may share this key: the semaphore is the cluster-wide bound
            self.in_flight += 1
            try:
                await self._slots.acquire()
            except BaseException:
                self.in_flight -= 1
                raise
        except BaseException:  # cancelled while waiting: nothing was sent
            self.circuit.cancel_probe()
            if reservation is not None:
                self.limiter.cancel(reservation)
            raise
        return reservation

    def _leave(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    def _abandon(self, reservation: Any) -> None:
        """The caller went away mid-request: keep the estimate, release the probe."""
        self.circuit.cancel_probe()

    # -- outcomes --------------------------------------------------------------
    def _read_rate_headers(self, headers: Any) -> None:
        if not headers:
            return
        try:
            info = self.provider.rate_limit_headers(headers)
        except Exception:  # noqa: BLE001 - a malformed header must not fail a good answer
            info = None
        if info is not None:
            self.limiter.update_from_headers(info)

    def _complete_stream_usage(self, chunk: StreamChunk, request: Any, text: str) -> None:
        """Streams without a usage report still get counted: estimate it."""
        if chunk.usage is None or not (chunk.usage.prompt_tokens or chunk.usage.completion_tokens):
            prompt = self.provider.estimate_tokens("chat", request) - (
                getattr(request, "max_tokens", None) or tokens.DEFAULT_COMPLETION_ESTIMATE)
            chunk.usage = Usage(prompt_tokens=max(0, prompt),
                                completion_tokens=tokens.count_tokens(text, getattr(request, "model", None)),
                                details={"estimated": True})
        model = chunk.model or getattr(request, "model", "")
        chunk.cost_usd = pricing.cost_usd(model, chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                                          provider=self.provider.name, overrides=self.config.prices)

    def _on_success(self, result: Any, request: Any, reservation: Any, started: float,
                    request_id: str | None, fill: bool = True) -> None:
        latency = time.monotonic() - started
        prompt_tokens, completion_tokens = self.provider.usage_of(result)
        model = getattr(result, "model", None) or getattr(request, "model", None) or ""
        cost = None
        if prompt_tokens or completion_tokens:
            cost = pricing.cost_usd(model, prompt_tokens, completion_tokens,
                                    provider=self.provider.name, overrides=self.config.prices)
            self.limiter.reconcile(reservation, prompt_tokens + completion_tokens)
        if fill and isinstance(result, (ChatResponse, EmbeddingResponse, OperationResponse)):
            result.request_id = request_id
            result.endpoint_id = self.id
            result.provider = self.provider.name
            result.latency_s = latency
            result.cost_usd = cost
        self.circuit.record_success()
        self.counters.record_success(latency, prompt_tokens, completion_tokens, cost)
        if self._metrics:
            self._metrics.success(latency, prompt_tokens, completion_tokens)

    def _on_failure(self, exc: BaseException, reservation: Any, started: float,
                    request_id: str | None) -> errors.GatewayError:
        latency = time.monotonic() - started
        if isinstance(exc, errors.GatewayError):
            err = exc
        else:
            err = errors.ProviderError(f"unexpected {type(exc).__name__}: {exc}")
        err.with_context(provider=self.provider.name, endpoint_id=self.id, request_id=request_id)
        if isinstance(err, (errors.AuthenticationError, errors.PermissionDeniedError)) or (
                isinstance(err, errors.RateLimitError) and not err.retryable):
            # the key itself is bad (or out of quota): stop using it until a probe says otherwise
            self.circuit.force_open(f"{type(err).__name__} from upstream")
        elif isinstance(err, errors.RateLimitError):
            cooldown = err.retry_after if err.retry_after is not None else DEFAULT_RATE_LIMIT_COOLDOWN_S
            self.cooldown_until = max(self.cooldown_until, time.monotonic() + cooldown)
            self.limiter.block_for(cooldown)
            self.circuit.cancel_probe()
        elif err.retryable:
            self.circuit.record_failure()
        else:
            # the upstream answered sensibly; the request was at fault
            self.circuit.record_success()
        if isinstance(err, (errors.InvalidRequestError, errors.AuthenticationError,
                            errors.PermissionDeniedError)):
            self.limiter.reconcile(reservation, 0)
        self.counters.record_failure(type(err).__name__, err.status, latency, str(err))
        if self._metrics:
            self._metrics.failure(latency, err.status)
        return err

    def _on_transition(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        log.info("endpoint %s circuit %s -> %s (%s)", self.id, old.value, new.value, errors.redact(reason))
        if getattr(self, "_metrics", None):
            self._metrics.circuit(new.value)


def _resize_semaphore(sem: asyncio.Semaphore, old: int, new: int) -> asyncio.Semaphore:
    """Grow or shrink a semaphore in place, keeping the permits already taken."""
    if new > old:
        for _ in range(new - old):
            sem.release()
    else:
        # shrinking: take the surplus permits in the background as they free up
        async def take(n: int) -> None:
            for _ in range(n):
                await sem.acquire()
        asyncio.get_event_loop().create_task(take(old - new))
    return sem
