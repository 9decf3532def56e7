"""Run fakes in their own processes and drive them through the admin API.

Why a subprocess: the fake gets its own CPU and event loop, so a benchmark or a
Ray job measures the client, not a server sharing its interpreter; and its URL
stays valid for every Ray worker for as long as the test session lives.

This module is standard library only (``urllib``), so importing it costs
nothing and works in any worker.  Usage::

    with start_fake("openai", controls={"latency_s": 0.01}) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test-000000000001")
        fake.controls(faults=[{"kind": "status", "status": 429, "count": 1, "retry_after": 1}])
        ...
        assert fake.stats()["by_status"]["429"] == 1

Adding a protocol: put a ``FakeSpec`` into ``PROTOCOLS`` (or call
``register_protocol``); its ``factory`` is ``"module:function"`` and is called as
``function(**kwargs, controls=<dict or None>)`` returning an aiohttp
``web.Application`` (normally ``FakeServer(MyProtocol(), controls).make_app()``).
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

__all__ = ["FakeHandle", "FakeSpec", "PROTOCOLS", "fingerprint", "register_protocol", "start_fake"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


@dataclass(frozen=True)
class FakeSpec:
    """How to build one fake: the app factory, its arguments and the SDK base path."""

    name: str
    #: ``"package.module:function"``; called as ``function(**kwargs, controls=...)``
    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: appended to ``http://host:port`` to form the official SDK's ``base_url``
    sdk_path: str = ""
    description: str = ""


PROTOCOLS: dict[str, FakeSpec] = {
    "openai": FakeSpec("openai", "ipfs_accelerate_py.testing.fakes.openai:make_app", {"flavor": "openai"},
                       "/v1", "OpenAI API (chat, completions, embeddings, images, audio, moderations)"),
    "groq": FakeSpec("groq", "ipfs_accelerate_py.testing.fakes.openai:make_app", {"flavor": "groq"},
                     "/openai/v1", "Groq OpenAI-compatible API"),
    "claude": FakeSpec("claude", "ipfs_accelerate_py.testing.fakes.claude:make_app", {},
                       "", "Anthropic Messages API"),
    "gemini": FakeSpec("gemini", "ipfs_accelerate_py.testing.fakes.gemini:make_app", {},
                       "/v1beta", "Google Gemini API (generateContent, streaming, embeddings, countTokens)"),
    "ollama": FakeSpec("ollama", "ipfs_accelerate_py.testing.fakes.ollama:make_app", {},
                       "", "Ollama native API (/api/chat, generate, embed, tags, show, ps)"),
    "hf_tgi": FakeSpec("hf_tgi", "ipfs_accelerate_py.testing.fakes.hf_tgi:make_app", {},
                       "", "Hugging Face Text Generation Inference"),
    "hf_tei": FakeSpec("hf_tei", "ipfs_accelerate_py.testing.fakes.hf_tei:make_app", {},
                       "", "Hugging Face Text Embeddings Inference"),
    "llvm": FakeSpec("llvm", "ipfs_accelerate_py.testing.fakes.llvm:make_app", {},
                     "", "LLVM-style inference server (PROTOCOLS.md section 11)"),
    "ovms": FakeSpec("ovms", "ipfs_accelerate_py.testing.fakes.ovms:make_app", {},
                     "", "OpenVINO Model Server (KServe v2 and /v3 OpenAI-compatible)"),
    "opea": FakeSpec("opea", "ipfs_accelerate_py.testing.fakes.opea:make_app", {},
                     "", "OPEA microservices and the ChatQnA megaservice"),
}


def register_protocol(spec: FakeSpec) -> None:
    """Add (or replace) a protocol at run time; ``start_fake`` passes the spec to the child."""
    PROTOCOLS[spec.name] = spec


def fingerprint(key: str | None) -> str:
    """The label a fake's stats use for ``key`` (same rule as ``base.fingerprint``)."""
    import hashlib  # noqa: PLC0415 - keep module import light

    if not key:
        return "<none>"
    if len(key) >= 12:
        return f"{key[:3]}...{key[-4:]}"
    return "***" + hashlib.blake2b(key.encode(), digest_size=3).hexdigest()


class FakeAdminError(RuntimeError):
    """The admin API refused a call (e.g. an invalid controls patch); ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"fake admin API answered {status}: {message}")
        self.status = status


class FakeHandle:
    """A running fake: its URLs, its admin API, and (when this process owns it) its process.

    A handle can be pickled (e.g. into a Ray task); the copy drives the same fake
    through the admin API but does not own the process, so its ``stop()`` does
    nothing.
    """

    def __init__(self, protocol: str, host: str, port: int, sdk_path: str,
                 process: subprocess.Popen[bytes] | None = None, stderr_path: str | None = None) -> None:
        self.protocol = protocol
        self.host = host
        self.port = port
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        #: ``http://host:port``: where the admin API lives, and the Anthropic/Groq SDK base URL
        self.root_url = f"http://{url_host}:{port}"
        #: the official SDK's ``base_url`` convention ("/v1" for OpenAI, "/openai/v1" for Groq, none for Claude)
        self.base_url = self.root_url + sdk_path
        self.process = process
        self._stderr_path = stderr_path
        self._lock = threading.Lock()

    # -- admin API ----------------------------------------------------------------
    def _admin(self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise FakeAdminError(exc.code, str(detail)) from None

    def set_controls(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into the fake's controls; returns the resulting controls (keys redacted)."""
        return self._admin("POST", "/_fake/controls", dict(patch))

    def controls(self, **patch: Any) -> dict[str, Any]:
        """Keyword form of ``set_controls``: ``fake.controls(latency_s=0.2, faults=[...])``."""
        return self.set_controls(patch)

    def get_controls(self) -> dict[str, Any]:
        return self._admin("GET", "/_fake/controls")

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/_fake/stats")

    def key_stats(self, key: str) -> dict[str, int]:
        """The stats entry of one key (zeros when the fake has not seen it)."""
        empty = {"requests": 0, "ok": 0, "429": 0, "errors": 0, "tokens": 0}
        return self.stats()["by_key"].get(fingerprint(key), empty)

    def reset(self, patch: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Clear stats and buckets and restore the start-up controls (keeping ``valid_keys``
        unless given), then apply ``patch``/``kw``."""
        body = dict(patch or {}, **kw)
        return self._admin("POST", "/_fake/reset", body)

    def health(self) -> dict[str, Any]:
        return self._admin("GET", "/_fake/health", timeout=2.0)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the fake (SIGTERM, then SIGKILL after ``timeout``); safe to call twice."""
        with self._lock:
            proc, self.process = self.process, None
        if proc is None:
            return
        _LIVE.discard(self)
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for stream in (proc.stdout,):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        if self._stderr_path:
            try:
                os.unlink(self._stderr_path)
            except OSError:
                pass
            self._stderr_path = None

    def __enter__(self) -> FakeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["process"] = None
        state["_stderr_path"] = None
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        owner = f"pid={self.process.pid}" if self.process else "not owned"
        return f"FakeHandle({self.protocol!r}, {self.base_url!r}, {owner})"


_LIVE: set[FakeHandle] = set()


@atexit.register
def _stop_all() -> None:
    for handle in list(_LIVE):
        handle.stop(timeout=2.0)


def start_fake(
    protocol: str,
    *,
    controls: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> FakeHandle:
    """Start ``python -m ipfs_accelerate_py.testing.fakes <protocol>`` and wait until it listens.

    ``port=0`` picks a free port.  The child prints one JSON line once listening;
    it exits on SIGTERM, and also when this process dies (it watches its stdin),
    so no fake outlives the test run that started it.
    """
    spec = PROTOCOLS.get(protocol)
    if spec is None:
        raise ValueError(f"unknown fake protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    cmd = [
        sys.executable, "-m", "ipfs_accelerate_py.testing.fakes", protocol,
        "--host", host, "--port", str(port), "--watch-stdin",
        "--factory", spec.factory, "--factory-kwargs", json.dumps(dict(spec.kwargs)), "--sdk-path", spec.sdk_path,
    ]
    controls_path = None
    if controls:
        # A private temp file rather than argv: controls may hold keys, and argv is public (ps).
        fd, controls_path = tempfile.mkstemp(prefix=f"fake-{protocol}-controls-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(dict(controls), fh)
        cmd += ["--controls-file", controls_path]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, child_env.get("PYTHONPATH")) if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    fd, stderr_path = tempfile.mkstemp(prefix=f"fake-{protocol}-", suffix=".log")
    with os.fdopen(fd, "wb") as stderr_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
                                env=child_env, close_fds=True)
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        # Forward the ready line, then keep draining so the child can never block on a full pipe.
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, name=f"fake-{protocol}-stdout", daemon=True).start()
    try:
        line = lines.get(timeout=startup_timeout)
    except queue.Empty:
        line = None
    finally:
        if controls_path:
            os.unlink(controls_path)
    info: dict[str, Any] | None = None
    if line:
        try:
            info = json.loads(line)
        except ValueError:
            info = None
    if not info or "port" not in info:
        proc.kill()
        proc.wait()
        tail = Path(stderr_path).read_text(errors="replace")[-4000:]
        os.unlink(stderr_path)
        reason = "timed out" if line is None else f"printed {line!r}"
        raise RuntimeError(f"fake {protocol!r} did not start ({reason}); stderr:\n{tail}")
    handle = FakeHandle(protocol, host, int(info["port"]), spec.sdk_path, proc, stderr_path)
    _LIVE.add(handle)
    return handle
