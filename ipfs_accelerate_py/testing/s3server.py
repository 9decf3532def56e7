"""A real, local S3 server for tests and demos: moto's server mode in a subprocess.

Why moto in a subprocess rather than ``mock_aws``: the S3 provider runs inside
Ray endpoint actors (other processes), and presigned URLs must work with a
plain HTTP client, so the server has to listen on a real socket.  A
subprocess also keeps moto's Flask/werkzeug threads out of the test process.

Usage::

    with start_s3_server() as s3:
        boto3.client("s3", endpoint_url=s3.endpoint_url, ...)
        s3.reset()          # wipe every bucket (POST /moto-api/reset)

``start_s3_server(enforce_auth_after=N)`` lets the first N requests through
unauthenticated (enough to create IAM users and buckets) and then makes moto
check SigV4 signatures and IAM permissions, so wrong credentials really fail
with ``InvalidAccessKeyId`` / ``SignatureDoesNotMatch``; without it moto
accepts any key.  ``python -m ipfs_accelerate_py.testing.s3server`` runs one
in the foreground and prints ``{"endpoint_url": ..., "port": ..., "pid": ...}``.

Standard library only: importing this module costs nothing.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["S3ServerHandle", "start_s3_server", "moto_command", "free_port", "main"]

#: how often a starting server is polled, and how long one poll may take
_POLL_INTERVAL_S = 0.05
_POLL_TIMEOUT_S = 2.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it).

    There is a small window in which another process could take it; the
    caller retries on a failed start, which closes that window in practice.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def moto_command() -> list[str]:
    """The command that starts moto's server with *this* interpreter's moto.

    The ``moto_server`` console script next to ``sys.executable`` (a venv's
    bin/) is preferred; a ``moto_server`` elsewhere on PATH could belong to
    another environment, so ``python -m moto.server`` is the fallback.
    """
    script = Path(sys.executable).with_name("moto_server")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    on_path = shutil.which("moto_server")
    if on_path and Path(on_path).resolve().parent == Path(sys.executable).resolve().parent:
        return [on_path]
    return [sys.executable, "-m", "moto.server"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: have the kernel SIGTERM the server when the test process dies,
    so no moto server outlives a crashed or killed test run."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass(eq=False)
class S3ServerHandle:
    """A running moto server: where it listens and how to reset or stop it."""

    host: str
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    _log_path: str | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def endpoint_url(self) -> str:
        """The ``endpoint_url`` for boto3 and the ``base_url`` of an ``s3`` endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reset(self) -> None:
        """Wipe every bucket and object (moto's ``POST /moto-api/reset``)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the server's output, for failure messages."""
        if not self._log_path:
            return ""
        try:
            return Path(self._log_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL); safe to call twice."""
        with self._lock:
            proc, self.process = self.process, None
        if proc is None:
            return
        _LIVE.discard(self)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None

    def __enter__(self) -> "S3ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_LIVE: set[S3ServerHandle] = set()


@atexit.register
def _stop_all() -> None:
    for handle in list(_LIVE):
        handle.stop(timeout=2.0)


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status counts)."""
    try:
        with urllib.request.urlopen(url, timeout=_POLL_TIMEOUT_S) as resp:
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _launch(host: str, port: int, env: Mapping[str, str], startup_timeout: float) -> S3ServerHandle:
    fd, log_path = tempfile.mkstemp(prefix="moto-s3-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen([*moto_command(), "-H", host, "-p", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env), close_fds=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    handle = S3ServerHandle(host, port, proc, log_path)
    deadline = time.monotonic() + startup_timeout
    # "/moto-api/data.json" is served without auth and touches no S3 state
    probe = f"{handle.endpoint_url}/moto-api/data.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _answers(probe):
            _LIVE.add(handle)
            return handle
        time.sleep(_POLL_INTERVAL_S)
    tail = handle.log_tail()
    handle.stop()
    reason = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
    raise RuntimeError(f"moto S3 server on {host}:{port} did not start ({reason}); output:\n{tail}")


def start_s3_server(*, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0,
                    enforce_auth_after: int | None = None,
                    env: Mapping[str, str] | None = None) -> S3ServerHandle:
    """Start ``moto_server -H host -p port`` and wait until it answers.

    ``port=0`` picks a free port (retrying if another process grabs it
    first).  ``enforce_auth_after=N`` sets moto's ``INITIAL_NO_AUTH_ACTION_COUNT``:
    the first N requests skip authentication, later ones need valid IAM
    credentials and a correct signature.  ``env`` replaces the child's
    environment (default: this process's).
    """
    child_env = dict(os.environ if env is None else env)
    if enforce_auth_after is not None:
        if enforce_auth_after < 0:
            raise ValueError("enforce_auth_after must be >= 0")
        child_env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(int(enforce_auth_after))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    attempts = 3 if port == 0 else 1
    last: RuntimeError | None = None
    for _ in range(attempts):
        try:
            return _launch(host, port or free_port(host), child_env, startup_timeout)
        except RuntimeError as exc:
            last = exc
    assert last is not None
    raise last


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m ipfs_accelerate_py.testing.s3server",
                                     description="Run a local S3 server (moto) for tests and demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--enforce-auth-after", type=int, default=None,
                        help="check credentials after this many unauthenticated requests")
    args = parser.parse_args(argv)
    handle = start_s3_server(host=args.host, port=args.port, enforce_auth_after=args.enforce_auth_after)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    info: dict[str, Any] = {"protocol": "s3", "endpoint_url": handle.endpoint_url, "port": handle.port,
                            "pid": handle.process.pid if handle.process else None}
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        while not stop.is_set() and handle.alive:
            stop.wait(0.5)
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
