"""``ipfs-accelerate``: the console script.

    ipfs-accelerate bulk requests.jsonl results.jsonl --config gateway.yaml [--model M]
                         [--priority low] [--concurrency 256] [--retry-failed]
    ipfs-accelerate demo [--requests 3000] [--out DIR] [--real]
    ipfs-accelerate serve --config gateway.yaml [--host 0.0.0.0] [--port 8000]
    ipfs-accelerate fakes [openai|claude|...|all] [--port 8001]
    ipfs-accelerate stats --namespace ipfs_accelerate --name ia
    ipfs-accelerate version

Exit codes: 0 ok; 1 a failure (including a bulk run in which some lines
failed -- their errors are in the results file); 2 a usage error (bad
arguments, missing input or config file); 130 interrupted (bulk: rerun the
same command to resume).  Errors print the typed error's message, which never
contains an API key.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "ipfs-accelerate"


class _UsageError(Exception):
    """A problem with the command line itself (exit 2)."""


def _err(message: str) -> None:
    from .errors import redact  # noqa: PLC0415
    print(f"{PROG}: error: {redact(message)}", file=sys.stderr)


# ---------------------------------------------------------------------------
# bulk
# ---------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _priority(text: str) -> str:
    value = text.strip().upper()
    if value not in ("HIGH", "NORMAL", "LOW"):
        raise argparse.ArgumentTypeError(f"must be high, normal or low, got {text!r}")
    return value


def _add_bulk(sub: Any) -> None:
    from .bulk import DEFAULT_CONCURRENCY  # noqa: PLC0415 - light module at import time
    p = sub.add_parser(
        "bulk", help="run a JSONL file of chat/embedding requests (resumable)",
        description="Run every request of INPUT (JSONL: OpenAI batch-file lines or plain {model, messages} / "
                    "{model, input} lines) through the gateway and append one result line per request, keyed "
                    "by custom_id, to OUTPUT.  Rerunning the same command resumes: finished lines are skipped.")
    p.add_argument("input", help="requests, one JSON object per line")
    p.add_argument("output", help="results file (JSONL), appended to; rerunning resumes from it")
    p.add_argument("--config", help="gateway YAML; starts the gateway or attaches to the one running under "
                                    "its namespace/name (default: endpoints from environment variables)")
    p.add_argument("--namespace", help="attach to a running gateway in this namespace (instead of --config)")
    p.add_argument("--name", help="name of the running gateway (default: ia)")
    p.add_argument("--address", help="Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--model", help="use this model for every line (overrides the lines' model)")
    p.add_argument("--priority", type=_priority, default="LOW", help="high, normal or low (default: low)")
    p.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                   help=f"requests in flight from this driver (default: {DEFAULT_CONCURRENCY})")
    p.add_argument("--retry-failed", action="store_true", help="re-run lines whose last result is an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_cmd_bulk)


def _cmd_bulk(args: argparse.Namespace) -> int:
    from .bulk import BulkInputError, BulkInterrupted, run_bulk  # noqa: PLC0415

    if not Path(args.input).is_file():
        raise _UsageError(f"input file {args.input} does not exist")
    if args.config and not Path(args.config).is_file():
        raise _UsageError(f"config file {args.config} does not exist")
    if args.config and (args.namespace or args.name):
        raise _UsageError("give --config or --namespace/--name, not both")
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    try:
        summary = run_bulk(args.input, args.output, config=args.config, model=args.model, priority=args.priority,
                           concurrency=args.concurrency, progress=not args.no_progress,
                           retry_failed=args.retry_failed, namespace=args.namespace, name=args.name)
    except BulkInterrupted as exc:
        _print_summary(exc.summary, args.json)
        print(f"interrupted: {exc.summary.remaining} lines left; rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BulkInputError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    _print_summary(summary, args.json)
    if summary.failed:
        print(f"{summary.failed} lines failed; their typed errors are in {summary.output_path} "
              f"(rerun with --retry-failed to try them again)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict(), default=str))
    else:
        print(summary.report())


# ---------------------------------------------------------------------------
# demo / serve / fakes / stats / version
# ---------------------------------------------------------------------------

def _add_demo(sub: Any) -> None:
    from . import demo  # noqa: PLC0415 - demo imports Ray lazily
    p = sub.add_parser("demo", help="a bulk run over rate-limited fake keys (no real key needed)",
                       description=demo.__doc__.split("\n\n")[0] if demo.__doc__ else None)
    demo.add_arguments(p)
    p.set_defaults(func=lambda a: demo.run(a))


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible HTTP gateway on Ray Serve")
    p.add_argument("--config", required=True, help="gateway YAML")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                                                        "then set gateway_keys in the config)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    if not Path(args.config).is_file():
        raise _UsageError(f"config file {args.config} does not exist")
    try:
        from . import serve_app  # noqa: PLC0415 - Ray Serve is heavy; only this command needs it
    except ImportError as exc:
        _err(f"the Serve app is not available ({exc})")
        return EXIT_FAILURE
    serve_app.run(args.config, host=args.host, port=args.port, blocking=True)
    return EXIT_OK


def _add_fakes(sub: Any) -> None:
    p = sub.add_parser("fakes", help="start fake provider servers to try the library without keys",
                       description="Start wire-faithful fake providers (any non-empty API key is accepted). "
                                   "Prints one JSON line per fake with its base_url; Ctrl-C stops them.")
    p.add_argument("protocol", nargs="?", default="all", help="openai, groq, claude, gemini, ollama, hf_tgi, "
                                                               "hf_tei, llvm, ovms, opea, or all (default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="port (with 'all': the first of consecutive ports); "
                                                       "0 = any free port")
    p.add_argument("--controls-json", help="initial fake controls (latency_s, limits, faults) as JSON")
    p.add_argument("--list", action="store_true", help="list the protocols and exit")
    p.set_defaults(func=_cmd_fakes)


def _cmd_fakes(args: argparse.Namespace) -> int:
    from .testing.fakes.__main__ import main as fakes_main  # noqa: PLC0415
    from .testing.fakes.runner import PROTOCOLS  # noqa: PLC0415

    if args.list:
        return int(fakes_main(["--list"]) or 0)
    if args.protocol != "all" and args.protocol not in PROTOCOLS:
        raise _UsageError(f"unknown protocol {args.protocol!r}; one of {', '.join(sorted(PROTOCOLS))} or all")
    argv = [args.protocol, "--host", args.host, "--port", str(args.port)]
    if args.controls_json:
        argv += ["--controls-json", args.controls_json]
    print("fakes accept any non-empty API key; Ctrl-C stops them", file=sys.stderr)
    try:
        return int(fakes_main(argv) or 0)
    except KeyboardInterrupt:
        return EXIT_OK


def _add_stats(sub: Any) -> None:
    p = sub.add_parser("stats", help="attach to a running gateway and print its per-key table")
    p.add_argument("--namespace", default="ipfs_accelerate")
    p.add_argument("--name", default="ia")
    p.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS, else the local running cluster)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the router")
    p.add_argument("--json", action="store_true", help="print gw.stats() as JSON")
    p.set_defaults(func=_cmd_stats)


def _cmd_stats(args: argparse.Namespace) -> int:
    import ray  # noqa: PLC0415

    from .bulk import endpoint_rows, format_stats_table  # noqa: PLC0415
    from .gateway import Gateway  # noqa: PLC0415

    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError) as exc:
            _err(f"cannot attach to a Ray cluster at {address!r} ({exc}); start one (ray start --head), "
                 f"or set RAY_ADDRESS / --address")
            return EXIT_FAILURE
    gw = Gateway.connect(args.namespace, args.name, timeout_s=args.timeout)
    stats = gw.stats()
    if args.json:
        print(json.dumps(stats, default=str, indent=2))
        return EXIT_OK
    rows = list(endpoint_rows(stats).values())
    print(f"gateway {args.name!r} in namespace {args.namespace!r}: {len(rows)} endpoints, "
          f"strategy {stats.get('strategy')}, queue {stats.get('queue')}")
    print(format_stats_table(rows))
    router = stats.get("router") or {}
    if router:
        print("router: " + ", ".join(f"{k}={v}" for k, v in router.items()))
    return EXIT_OK


def _cmd_version(args: argparse.Namespace) -> int:
    from importlib import metadata  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415
    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:  # pragma: no cover
        ray_version = "not installed"
    print(f"ipfs-accelerate-py {__version__} (ray {ray_version}, python {sys.version.split()[0]})")
    return EXIT_OK


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="One Python interface to many LLM serving APIs, run as a Ray actor system.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error, 130 interrupted.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_bulk(sub)
    _add_demo(sub)
    _add_serve(sub)
    _add_fakes(sub)
    _add_stats(sub)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    from .errors import GatewayError  # noqa: PLC0415
    try:
        return int(args.func(args) or 0)
    except _UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except GatewayError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - a console script reports, it does not dump a traceback
        _err(f"{type(exc).__name__}: {exc}")
        if os.environ.get("IPFS_ACCELERATE_DEBUG"):
            raise
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
