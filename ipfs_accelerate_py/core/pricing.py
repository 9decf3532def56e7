"""USD prices per 1M tokens, and the cost of one call.

The price table (``prices.json``, loaded once from the package) lists public
list prices per provider and model.  Providers report model ids in many
spellings -- ``gpt-4o-2024-08-06``, ``claude-3-5-sonnet-20241022``,
``claude-3-5-sonnet-latest``, ``gemini-1.5-pro-002``, ``openai/gpt-4o`` -- so
a lookup tries, in order:

1. the exact (case-insensitive) id;
2. the id with dated/version suffixes stripped (``-2024-08-06``,
   ``-20241022``, ``@20240620``, ``-latest``, ``-0613``, ``-002``) and with
   dots spelled as dashes (``claude-3.5-sonnet``);
3. the longest known id that is a prefix of it ending at a ``-``, ``:``,
   ``@`` or ``_`` boundary (``gpt-4o-mini-search-preview`` -> ``gpt-4o-mini``;
   ``gpt-4.7`` does *not* match ``gpt-4``).

Per-endpoint overrides (``EndpointConfig.prices``, same ``{"model": {"input",
"output"}}`` shape, ``"*"`` matching any model) are searched first and win.
An unknown model has an unknown cost: ``None``, never 0 and never a guess,
so totals never silently under- or over-report.  Self-hosted providers
(ollama, hf_tgi, ...) have no entries; configure ``{"*": {"input": 0,
"output": 0}}`` on such an endpoint to record it as free.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Mapping

from ..errors import ConfigError

__all__ = ["Price", "price_for", "cost_usd", "known_models", "known_providers", "prices_as_of",
           "parse_prices", "WILDCARD"]

#: key of an override entry that applies to every model
WILDCARD = "*"

#: spellings of provider names, so "anthropic/claude-3-opus" finds the claude table.
#: (A copy of providers.base.PROVIDER_ALIASES: core/ must not import providers/.)
_PROVIDER_ALIASES = {
    "anthropic": "claude", "openai_api": "openai", "google": "gemini", "tgi": "hf_tgi",
    "tei": "hf_tei", "s3_kit": "s3", "openvino": "ovms",
}

# Suffixes that name a snapshot of a model rather than another model.
_SUFFIXES = re.compile(
    r"(?:-\d{4}-\d{2}-\d{2}"   # OpenAI: gpt-4o-2024-08-06
    r"|[-@]\d{8}"              # Anthropic: -20241022, Vertex: @20240620
    r"|-latest"                # claude-3-5-sonnet-latest
    r"|-\d{4}"                 # OpenAI MMDD snapshots: gpt-4-0613
    r"|-\d{3})$"               # Gemini versions: gemini-1.5-pro-002
)
_PREFIX_BOUNDARY = "-:@_"


@dataclass(frozen=True)
class Price:
    """USD per 1,000,000 input (prompt) and output (completion) tokens."""
    input_per_1m: float
    output_per_1m: float

    def __post_init__(self) -> None:
        for name in ("input_per_1m", "output_per_1m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"Price.{name} must be a non-negative number, got {value!r}")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call with these token counts."""
        return (max(0, prompt_tokens) * self.input_per_1m
                + max(0, completion_tokens) * self.output_per_1m) / 1_000_000


def _price_from_entry(entry: Any, where: str) -> Price:
    if isinstance(entry, Price):
        return entry
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a mapping with 'input' and 'output', got {entry!r}")
    unknown = sorted(str(k) for k in entry if k not in ("input", "output"))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"known keys: 'input', 'output'")
    if "input" not in entry:
        raise ConfigError(f"{where}.input is required (USD per 1M input tokens)")
    values = []
    for key in ("input", "output"):
        value = entry.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}.{key} must be a non-negative number, got {value!r}")
        values.append(float(value))
    return Price(values[0], values[1])


def parse_prices(table: Mapping[str, Any] | None, where: str = "prices") -> dict[str, Price]:
    """A validated ``{model: Price}`` from the ``{"model": {"input", "output"}}`` shape.

    Keys are lower-cased (lookups are case-insensitive); keys starting with
    ``_`` are comments.  Raises ConfigError naming the bad entry.
    """
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a mapping of model -> {{input, output}}, "
                          f"got {type(table).__name__}")
    out: dict[str, Price] = {}
    for model, entry in table.items():
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{where} keys must be non-empty model names, got {model!r}")
        if model.startswith("_"):
            continue
        out[model.strip().lower()] = _price_from_entry(entry, f"{where}[{model!r}]")
    return out


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, dict[str, Price]], dict[str, Any]]:
    """(provider -> model -> Price, metadata) from the packaged prices.json."""
    raw = json.loads(resources.files(__package__).joinpath("prices.json").read_text("utf-8"))
    tables: dict[str, dict[str, Price]] = {}
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("_"):
            meta[key] = value
        else:
            tables[key] = parse_prices(value, f"prices.json[{key!r}]")
    return tables, meta


def _canonical_provider(provider: str | None) -> str | None:
    if provider is None:
        return None
    key = provider.strip().lower()
    return _PROVIDER_ALIASES.get(key, key)


def _strip_suffixes(name: str) -> str:
    previous = None
    while previous != name:
        previous = name
        stripped = _SUFFIXES.sub("", name)
        if stripped:  # never strip a name down to nothing
            name = stripped
    return name


def _variants(name: str) -> list[str]:
    """Step-2 spellings of ``name``: suffixes stripped, dots as dashes."""
    out: list[str] = []
    for candidate in (_strip_suffixes(name), name.replace(".", "-"),
                      _strip_suffixes(name.replace(".", "-"))):
        if candidate != name and candidate not in out:
            out.append(candidate)
    return out


_Rank = tuple[int, int]  # (step 1/2/3, -prefix length): smaller is a closer match


def _match(names: list[str], tables: Iterable[Mapping[str, Price]]) -> tuple[_Rank, Price] | None:
    """The three-step lookup of the module docstring over several tables,
    with how close the match is (so overrides can be weighed against it)."""
    tables = [t for t in tables if t]
    if not tables:
        return None
    for name in names:                                     # 1. exact
        for table in tables:
            if name in table:
                return (1, 0), table[name]
    for name in names:                                     # 2. snapshot suffixes, dots
        for variant in _variants(name):
            for table in tables:
                if variant in table:
                    return (2, 0), table[variant]
    best: tuple[_Rank, Price] | None = None                # 3. longest prefix
    for name in names:
        for table in tables:
            for key, price in table.items():
                if (len(key) < len(name) and name.startswith(key)
                        and name[len(key)] in _PREFIX_BOUNDARY
                        and (best is None or (3, -len(key)) < best[0])):
                    best = ((3, -len(key)), price)
    return best


def _names_and_scope(model: str, provider: str | None) -> tuple[list[str], str | None]:
    """Candidate ids for ``model`` and the provider whose table to search.

    ``provider/model`` names the provider when the prefix is one (and no other
    provider was given); otherwise a slash is part of the id, as in Groq's
    ``meta-llama/llama-4-scout-17b-16e-instruct``.
    """
    name = model.strip().lower()
    if name.startswith("models/"):  # Gemini's resource name
        name = name[len("models/"):]
    names = [name]
    scope = _canonical_provider(provider)
    head, sep, rest = name.partition("/")
    if sep and rest:
        head_provider = _canonical_provider(head)
        if head_provider in _table()[0]:
            if scope is None or scope == head_provider:
                names.append(rest)
                if scope is None:
                    scope = head_provider
    return names, scope


@functools.lru_cache(maxsize=2048)
def _builtin_match(model: str, provider: str | None) -> tuple[_Rank, Price] | None:
    names, scope = _names_and_scope(model, provider)
    tables = _table()[0]
    if scope is not None:
        return _match(names, [tables.get(scope, {})])
    return _match(names, tables.values())


def price_for(model: str, provider: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> Price | None:
    """The price of ``model`` (optionally on ``provider``), or None when unknown.

    ``overrides`` (an endpoint's ``prices``: ``{"model": {"input", "output"}}``
    or ``{"model": Price}``, ``"*"`` for any model) win over the packaged
    table when they match at least as closely: an override for ``gpt-4o``
    re-prices ``gpt-4o-2024-08-06`` but not ``gpt-4o-mini``, which the table
    knows exactly.  ``"*"`` applies to every model no specific override
    matches, including ones the table knows (the endpoint declared its own
    pricing).  With a provider, only that provider's table is searched, so a
    self-hosted ``llama3`` on ollama is never priced like Groq's.
    """
    if not isinstance(model, str) or not model.strip():
        return None
    builtin = _builtin_match(model, provider)
    if overrides:
        table = parse_prices(overrides, "prices")
        names, _scope = _names_and_scope(model, provider)
        specific = _match(names, [{k: v for k, v in table.items() if k != WILDCARD}])
        if specific is not None and (builtin is None or specific[0] <= builtin[0]):
            return specific[1]
        if WILDCARD in table:
            return table[WILDCARD]
    return builtin[1] if builtin is not None else None


def cost_usd(model: str, prompt_tokens: int | None, completion_tokens: int | None,
             provider: str | None = None, overrides: Mapping[str, Any] | None = None) -> float | None:
    """USD for one call, or None when the model's price is unknown."""
    price = price_for(model, provider, overrides)
    if price is None:
        return None
    return price.cost(int(prompt_tokens or 0), int(completion_tokens or 0))


def known_models(provider: str | None = None) -> list[str]:
    """Model ids with a packaged price (all providers, or one)."""
    tables = _table()[0]
    if provider is not None:
        return sorted(tables.get(_canonical_provider(provider) or "", {}))
    return sorted({m for table in tables.values() for m in table})


def known_providers() -> list[str]:
    """Providers the price table knows (self-hosted ones have no prices)."""
    return sorted(_table()[0])


def prices_as_of() -> str:
    """The date the packaged list prices were checked (``_as_of`` in prices.json)."""
    return str(_table()[1].get("_as_of", ""))
