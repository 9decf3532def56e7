"""Endpoint selection strategies (core/selection.py)."""
from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.core.selection import (STRATEGY_NAMES, EndpointView, LeastLoaded, MostHeadroom,
                                               RoundRobin, Strategy, Weighted, make_strategy)

ALL = (RoundRobin, LeastLoaded, Weighted, MostHeadroom)


def views(*ids: str, **fields: object) -> list[EndpointView]:
    return [EndpointView(id=i, max_concurrent=10, **fields) for i in ids]  # type: ignore[arg-type]


def pick_ids(strategy: Strategy, candidates: list[EndpointView], times: int) -> list[str]:
    picks = []
    for _ in range(times):
        choice = strategy.select(candidates)
        assert choice is not None
        picks.append(choice.id)
    return picks


# ---------------------------------------------------------------------------
# Common rules
# ---------------------------------------------------------------------------

def test_endpoint_view_defaults() -> None:
    view = EndpointView("k1")
    fields = (view.in_flight, view.max_concurrent, view.weight, view.headroom, view.usable)
    assert fields == (0, 1, 1.0, 1.0, True)
    assert view.has_room and view.load == 0.0


@pytest.mark.parametrize("cls", ALL)
def test_nothing_usable_means_none(cls: type[Strategy]) -> None:
    strategy = cls()
    assert strategy.select([]) is None
    assert strategy.select([EndpointView("a", usable=False), EndpointView("b", in_flight=1),
                            EndpointView("c", max_concurrent=0)]) is None


@pytest.mark.parametrize("cls", ALL)
def test_skips_unusable_and_full_endpoints(cls: type[Strategy]) -> None:
    strategy = cls()
    candidates = [EndpointView("a", usable=False), EndpointView("b", in_flight=2, max_concurrent=2),
                  EndpointView("c", in_flight=1, max_concurrent=3)]
    assert pick_ids(strategy, candidates, 5) == ["c"] * 5


endpoint_views = st.builds(
    EndpointView,
    id=st.sampled_from("abcdefgh"),
    in_flight=st.integers(0, 4),
    max_concurrent=st.integers(0, 4),
    weight=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 10),
    headroom=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1),
    usable=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(STRATEGY_NAMES),
       rounds=st.lists(st.lists(endpoint_views, max_size=8), max_size=20))
def test_never_picks_an_unusable_or_full_endpoint(name: str, rounds: list[list[EndpointView]]) -> None:
    strategy = make_strategy(name)
    for candidates in rounds:
        choice = strategy.select(candidates)
        eligible = [view for view in candidates if view.usable and view.in_flight < view.max_concurrent]
        if eligible:
            assert choice is not None and any(choice is view for view in eligible)
        else:
            assert choice is None


# ---------------------------------------------------------------------------
# Round robin
# ---------------------------------------------------------------------------

def test_round_robin_follows_sorted_ids_whatever_the_list_order() -> None:
    assert pick_ids(RoundRobin(), views("c", "a", "b"), 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_continues_after_the_last_id_when_the_set_changes() -> None:
    strategy = RoundRobin()
    assert pick_ids(strategy, views("a", "b", "c", "d"), 2) == ["a", "b"]
    assert pick_ids(strategy, views("a", "c", "d"), 1) == ["c"]         # b removed: no restart
    assert pick_ids(strategy, views("a", "bb", "c", "d"), 2) == ["d", "a"]
    assert pick_ids(strategy, views("a", "bb", "c", "d"), 1) == ["bb"]  # added key joins in order
    candidates = views("a", "c", "d")
    candidates[1].usable = False
    assert pick_ids(strategy, candidates, 2) == ["d", "a"]              # c skipped, not repeated


@settings(max_examples=200, deadline=None)
@given(history=st.lists(st.lists(st.sampled_from("abcdefgh"), unique=True), max_size=10),
       fixed=st.lists(st.sampled_from("abcdefgh"), unique=True, min_size=1))
def test_round_robin_picks_each_endpoint_exactly_once_per_cycle(history: list[list[str]],
                                                                 fixed: list[str]) -> None:
    strategy = RoundRobin()
    for ids in history:  # any earlier traffic over any sets
        strategy.select(views(*ids))
    picks = pick_ids(strategy, views(*fixed), 3 * len(fixed))
    for cycle in range(3):
        assert sorted(picks[cycle * len(fixed):(cycle + 1) * len(fixed)]) == sorted(fixed)


# ---------------------------------------------------------------------------
# Least loaded
# ---------------------------------------------------------------------------

def test_least_loaded_compares_fractions_of_the_limit() -> None:
    candidates = [EndpointView("a", in_flight=2, max_concurrent=10),   # 20 %
                  EndpointView("b", in_flight=1, max_concurrent=2),    # 50 %
                  EndpointView("c", in_flight=0, max_concurrent=1)]    # 0 %
    assert LeastLoaded().select(candidates).id == "c"  # type: ignore[union-attr]
    candidates[2].in_flight = 1  # c is full now
    assert LeastLoaded().select(candidates).id == "a"  # type: ignore[union-attr]


def test_least_loaded_follows_load_as_it_changes() -> None:
    strategy = LeastLoaded()
    candidates = views("a", "b", "c")
    for _ in range(9):
        choice = strategy.select(candidates)
        assert choice is not None
        choice.in_flight += 1
    assert [view.in_flight for view in candidates] == [3, 3, 3]


def test_least_loaded_never_always_the_first() -> None:
    strategy = LeastLoaded()
    assert pick_ids(strategy, views("a", "b", "c"), 6) == ["a", "b", "c", "a", "b", "c"]


@settings(max_examples=200, deadline=None)
@given(tied=st.lists(st.sampled_from("abcdefgh"), unique=True, min_size=1, max_size=6),
       busier=st.integers(1, 3), rounds=st.integers(1, 5), warmup=st.integers(0, 7))
def test_least_loaded_spreads_ties_evenly(tied: list[str], busier: int, rounds: int, warmup: int) -> None:
    others = [EndpointView(f"z{i}", in_flight=busier, max_concurrent=4) for i in range(2)]
    candidates = [EndpointView(i, in_flight=0, max_concurrent=4) for i in tied] + others
    strategy = LeastLoaded()
    pick_ids(strategy, candidates, warmup)
    counts = Counter(pick_ids(strategy, candidates, rounds * len(tied)))
    assert counts == {i: rounds for i in tied}


# ---------------------------------------------------------------------------
# Weighted
# ---------------------------------------------------------------------------

def test_weighted_is_smooth_and_proportional() -> None:
    candidates = [EndpointView(i, weight=w, max_concurrent=10) for i, w in (("a", 5), ("b", 1), ("c", 1))]
    assert pick_ids(Weighted(), candidates, 7) == ["a", "a", "b", "a", "c", "a", "a"]


def test_weighted_is_deterministic() -> None:
    weights = (0.3, 2.5, 1.0, 0.7)
    candidates = [EndpointView(i, weight=w, max_concurrent=10) for i, w in zip("abcd", weights, strict=True)]
    assert pick_ids(Weighted(), candidates, 50) == pick_ids(Weighted(), list(reversed(candidates)), 50)


def test_weighted_ignores_bad_weights_and_shares_equally_when_all_are_zero() -> None:
    bad = [EndpointView(i, weight=w, max_concurrent=10)
           for i, w in zip("abcd", (math.nan, -3.0, math.inf, 2.0), strict=True)]
    assert set(pick_ids(Weighted(), bad, 8)) == {"d"}
    zero = [EndpointView(i, weight=0.0, max_concurrent=10) for i in "abc"]
    assert Counter(pick_ids(Weighted(), zero, 9)) == {"a": 3, "b": 3, "c": 3}


def test_weighted_skips_a_full_endpoint_and_takes_it_back() -> None:
    strategy = Weighted()
    a, b = EndpointView("a", weight=1, max_concurrent=10), EndpointView("b", weight=1, max_concurrent=10)
    b.in_flight = 10
    assert pick_ids(strategy, [a, b], 3) == ["a", "a", "a"]
    b.in_flight = 0
    assert Counter(pick_ids(strategy, [a, b], 20)) == {"a": 10, "b": 10}


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6), cycles=st.integers(1, 4))
def test_weighted_integer_weights_are_exact_per_cycle(weights: list[int], cycles: int) -> None:
    candidates = [EndpointView(f"e{i}", weight=w, max_concurrent=10) for i, w in enumerate(weights)]
    counts = Counter(pick_ids(Weighted(), candidates, cycles * sum(weights)))
    assert counts == {f"e{i}": cycles * w for i, w in enumerate(weights)}


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(0.01, 100), min_size=1, max_size=6), picks=st.integers(50, 400))
def test_weighted_proportions_converge(weights: list[float], picks: int) -> None:
    candidates = [EndpointView(f"e{i}", weight=w, max_concurrent=10) for i, w in enumerate(weights)]
    counts = Counter(pick_ids(Weighted(), candidates, picks))
    total = sum(weights)
    for i, weight in enumerate(weights):
        assert abs(counts[f"e{i}"] - picks * weight / total) <= len(weights)


# ---------------------------------------------------------------------------
# Most headroom
# ---------------------------------------------------------------------------

def test_most_headroom_prefers_rate_limit_capacity() -> None:
    candidates = [EndpointView("a", headroom=0.2, max_concurrent=10),
                  EndpointView("b", headroom=0.9, in_flight=8, max_concurrent=10),
                  EndpointView("c", headroom=0.5, max_concurrent=10)]
    assert pick_ids(MostHeadroom(), candidates, 3) == ["b", "b", "b"]


def test_most_headroom_near_ties_go_to_the_least_loaded_then_rotate() -> None:
    candidates = [EndpointView("a", headroom=0.81, in_flight=3, max_concurrent=10),
                  EndpointView("b", headroom=0.80, in_flight=1, max_concurrent=10),
                  EndpointView("c", headroom=0.79, in_flight=1, max_concurrent=10),
                  EndpointView("d", headroom=0.30, in_flight=0, max_concurrent=10)]
    assert pick_ids(MostHeadroom(), candidates, 4) == ["b", "c", "b", "c"]
    assert pick_ids(MostHeadroom(resolution=0), candidates, 2) == ["a", "a"]


def test_most_headroom_treats_nan_as_none_left() -> None:
    candidates = [EndpointView("a", headroom=math.nan), EndpointView("b", headroom=0.1)]
    assert MostHeadroom().select(candidates).id == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize("resolution", [-0.1, 1.5, math.nan, "0.1"])
def test_most_headroom_rejects_bad_resolution(resolution: object) -> None:
    with pytest.raises(errors.ConfigError):
        MostHeadroom(resolution=resolution)  # type: ignore[arg-type]


def test_most_headroom_all_equal_rotates() -> None:
    assert pick_ids(MostHeadroom(), views("b", "a", "c"), 4) == ["a", "b", "c", "a"]


# ---------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [
    ("round-robin", RoundRobin), ("round_robin", RoundRobin), ("least-loaded", LeastLoaded),
    ("least_loaded", LeastLoaded), ("weighted", Weighted), ("most-headroom", MostHeadroom),
    ("most_headroom", MostHeadroom), (" Least-Loaded ", LeastLoaded),
])
def test_make_strategy_accepts_both_spellings(name: str, cls: type[Strategy]) -> None:
    strategy = make_strategy(name)
    assert type(strategy) is cls and strategy.name in STRATEGY_NAMES


def test_make_strategy_returns_fresh_instances() -> None:
    assert make_strategy("round-robin") is not make_strategy("round-robin")


@pytest.mark.parametrize("name", ["random", "", "roundrobin", None, 3])
def test_make_strategy_rejects_unknown_names_listing_the_valid_ones(name: object) -> None:
    with pytest.raises(errors.ConfigError) as info:
        make_strategy(name)  # type: ignore[arg-type]
    assert all(valid in str(info.value) for valid in STRATEGY_NAMES)


def test_strategy_names() -> None:
    assert STRATEGY_NAMES == ("round-robin", "least-loaded", "weighted", "most-headroom")
