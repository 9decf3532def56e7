"""EmbeddingBatcher: coalesces concurrent single-text embedding calls.

Callers anywhere in the cluster send one text at a time; the batcher holds
them per (model, parameters) for at most ``batch_timeout`` seconds or until
``max_batch_size`` texts (capped by the provider's own per-request limit)
have gathered, sends one upstream request through the router, and splits the
vectors back in order.  A failed batch fails every member with the same typed
error: nothing is dropped, nothing is handed to the wrong caller.

Why an actor of its own: the texts to coalesce come from many callers and
drivers; only a single owner sees them all.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..core.priority import parse_priority
from ..types import EmbeddingRequest, EmbeddingResponse, Usage
from ray.exceptions import RayTaskError

from ._errors import unwrap


@dataclass(eq=False)
class _Pending:
    text: str
    future: asyncio.Future
    priority: int
    request_id: str | None


@dataclass
class _Group:
    model: str
    params: dict
    limit: int
    items: list[_Pending] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class EmbeddingBatcher:
    def __init__(self, router: Any, *, max_batch_size: int = 20, batch_timeout: float = 0.1,
                 auto_batching: bool = True) -> None:
        self.router = router
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self.auto_batching = auto_batching
        self._groups: dict[str, _Group] = {}
        self._limits: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self.counters = {"batches": 0, "batched_requests": 0, "failed_batches": 0, "direct_requests": 0,
                         "largest_batch": 0}

    def __repr__(self) -> str:
        return f"EmbeddingBatcher(max_batch_size={self.max_batch_size}, batch_timeout={self.batch_timeout})"

    async def ready(self) -> bool:
        return True

    async def configure(self, max_batch_size: int | None = None, batch_timeout: float | None = None,
                        auto_batching: bool | None = None) -> dict:
        if max_batch_size is not None:
            if not isinstance(max_batch_size, int) or max_batch_size < 1:
                raise errors.ConfigError("max_batch_size must be a whole number >= 1")
            self.max_batch_size = max_batch_size
            self._limits.clear()
        if batch_timeout is not None:
            if batch_timeout < 0:
                raise errors.ConfigError("batch_timeout must be >= 0")
            self.batch_timeout = float(batch_timeout)
        if auto_batching is not None:
            self.auto_batching = bool(auto_batching)
        return self.settings()

    def settings(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "batch_timeout": self.batch_timeout,
                "auto_batching": self.auto_batching}

    async def embed(self, model: str, input: Any, *, priority: Any = None, request_id: str | None = None,
                    **params: Any) -> EmbeddingResponse:
        texts = EmbeddingRequest.coerce_input(input)
        prio = int(parse_priority(priority))
        try:
            limit = await self._limit_for(model)  # also rejects unknown models before any waiting
        except RayTaskError as exc:
            raise unwrap(exc) from None
        if len(texts) >= limit or not self.auto_batching:
            # already a full batch: nothing to wait for
            self.counters["direct_requests"] += 1
            return await self.router.embed.remote(model, texts, priority=priority, request_id=request_id,
                                                  batching=False, **params)
        loop = asyncio.get_running_loop()
        key = model + "\x00" + json.dumps(params, sort_keys=True, default=str)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(model=model, params=params, limit=limit)
        group.limit = limit  # the size may have been reconfigured since the group was made
        pending = [_Pending(t, loop.create_future(), prio, request_id) for t in texts]
        group.items.extend(pending)
        if len(group.items) >= group.limit:
            self._flush(key)
        elif group.timer is None:
            group.timer = loop.call_later(self.batch_timeout, self._flush, key)
        parts = await asyncio.gather(*(p.future for p in pending))
        return _join(model, parts, request_id)

    async def _limit_for(self, model: str) -> int:
        """The batch size: ours, capped by the provider's per-request input limit."""
        if model not in self._limits:
            provider_limit = await self.router.embed_batch_limit.remote(model)
            self._limits[model] = max(1, min(self.max_batch_size, provider_limit or self.max_batch_size))
        return self._limits[model]

    def _flush(self, key: str) -> None:
        group = self._groups.get(key)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        while group.items:
            batch, group.items = group.items[:group.limit], group.items[group.limit:]
            task = asyncio.ensure_future(self._send(group, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if len(group.items) < group.limit:
                break
        if group.items and group.timer is None:
            group.timer = asyncio.get_running_loop().call_later(self.batch_timeout, self._flush, key)

    async def _send(self, group: _Group, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        priority = min(p.priority for p in batch)
        self.counters["batches"] += 1
        self.counters["batched_requests"] += len(batch)
        self.counters["largest_batch"] = max(self.counters["largest_batch"], len(batch))
        try:
            result: EmbeddingResponse = await self.router.embed.remote(
                group.model, [p.text for p in batch], priority=priority, batching=False, **group.params)
            if len(result.embeddings) != len(batch):
                raise errors.ProviderError(
                    f"the provider returned {len(result.embeddings)} vectors for {len(batch)} inputs")
        except BaseException as exc:  # noqa: BLE001 - every member learns the batch's fate
            self.counters["failed_batches"] += 1
            err = unwrap(exc)
            if not isinstance(err, errors.GatewayError):
                err = errors.ProviderError(f"embedding batch failed: {type(exc).__name__}: {exc}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(_copy_error(err, p.request_id))
            return
        share = 1.0 / len(batch)
        for i, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result((result.embeddings[i], result, share))

    async def stats(self) -> dict:
        c = self.counters
        batches = c["batches"]
        return {
            **c,
            "avg_batch_size": (c["batched_requests"] / batches) if batches else 0.0,
            "upstream_calls_saved": max(0, c["batched_requests"] - batches),
            # tokens cost the same batched or not; what batching saves is requests
            # against the key's RPM budget and per-request latency
            "estimated_savings": {"upstream_requests": max(0, c["batched_requests"] - batches),
                                  "cost_usd": 0.0},
            "pending": sum(len(g.items) for g in self._groups.values()),
            **self.settings(),
        }


def _copy_error(err: errors.GatewayError, request_id: str | None) -> errors.GatewayError:
    data = err.to_dict()
    if request_id:
        data["request_id"] = request_id
    return errors.error_from_dict(data)


def _join(model: str, parts: list[tuple[list[float], EmbeddingResponse, float]],
          request_id: str | None) -> EmbeddingResponse:
    """One caller's response from its members' shares of one or more batches."""
    vectors = [vec for vec, _, _ in parts]
    prompt = 0.0
    cost: float | None = 0.0
    endpoint_ids = []
    latency = 0.0
    for _, batch, share in parts:
        prompt += (batch.usage.prompt_tokens or 0) * share
        cost = None if cost is None or batch.cost_usd is None else cost + batch.cost_usd * share
        endpoint_ids.append(batch.endpoint_id)
        latency = max(latency, batch.latency_s or 0.0)
    first = parts[0][1]
    return EmbeddingResponse(
        embeddings=vectors, model=first.model or model,
        usage=Usage(prompt_tokens=round(prompt), details={"batched": True}),
        cost_usd=cost, request_id=request_id or first.request_id, endpoint_id=endpoint_ids[0],
        provider=first.provider, latency_s=latency)

