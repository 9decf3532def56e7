"""Bulk inference: JSONL files (resume, crash, failures, validation) and Ray Datasets.

File semantics are tested against a stub gateway (no Ray, deterministic);
the end-to-end paths -- real router, fake provider, two driver processes,
SIGKILL, Ray Data -- run on the session Ray (marked ``ray``).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.bulk import (BulkInputError, BulkInterrupted, _parse_line, _Writer, endpoint_rows,
                                     format_stats_table, run_bulk)
from ipfs_accelerate_py.types import ChatResponse, EmbeddingResponse, Usage, build_chat_request

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "hello"}]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_id(results: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in results:
        assert r["custom_id"] not in out, f"custom_id {r['custom_id']} written twice"
        out[r["custom_id"]] = r
    return out


def chat_line(cid: str, text: str = "hi", shape: str = "plain", **extra) -> dict:
    if shape == "batch":
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}}
    return {"custom_id": cid, "model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        return asyncio.ensure_future(self.fn(*args, **kwargs))


class StubRouter:
    """Answers like the router: ChatResponse/EmbeddingResponse or a typed error.

    ``fail``: content substring -> error to raise; ``hang``: content substring
    that never answers; ``on_call(router)`` runs after each answer.
    """

    def __init__(self, fail=None, hang=(), on_call=None, delay=0.0):
        self.fail = fail or {}
        self.hang = tuple(hang)
        self.on_call = on_call
        self.delay = delay
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0
        self.chat = _Method(self._chat)
        self.embed = _Method(self._embed)

    async def _enter(self, text: str):
        self.calls.append(text)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for needle, err in self.fail.items():
                if needle in text:
                    raise err
            if any(h in text for h in self.hang):
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    self.cancelled.append(text)
                    raise
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    async def _chat(self, model, messages, *, priority=None, request_id=None, **params):
        req = build_chat_request(model, messages, params)  # same validation as the router
        text = req.messages[-1].text()
        await self._enter(text)
        self.answered += 1
        resp = ChatResponse(text=f"Echo: {text}", model=model, usage=Usage(prompt_tokens=3, completion_tokens=2),
                            finish_reason="stop", cost_usd=0.001, request_id=request_id, endpoint_id="stub-0",
                            provider="stub", latency_s=0.001)
        if self.on_call:
            self.on_call(self)
        return resp

    async def _embed(self, model, input, *, priority=None, request_id=None, **params):
        texts = [input] if isinstance(input, str) else list(input)
        await self._enter("|".join(texts))
        self.answered += 1
        return EmbeddingResponse(embeddings=[[0.5, -0.25]] * len(texts), model=model,
                                 usage=Usage(prompt_tokens=2 * len(texts)), cost_usd=0.0001,
                                 request_id=request_id, endpoint_id="stub-0", provider="stub")


class StubGateway:
    namespace = "stub"
    name = "stub"

    def __init__(self, router: StubRouter):
        self.router = router

    def stats(self):
        return {}


# ---------------------------------------------------------------------------
# input shapes and validation (no Ray)
# ---------------------------------------------------------------------------

def test_parse_both_shapes_defaults_and_model_override():
    item = _parse_line(json.dumps(chat_line("a", shape="batch", temperature=0.1)).encode(), 1, None)
    assert (item.custom_id, item.kind, item.model, item.params) == ("a", "chat", "gpt-4o-mini", {"temperature": 0.1})
    item = _parse_line(json.dumps({"model": "m", "input": ["x"], "stream": True}).encode(), 7, "other")
    assert (item.custom_id, item.kind, item.model, item.payload, item.params) == ("line-7", "embed", "other", ["x"], {})
    item = _parse_line(json.dumps({"custom_id": 5, "method": "POST", "url": "/v1/embeddings",
                                   "body": {"model": "e", "input": "t", "encoding_format": "base64"}}).encode(), 2, None)
    assert (item.custom_id, item.kind, item.encoding_format) == ("5", "embed", "base64")
    assert _parse_line(b"   \n", 3, None) is None


@pytest.mark.parametrize("raw, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_line"),
    (b'{"custom_id": "x", "model": "m"}', "invalid_line"),
    (b'{"custom_id": "x", "url": "/v1/images", "body": {}}', "invalid_url"),
    (b'{"custom_id": "x", "method": "GET", "url": "/v1/embeddings", "body": {}}', "invalid_method"),
    (b'{"custom_id": "x", "messages": [{"role": "user", "content": "a"}]}', "missing_model"),
    (b'{"custom_id": "x", "url": "/v1/chat/completions", "body": {"model": "m"}}', "missing_messages"),
])
def test_invalid_lines_become_typed_errors_with_the_line_number(raw, code):
    item = _parse_line(raw, 12, None)
    assert isinstance(item.error, errors.InvalidRequestError)
    assert item.error.code == code and item.error.details["line"] == 12 and "line 12" in str(item.error)


def test_duplicate_custom_ids_are_refused_before_anything_is_sent(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line("a"), chat_line("b"), {"model": "m", "input": "x"},
                                              chat_line("a"), chat_line("line-3")])
    router = StubRouter()
    with pytest.raises(BulkInputError) as info:
        run_bulk(inp, tmp_path / "out.jsonl", StubGateway(router), progress=False)
    msg = str(info.value)
    assert "'a' on lines 1, 4" in msg and "'line-3' on lines 3, 5" in msg
    assert router.calls == [] and not (tmp_path / "out.jsonl").read_text()


def test_bad_arguments_are_refused(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line("a")])
    gw = StubGateway(StubRouter())
    with pytest.raises(BulkInputError):
        run_bulk(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", gw, progress=False)
    with pytest.raises(BulkInputError):
        run_bulk(inp, inp, gw, progress=False)
    with pytest.raises(BulkInputError):
        run_bulk(inp, tmp_path / "out.jsonl", gw, concurrency=0, progress=False)
    with pytest.raises(errors.InvalidRequestError):
        run_bulk(inp, tmp_path / "out.jsonl", gw, priority="URGENT", progress=False)


# ---------------------------------------------------------------------------
# results, failures, resume (stub gateway, no Ray)
# ---------------------------------------------------------------------------

def test_results_are_keyed_openai_shaped_and_failures_are_typed(tmp_path):
    rows = [chat_line("c1"), chat_line("c2", shape="batch", max_tokens=5),
            {"custom_id": "e1", "model": "text-embedding-3-small", "input": ["a", "b"]},
            {"custom_id": "e2", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "text-embedding-3-small", "input": "z", "encoding_format": "base64"}},
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no id"}]},
            chat_line("bad-role", shape="batch") | {"body": {"model": "gpt-4o-mini",
                                                              "messages": [{"role": "wizard", "content": "x"}]}},
            chat_line("limited", text="please FAIL"),
            "this is not json"]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    router = StubRouter(fail={"FAIL": errors.RateLimitError("slow down", status=429, endpoint_id="stub-0")})
    summary = run_bulk(inp, tmp_path / "out.jsonl", StubGateway(router), progress=False)
    res = by_id(read_results(tmp_path / "out.jsonl"))
    assert set(res) == {"c1", "c2", "e1", "e2", "line-5", "bad-role", "limited", "line-8"}
    body = res["c2"]["response"]["body"]
    assert res["c2"]["response"]["status_code"] == 200 and res["c2"]["error"] is None
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "Echo: hi"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["endpoint_id"] == "stub-0" and body["cost_usd"] == 0.001
    assert body["request_id"] == res["c2"]["response"]["request_id"]
    emb = res["e1"]["response"]["body"]
    assert emb["object"] == "list" and [d["index"] for d in emb["data"]] == [0, 1]
    assert emb["data"][0]["embedding"] == [0.5, -0.25] and emb["usage"]["prompt_tokens"] == 4
    assert isinstance(res["e2"]["response"]["body"]["data"][0]["embedding"], str)  # base64 when asked
    # failures: the typed error's to_dict(), which error_from_dict turns back into the error
    err = errors.error_from_dict(res["limited"]["error"])
    assert isinstance(err, errors.RateLimitError) and err.retryable and err.status == 429
    assert res["limited"]["response"] is None and res["limited"]["error"]["details"]["line"] == 7
    assert isinstance(errors.error_from_dict(res["bad-role"]["error"]), errors.InvalidRequestError)
    assert res["line-8"]["error"]["code"] == "invalid_json" and res["line-8"]["error"]["details"]["line"] == 8
    assert (summary.succeeded, summary.failed, summary.invalid_lines, summary.total_lines) == (5, 3, 1, 8)
    assert summary.input_tokens == 3 * 3 + 4 + 2 and summary.output_tokens == 3 * 2
    assert summary.cost_usd == pytest.approx(3 * 0.001 + 2 * 0.0001)
    assert summary.remaining == 0 and not summary.interrupted


def test_rerun_after_completion_redoes_nothing(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}") for i in range(20)])
    out = tmp_path / "out.jsonl"
    run_bulk(inp, out, StubGateway(StubRouter()), progress=False)
    before = out.read_bytes()
    router = StubRouter()
    summary = run_bulk(inp, out, StubGateway(router), progress=False)
    assert router.calls == [] and out.read_bytes() == before
    assert (summary.already_done, summary.submitted, summary.remaining) == (20, 0, 0)


def test_torn_last_line_is_truncated_and_only_missing_lines_run(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", text=f"t{i}") for i in range(10)])
    out = tmp_path / "out.jsonl"
    run_bulk(write_jsonl(tmp_path / "first4.jsonl", [chat_line(f"c{i}", text=f"t{i}") for i in range(4)]),
             out, StubGateway(StubRouter()), progress=False)
    done_before = out.read_bytes()
    torn = b'{"custom_id":"c7","response":{"status_code":200,"bo'
    with open(out, "ab") as fh:
        fh.write(torn)
    router = StubRouter()
    summary = run_bulk(inp, out, StubGateway(router), progress=False)
    assert sorted(router.calls) == sorted(f"t{i}" for i in range(4, 10))
    assert summary.truncated_bytes == len(torn) and summary.already_done == 4
    assert out.read_bytes().startswith(done_before)
    assert set(by_id(read_results(out))) == {f"c{i}" for i in range(10)}


def test_a_file_that_is_not_a_results_file_is_not_touched(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line("a")])
    other = write_jsonl(tmp_path / "other.jsonl", [{"some": "data"}, {"more": 1}])
    content = other.read_bytes()
    with pytest.raises(BulkInputError, match="not bulk results"):
        run_bulk(inp, other, StubGateway(StubRouter()), progress=False)
    assert other.read_bytes() == content


def test_failed_lines_stay_failed_until_retry_failed(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", text=f"t{i}" + (" FAIL" if i % 4 == 0 else ""))
                                              for i in range(12)])
    out = tmp_path / "out.jsonl"
    boom = errors.ProviderError("upstream 503", status=503)
    first = run_bulk(inp, out, StubGateway(StubRouter(fail={"FAIL": boom})), progress=False)
    assert (first.succeeded, first.failed) == (9, 3)
    router = StubRouter()
    again = run_bulk(inp, out, StubGateway(router), progress=False)  # errors count as done
    assert router.calls == [] and again.already_done == 12
    router = StubRouter()
    retried = run_bulk(inp, out, StubGateway(router), progress=False, retry_failed=True)
    assert sorted(router.calls) == ["t0 FAIL", "t4 FAIL", "t8 FAIL"]
    assert (retried.retried_failed, retried.succeeded, retried.failed) == (3, 3, 0)
    res = by_id(read_results(out))  # exactly once per custom_id, every one a success now
    assert len(res) == 12 and all(r["error"] is None for r in res.values())


def test_interrupt_writes_what_finished_and_cancels_the_rest(tmp_path):
    rows = [chat_line(f"c{i}", text=f"t{i}" + (" HANG" if i % 3 == 0 else "")) for i in range(30)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    def stop_after_ten(router):
        if router.answered == 10:  # inside the run, so our SIGTERM handler is installed
            os.kill(os.getpid(), signal.SIGTERM)

    router = StubRouter(hang=["HANG"], on_call=stop_after_ten)
    with pytest.raises(BulkInterrupted) as info:
        run_bulk(inp, out, StubGateway(router), concurrency=8, progress=False)
    summary = info.value.summary
    assert summary.interrupted and summary.succeeded >= 10
    assert router.cancelled and all("HANG" in c for c in router.cancelled)
    written = by_id(read_results(out))  # every line complete and parseable
    assert len(written) == summary.succeeded and summary.remaining == 30 - len(written)
    # resume: the rest runs, nothing finished runs again
    router2 = StubRouter()
    run_bulk(inp, out, StubGateway(router2), progress=False)
    done_texts = {w["response"]["body"]["choices"][0]["message"]["content"][len("Echo: "):] for w in written.values()}
    assert not done_texts & set(router2.calls)
    assert set(by_id(read_results(out))) == {f"c{i}" for i in range(30)}


def test_in_flight_requests_are_bounded_by_concurrency(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}") for i in range(60)])
    router = StubRouter(delay=0.005)
    run_bulk(inp, tmp_path / "out.jsonl", StubGateway(router), concurrency=7, progress=False)
    assert router.max_in_flight == 7 and len(router.calls) == 60


def test_writer_fsyncs_in_batches_and_on_close(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    fd = os.open(str(tmp_path / "out.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    writer = _Writer(fd, every_lines=50, every_s=3600)
    for i in range(120):
        writer.write({"custom_id": str(i), "response": {}, "error": None})
    assert len(synced) == 2
    writer.close()
    assert len(synced) == 3 and len(read_results(tmp_path / "out.jsonl")) == 120


def test_stats_table_reports_the_runs_own_window():
    def snap(total, ok, r429, tokens, cost, buckets):
        return {"endpoints": {"k0": {"key": "sk-...abcd", "provider": "openai", "total_requests": total,
                                     "successful_requests": ok, "failed_requests": total - ok,
                                     "rate_limited": r429, "input_tokens": tokens, "output_tokens": 0,
                                     "total_tokens": tokens, "cost_usd": cost,
                                     "latency": {"buckets": buckets, "max_s": 0.3}}}}
    before = snap(10, 10, 0, 100, 0.5, {"0.01": 10})
    after = snap(30, 28, 2, 400, 1.5, {"0.01": 10, "0.05": 15, "0.1": 5})
    row = endpoint_rows(after, before)["k0"]
    assert (row["requests"], row["ok"], row["failed"], row["rate_limited"], row["total_tokens"]) == (20, 18, 2, 2, 300)
    assert row["cost_usd"] == pytest.approx(1.0) and row["p50_s"] == 0.05
    table = format_stats_table([row])
    assert "sk-...abcd" in table and "TOTAL" in table and "<=50ms" in table


# ---------------------------------------------------------------------------
# end to end on Ray: real router, fake provider
# ---------------------------------------------------------------------------

def _key(tag: str = "") -> str:
    return f"sk-bulk{tag}{uuid.uuid4().hex}"


def _endpoint(fake, eid: str, api_key: str, **kw) -> dict:
    return {"id": eid, "provider": "openai", "base_url": fake.base_url, "api_key": api_key,
            "models": ["gpt-4o-mini", "text-embedding-3-small"], **kw}


def _fast_retry() -> dict:
    return {"max_retries": 3, "initial_retry_delay": 0.01, "max_retry_delay": 0.05}


@pytest.fixture
def fake(fake_openai):
    """The session's fake OpenAI server, reset (no faults, no latency, fresh stats) for this test."""
    return fake_openai


def _fake_429s(fake, keys) -> int:
    from ipfs_accelerate_py.testing.fakes.runner import fingerprint
    by_key = fake.stats()["by_key"]
    return sum(by_key.get(fingerprint(k), {}).get("429", 0) for k in keys)


@pytest.mark.ray
def test_bulk_through_the_real_router(make_gateway, fake, tmp_path):
    keys = [_key("a"), _key("b")]
    gw = make_gateway({"retry": _fast_retry(), "endpoints": [_endpoint(fake, f"k{i}", k) for i, k in enumerate(keys)]})
    rows = [chat_line(f"c{i}", text=f"question {i}", shape="batch" if i % 2 else "plain") for i in range(24)]
    rows += [{"custom_id": f"e{i}", "model": "text-embedding-3-small", "input": [f"doc {i}", "x"]} for i in range(6)]
    rows.append(chat_line("typo") | {"model": "gpt-4o-mimi"})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    summary = run_bulk(inp, out, gw, concurrency=16, progress=True)
    res = by_id(read_results(out))
    assert len(res) == 31 and summary.succeeded == 30 and summary.failed == 1
    assert res["c3"]["response"]["body"]["choices"][0]["message"]["content"].endswith("question 3")
    assert len(res["e2"]["response"]["body"]["data"]) == 2
    typo = errors.error_from_dict(res["typo"]["error"])
    assert isinstance(typo, errors.UnknownModelError) and "gpt-4o-mini" in typo.suggestions
    bodies = [r["response"]["body"] for r in res.values() if r["error"] is None]
    assert summary.input_tokens == sum(b["usage"]["prompt_tokens"] for b in bodies) > 0
    assert summary.output_tokens == sum(b["usage"].get("completion_tokens", 0) for b in bodies) > 0
    assert summary.cost_usd == pytest.approx(sum(b["cost_usd"] for b in bodies))
    assert {b["endpoint_id"] for b in bodies} == {"k0", "k1"}
    # the per-key table comes from gw.stats(): this run's requests, by key fingerprint
    assert sum(r["ok"] for r in summary.endpoints.values()) == 30
    assert {r["key"] for r in summary.endpoints.values()} == {f"{k[:3]}...{k[-4:]}" for k in keys}
    assert all(k not in summary.report() for k in keys)


def _yaml_config(path: Path, namespace: str, endpoints: list[dict]) -> Path:
    import yaml
    path.write_text(yaml.safe_dump({"namespace": namespace, "retry": _fast_retry(), "endpoints": endpoints}))
    return path


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "succeeded" in data:
            return data
    raise AssertionError(f"no JSON summary in: {stdout[-2000:]}")


def _driver_env() -> dict:
    import ray
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}


@pytest.mark.ray
@pytest.mark.slow
def test_two_bulk_drivers_share_the_key_actors_within_limits(make_gateway, fake, tmp_path):
    keys = [_key("x"), _key("y")]
    fake.set_controls({"latency_s": 0.01, "limits": {k: {"rps": 10, "burst_s": 1} for k in keys}})
    endpoints = [_endpoint(fake, f"k{i}", k, rpm=600, burst_s=1) for i, k in enumerate(keys)]
    gw = make_gateway({"retry": _fast_retry(), "endpoints": endpoints})
    cfg = _yaml_config(tmp_path / "gateway.yaml", gw.namespace, endpoints)
    procs, outs = [], []
    for d in range(2):
        inp = write_jsonl(tmp_path / f"in{d}.jsonl", [chat_line(f"d{d}-{i}", text=f"d{d} q{i}") for i in range(60)])
        out = tmp_path / f"out{d}.jsonl"
        outs.append(out)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ipfs_accelerate_py.cli", "bulk", str(inp), str(out), "--config", str(cfg),
             "--no-progress", "--json", "--concurrency", "64"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_driver_env(), cwd=str(ROOT)))
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        summary = _last_json(stdout)
        assert (summary["succeeded"], summary["failed"]) == (60, 0)
    for d, out in enumerate(outs):
        assert set(by_id(read_results(out))) == {f"d{d}-{i}" for i in range(60)}
    upstream = sum(fake.key_stats(k)["requests"] for k in keys)
    assert upstream >= 120
    assert _fake_429s(fake, keys) <= 0.01 * upstream, fake.stats()["by_key"]


def _start_bulk_cli(inp: Path, out: Path, cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ipfs_accelerate_py.cli", "bulk", str(inp), str(out),
                             "--config", str(cfg), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_driver_env(),
                            cwd=str(ROOT))


def _wait_for_lines(proc: subprocess.Popen, out: Path, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    assert proc.poll() is None, "the bulk run ended before it could be stopped: " + proc.stderr.read()[-2000:]
    raise AssertionError(f"no {n} result lines within {timeout}s")


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_writes_what_finished_and_cancels_queued_requests(make_gateway, fake, tmp_path):
    k = _key("int")
    fake.set_controls({"limits": {k: {"rps": 5, "burst_s": 1}}})
    endpoints = [_endpoint(fake, "k0", k, rpm=300, burst_s=1)]
    gw = make_gateway({"retry": _fast_retry(), "endpoints": endpoints})
    cfg = _yaml_config(tmp_path / "gateway.yaml", gw.namespace, endpoints)
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", text=f"q{i}") for i in range(60)])
    out = tmp_path / "out.jsonl"
    proc = _start_bulk_cli(inp, out, cfg, "--no-progress", "--json")
    _wait_for_lines(proc, out, 6)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    summary = _last_json(stdout)
    assert summary["interrupted"] and "rerun the same command to resume" in stderr
    written = by_id(read_results(out))  # complete lines only, all successes
    assert len(written) == summary["succeeded"] and summary["remaining"] == 60 - len(written) > 0
    # the requests still queued in the router were cancelled, not sent upstream
    deadline = time.monotonic() + 30
    while gw.queue_info()["size"] and time.monotonic() < deadline:
        time.sleep(0.1)
    router = gw.stats()["router"]
    assert gw.queue_info()["size"] == 0 and router["failed"] == 0
    assert router["cancelled"] > 0 and router["submitted"] == router["succeeded"] + router["cancelled"]
    # upstream saw the answered requests and at most the few already sent when the run stopped
    upstream = fake.key_stats(k)["requests"]
    assert router["succeeded"] < 60
    assert router["succeeded"] <= upstream <= router["succeeded"] + router["cancelled_in_flight"]


@pytest.mark.ray
@pytest.mark.slow
def test_sigkilled_bulk_run_resumes_without_redoing_or_losing_lines(make_gateway, fake, tmp_path):
    k = _key("kill")
    fake.set_controls({"limits": {k: {"rps": 5, "burst_s": 1}}})
    endpoints = [_endpoint(fake, "k0", k, rpm=300, burst_s=1)]
    gw = make_gateway({"retry": _fast_retry(), "endpoints": endpoints})
    cfg = _yaml_config(tmp_path / "gateway.yaml", gw.namespace, endpoints)
    inp = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", text=f"q{i}") for i in range(60)])
    out = tmp_path / "out.jsonl"
    proc = _start_bulk_cli(inp, out, cfg, "--no-progress", "--concurrency", "8")
    _wait_for_lines(proc, out, 8)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    raw = out.read_bytes()
    complete = [json.loads(line) for line in raw.split(b"\n")[:-1] if line.strip()]
    assert 8 <= len(complete) < 60
    before = {r["custom_id"]: r for r in complete}
    # the rerun (here in-process, on the same router) finishes the rest quickly
    fake.set_controls({"limits": {k: {"rps": 200, "burst_s": 1}}})
    gw.configure_endpoint("k0", rpm=12000)
    summary = run_bulk(inp, out, gw, progress=False)
    after = by_id(read_results(out))
    assert set(after) == {f"c{i}" for i in range(60)}
    assert summary.already_done == len(before) and summary.succeeded == 60 - len(before)
    for cid, line in before.items():  # finished lines were not redone: same request id, same answer
        assert after[cid] == line


# ---------------------------------------------------------------------------
# Ray Data
# ---------------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside ray.data's DataContext
def test_chat_and_embed_dataset_use_the_shared_router(make_gateway, fake):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    import ray.data

    from ipfs_accelerate_py.bulk import chat_dataset, embed_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False
    k = _key("data")
    gw = make_gateway({"retry": _fast_retry(), "endpoints": [_endpoint(fake, "k0", k)]})
    rows = [{"id": i, "messages": [{"role": "user", "content": f"row {i}"}]} for i in range(11)]
    rows.append({"id": 11, "messages": [{"role": "wizard", "content": "bad"}]})
    out = chat_dataset(ray.data.from_items(rows), "gpt-4o-mini", gateway=gw, batch_size=4, concurrency=1,
                       max_tokens=8).take_all()
    assert len(out) == 12
    got = {r["id"]: r for r in out}
    assert all(got[i]["response"].endswith(f"row {i}") and got[i]["error"] is None for i in range(11))
    assert got[0]["endpoint_id"] == "k0" and got[0]["prompt_tokens"] > 0
    bad = json.loads(got[11]["error"])
    assert bad["type"] == "InvalidRequestError" and got[11]["response"] is None
    prompts = ray.data.from_items([{"prompt": f"p{i}"} for i in range(5)])
    out = chat_dataset(prompts, "gpt-4o-mini", prompt_column="prompt", output_column="answer",
                       namespace=gw.namespace, name=gw.name, concurrency=1).take_all()
    assert sorted(r["answer"] for r in out) == sorted(f"Echo: p{i}" for i in range(5))
    texts = ray.data.from_items([{"text": f"doc {i}"} for i in range(7)])
    out = embed_dataset(texts, "text-embedding-3-small", gateway=gw, batch_size=4, concurrency=1,
                        inputs_per_request=3).take_all()
    assert len(out) == 7 and all(r["error"] is None and len(r["embedding"]) > 8 for r in out)
    embed_calls = gw.stats("k0")["successful_requests"] - 11 - 5
    assert 3 <= embed_calls < 7  # rows went up to 3 per upstream request
