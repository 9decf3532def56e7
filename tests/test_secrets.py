"""No API key ever shows up anywhere observable (issue 8, item 5).

One full scenario with recognisable keys (each contains a marker unique to this
run): chat, async chat, stream, embed, a key that answers 401 (errors through
every path: direct, fail-over, circuit open), a bulk run with an error line,
the HTTP gateway on Ray Serve (JSON, SSE, error bodies, /stats, /health,
/v1/models, a wrong gateway token), stats / health / circuit metrics /
endpoint descriptions / reprs / pickled errors / tracebacks, Ray's Prometheus
metrics, and every log file of the Ray session (driver and workers, Serve
included).  Then every one of those is searched for the marker: zero hits.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import time
import traceback
import urllib.request
import uuid

import httpx
import pytest
import ray

import ipfs_accelerate_py as ia
from ipfs_accelerate_py.testing.fakes.runner import start_fake

pytestmark = pytest.mark.ray

MARK = f"SECRETKEY{uuid.uuid4().hex[:12]}"
#: an OpenAI-shaped key, a key with no known shape (redacted only because config registers it),
#: the key that starts failing with 401, and the HTTP gateway's own bearer token
GOOD = f"sk-proj-{MARK}good{uuid.uuid4().hex}"
PLAIN = f"plain{MARK}token{uuid.uuid4().hex[:8]}"
REVOKED = f"sk-{MARK}revoked{uuid.uuid4().hex}"
GATEWAY_TOKEN = f"gk-{MARK}gateway{uuid.uuid4().hex[:8]}"
SECRETS = (GOOD, PLAIN, REVOKED, GATEWAY_TOKEN)
MSG = [{"role": "user", "content": "hello there"}]
CONTROL = f"CONTROLMARK{uuid.uuid4().hex[:12]}"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001
            self.lines.append(repr(record.__dict__))


def _session_logs() -> str:
    from ray._private.worker import global_worker
    root = os.path.join(global_worker.node.get_session_dir_path(), "logs")
    parts = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(dirpath, name), "rb") as fh:
                    parts.append(fh.read().decode("utf-8", errors="replace"))
            except OSError:
                pass
    return "\n".join(parts)


def _scrape_metrics(endpoint_ids: list[str], tries: int = 60) -> str:
    from ray._private.worker import global_worker
    url = f"http://127.0.0.1:{global_worker.node.metrics_export_port}/metrics"
    body = ""
    for _ in range(tries):  # Ray exports every few seconds
        try:
            body = urllib.request.urlopen(url, timeout=5).read().decode("utf-8", errors="replace")
        except OSError:
            body = ""
        if all(f'endpoint="{e}"' in body for e in endpoint_ids) and "ipfs_accelerate_routed_total" in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"Ray's metrics export never showed the endpoints {endpoint_ids}")


def _error_views(exc: BaseException) -> list[str]:
    views = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if isinstance(exc, ia.GatewayError):
        views.append(json.dumps(exc.to_dict(), default=str))
    views.append(pickle.dumps(exc).decode("latin-1"))
    return views


def _raises(call) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("expected an error")


@pytest.mark.serial  # Ray Serve is one per cluster: make test runs these alone
def test_no_key_appears_anywhere(make_gateway, serve_apps, tmp_path, capfd):
    from ray import serve

    from ipfs_accelerate_py import serve_app
    from ipfs_accelerate_py.bulk import run_bulk

    fake = start_fake("openai")
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    seen: list[str] = []
    try:
        fake.set_controls({"faults": [{"kind": "status", "status": 401, "key": REVOKED}]})
        cfg = {
            "namespace": f"test-secrets-{uuid.uuid4().hex[:8]}",
            "gateway_keys": [GATEWAY_TOKEN],
            "retry": {"max_retries": 2, "initial_retry_delay": 0.01, "max_retry_delay": 0.02},
            "endpoints": [
                {"id": "good", "provider": "openai", "base_url": fake.base_url, "api_key": GOOD,
                 "models": ["gpt-4o-mini", "text-embedding-3-small"]},
                {"id": "plain", "provider": "openai", "base_url": fake.base_url, "api_key": PLAIN,
                 "models": ["gpt-4o-mini", "text-embedding-3-small"]},
                {"id": "revoked", "provider": "openai", "base_url": fake.base_url, "api_key": REVOKED,
                 "models": ["gpt-4o-mini", "gpt-4o"]},
            ],
        }
        gw = make_gateway(cfg, enable_metrics=True)
        seen += [repr(gw), repr(gw.router), repr(gw.config), json.dumps(gw.config.to_dict(), default=str)]

        # -- the library: every kind of call, successes and failures
        for i in range(6):  # round the keys: the revoked one answers 401 and is failed over
            seen.append(repr(gw.chat("gpt-4o-mini", MSG, request_id=f"s{i}")))
        seen.append(repr(asyncio.run(gw.achat("gpt-4o-mini", MSG))))
        seen += [repr(c) for c in gw.stream_chat("gpt-4o-mini", MSG)]
        seen.append(repr(gw.embed("text-embedding-3-small", ["a", "b"])))
        seen.append(repr(gw.embed("text-embedding-3-small", "single")))
        for call in (lambda: gw.chat("gpt-4o", MSG),                      # the 401 itself
                     lambda: gw.chat("gpt-4o", MSG),                      # then its circuit is open
                     lambda: gw.chat("gpt-4o-mini", MSG, endpoint_id="revoked"),
                     lambda: list(gw.stream_chat("gpt-4o", MSG)),
                     lambda: gw.chat("gpt-4o-mimi", MSG),                 # unknown model (lists models)
                     lambda: gw.chat("gpt-4o-mini", MSG, temperature="hot")):
            exc = _raises(call)
            assert isinstance(exc, ia.GatewayError), repr(exc)
            seen += _error_views(exc)
        for info in (gw.stats(), gw.stats("revoked"), gw.queue_info(), gw.circuit_metrics(),
                     gw.circuit_state(), gw.endpoints(), gw.health(), gw.list_models(), gw.cache_stats(),
                     gw.batching_stats()):
            seen.append(json.dumps(info, default=repr))
        for eid in ("good", "plain", "revoked"):
            handle = ray.get_actor(f"{gw.name}:endpoint:{eid}", namespace=gw.namespace)
            seen += [repr(handle), ray.get(handle.__ray_call__.remote(lambda self: repr(self)))]
        seen.append(ray.get(gw.router.__ray_call__.remote(lambda self: repr(self))))

        # -- bulk: results and error lines
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        inp.write_text("".join(json.dumps(line) + "\n" for line in [
            {"custom_id": "ok-1", "model": "gpt-4o-mini", "messages": MSG},
            {"custom_id": "bad-1", "model": "gpt-4o", "messages": MSG},
            {"custom_id": "emb-1", "model": "text-embedding-3-small", "input": ["x"]},
            {"custom_id": "junk-1", "model": "gpt-4o-mini", "messages": "   "},
        ]))
        summary = run_bulk(inp, out, gateway=gw, progress=False)
        seen += [out.read_text(), repr(summary), json.dumps(summary.to_dict(), default=str), summary.report()]
        assert summary.succeeded == 2 and summary.failed == 2

        # -- the HTTP gateway on Ray Serve
        auth = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
        with serve_apps.run(serve_app.build_app(cfg), "ia_secrets_test") as base:
            with httpx.Client(base_url=base, timeout=60) as http:
                responses = [
                    http.post("/v1/chat/completions", headers=auth, json={"model": "gpt-4o-mini", "messages": MSG}),
                    http.post("/v1/chat/completions", headers=auth,
                              json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}),
                    http.post("/v1/chat/completions", headers=auth, json={"model": "gpt-4o", "messages": MSG}),
                    http.post("/v1/chat/completions", headers=auth,
                              json={"model": "gpt-4o", "messages": MSG, "stream": True}),
                    http.post("/v1/embeddings", headers=auth, json={"model": "text-embedding-3-small", "input": "x"}),
                    http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {GATEWAY_TOKEN}x"},
                              json={"model": "gpt-4o-mini", "messages": MSG}),
                    http.post("/v1/chat/completions", headers={"x-api-key": GATEWAY_TOKEN[:-1]},
                              json={"model": "gpt-4o-mini", "messages": MSG}),
                    http.get("/v1/models", headers=auth), http.get("/stats", headers=auth),
                    http.get("/health", headers=auth), http.get("/openapi.json"),
                ]
            statuses = [r.status_code for r in responses]
            assert statuses[0] == 200 and statuses[1] == 200 and statuses[4] == 200, statuses
            assert statuses[2] >= 400 and statuses[5] == 401 and statuses[6] == 401, statuses
            for r in responses:
                seen += [r.text, json.dumps(dict(r.headers))]
            seen.append(json.dumps(serve.status().to_dict() if hasattr(serve.status(), "to_dict")
                                   else repr(serve.status()), default=repr))

        # -- Ray's Prometheus metrics: tags name endpoints, never keys
        metrics = _scrape_metrics(["good", "plain", "revoked"])
        seen.append(metrics)
        # positive control: what an endpoint actor prints does reach the log files scanned below
        handle = ray.get_actor(f"{gw.name}:endpoint:good", namespace=gw.namespace)
        ray.get(handle.__ray_call__.remote(lambda self: print(f"control {CONTROL}", flush=True)))
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        fake.stop()

    logs = ""
    for _ in range(50):  # workers write their log files asynchronously
        logs = _session_logs()
        if CONTROL in logs:
            break
        time.sleep(0.2)
    assert CONTROL in logs, "the scan does not see what actors print: it would miss a leak there too"
    out_err = capfd.readouterr()
    blob = "\n".join(seen + capture.lines + [out_err.out, out_err.err, logs])
    # the outputs scanned are the real ones: metrics tags and key fingerprints (never keys) are in there
    from ipfs_accelerate_py.errors import fingerprint
    assert 'endpoint="revoked"' in blob and fingerprint(GOOD) in blob and fingerprint(REVOKED) in blob
    leaks = [s for s in (MARK,) + SECRETS if s in blob]
    if leaks:
        where = blob.index(leaks[0])
        pytest.fail(f"secret material found in observable output: ...{blob[max(0, where - 300):where + 100]!r}...")


def test_redaction_reaches_unknown_key_shapes():
    """The unit under the scenario above: a key with no provider shape is still redacted once registered,
    and key-shaped strings are redacted even when never registered."""
    from ipfs_accelerate_py import errors
    odd = f"zz{MARK}odd{uuid.uuid4().hex[:6]}"
    errors.register_secret(odd)
    err = ia.ProviderError(f"upstream said: bad key {odd}; also sk-proj-{MARK}unregistered1234567890")
    for view in _error_views(err):
        assert MARK not in view
