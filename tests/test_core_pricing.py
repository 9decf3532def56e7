"""core.pricing: the packaged table, id matching, overrides, unknown = None."""
from __future__ import annotations

import json
from importlib import resources

import pytest

from ipfs_accelerate_py.core import pricing
from ipfs_accelerate_py.core.pricing import Price, cost_usd, price_for
from ipfs_accelerate_py.errors import ConfigError

SEED_MODELS = {
    "openai": ["gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "text-embedding-3-small",
               "text-embedding-3-large", "text-embedding-ada-002"],
    "claude": ["claude-3-opus", "claude-3-sonnet", "claude-3-haiku", "claude-3-5-sonnet",
               "claude-3-5-haiku", "claude-3-7-sonnet", "claude-sonnet-4", "claude-opus-4"],
    "groq": ["llama3-8b-8192", "llama3-70b-8192", "llama-3.1-8b-instant",
             "llama-3.3-70b-versatile", "mixtral-8x7b-32768", "gemma2-9b-it", "mistral-saba-24b"],
    "gemini": ["gemini-1.0-pro", "gemini-1.5-pro", "gemini-1.5-flash", "gemini-2.0-flash",
               "gemini-2.5-pro", "gemini-2.5-flash", "text-embedding-004"],
}


def _raw():
    return json.loads(resources.files("ipfs_accelerate_py.core").joinpath("prices.json").read_text())


def test_json_has_source_and_date_and_valid_entries():
    raw = _raw()
    assert raw["_source"] and raw["_as_of"] == pricing.prices_as_of()
    for provider, table in raw.items():
        if provider.startswith("_"):
            continue
        for model, entry in table.items():
            assert set(entry) == {"input", "output"}, (provider, model)
            assert entry["input"] >= 0 and entry["output"] >= 0


@pytest.mark.parametrize("provider,model", [(p, m) for p, ms in SEED_MODELS.items() for m in ms])
def test_seed_models_are_priced(provider, model):
    assert price_for(model, provider) is not None
    assert price_for(model) is not None


def test_embeddings_have_zero_output_price():
    for model in ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"):
        assert price_for(model).output_per_1m == 0


def test_known_values():
    assert price_for("llama3-8b-8192", "groq") == Price(0.05, 0.08)
    assert price_for("gpt-4o") == Price(2.5, 10.0)
    assert price_for("claude-3-opus") == Price(15.0, 75.0)


def test_cost_usd_arithmetic():
    assert cost_usd("llama3-8b-8192", 1_000_000, 1_000_000, "groq") == pytest.approx(0.13)
    assert cost_usd("gpt-4o", 1000, 500) == pytest.approx(1000 * 2.5e-6 + 500 * 10e-6)
    assert cost_usd("gpt-4o", 0, 0) == 0.0
    assert cost_usd("gpt-4o", None, None) == 0.0


def test_unknown_model_costs_none_not_zero():
    assert price_for("totally-made-up-model") is None
    assert cost_usd("totally-made-up-model", 100, 100) is None
    assert price_for("") is None


def test_self_hosted_providers_are_unknown_unless_configured():
    for provider in ("ollama", "hf_tgi", "hf_tei", "llvm", "ovms", "opea"):
        assert cost_usd("llama3", 10, 10, provider) is None
    # a model known on another provider is not priced on a self-hosted one
    assert price_for("gpt-4o", "ollama") is None
    assert cost_usd("llama3", 10, 10, "ollama", {"*": {"input": 0, "output": 0}}) == 0.0


@pytest.mark.parametrize("model,expected", [
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("gpt-4-0613", "gpt-4"),
    ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
    ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
    ("claude-3.5-sonnet", "claude-3-5-sonnet"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("gemini-1.5-pro-002", "gemini-1.5-pro"),
    ("gemini-1.5-pro-latest", "gemini-1.5-pro"),
    ("models/gemini-2.0-flash", "gemini-2.0-flash"),
    ("gpt-4o-mini-search-preview", "gpt-4o-mini"),   # longest prefix, not gpt-4o
    ("o1-preview", "o1"),
])
def test_snapshot_ids_resolve_to_the_base_model(model, expected):
    assert price_for(model) == price_for(expected)
    assert price_for(model) is not None


def test_exact_match_beats_suffix_stripping():
    # the first gpt-4o snapshot kept its launch price
    assert price_for("gpt-4o-2024-05-13") == Price(5.0, 15.0)
    assert price_for("gpt-4o-2024-08-06") == Price(2.5, 10.0)


def test_more_specific_models_are_not_priced_as_their_prefix():
    assert price_for("claude-opus-4-5-20251101") == Price(5.0, 25.0)
    assert price_for("claude-opus-4-20250514") == Price(15.0, 75.0)
    assert price_for("gemini-2.5-flash-lite") != price_for("gemini-2.5-flash")


def test_prefix_needs_a_boundary():
    assert price_for("gpt-4.7") is None      # not gpt-4
    assert price_for("o1x") is None          # not o1


def test_provider_prefix_in_model_name():
    assert price_for("groq/llama3-8b-8192") == Price(0.05, 0.08)
    assert price_for("anthropic/claude-3-haiku-20240307") == price_for("claude-3-haiku")
    assert price_for("openai/gpt-4o", "openai") == Price(2.5, 10.0)
    # Groq ids contain a slash that is not a provider prefix
    assert price_for("meta-llama/llama-4-scout-17b-16e-instruct", "groq") is not None
    assert price_for("openai/gpt-4o", "groq") is None  # only groq's table is searched


def test_provider_aliases():
    assert price_for("claude-3-opus", "anthropic") == price_for("claude-3-opus", "claude")
    assert price_for("gemini-1.5-flash", "google") == Price(0.075, 0.3)


def test_case_insensitive():
    assert price_for("GPT-4o") == price_for("gpt-4o")


def test_overrides_win_and_use_the_same_matching():
    ov = {"gpt-4o": {"input": 1.0, "output": 2.0}}
    assert price_for("gpt-4o", overrides=ov) == Price(1.0, 2.0)
    assert price_for("gpt-4o-2024-08-06", "openai", ov) == Price(1.0, 2.0)
    assert price_for("gpt-4o-mini", overrides=ov) == Price(0.15, 0.6)  # not overridden
    assert price_for("my-finetune", "openai", {"my-finetune": {"input": 3, "output": 4}}) == Price(3, 4)
    assert price_for("x", overrides={"x": Price(1, 1)}) == Price(1, 1)


def test_override_output_defaults_to_zero_for_embeddings():
    assert price_for("emb", overrides={"emb": {"input": 0.5}}) == Price(0.5, 0.0)


def test_specific_override_beats_wildcard():
    ov = {"*": {"input": 0, "output": 0}, "big": {"input": 9, "output": 9}}
    assert price_for("big", "ollama", ov) == Price(9, 9)
    assert price_for("small", "ollama", ov) == Price(0, 0)


@pytest.mark.parametrize("bad,fragment", [
    ({"m": {"input": -1, "output": 0}}, "prices['m'].input must be a non-negative number"),
    ({"m": {"output": 1}}, "prices['m'].input is required"),
    ({"m": {"input": 1, "ouput": 1}}, "unknown key(s) 'ouput'"),
    ({"m": 5}, "prices['m'] must be a mapping"),
    ({"m": {"input": "cheap"}}, "must be a non-negative number"),
])
def test_bad_overrides_raise_config_error_naming_the_entry(bad, fragment):
    with pytest.raises(ConfigError) as info:
        price_for("m", overrides=bad)
    assert fragment in str(info.value)


def test_price_validates_itself():
    with pytest.raises(ConfigError):
        Price(-1.0, 0.0)
    with pytest.raises(ConfigError):
        Price(float("nan"), 0.0)


def test_known_models_and_providers():
    assert "gpt-4o" in pricing.known_models("openai")
    assert "claude-3-opus" in pricing.known_models("anthropic")
    assert pricing.known_models("ollama") == []
    assert {"openai", "claude", "groq", "gemini", "ollama", "s3"} <= set(pricing.known_providers())
    assert "llama3-8b-8192" in pricing.known_models()


def test_wildcard_override_reprices_every_model_on_the_endpoint():
    ov = {"*": {"input": 0, "output": 0}}
    assert price_for("gpt-4o", "openai", ov) == Price(0, 0)
