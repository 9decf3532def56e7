"""Command line: ``python -m ipfs_accelerate_py.testing.fakes <protocol|all> [options]``.

Examples::

    python -m ipfs_accelerate_py.testing.fakes openai --port 8001
    python -m ipfs_accelerate_py.testing.fakes all --port 8001        # every protocol, ports 8001, 8002, ...
    python -m ipfs_accelerate_py.testing.fakes claude --controls-json '{"latency_s": 0.05}'
    python -m ipfs_accelerate_py.testing.fakes --list

Once listening it prints one JSON line per fake on stdout,
``{"protocol", "port", "base_url", "root_url", "pid"}`` (``runner.start_fake``
waits for that line), and a readable summary on stderr.  SIGTERM and SIGINT
stop it cleanly; with ``--watch-stdin`` it also stops when stdin closes, which
is how a fake notices that the test process that started it has died.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import threading
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from aiohttp import web

from .base import start_app
from .runner import PROTOCOLS, FakeSpec


def _load_factory(path: str) -> Callable[..., web.Application]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--factory must look like 'package.module:function', got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ipfs_accelerate_py.testing.fakes",
                                     description="Run wire-faithful fake LLM provider servers.")
    parser.add_argument("protocol", nargs="?", help=f"one of {sorted(PROTOCOLS)} or 'all'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on (0 = any free port); with 'all' the first of consecutive ports")
    parser.add_argument("--controls-json", help="initial controls as a JSON object")
    parser.add_argument("--controls-file", help="initial controls from a JSON file")
    parser.add_argument("--factory", help="app factory 'module:function' (overrides the registry entry)")
    parser.add_argument("--factory-kwargs", default=None, help="JSON object of factory keyword arguments")
    parser.add_argument("--sdk-path", default=None, help="SDK base path reported in base_url")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    parser.add_argument("--list", action="store_true", help="list the registered protocols and exit")
    args = parser.parse_args(argv)
    if not args.list and not args.protocol:
        parser.error("a protocol (or 'all') is required")
    return args


def _specs(args: argparse.Namespace) -> list[FakeSpec]:
    if args.protocol == "all":
        return list(PROTOCOLS.values())
    spec = PROTOCOLS.get(args.protocol)
    if args.factory:
        kwargs = json.loads(args.factory_kwargs) if args.factory_kwargs else {}
        spec = FakeSpec(args.protocol, args.factory, kwargs, args.sdk_path or "")
    if spec is None:
        raise SystemExit(f"unknown protocol {args.protocol!r}; known: {sorted(PROTOCOLS)} or 'all'")
    if args.sdk_path is not None and not args.factory:
        spec = FakeSpec(spec.name, spec.factory, spec.kwargs, args.sdk_path, spec.description)
    return [spec]


def _controls(args: argparse.Namespace) -> dict[str, Any] | None:
    controls: dict[str, Any] = {}
    if args.controls_file:
        with open(args.controls_file, encoding="utf-8") as fh:
            controls.update(json.load(fh))
    if args.controls_json:
        controls.update(json.loads(args.controls_json))
    return controls or None


async def _serve(specs: Sequence[FakeSpec], host: str, port: int, controls: Mapping[str, Any] | None,
                 watch_stdin: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-POSIX loops
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    if watch_stdin:
        def watch() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch, name="stdin-watchdog", daemon=True).start()

    runners: list[web.AppRunner] = []
    try:
        for i, spec in enumerate(specs):
            factory = _load_factory(spec.factory)
            app = factory(**dict(spec.kwargs), controls=dict(controls) if controls else None)
            runner, bound = await start_app(app, host, port + i if port else 0)
            runners.append(runner)
            url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
            root = f"http://{url_host}:{bound}"
            line = {"protocol": spec.name, "port": bound, "base_url": root + spec.sdk_path, "root_url": root,
                    "pid": os.getpid()}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            sys.stderr.write(f"fake {spec.name:<8} listening on {root + spec.sdk_path}\n")
        sys.stderr.flush()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        for spec in PROTOCOLS.values():
            print(f"{spec.name:<8} {spec.sdk_path or '/':<12} {spec.description}")
        return 0
    specs = _specs(args)
    coro = _serve(specs, args.host, args.port, _controls(args), args.watch_stdin)
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional speed-up

            return uvloop.run(coro)
        except ImportError:
            pass
    return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
