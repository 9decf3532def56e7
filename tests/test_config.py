"""config: layered sources, seed names, validation messages, secrets never shown."""
from __future__ import annotations

import copy
import json
import os
import pickle

import pytest

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.config import (DEFAULT_CIRCUIT, DEFAULT_RETRY, BatchingConfig, CacheConfig,
                                       EndpointConfig, GatewayConfig, Secret, config_from_seed_metadata,
                                       discover_endpoints, endpoint_from_dict, load_config)
from ipfs_accelerate_py.errors import ConfigError

# recognisable fake keys; some key-shaped, some not (those rely on registration)
OPENAI_KEY = "sk-FAKEopenai0000000000000000a1b2"
OPENAI_KEY_2 = "sk-FAKEopenai1111111111111111c3d4"
ANTHROPIC_KEY = "sk-ant-FAKEanthropic000000000000e5f6"
GROQ_KEY = "gsk_FAKEgroq0000000000000000g7h8"
PLAIN_KEY = "plain-fake-secret-Zq9Xw7Vv"       # no known key shape
HEADER_TOKEN = "hdr-fake-token-Kk3Jj2Hh1"
S3_SECRET = "s3-fake-secret-Mm8Nn7Bb6Vv5"
GATEWAY_TOKEN = "gw-fake-token-Pp4Oo3Ii2"
ALL_SECRETS = [OPENAI_KEY, OPENAI_KEY_2, ANTHROPIC_KEY, GROQ_KEY, PLAIN_KEY, HEADER_TOKEN, S3_SECRET,
               GATEWAY_TOKEN]


def load(source=None, **kw):
    """load_config isolated from the real environment and any ./.env."""
    kw.setdefault("env", {})
    kw.setdefault("dotenv", False)
    return load_config(source, **kw)


def assert_no_secret(text: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text, f"secret {secret[:6]}... leaked"


# ---------------------------------------------------------------------------
# Secret
# ---------------------------------------------------------------------------

def test_secret_never_shows_its_value():
    s = Secret(OPENAI_KEY)
    assert s.get() == OPENAI_KEY
    assert s.fingerprint == "sk-...a1b2"
    for text in (repr(s), str(s), f"{s}", f"{s!r}", "%s" % s, repr([s]), repr({"k": s})):
        assert OPENAI_KEY not in text
    assert repr(s) == "Secret('sk-...a1b2')"


def test_secret_equality_hash_bool():
    assert Secret(PLAIN_KEY) == Secret(PLAIN_KEY)
    assert Secret(PLAIN_KEY) != Secret(OPENAI_KEY)
    assert len({Secret(PLAIN_KEY), Secret(PLAIN_KEY)}) == 1
    assert Secret(PLAIN_KEY) != PLAIN_KEY  # no accidental comparison with raw strings
    assert not Secret("")
    assert Secret("x")
    assert Secret(PLAIN_KEY).matches(PLAIN_KEY) and not Secret(PLAIN_KEY).matches("nope")
    assert Secret(Secret(PLAIN_KEY)) == Secret(PLAIN_KEY)


def test_secret_is_immutable_and_typed():
    s = Secret(PLAIN_KEY)
    with pytest.raises(AttributeError):
        s._value = "other"
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


def test_secret_registers_for_redaction():
    value = "unshaped-credential-Yy6Tt5Rr4"
    Secret(value)
    assert value not in errors.redact(f"upstream said: bad key {value}")
    assert value not in str(errors.AuthenticationError(f"key {value} rejected"))


def test_secret_pickles_and_deepcopies_by_value():
    s = Secret(OPENAI_KEY)
    assert pickle.loads(pickle.dumps(s)).get() == OPENAI_KEY
    assert copy.deepcopy(s) == s


# ---------------------------------------------------------------------------
# Defaults and precedence
# ---------------------------------------------------------------------------

def test_builtin_defaults():
    cfg = load()
    assert (cfg.namespace, cfg.name, cfg.strategy, cfg.queue_size) == ("ipfs_accelerate", "ia", "round-robin", 10000)
    assert cfg.retry == DEFAULT_RETRY and cfg.circuit == DEFAULT_CIRCUIT
    assert cfg.request_timeout_s == 600.0
    assert cfg.cache == CacheConfig() and cfg.batching == BatchingConfig()
    assert cfg.endpoints == [] and cfg.gateway_keys == []
    assert cfg.discover_env is True  # no config given: discovery on (found nothing in env={})
    assert GatewayConfig().discover_env is False
    assert cfg.direct_lane is True and GatewayConfig().direct_lane is True


def _yaml(tmp_path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def _dotenv(tmp_path, text: str):
    path = tmp_path / "test.env"
    path.write_text(text)
    return path


def test_yaml_overrides_defaults(tmp_path):
    cfg = load(_yaml(tmp_path, "queue_size: 5\nstrategy: least-loaded\nretry:\n  max_retries: 6\n"))
    assert cfg.queue_size == 5 and cfg.strategy == "least-loaded"
    assert cfg.retry == {**DEFAULT_RETRY, "max_retries": 6}  # merged with defaults
    assert str(tmp_path / "gateway.yaml")  # path objects and strings both accepted
    assert load(str(tmp_path / "gateway.yaml")).queue_size == 5


def test_dotenv_overrides_yaml(tmp_path):
    yaml_path = _yaml(tmp_path, "strategy: least-loaded\nqueue_size: 5\n")
    env_path = _dotenv(tmp_path, "IPFS_ACCELERATE_STRATEGY=weighted\n")
    cfg = load(yaml_path, dotenv=env_path)
    assert cfg.strategy == "weighted" and cfg.queue_size == 5


def test_environment_overrides_dotenv(tmp_path):
    yaml_path = _yaml(tmp_path, "strategy: least-loaded\n")
    env_path = _dotenv(tmp_path, "IPFS_ACCELERATE_STRATEGY=weighted\nIPFS_ACCELERATE_QUEUE_SIZE=7\n")
    cfg = load(yaml_path, dotenv=env_path, env={"IPFS_ACCELERATE_STRATEGY": "random"})
    assert cfg.strategy == "random" and cfg.queue_size == 7


def test_explicit_dict_overrides_environment():
    env = {"IPFS_ACCELERATE_STRATEGY": "random", "IPFS_ACCELERATE_QUEUE_SIZE": "7"}
    cfg = load({"strategy": "least-loaded"}, env=env)
    assert cfg.strategy == "least-loaded"
    assert cfg.queue_size == 7  # not set explicitly: the environment still applies


def test_kwargs_override_everything(tmp_path):
    yaml_path = _yaml(tmp_path, "strategy: least-loaded\n")
    cfg = load(yaml_path, env={"IPFS_ACCELERATE_STRATEGY": "random"}, strategy="weighted")
    assert cfg.strategy == "weighted"
    assert load({"queue_size": 3}, queue_size=4).queue_size == 4


def test_all_scalar_environment_settings():
    env = {"IPFS_ACCELERATE_STRATEGY": "least_loaded", "IPFS_ACCELERATE_QUEUE_SIZE": "12",
           "IPFS_ACCELERATE_NAMESPACE": "ns1", "IPFS_ACCELERATE_NAME": "gw",
           "IPFS_ACCELERATE_REQUEST_TIMEOUT_S": "42.5", "IPFS_ACCELERATE_MAX_RETRIES": "9",
           "IPFS_ACCELERATE_GATEWAY_KEYS": f"{GATEWAY_TOKEN}, other-token-123"}
    cfg = load(env=env)
    assert cfg.strategy == "least-loaded"  # normalised spelling
    assert (cfg.queue_size, cfg.namespace, cfg.name, cfg.request_timeout_s) == (12, "ns1", "gw", 42.5)
    assert cfg.retry["max_retries"] == 9 and cfg.retry["jitter"] == DEFAULT_RETRY["jitter"]
    assert [k.get() for k in cfg.gateway_keys] == [GATEWAY_TOKEN, "other-token-123"]


@pytest.mark.parametrize("raw, expected", [("0", False), ("off", False), ("No", False), ("1", True), ("yes", True)])
def test_direct_lanes_switch_from_the_environment(raw, expected):
    assert load(env={"IPFS_ACCELERATE_DIRECT_LANE": raw}).direct_lane is expected
    # an explicit config still wins over the environment
    assert load({"direct_lane": not expected}, env={"IPFS_ACCELERATE_DIRECT_LANE": raw}).direct_lane is not expected


def test_direct_lane_must_be_a_boolean():
    with pytest.raises(ConfigError, match="IPFS_ACCELERATE_DIRECT_LANE must be true or false"):
        load(env={"IPFS_ACCELERATE_DIRECT_LANE": "maybe"})
    with pytest.raises(ConfigError, match="direct_lane must be true or false"):
        load({"direct_lane": "yes"})


def test_sections_merge_across_layers(tmp_path):
    yaml_path = _yaml(tmp_path, "retry:\n  max_retries: 5\n  jitter: 0.1\ncache:\n  enabled: true\n")
    cfg = load(yaml_path, env={"IPFS_ACCELERATE_MAX_RETRIES": "7"}, cache={"ttl": 10})
    assert cfg.retry["max_retries"] == 7 and cfg.retry["jitter"] == 0.1
    assert cfg.cache.enabled is True and cfg.cache.ttl == 10.0


def test_gateway_config_source_is_used_as_is():
    original = load({"strategy": "least-loaded", "endpoints": [
        {"id": "o", "provider": "openai", "api_key": OPENAI_KEY}]})
    again = load(original, env={"IPFS_ACCELERATE_STRATEGY": "random", "OPENAI_API_KEY": GROQ_KEY})
    assert again == original


# ---------------------------------------------------------------------------
# .env handling
# ---------------------------------------------------------------------------

def test_dotenv_default_is_cwd_and_never_touches_os_environ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={OPENAI_KEY}\nIPFS_ACCELERATE_QUEUE_SIZE=3\n")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = load_config(env={})
    assert cfg.queue_size == 3
    assert [ep.id for ep in cfg.endpoints] == ["openai"]
    assert cfg.endpoints[0].api_key.get() == OPENAI_KEY
    assert "OPENAI_API_KEY" not in os.environ
    assert load_config(env={}, dotenv=False).queue_size == 10000  # skipped


def test_explicit_dotenv_path_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(dotenv=tmp_path / "missing.env")


def test_dotenv_interpolation_uses_given_env_only(tmp_path):
    env_path = _dotenv(tmp_path, "BASE=http://llvm.local:9000\nLLVM_BASE_URL=${BASE}/v1\n"
                                 "LLVM_DEFAULT_MODEL=${UNSET_VAR:-fallback-model}\n")
    cfg = load(dotenv=env_path)
    ep = cfg.endpoint("llvm")
    assert ep.base_url == "http://llvm.local:9000/v1" and ep.default_model == "fallback-model"


# ---------------------------------------------------------------------------
# Discovery from environment variables (seed names)
# ---------------------------------------------------------------------------

SEED_ENV = {
    "OPENAI_API_KEY": OPENAI_KEY,
    "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
    "GROQ_API_KEY": GROQ_KEY,
    "HF_API_TOKEN": "hf_FAKEhuggingface000000000",
    "GOOGLE_API_KEY": "AIzaFAKEgoogle00000000000000",
    "OLLAMA_API_URL": "http://localhost:11434/api",
    "OLLAMA_MODEL": "llama3",
    "LLVM_API_KEY": PLAIN_KEY,
    "LLVM_BASE_URL": "http://your-llvm-server:8000",
    "LLVM_DEFAULT_MODEL": "llvm-model-name",
    "OVMS_API_URL": "http://ovms:9000",
    "OVMS_MODEL": "resnet",
    "OPEA_API_URL": "http://opea:8888/",
    "S3_ENDPOINT_URL": "http://127.0.0.1:5055",
    "AWS_ACCESS_KEY_ID": "AKIAFAKE",
    "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    "S3_BUCKET": "models",
}


def test_seed_environment_names_discover_every_provider():
    cfg = load(env=SEED_ENV)
    by_id = {ep.id: ep for ep in cfg.endpoints}
    assert set(by_id) == {"openai", "claude", "groq", "hf_tgi", "hf_tei", "gemini", "ollama", "llvm",
                          "ovms", "opea", "s3"}
    assert by_id["openai"].api_key.get() == OPENAI_KEY and by_id["openai"].base_url is None
    assert by_id["claude"].provider == "claude" and by_id["claude"].api_key.get() == ANTHROPIC_KEY
    assert by_id["hf_tgi"].api_key == by_id["hf_tei"].api_key
    assert by_id["gemini"].api_key.get().startswith("AIza")
    assert by_id["ollama"].base_url == "http://localhost:11434"  # "/api" stripped
    assert by_id["ollama"].default_model == "llama3" and by_id["ollama"].api_key is None
    assert (by_id["llvm"].base_url, by_id["llvm"].default_model) == ("http://your-llvm-server:8000",
                                                                     "llvm-model-name")
    assert by_id["llvm"].api_key.get() == PLAIN_KEY
    assert by_id["ovms"].default_model == "resnet"
    assert by_id["opea"].base_url == "http://opea:8888"
    s3 = by_id["s3"]
    assert s3.base_url == "http://127.0.0.1:5055"
    assert s3.options["access_key_id"] == "AKIAFAKE" and s3.options["bucket"] == "models"
    assert isinstance(s3.options["secret_access_key"], Secret)
    assert s3.options["secret_access_key"].get() == S3_SECRET


def test_alternative_variable_names():
    env = {"CLAUDE_API_KEY": ANTHROPIC_KEY, "GEMINI_API_KEY": "AIzaFAKEgemini0000000000000",
           "HF_TOKEN": "hf_FAKEother0000000000000", "HF_TGI_URL": "http://tgi:3000",
           "HF_TEI_URL": "http://tei:8080/", "OLLAMA_HOST": "gpu-box:11500",
           "AWS_ENDPOINT_URL_S3": "http://minio:9000", "OPENAI_BASE_URL": "http://proxy/v1",
           "OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_BASE_URL": "http://claude-proxy"}
    by_id = {ep.id: ep for ep in load(env=env).endpoints}
    assert by_id["claude"].base_url == "http://claude-proxy"
    assert by_id["gemini"].provider == "gemini"
    assert by_id["hf_tgi"].base_url == "http://tgi:3000" and by_id["hf_tei"].base_url == "http://tei:8080"
    assert by_id["ollama"].base_url == "http://gpu-box:11500"
    assert by_id["s3"].base_url == "http://minio:9000"
    assert by_id["openai"].base_url == "http://proxy/v1"


def test_ollama_host_without_port_gets_default_port():
    assert load(env={"OLLAMA_HOST": "localhost"}).endpoint("ollama").base_url == "http://localhost:11434"


def test_nothing_discovered_without_trigger_variables():
    env = {"OPENAI_BASE_URL": "http://x/v1", "OLLAMA_MODEL": "llama3", "AWS_ACCESS_KEY_ID": "AKIA",
           "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    assert load(env=env).endpoints == []


def test_explicit_config_never_discovers(tmp_path):
    assert load({"strategy": "round-robin"}, env=SEED_ENV).endpoints == []
    assert load(_yaml(tmp_path, "queue_size: 3\n"), env=SEED_ENV).endpoints == []
    assert load(GatewayConfig(), env=SEED_ENV).endpoints == []


def test_explicit_config_can_opt_in_to_discovery(tmp_path):
    cfg = load({"discover_env": True}, env={"GROQ_API_KEY": GROQ_KEY})
    assert [ep.id for ep in cfg.endpoints] == ["groq"]
    cfg = load(_yaml(tmp_path, "discover_env: true\n"), env={"GROQ_API_KEY": GROQ_KEY})
    assert [ep.id for ep in cfg.endpoints] == ["groq"]
    assert load(env={"GROQ_API_KEY": GROQ_KEY}, discover_env=False).endpoints == []


def test_several_keys_comma_separated():
    cfg = load(env={"OPENAI_API_KEYS": f"{OPENAI_KEY}, {OPENAI_KEY_2},sk-FAKEthird000000000000000000z9"})
    assert [ep.id for ep in cfg.endpoints] == ["openai-1", "openai-2", "openai-3"]
    assert cfg.endpoint("openai-2").api_key.get() == OPENAI_KEY_2


def test_several_keys_numbered_in_numeric_order_and_deduplicated():
    env = {"GROQ_API_KEY_10": "gsk_FAKEten000000000000000", "GROQ_API_KEY_2": "gsk_FAKEtwo000000000000000",
           "GROQ_API_KEY_1": GROQ_KEY, "GROQ_API_KEY": GROQ_KEY}
    cfg = load(env=env)
    assert [ep.id for ep in cfg.endpoints] == ["groq-1", "groq-2", "groq-3"]
    assert [ep.api_key.get() for ep in cfg.endpoints] == [GROQ_KEY, "gsk_FAKEtwo000000000000000",
                                                          "gsk_FAKEten000000000000000"]


def test_numbered_keys_work_for_every_key_variable():
    env = {"ANTHROPIC_API_KEY_1": ANTHROPIC_KEY, "CLAUDE_API_KEY_2": "sk-ant-FAKEsecond000000000000",
           "HF_API_TOKENS": "hf_FAKEaaaaaaaaaaaaaaaaaaa,hf_FAKEbbbbbbbbbbbbbbbbbbb"}
    ids = [ep.id for ep in load(env=env).endpoints]
    assert ids == ["claude-1", "claude-2", "hf_tgi-1", "hf_tgi-2", "hf_tei-1", "hf_tei-2"]


def test_discover_endpoints_returns_secrets():
    found = discover_endpoints({"OPENAI_API_KEY": OPENAI_KEY})
    assert found == [{"id": "openai", "provider": "openai", "api_key": Secret(OPENAI_KEY)}]


# ---------------------------------------------------------------------------
# Merging endpoints
# ---------------------------------------------------------------------------

def test_environment_key_overrides_yaml_endpoint_with_same_id(tmp_path):
    yaml_path = _yaml(tmp_path, f"""
discover_env: true
endpoints:
  - id: openai
    provider: openai
    api_key: {OPENAI_KEY}
    rpm: 100
""")
    cfg = load(yaml_path, env={"OPENAI_API_KEY": OPENAI_KEY_2})
    assert len(cfg.endpoints) == 1
    ep = cfg.endpoints[0]
    assert ep.api_key.get() == OPENAI_KEY_2 and ep.rpm == 100.0


def test_same_key_under_two_ids_is_merged_later_wins():
    cfg = load({"endpoints": [
        {"id": "a", "provider": "openai", "api_key": OPENAI_KEY, "rpm": 10, "tpm": 1000},
        {"id": "b", "provider": "openai", "api_key": OPENAI_KEY, "rpm": 20},
    ]})
    assert len(cfg.endpoints) == 1
    ep = cfg.endpoints[0]
    assert (ep.id, ep.rpm, ep.tpm) == ("b", 20.0, 1000.0)


def test_discovered_key_merges_into_user_named_endpoint(tmp_path):
    yaml_path = _yaml(tmp_path, f"""
discover_env: true
endpoints:
  main: {{provider: openai, api_key: {OPENAI_KEY}, max_concurrent_requests: 4}}
""")
    cfg = load(yaml_path, env={"OPENAI_API_KEY": OPENAI_KEY, "GROQ_API_KEY": GROQ_KEY})
    assert [ep.id for ep in cfg.endpoints] == ["main", "groq"]
    assert cfg.endpoint("main").max_concurrent_requests == 4


def test_different_base_urls_are_different_endpoints():
    cfg = load({"endpoints": [
        {"id": "a", "provider": "openai", "api_key": OPENAI_KEY},
        {"id": "b", "provider": "openai", "api_key": OPENAI_KEY, "base_url": "http://proxy/v1/"},
    ]})
    assert [ep.base_url for ep in cfg.endpoints] == [None, "http://proxy/v1"]


def test_duplicate_ids_in_one_source_are_an_error():
    with pytest.raises(ConfigError) as info:
        load({"endpoints": [{"id": "x", "provider": "openai", "api_key": OPENAI_KEY},
                            {"id": "x", "provider": "groq", "api_key": GROQ_KEY}]})
    assert "endpoints[1].id 'x' is already used by endpoints[0]" in str(info.value)


def test_endpoint_defaults_fill_unset_fields():
    cfg = load({"endpoint_defaults": {"rpm": 60, "max_concurrent_requests": 8,
                                      "headers": {"X-Team": "ml"}},
                "endpoints": [{"id": "a", "provider": "openai", "api_key": OPENAI_KEY},
                              {"id": "b", "provider": "groq", "api_key": GROQ_KEY, "rpm": 5,
                               "headers": {"X-Extra": "1"}}]})
    a, b = cfg.endpoints
    assert (a.rpm, a.max_concurrent_requests, dict(a.headers)) == (60.0, 8, {"X-Team": "ml"})
    assert (b.rpm, b.max_concurrent_requests) == (5.0, 8)
    assert dict(b.headers) == {"X-Team": "ml", "X-Extra": "1"}


def test_endpoints_as_mapping_of_id_to_settings():
    cfg = load({"endpoints": {"fast": {"provider": "groq", "api_key": GROQ_KEY}}})
    assert cfg.endpoint("fast").provider == "groq"


# ---------------------------------------------------------------------------
# EndpointConfig fields
# ---------------------------------------------------------------------------

def test_endpoint_normalisation():
    ep = EndpointConfig(id="c", provider="Anthropic", base_url="https://api.anthropic.com/",
                        api_key=ANTHROPIC_KEY, models="claude-3-opus, claude-3-haiku")  # type: ignore[arg-type]
    assert ep.provider == "claude"
    assert ep.base_url == "https://api.anthropic.com"
    assert isinstance(ep.api_key, Secret) and ep.api_key.get() == ANTHROPIC_KEY
    assert ep.models == ["claude-3-opus", "claude-3-haiku"]
    assert ep.fingerprint == "sk-...e5f6"


def test_api_key_env_is_resolved_at_load_time():
    cfg = load({"endpoints": [{"id": "a", "provider": "openai", "api_key_env": "MY_OPENAI"}]},
               env={"MY_OPENAI": OPENAI_KEY})
    ep = cfg.endpoints[0]
    assert ep.api_key.get() == OPENAI_KEY and ep.api_key_env == "MY_OPENAI"


def test_missing_api_key_env_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load({"endpoints": [{"id": "a", "provider": "openai", "api_key_env": "MY_OPENAI"}]})
    assert "endpoints[0].api_key_env" in str(info.value) and "'MY_OPENAI' is not set" in str(info.value)


def test_retry_circuit_prices_options_headers():
    ep = endpoint_from_dict({
        "id": "s", "provider": "s3", "base_url": "http://minio:9000",
        "retry": {"max_retries": 1}, "circuit": {"failure_threshold": 2, "failure_rate_threshold": 0.5},
        "prices": {"*": {"input": 0, "output": 0}},
        "options": {"region": "us-east-1", "bucket": "b", "access_key_id": "AKIA",
                    "secret_access_key": S3_SECRET},
        "headers": {"Authorization": f"Bearer {HEADER_TOKEN}", "X-Trace": "on"},
    })
    assert ep.retry == {"max_retries": 1}
    assert ep.circuit == {"failure_threshold": 2, "failure_rate_threshold": 0.5}
    assert ep.prices == {"*": {"input": 0, "output": 0}}
    assert isinstance(ep.options["secret_access_key"], Secret)
    assert ep.options["access_key_id"] == "AKIA"  # a key id is not a secret
    # providers merge headers straight into requests: values stay strings
    merged = {"Content-Type": "application/json"}
    merged.update(ep.headers)
    assert merged["Authorization"] == f"Bearer {HEADER_TOKEN}"
    assert HEADER_TOKEN not in repr(ep.headers) and "X-Trace" in repr(ep.headers)
    assert ep.fingerprint == errors.fingerprint(S3_SECRET)


def test_endpoint_retry_is_checked_against_the_gateway_retry():
    ep = {"id": "a", "provider": "openai", "api_key": OPENAI_KEY, "retry": {"initial_retry_delay": 10}}
    cfg = load({"retry": {"max_retry_delay": 60}, "endpoints": [ep]})
    assert cfg.retry_for("a")["initial_retry_delay"] == 10.0
    msg = _error({"endpoints": [ep]})
    assert "endpoints[0].retry: RetryPolicy.max_retry_delay must be >= initial_retry_delay" in msg


def test_header_values_cannot_inject_lines():
    msg = _error({"endpoints": [{"id": "a", "provider": "openai", "api_key": OPENAI_KEY,
                                 "headers": {"X-A": "1\r\nX-B: 2"}}]})
    assert "endpoints[0].headers['X-A'] must not contain line breaks" in msg


def test_retry_and_circuit_for_endpoint():
    cfg = load({"retry": {"max_retries": 5}, "endpoints": [
        {"id": "a", "provider": "openai", "api_key": OPENAI_KEY, "retry": {"max_retries": 1},
         "circuit": {"reset_timeout": 5}}]})
    assert cfg.retry_for("a") == {**DEFAULT_RETRY, "max_retries": 1}
    assert cfg.circuit_for(cfg.endpoints[0]) == {**DEFAULT_CIRCUIT, "reset_timeout": 5.0}


def test_endpoint_lookup():
    cfg = load({"endpoints": [{"id": "openai-main", "provider": "openai", "api_key": OPENAI_KEY}]})
    assert cfg.endpoint("openai-main").provider == "openai"
    with pytest.raises(ConfigError, match="did you mean 'openai-main'"):
        cfg.endpoint("openai-mian")


def test_endpoint_from_dict_applies_defaults_for_runtime_additions():
    ep = endpoint_from_dict({"id": "new", "provider": "groq", "api_key": GROQ_KEY},
                            defaults={"rpm": 30, "timeout_s": 5})
    assert (ep.rpm, ep.timeout_s) == (30.0, 5.0)


# ---------------------------------------------------------------------------
# Validation messages
# ---------------------------------------------------------------------------

def _error(source, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(source, **kw)
    return str(info.value)


def test_bad_endpoint_value_names_the_field_path():
    msg = _error({"endpoints": [{"id": "a", "provider": "openai", "api_key": OPENAI_KEY},
                                {"id": "b", "provider": "groq", "api_key": GROQ_KEY, "rpm": -5}]})
    assert "endpoints[1].rpm must be a positive number, got -5" in msg
    assert msg.startswith("Configuration error")


@pytest.mark.parametrize("field,value,fragment", [
    ("max_concurrent_requests", 0, "endpoints[0].max_concurrent_requests must be a positive integer, got 0"),
    ("timeout_s", "soon", "endpoints[0].timeout_s must be a positive number, got 'soon'"),
    ("base_url", "localhost:8000", "endpoints[0].base_url must be an http(s) URL"),
    ("enabled", "yes", "endpoints[0].enabled must be true or false"),
    ("weight", 0, "endpoints[0].weight must be a positive number"),
    ("retry", {"max_retries": -1}, "endpoints[0].retry.max_retries must be an integer >= 0, got -1"),
    ("retry", {"backoff_factor": 0.5}, "endpoints[0].retry.backoff_factor must be a number >= 1"),
    ("circuit", {"failure_rate_threshold": 0}, "endpoints[0].circuit.failure_rate_threshold"),
    ("prices", {"m": {"input": -1}}, "endpoints[0].prices['m'].input must be a non-negative number"),
    ("models", [""], "endpoints[0].models[0] must be a non-empty string"),
    ("id", "bad id!", "endpoints[0].id must be"),
])
def test_bad_values_name_their_field(field, value, fragment):
    ep = {"id": "a", "provider": "openai", "api_key": OPENAI_KEY, field: value}
    assert fragment in _error({"endpoints": [ep]})


@pytest.mark.parametrize("data,fragment", [
    ({"queue_size": 0}, "queue_size must be a positive integer, got 0"),
    ({"request_timeout_s": -1}, "request_timeout_s must be a positive number"),
    ({"retry": {"jitter": 2}}, "retry.jitter must be a number in [0, 1], got 2"),
    ({"circuit": {"success_threshold": 0}}, "circuit.success_threshold must be a positive integer"),
    ({"cache": {"similarity_threshold": 1.5}}, "cache.similarity_threshold must be a number in (0, 1]"),
    ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size must be a positive integer"),
    ({"discover_env": "yes"}, "discover_env must be true or false"),
    ({"name": "a:b"}, "name must be letters, digits"),
    ({"aliases": {"fast": ""}}, "aliases['fast'] must be a non-empty string"),
    ({"endpoint_defaults": {"rpm": -1}}, "endpoint_defaults.rpm must be a positive number"),
    ({"retry": {"initial_retry_delay": 10}}, "retry: RetryPolicy.max_retry_delay must be >= initial_retry_delay"),
])
def test_bad_gateway_values_name_their_field(data, fragment):
    assert fragment in _error(data)


def test_unknown_provider_lists_the_known_ones():
    msg = _error({"endpoints": [{"id": "a", "provider": "opneai", "api_key": OPENAI_KEY}]})
    assert "endpoints[0].provider 'opneai' is not a known provider (did you mean 'openai'?)" in msg
    for name in ("openai", "groq", "claude", "gemini", "ollama", "hf_tgi", "hf_tei", "llvm", "ovms",
                 "opea", "s3"):
        assert name in msg


def test_missing_provider():
    assert "endpoints[0].provider is required" in _error({"endpoints": [{"id": "a"}]})


def test_unknown_top_level_key_is_a_typo_error():
    msg = _error({"stratgy": "least-loaded"})
    assert "unknown key 'stratgy'" in msg and "did you mean 'strategy'" in msg
    assert "known keys: namespace, name, strategy" in msg


def test_unknown_keys_in_sections_and_endpoints(tmp_path):
    assert "unknown key 'rpn' in endpoints[0] (did you mean 'rpm'?)" in _error(
        {"endpoints": [{"id": "a", "provider": "openai", "api_key": OPENAI_KEY, "rpn": 3}]})
    assert "unknown key 'max_retry' in retry" in _error({"retry": {"max_retry": 3}})
    assert "unknown key 'ttl_s' in cache" in _error({"cache": {"ttl_s": 3}})
    assert "unknown key 'id' in endpoint_defaults" in _error({"endpoint_defaults": {"id": "x"}})
    assert "unknown key 'bogus'" in _error(_yaml(tmp_path, "bogus: 1\n"))
    assert "unknown key 'bogus'" in _error(None, bogus=1)


def test_bad_environment_values_name_the_variable():
    assert "IPFS_ACCELERATE_QUEUE_SIZE must be an integer, got 'lots'" in _error(
        None, env={"IPFS_ACCELERATE_QUEUE_SIZE": "lots"})
    assert "IPFS_ACCELERATE_MAX_RETRIES must be an integer >= 0, got -2" in _error(
        None, env={"IPFS_ACCELERATE_MAX_RETRIES": "-2"})
    assert "IPFS_ACCELERATE_REQUEST_TIMEOUT_S must be a number" in _error(
        None, env={"IPFS_ACCELERATE_REQUEST_TIMEOUT_S": "forever"})
    assert "environment variables: endpoints['openai'].base_url must be an http(s) URL" in _error(
        None, env={"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "not-a-url"})


def test_yaml_file_problems(tmp_path):
    assert "not found" in _error(tmp_path / "nope.yaml")
    assert "at line 3, column 1" in _error(_yaml(tmp_path, "a: 1\nb: [unclosed\n"))
    assert "must hold a mapping" in _error(_yaml(tmp_path, "- 1\n- 2\n"))
    assert load(_yaml(tmp_path, "")).queue_size == 10000  # empty file = defaults
    with pytest.raises(ConfigError, match="config source must be"):
        load(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Secrets never shown
# ---------------------------------------------------------------------------

def _secret_config() -> GatewayConfig:
    return load({
        "gateway_keys": [GATEWAY_TOKEN],
        "endpoint_defaults": {"headers": {"x-api-key": PLAIN_KEY}},
        "endpoints": [
            {"id": "o", "provider": "openai", "api_key": OPENAI_KEY,
             "headers": {"Authorization": f"Bearer {HEADER_TOKEN}"}},
            {"id": "c", "provider": "claude", "api_key": ANTHROPIC_KEY},
            {"id": "g", "provider": "groq", "api_key": GROQ_KEY},
            {"id": "l", "provider": "llvm", "api_key": PLAIN_KEY, "base_url": "http://llvm:8000"},
            {"id": "s", "provider": "s3", "base_url": "http://minio:9000",
             "options": {"access_key_id": "AKIA", "secret_access_key": S3_SECRET}},
        ],
    })


def test_no_secret_in_repr_str_or_to_dict():
    cfg = _secret_config()
    assert_no_secret(repr(cfg))
    assert_no_secret(str(cfg))
    for ep in cfg.endpoints:
        assert_no_secret(repr(ep))
        assert_no_secret(str(ep))
        assert_no_secret(json.dumps(ep.to_dict()))
    dumped = cfg.to_dict()
    assert_no_secret(repr(dumped))
    assert_no_secret(json.dumps(dumped))
    assert dumped["endpoints"][0]["api_key"] == "sk-...a1b2"
    assert dumped["gateway_keys"] == [errors.fingerprint(GATEWAY_TOKEN)]


def test_unredacted_dict_round_trips():
    cfg = _secret_config()
    raw = cfg.to_dict(redact=False)
    assert raw["endpoints"][0]["api_key"] == OPENAI_KEY
    assert raw["endpoints"][4]["options"]["secret_access_key"] == S3_SECRET
    json.dumps(raw)  # plain data
    again = GatewayConfig.from_dict(raw, env={})
    assert again == cfg


def test_pickle_round_trip_keeps_keys_usable():
    cfg = _secret_config()
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg
    assert back.endpoint("o").api_key.get() == OPENAI_KEY
    assert back.endpoint("s").options["secret_access_key"].get() == S3_SECRET
    assert dict(back.endpoint("o").headers)["Authorization"] == f"Bearer {HEADER_TOKEN}"
    assert back.gateway_keys[0].matches(GATEWAY_TOKEN)
    assert_no_secret(repr(back))


@pytest.mark.parametrize("bad", [
    {"endpoints": [{"id": "o", "provider": "openai", "api_key": OPENAI_KEY, "rpm": -5}]},
    {"endpoints": [{"id": "o", "provider": "nope", "api_key": PLAIN_KEY}]},
    {"endpoints": [{"id": "o", "provider": "openai", "api_key": PLAIN_KEY, "api_kye": PLAIN_KEY}]},
    {"endpoints": [{"id": "o", "provider": "openai", "api_key": 12345}], "gateway_keys": [GATEWAY_TOKEN],
     "queue_size": -1},
    {"endpoints": [{"id": "o", "provider": "openai", "headers": {"Authorization": 5},
                    "api_key": PLAIN_KEY}]},
    {"endpoints": [{"id": "o", "provider": "openai", "api_key": GROQ_KEY,
                    "headers": {"Authorization": f"Bearer {HEADER_TOKEN}"}, "timeout_s": 0}]},
    {"endpoints": [{"id": "s", "provider": "s3", "base_url": "http://m:9000",
                    "options": {"secret_access_key": S3_SECRET}, "weight": -1}]},
    {"endpoints": [{"id": PLAIN_KEY + "!", "provider": "openai", "api_key": PLAIN_KEY}]},
    {"endpoints": [{"id": "o", "provider": "openai", "api_key": ANTHROPIC_KEY},
                   {"id": "o", "provider": "claude", "api_key": ANTHROPIC_KEY}]},
])
def test_config_errors_never_show_a_key(bad):
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))


def test_secrets_from_environment_are_redacted_in_errors():
    env = {"OPENAI_API_KEY": PLAIN_KEY + "-env", "OPENAI_BASE_URL": "bad url"}
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert PLAIN_KEY + "-env" not in str(info.value)


# ---------------------------------------------------------------------------
# Seed metadata
# ---------------------------------------------------------------------------

def test_seed_metadata_keys():
    metadata = {
        "openai_api_key": OPENAI_KEY, "anthropic_api_key": ANTHROPIC_KEY, "groq_api_key": GROQ_KEY,
        "hf_api_token": "hf_FAKEmeta00000000000000", "google_api_key": "AIzaFAKEmeta0000000000000000",
        "ollama_api_url": "http://localhost:11434/api", "ollama_model": "llama3",
        "llvm_api_key": PLAIN_KEY, "llvm_base_url": "http://llvm:8000", "llvm_default_model": "m1",
        "ovms_api_url": "http://ovms:9000", "ovms_api_key": "ovms-fake-key-123", "ovms_model": "bert",
        "opea_api_url": "http://opea:8888", "opea_api_key": "opea-fake-key-456",
        "s3cfg": {"accessKey": "AKIA", "secretKey": S3_SECRET, "endpoint": "http://minio:9000",
                  "bucket": "models"},
    }
    by_id = {ep.id: ep for ep in config_from_seed_metadata(metadata, resources={})}
    assert set(by_id) == {"openai", "claude", "groq", "hf_tgi", "hf_tei", "gemini", "ollama", "llvm",
                          "ovms", "opea", "s3"}
    assert by_id["ollama"].base_url == "http://localhost:11434" and by_id["ollama"].default_model == "llama3"
    assert by_id["llvm"].default_model == "m1" and by_id["llvm"].api_key.get() == PLAIN_KEY
    assert by_id["ovms"].api_key.get() == "ovms-fake-key-123" and by_id["ovms"].default_model == "bert"
    assert by_id["opea"].api_key.get() == "opea-fake-key-456"
    assert by_id["s3"].options["secret_access_key"].get() == S3_SECRET
    assert by_id["s3"].options["bucket"] == "models"
    assert_no_secret(repr(list(by_id.values())))


def test_seed_metadata_claude_and_gemini_aliases_and_url_variants():
    eps = config_from_seed_metadata({"claude_api_key": ANTHROPIC_KEY, "gemini_api_key": "AIzaFAKEx0000000000000000",
                                     "openai_api_key": OPENAI_KEY, "openai_base_url": "http://proxy/v1",
                                     "llvm_endpoint_url": "http://llvm:8080",
                                     "hf_tgi_endpoint_url": "http://tgi:3000"})
    by_id = {ep.id: ep for ep in eps}
    assert by_id["claude"].api_key.get() == ANTHROPIC_KEY
    assert by_id["gemini"].provider == "gemini"
    assert by_id["openai"].base_url == "http://proxy/v1"
    assert by_id["llvm"].base_url == "http://llvm:8080" and by_id["llvm"].api_key is None
    assert by_id["hf_tgi"].base_url == "http://tgi:3000"


def test_seed_metadata_multiple_keys_and_resources():
    eps = config_from_seed_metadata(
        {"openai_api_keys": [OPENAI_KEY, OPENAI_KEY_2]},
        resources={"tei_endpoints": [["BAAI/bge-small-en-v1.5", "http://tei-1:8080/", 512],
                                     {"model": "intfloat/e5", "endpoint": "http://tei-2:8080"}]})
    by_id = {ep.id: ep for ep in eps}
    assert set(by_id) == {"openai-1", "openai-2", "hf_tei-1", "hf_tei-2"}
    assert by_id["hf_tei-1"].base_url == "http://tei-1:8080"
    assert by_id["hf_tei-1"].models == ["BAAI/bge-small-en-v1.5"]
    assert by_id["hf_tei-2"].default_model == "intfloat/e5"


def test_seed_metadata_empty_and_bad():
    assert config_from_seed_metadata({}) == []
    with pytest.raises(ConfigError, match="resources\\['tgi_endpoints'\\]\\[0\\]"):
        config_from_seed_metadata({}, resources={"tgi_endpoints": ["just-a-string"]})
