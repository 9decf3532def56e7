"""Shared pytest fixtures.  Each area of the project owns one clearly marked section."""
from __future__ import annotations

# --- fakes fixtures ---
# Wire-faithful fake provider servers (ipfs_accelerate_py.testing.fakes), each in its own
# subprocess, started at most once per session (lazily, on first use) and stopped at the end.
#
#   fake_openai / fake_groq / fake_claude   function-scoped: the session's fake after a reset
#                                           (fresh stats, buckets and faults, start-up controls,
#                                           any non-empty key accepted); use these in tests
#   fake_*_session                          the same handles without the reset, for fixtures of
#                                           wider scope (e.g. a session Ray cluster's endpoints)
#   fake_api_key                            a key no other test uses (distinct stats fingerprint)
#
# Handles: .base_url (SDK convention), .root_url, .controls(**patch), .stats(), .key_stats(key),
# .reset(**patch), .stop().  See ipfs_accelerate_py/testing/fakes/runner.py.
import uuid
from collections.abc import Iterator

import pytest

from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake


def _session_fake(protocol: str) -> Iterator[FakeHandle]:
    handle = start_fake(protocol)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def fake_openai_session() -> Iterator[FakeHandle]:
    yield from _session_fake("openai")


@pytest.fixture(scope="session")
def fake_groq_session() -> Iterator[FakeHandle]:
    yield from _session_fake("groq")


@pytest.fixture(scope="session")
def fake_claude_session() -> Iterator[FakeHandle]:
    yield from _session_fake("claude")


@pytest.fixture
def fake_openai(fake_openai_session: FakeHandle) -> FakeHandle:
    fake_openai_session.reset(valid_keys=[])
    return fake_openai_session


@pytest.fixture
def fake_groq(fake_groq_session: FakeHandle) -> FakeHandle:
    fake_groq_session.reset(valid_keys=[])
    return fake_groq_session


@pytest.fixture
def fake_claude(fake_claude_session: FakeHandle) -> FakeHandle:
    fake_claude_session.reset(valid_keys=[])
    return fake_claude_session


@pytest.fixture
def fake_api_key() -> str:
    return f"sk-test-{uuid.uuid4().hex}"
# --- end fakes fixtures ---


# --- ray fixtures ---
from ray_fixtures import (make_gateway, ray_session, serve_apps, start_shared_cluster,  # noqa: E402,F401
                          stop_shared_cluster)


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, the controller starts the one Ray cluster every worker attaches to."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        start_shared_cluster()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        stop_shared_cluster()
