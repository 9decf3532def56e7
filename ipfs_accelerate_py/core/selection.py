"""Which endpoint (API key) gets the next request.

The router hands a strategy a view of every endpoint that serves the model:
how busy it is, how much rate-limit capacity it has left, and whether it may
be used at all (circuit closed or probing, not cooling down after a 429).
Every strategy skips unusable and full endpoints and returns None when none
is left, which tells the router to keep the request queued.

Ties are always broken by rotation (continue after the endpoint picked last,
in sorted id order), never by list position: "always the first" would put the
whole load on one key until it fails.  Rotating over ids rather than list
indices keeps the order stable when endpoints are added, removed or skipped.

Strategies hold a little state (the rotation cursor, weighted-round-robin
credit), are deterministic, and are not thread-safe: the router's event loop
serialises every call.  One instance may serve several routing groups.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

from ..errors import ConfigError

__all__ = ["EndpointView", "Strategy", "RoundRobin", "LeastLoaded", "Weighted", "MostHeadroom",
           "make_strategy", "STRATEGY_NAMES"]


@dataclass
class EndpointView:
    """What selection needs to know about one endpoint, as the router last saw it.

    ``headroom`` is the limiter's remaining rate-limit capacity in 0..1;
    ``usable`` is False while the circuit is open or the endpoint cools down.
    """

    id: str
    in_flight: int = 0
    max_concurrent: int = 1
    weight: float = 1.0
    headroom: float = 1.0
    usable: bool = True

    @property
    def has_room(self) -> bool:
        """Usable and below its concurrency limit."""
        return self.usable and self.in_flight < self.max_concurrent

    @property
    def load(self) -> float:
        """Fraction of the concurrency limit in use (only meaningful when ``has_room``)."""
        return self.in_flight / self.max_concurrent if self.max_concurrent > 0 else math.inf


def _clamped(value: float, low: float, high: float) -> float:
    """``value`` limited to [low, high]; NaN counts as ``low`` (assume the worst)."""
    return low if math.isnan(value) else min(high, max(low, value))


class Strategy(abc.ABC):
    """Base class: filtering, the rotation cursor and the None-when-nothing-fits rule."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._last_id: str | None = None

    def select(self, candidates: Sequence[EndpointView]) -> EndpointView | None:
        """The endpoint for the next request, or None if every candidate is unusable or full."""
        eligible = [view for view in candidates if view.has_room]
        if not eligible:
            return None
        choice = self._choose(eligible)
        self._last_id = choice.id
        return choice

    @abc.abstractmethod
    def _choose(self, eligible: list[EndpointView]) -> EndpointView:
        """Pick one of the endpoints that have room (each strategy's own rule)."""

    def _rotate(self, views: list[EndpointView]) -> EndpointView:
        """The first view after the last pick in sorted id order, wrapping around."""
        last = self._last_id
        after = [view for view in views if last is None or view.id > last]
        return min(after or views, key=lambda view: view.id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RoundRobin(Strategy):
    """Each usable endpoint in turn."""

    name = "round-robin"

    def _choose(self, eligible: list[EndpointView]) -> EndpointView:
        return self._rotate(eligible)


class LeastLoaded(Strategy):
    """The endpoint using the smallest fraction of its concurrency limit.

    A fraction rather than a count so that a key allowed 50 concurrent
    requests is not treated like one allowed 2.
    """

    name = "least-loaded"

    def _choose(self, eligible: list[EndpointView]) -> EndpointView:
        lowest = min(view.load for view in eligible)
        return self._rotate([view for view in eligible if view.load == lowest])


class Weighted(Strategy):
    """Smooth weighted round robin: shares proportional to weight, interleaved.

    Every pick credits each eligible endpoint its weight and charges the
    chosen one the total, so over ``sum(weights)`` picks each endpoint is
    chosen ``weight`` times (for integer weights) and never in long runs.
    Non-finite or negative weights count as 0; if every eligible weight is 0
    they share equally rather than starve the group.
    """

    name = "weighted"

    def __init__(self) -> None:
        super().__init__()
        self._credit: dict[str, float] = {}

    @staticmethod
    def _weight(view: EndpointView) -> float:
        weight = view.weight
        return float(weight) if math.isfinite(weight) and weight > 0 else 0.0

    def _choose(self, eligible: list[EndpointView]) -> EndpointView:
        weights = [self._weight(view) for view in eligible]
        if sum(weights) <= 0:
            weights = [1.0] * len(eligible)
        for view, weight in zip(eligible, weights, strict=True):
            self._credit[view.id] = self._credit.get(view.id, 0.0) + weight
        choice = min(eligible, key=lambda view: (-self._credit[view.id], view.id))
        self._credit[choice.id] -= sum(weights)
        return choice


class MostHeadroom(Strategy):
    """The endpoint with the most rate-limit capacity left, then the least loaded.

    Headroom is a slightly stale estimate that changes continuously, so values
    within ``resolution`` of each other count as equal; otherwise a burst of
    requests would all go to whichever key happened to report 0.001 more.
    ``resolution=0`` compares exactly.
    """

    name = "most-headroom"

    def __init__(self, resolution: float = 0.05) -> None:
        super().__init__()
        if not isinstance(resolution, (int, float)) or not 0 <= resolution <= 1:
            raise ConfigError(f"MostHeadroom resolution must be in [0, 1] (got {resolution!r})")
        self.resolution = float(resolution)

    def _level(self, view: EndpointView) -> float:
        headroom = _clamped(view.headroom, 0.0, 1.0)
        return round(headroom / self.resolution) if self.resolution else headroom

    def _choose(self, eligible: list[EndpointView]) -> EndpointView:
        best = max(self._level(view) for view in eligible)
        roomiest = [view for view in eligible if self._level(view) == best]
        lowest = min(view.load for view in roomiest)
        return self._rotate([view for view in roomiest if view.load == lowest])

    def __repr__(self) -> str:
        return f"MostHeadroom(resolution={self.resolution})"


_STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RoundRobin, LeastLoaded, Weighted, MostHeadroom)}
#: canonical names; "round_robin" style spellings are accepted too
STRATEGY_NAMES: tuple[str, ...] = tuple(_STRATEGIES)


def make_strategy(name: str) -> Strategy:
    """A fresh strategy by configuration name ("least-loaded", "least_loaded", ...)."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key not in _STRATEGIES:
        raise ConfigError(f"unknown selection strategy {name!r}; valid names are "
                          f"{', '.join(STRATEGY_NAMES)} (or with underscores)",
                          details={"field": "strategy", "valid": list(STRATEGY_NAMES)})
    return _STRATEGIES[key]()
