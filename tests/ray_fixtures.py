"""One Ray instance for the whole test session, and per-test gateways.

Ray 2.60's pytest fixtures are not in the wheel, so we keep our own.  Each
test gets its own namespace, so tests never see each other's actors.

With pytest-xdist (``make test`` runs ``-n 2``) the session is still one Ray
instance: the controller process starts a head node before the workers
start (``start_shared_cluster``) and every worker attaches to it through
RAY_ADDRESS.  Most of a Ray test's time is spent waiting (actor processes
booting, fake latency, backoff), so two workers overlap those waits on the
same two cores.  Tests that use Ray Serve, a per-cluster singleton, are
marked ``serial``; ``make test`` runs them in a second, plain pytest run, on
a cluster of their own: mixed into the parallel run, Serve's controller did
not survive the load.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

_SHARED_ENV = "IPFS_ACCELERATE_TEST_RAY_ADDRESS"


def _ray_cli() -> list[str]:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "ray.scripts.scripts"]


def start_shared_cluster() -> str:
    """Start the session's head node (2 CPUs, no dashboard) and return its address."""
    temp_dir = tempfile.mkdtemp(prefix="ia-test-ray-")
    # a private, short-lived cluster on localhost: no token (ray start would put one where
    # the workers' ray.init(address=...) does not look)
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_AUTH_MODE": "disabled",
           # two workers start gateways at once: boot 4 actor processes at a time, not 2
           "RAY_worker_maximum_startup_concurrency": "4"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    # --block keeps `ray start` in the foreground: stopping it stops exactly this cluster,
    # never another Ray the developer runs on the same machine (which `ray stop` would)
    proc = subprocess.Popen(
        [*_ray_cli(), "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--port={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    address = None
    for line in proc.stdout:  # the address is printed before it starts blocking
        seen.append(line)
        found = re.search(r"--address='([^']+)'", line)
        if found:
            address = found.group(1)
            break
    if address is None:
        proc.kill()
        raise RuntimeError("could not start the test Ray cluster:\n" + "".join(seen[-50:]))
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    _HEAD.append((proc, temp_dir))
    os.environ[_SHARED_ENV] = address
    return address


#: the running head: its foreground `ray start` process and its temp dir
_HEAD: list[tuple[subprocess.Popen, str]] = []


def stop_shared_cluster() -> None:
    os.environ.pop(_SHARED_ENV, None)
    while _HEAD:
        proc, temp_dir = _HEAD.pop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)  # session logs: gigabytes over many runs


@pytest.fixture(scope="session")
def ray_session():
    import ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        shared = os.environ.get(_SHARED_ENV)
        if shared:
            ray.init(address=shared, log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def make_gateway(ray_session):
    """Start gateways in a fresh namespace; every one is shut down after the test."""
    from ipfs_accelerate_py import Gateway
    started = []

    def start(config: dict, **kw):
        cfg = {"namespace": f"test-{uuid.uuid4().hex[:10]}", **config}
        gw = Gateway.start(cfg, enable_metrics=kw.pop("enable_metrics", False), **kw)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedApps:
    """The session's one Ray Serve instance (HTTP on a free local port).

    Serve is a per-cluster singleton, and starting it costs seconds: it
    starts once, and each test deploys its app at ``/`` and deletes it
    afterwards (``serial`` tests run one at a time).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    @contextmanager
    def run(self, app: Any, name: str) -> Iterator[str]:
        """Deploy ``app`` at ``/`` until the block ends; yields the base URL."""
        from ray import serve
        serve.run(app, name=name, route_prefix="/")
        try:
            self._wait_for_route(routed=True)
            yield self.base
        finally:
            serve.delete(name)
            # so the next app's first answer cannot come from this one
            self._wait_for_route(routed=False)

    def _wait_for_route(self, routed: bool, timeout_s: float = 60.0) -> None:
        """The proxy learns routes asynchronously: wait until ``/`` is (not) a 404."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=10):
                    status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code  # our app may answer 401 without a gateway key
            except OSError:
                status = None
            if status is not None and (status != 404) == routed:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Serve's route {self.base}/ never became {'live' if routed else 'free'}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def serve_apps(ray_session) -> Iterator[ServedApps]:
    from ray import serve
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServedApps(port)
    finally:
        serve.shutdown()
