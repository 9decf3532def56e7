"""The ``ipfs-accelerate`` console script, the demo, the example config and the cluster configs."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from ipfs_accelerate_py import __version__
from ipfs_accelerate_py.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "ipfs_accelerate_py.cli", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=str(ROOT), timeout=timeout)


# ---------------------------------------------------------------------------
# version and usage errors (no Ray)
# ---------------------------------------------------------------------------

def test_version(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ipfs-accelerate-py {__version__} (ray ")


def test_version_as_a_module_subprocess():
    proc = run_cli("version", timeout=120)
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.parametrize("argv", [
    [],                                                     # no command
    ["frobnicate"],                                         # unknown command
    ["bulk"],                                               # missing arguments
    ["bulk", "in.jsonl"],
    ["bulk", "{inp}", "out.jsonl", "--concurrency", "0"],
    ["bulk", "{inp}", "out.jsonl", "--concurrency", "many"],
    ["bulk", "{inp}", "out.jsonl", "--priority", "urgent"],
    ["bulk", "{tmp}/missing.jsonl", "{tmp}/out.jsonl"],     # input file does not exist
    ["bulk", "{inp}", "{tmp}/out.jsonl", "--config", "{tmp}/nope.yaml"],
    ["bulk", "{inp}", "{tmp}/out.jsonl", "--config", "{inp}", "--namespace", "x"],
    ["serve"],                                              # --config is required
    ["serve", "--config", "{tmp}/nope.yaml"],
    ["fakes", "no-such-protocol"],
    ["stats", "--timeout", "soon"],
])
def test_usage_errors_exit_2(argv, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}) + "\n")
    argv = [a.format(inp=inp, tmp=tmp_path) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse reports usage errors by exiting 2
        code = exc.code
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_duplicate_custom_ids_fail_with_a_clear_message_before_starting(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    line = json.dumps({"custom_id": "same", "model": "m", "messages": [{"role": "user", "content": "x"}]})
    inp.write_text(line + "\n" + line + "\n")
    assert main(["bulk", str(inp), str(tmp_path / "out.jsonl"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "custom_id" in err and "'same' on lines 1, 2" in err


def test_fakes_list(capsys):
    assert main(["fakes", "--list"]) == 0
    assert "openai" in capsys.readouterr().out


def test_serve_hands_config_host_and_port_to_the_serve_app(tmp_path, monkeypatch):
    import types

    import ipfs_accelerate_py
    calls = []
    stub = types.ModuleType("ipfs_accelerate_py.serve_app")
    stub.run = lambda config, **kw: calls.append((config, kw))
    monkeypatch.setitem(sys.modules, "ipfs_accelerate_py.serve_app", stub)
    monkeypatch.setattr(ipfs_accelerate_py, "serve_app", stub, raising=False)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("namespace: x\n")
    assert main(["serve", "--config", str(cfg), "--port", "8123"]) == 0
    assert calls == [(str(cfg), {"host": "127.0.0.1", "port": 8123, "blocking": True})]


def test_fakes_command_starts_a_fake_that_answers(tmp_path):
    import urllib.request
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "ipfs_accelerate_py.cli", "fakes", "openai", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**base, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
    try:
        info = json.loads(proc.stdout.readline())
        assert info["protocol"] == "openai" and info["base_url"].endswith("/v1")
        req = urllib.request.Request(info["base_url"] + "/models", headers={"Authorization": "Bearer sk-anything"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert any(m["id"] == "gpt-4o-mini" for m in json.loads(resp.read())["data"])
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_example_gateway_config_loads():
    from ipfs_accelerate_py.config import load_config
    cfg = load_config(ROOT / "examples" / "gateway.yaml", env={}, dotenv=False)
    assert [e.id for e in cfg.endpoints] == ["openai-a", "openai-b", "groq", "claude"]
    assert cfg.endpoints[0].rpm == 600 and cfg.aliases == {"fast": "groq/llama-3.1-8b-instant"}
    assert not cfg.discover_env


# ---------------------------------------------------------------------------
# cluster launcher configs: YAML, Ray's schema, Ray's own preparation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, provider", [("cluster.yaml", "local"), ("cluster-aws.yaml", "aws")])
def test_cluster_configs_match_rays_schema(name, provider):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / name).read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == provider and config["auth"]["ssh_user"]
    for key in ("cluster_name", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert config[key], key
    assert any("pip install" in c and "ipfs-accelerate-py" in c for c in config["setup_commands"])
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("serve deploy" in c and "serve_config.yaml" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address" in c for c in config["worker_start_ray_commands"])
    if provider == "local":
        assert config["provider"]["head_ip"] and isinstance(config["provider"]["worker_ips"], list)
    else:
        assert config["provider"]["region"] and config["head_node_type"] in config["available_node_types"]
        assert all(t["node_config"]["InstanceType"] for t in config["available_node_types"].values())
    for local_path in config["file_mounts"].values():
        if local_path.startswith("./"):
            assert (ROOT / local_path).exists(), local_path
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does first


# ---------------------------------------------------------------------------
# with Ray
# ---------------------------------------------------------------------------

@pytest.mark.ray
def test_stats_prints_the_per_key_table(make_gateway, capsys):
    from ipfs_accelerate_py.testing.fakes.runner import start_fake
    fake = start_fake("openai")
    try:
        api_key = f"sk-cli{uuid.uuid4().hex}"
        gw = make_gateway({"endpoints": [{"id": "k0", "provider": "openai", "base_url": fake.base_url,
                                          "api_key": api_key, "models": ["gpt-4o-mini"]}]})
        gw.chat("gpt-4o-mini", [{"role": "user", "content": "hi"}])
        assert main(["stats", "--namespace", gw.namespace, "--name", gw.name]) == 0
        out = capsys.readouterr().out
        assert "k0" in out and f"{api_key[:3]}...{api_key[-4:]}" in out and api_key not in out
        row = next(line for line in out.splitlines() if line.startswith("k0"))
        assert row.split()[2:4] == ["1", "1"]  # requests, ok
        assert main(["stats", "--namespace", gw.namespace, "--name", gw.name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["endpoints"]["k0"]["successful_requests"] == 1
    finally:
        fake.stop()


@pytest.mark.ray
@pytest.mark.slow
def test_demo_completes_on_its_own_ray_and_leaves_real_keys_alone(tmp_path):
    from ipfs_accelerate_py.testing.fakes.runner import start_fake
    # a "real" provider in the environment: the demo must not touch it without --real
    provider = start_fake("openai")
    env = {"OPENAI_API_KEY": f"sk-envkey{uuid.uuid4().hex}", "OPENAI_BASE_URL": provider.base_url}
    try:
        proc = run_cli("demo", "--requests", "200", "--out", str(tmp_path / "demo"), "--no-progress", env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "200 ok, 0 failed" in proc.stdout and "NOT used" in proc.stdout
        assert "upstream 429s counted by the fake server:" in proc.stdout
        results = [json.loads(line) for line in (tmp_path / "demo" / "results.jsonl").read_text().splitlines()]
        assert len(results) == 200 and all(r["error"] is None for r in results)
        assert len({r["custom_id"] for r in results}) == 200
        assert provider.stats()["requests"] == 0
        assert env["OPENAI_API_KEY"] not in proc.stdout + proc.stderr
    finally:
        provider.stop()


@pytest.mark.ray
def test_demo_real_uses_the_environment_and_leaves_a_running_ray_alone(ray_session, tmp_path, monkeypatch,
                                                                         capsys):
    from ipfs_accelerate_py.testing.fakes.runner import start_fake
    provider = start_fake("openai")
    api_key = f"sk-envkey{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    monkeypatch.setenv("OPENAI_BASE_URL", provider.base_url)
    try:
        # --real: the gateway comes from the environment, a small run goes to its first chat model
        code = main(["demo", "--real", "--real-requests", "5", "--out", str(tmp_path / "real"), "--no-progress"])
        out = capsys.readouterr()
        assert code == 0, out.out[-3000:] + out.err[-3000:]
        assert "5 ok, 0 failed" in out.out and provider.stats()["requests"] == 5
        assert api_key not in out.out + out.err
        assert ray_session.is_initialized()  # the caller's Ray was used, not shut down
    finally:
        provider.stop()
