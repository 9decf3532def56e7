"""Gateway and endpoint configuration, from every place users keep it.

One ``GatewayConfig`` describes a whole gateway: scheduling settings, retry and
circuit defaults, cache/batching, and the list of ``EndpointConfig`` -- one per
(provider, base_url, API key), because each becomes one rate-limited actor.

``load_config`` layers its sources, later wins::

    built-in defaults < YAML file < .env file < environment variables < explicit dict / kwargs

Environment variables contribute two things: scalar settings
(``IPFS_ACCELERATE_STRATEGY``, ``_QUEUE_SIZE``, ``_NAMESPACE``, ``_NAME``,
``_REQUEST_TIMEOUT_S``, ``_MAX_RETRIES``, ``_GATEWAY_KEYS``) and -- only when
no config was given, or the config says ``discover_env: true`` -- endpoints
discovered from the provider variables the seed library documented
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``OLLAMA_API_URL``, ...).  Explicit
configs never pick up a developer's real keys by accident.

Secrets: every key is wrapped in ``Secret`` as soon as it is read, which also
registers it with ``errors.register_secret`` so no error message, repr, log
line or ``to_dict()`` can show it.  Bad values raise ``errors.ConfigError``
naming the field path (``endpoints[1].rpm must be a positive number, got -5``)
and unknown keys are rejected with the list of known ones, so a typo in a YAML
file fails at start-up instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import hmac
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import errors
from .core.backoff import RetryPolicy
from .core.circuit import CircuitConfig
from .core.pricing import parse_prices
from .errors import ConfigError

__all__ = [
    "Secret", "SecretHeaders", "EndpointConfig", "CacheConfig", "BatchingConfig", "GatewayConfig",
    "load_config", "endpoint_from_dict", "config_from_seed_metadata", "discover_endpoints",
    "is_secret_name", "DEFAULT_RETRY", "DEFAULT_CIRCUIT", "ENV_PREFIX",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "IPFS_ACCELERATE_"
#: RetryPolicy settings every endpoint uses unless the gateway or endpoint overrides them
DEFAULT_RETRY: dict[str, Any] = {"max_retries": 3, "initial_retry_delay": 0.5, "backoff_factor": 2.0,
                                 "max_retry_delay": 8.0, "jitter": 0.25}
#: CircuitConfig settings every endpoint uses unless the gateway or endpoint overrides them
DEFAULT_CIRCUIT: dict[str, Any] = {"failure_threshold": 5, "reset_timeout": 30.0,
                                   "success_threshold": 2, "half_open_max_probes": 1}
RETRY_FIELDS = tuple(f.name for f in fields(RetryPolicy))
CIRCUIT_FIELDS = tuple(f.name for f in fields(CircuitConfig))


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

class Secret:
    """An API key (or password, token) that never shows itself.

    ``repr``/``str``/f-strings give ``Secret('sk-...a1b2')``; only ``get()``
    returns the value.  Equality and hashing are by value (comparison in
    constant time, so gateway bearer tokens can be checked with ``==``).
    Pickles by value -- Ray ships configs to actors -- and re-registers the
    value for redaction in the receiving process.
    """
    __slots__ = ("_value",)

    def __init__(self, value: "str | Secret") -> None:
        if isinstance(value, Secret):
            value = value.get()
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a string, got {type(value).__name__}")
        object.__setattr__(self, "_value", value)
        errors.register_secret(value)

    def get(self) -> str:
        """The raw value, for the one place that sends it upstream."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """A short label that identifies the key without revealing it (``sk-...a1b2``)."""
        return errors.fingerprint(self._value)

    def matches(self, candidate: str | None) -> bool:
        """Constant-time comparison with a presented token."""
        if not isinstance(candidate, str):
            return False
        return hmac.compare_digest(self._value.encode(), candidate.encode())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return f"Secret({self.fingerprint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.matches(other._value)

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


_SECRET_WORDS = frozenset({"secret", "password", "passwd", "token", "credential", "credentials",
                           "authorization", "cookie", "apikey", "signature"})
#: a last word that makes the name *describe* a secret rather than hold one
_NOT_SECRET_SUFFIXES = frozenset({"env", "var", "name", "file", "path", "url", "id", "type", "header",
                                  "limit", "limits", "count", "expiry", "expires"})
_SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("subscription", "key"),
                           ("secret", "key")})


def is_secret_name(name: Any) -> bool:
    """Whether a header or option name usually holds a credential.

    ``Authorization``, ``x-api-key``, ``x-goog-api-key``, ``secret_access_key``,
    ``secretKey``, ``session_token``, ``password``, ``key``; not
    ``max_tokens``, ``access_key_id`` or ``api_key_env``.
    """
    if not isinstance(name, str):
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if w]
    if words == ["key"]:
        return True
    if words and words[-1] in _NOT_SECRET_SUFFIXES:  # api_key_env, token_url, auth_token_file
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


class SecretHeaders(dict):
    """Extra HTTP headers of an endpoint.

    Values stay plain strings -- providers merge them straight into requests
    -- but ``repr``/``str`` show credential-like headers (Authorization,
    x-api-key, ...) only as fingerprints, and those values are registered for
    redaction.
    """

    def masked(self) -> dict[str, str]:
        return {k: (errors.fingerprint(v) if is_secret_name(k) else v) for k, v in self.items()}

    def __repr__(self) -> str:
        return repr(self.masked())

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (SecretHeaders, (dict(self),))


# ---------------------------------------------------------------------------
# Validation helpers: every message names the field path
# ---------------------------------------------------------------------------

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(data: Mapping[str, Any], known: Iterable[str], path: str) -> None:
    known = list(known)
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    key = unknown[0]
    where = f"in {path}" if path else "at the top level of the config"
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    raise ConfigError(f"unknown key {_show(key)} {where}{hint}; known keys: {', '.join(known)}",
                      details={"field": f"{path}.{key}" if path else str(key)})


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _positive(value: Any, path: str) -> float:
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{path} must be a positive number, got {_show(value)}", details={"field": path})
    return float(value)


def _non_negative(value: Any, path: str) -> float:
    if not _is_number(value) or value < 0:
        raise ConfigError(f"{path} must be a number >= 0, got {_show(value)}", details={"field": path})
    return float(value)


def _optional_positive(value: Any, path: str) -> float | None:
    return None if value is None else _positive(value, path)


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{path} must be a positive integer, got {_show(value)}", details={"field": path})
    return int(value)


def _non_negative_int(value: Any, path: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{path} must be an integer >= 0, got {_show(value)}", details={"field": path})
    return int(value)


def _fraction(value: Any, path: str, *, allow_zero: bool = True) -> float:
    if not _is_number(value) or value > 1 or value < 0 or (not allow_zero and value == 0):
        rule = "a number in [0, 1]" if allow_zero else "a number in (0, 1]"
        raise ConfigError(f"{path} must be {rule}, got {_show(value)}", details={"field": path})
    return float(value)


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {_show(value)}", details={"field": path})
    return value


def _string(value: Any, path: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path} must be a non-empty string, got {_show(value)}", details={"field": path})
    return value.strip()


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}", details={"field": path})
    return value


def _url(value: Any, path: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value.strip()):
        raise ConfigError(f"{path} must be an http(s) URL, got {_show(value)}", details={"field": path})
    return value.strip().rstrip("/")


def _secret(value: Any, path: str) -> Secret | None:
    """A key from config; the message never shows a rejected value (it may be a key)."""
    if value is None:
        return None
    if isinstance(value, Secret):
        return value if value else None
    if not isinstance(value, str):
        raise ConfigError(f"{path} must be a string, got {type(value).__name__}", details={"field": path})
    value = value.strip()
    return Secret(value) if value else None


def _env_name(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value.strip()):
        raise ConfigError(f"{path} must be an environment variable name, got {_show(value)}",
                          details={"field": path})
    return value.strip()


def _string_list(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path} must be a list of strings, got {type(value).__name__}",
                          details={"field": path})
    out: list[str] = []
    for i, item in enumerate(value):
        item = _string(item, f"{path}[{i}]")
        if item not in out:
            out.append(item)
    return out


def _wrap_secrets(value: Any, path: str) -> Any:
    """Copy of an options mapping with credential-like string values as Secrets."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path} keys must be strings, got {_show(k)}", details={"field": path})
            if is_secret_name(k) and isinstance(v, (str, Secret)):
                out[k] = _secret(v, _join(path, k))
            else:
                out[k] = _wrap_secrets(v, _join(path, k))
        return out
    if isinstance(value, list):
        return [_wrap_secrets(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _headers(value: Any, path: str) -> SecretHeaders:
    if value is None:
        return SecretHeaders()
    value = _mapping(value, path)
    out = SecretHeaders()
    for k, v in value.items():
        if not isinstance(k, str) or not k.strip():
            raise ConfigError(f"{path} keys must be header names, got {_show(k)}", details={"field": path})
        if isinstance(v, Secret):
            v = v.get()
        if not isinstance(v, str):
            shown = type(v).__name__ if is_secret_name(k) else _show(v)
            raise ConfigError(f"{path}[{k!r}] must be a string, got {shown}", details={"field": path})
        if "\r" in v or "\n" in v:  # would split into a second header on the wire
            raise ConfigError(f"{path}[{k!r}] must not contain line breaks", details={"field": path})
        if is_secret_name(k):
            errors.register_secret(v)
            # "Bearer <token>": register the token alone too, it may appear by itself
            errors.register_secret(v.split(" ", 1)[1] if " " in v else None)
        out[k.strip()] = v
    return out


def _retry_overrides(value: Any, path: str) -> dict[str, Any]:
    value = _mapping(value, path)
    _check_keys(value, RETRY_FIELDS, path)
    out: dict[str, Any] = {}
    for k, v in value.items():
        p = _join(path, k)
        if k == "max_retries":
            out[k] = _non_negative_int(v, p)
        elif k == "backoff_factor":
            if not _is_number(v) or v < 1:
                raise ConfigError(f"{p} must be a number >= 1, got {_show(v)}", details={"field": p})
            out[k] = float(v)
        elif k == "jitter":
            out[k] = _fraction(v, p)
        else:
            out[k] = _non_negative(v, p)
    return out


def _circuit_overrides(value: Any, path: str) -> dict[str, Any]:
    value = _mapping(value, path)
    _check_keys(value, CIRCUIT_FIELDS, path)
    out: dict[str, Any] = {}
    for k, v in value.items():
        p = _join(path, k)
        if k in ("failure_threshold", "success_threshold", "half_open_max_probes", "min_requests_in_window"):
            out[k] = _positive_int(v, p)
        elif k == "reset_timeout":
            out[k] = _non_negative(v, p)
        elif k == "window_s":
            out[k] = _positive(v, p)
        elif k == "failure_rate_threshold":
            out[k] = None if v is None else _fraction(v, p, allow_zero=False)
    return out


def _check_policy(cls: type, settings: Mapping[str, Any], path: str) -> None:
    """Cross-field rules live in RetryPolicy / CircuitConfig: build one to apply them."""
    try:
        cls(**settings)
    except (ConfigError, TypeError, ValueError) as exc:
        text = str(exc)
        text = text[len(ConfigError.prefix) + 2:] if text.startswith(ConfigError.prefix + ": ") else text
        raise ConfigError(f"{path}: {text}", details={"field": path}) from None


# ---------------------------------------------------------------------------
# Providers (names only: provider modules are not imported)
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _provider_registry() -> tuple[Callable[[str], str], tuple[str, ...]]:
    from .providers.base import PROVIDER_MODULES, canonical_name
    return canonical_name, tuple(sorted(PROVIDER_MODULES))


def _provider(value: Any, path: str) -> str:
    canonical_name, known = _provider_registry()
    if value is None:
        raise ConfigError(f"{path} is required; known providers: {', '.join(known)}", details={"field": path})
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path} must be one of {', '.join(known)}, got {_show(value)}",
                          details={"field": path})
    name = canonical_name(value)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path} {value!r} is not a known provider{hint}; known providers: "
                          f"{', '.join(known)}", details={"field": path})
    return name


# ---------------------------------------------------------------------------
# EndpointConfig
# ---------------------------------------------------------------------------

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


@dataclass(eq=True)
class EndpointConfig:
    """One upstream: a provider, where it lives, which key, and its limits.

    One EndpointConfig becomes one endpoint actor, the single place in the
    cluster that rate-limits, retries and circuit-breaks this key.
    """
    id: str
    provider: str
    #: None = the provider's default; follows each official SDK's convention
    base_url: str | None = None
    api_key: Secret | None = None
    #: name of the environment variable the key was (or is to be) read from
    api_key_env: str | None = None
    #: empty = any model the provider claims
    models: list[str] = field(default_factory=list)
    default_model: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    burst_s: float = 1.0
    max_concurrent_requests: int = 64
    weight: float = 1.0
    timeout_s: float = 60.0
    #: longest allowed stall between two stream chunks
    stream_timeout_s: float = 60.0
    #: overrides of RetryPolicy fields for this endpoint
    retry: dict | None = None
    #: overrides of CircuitConfig fields for this endpoint
    circuit: dict | None = None
    #: {"model": {"input": usd_per_1m, "output": usd_per_1m}}, "*" for any model
    prices: dict | None = None
    headers: dict[str, str] = field(default_factory=SecretHeaders)
    #: provider-specific settings; credential-like values are Secrets
    options: dict = field(default_factory=dict)
    enabled: bool = True

    def __post_init__(self) -> None:
        path = f"endpoints[{self.id!r}]" if isinstance(self.id, str) else "endpoint"
        values = _endpoint_values(_fields_of(self), path, env=None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def fingerprint(self) -> str:
        """Which key this endpoint uses, safe to log (``sk-...a1b2``)."""
        if self.api_key:
            return self.api_key.fingerprint
        secret = self.options.get("secret_access_key") if isinstance(self.options, Mapping) else None
        if isinstance(secret, Secret):
            return secret.fingerprint
        return "<none>"

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        """(provider, base_url, key digest): endpoints with equal identity share one actor."""
        return (self.provider, self.base_url, _key_digest(_identity_key(self)))

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain data.  ``redact=True`` (the default) replaces every secret with
        its fingerprint; ``redact=False`` keeps raw values, only for shipping
        the config to another process."""
        return {f.name: _export(getattr(self, f.name), redact, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None, path: str = "endpoint") -> "EndpointConfig":
        """Validate a mapping (YAML/JSON shape) into an EndpointConfig.

        ``defaults`` fill fields the mapping does not set (a gateway's
        ``endpoint_defaults``); ``api_key_env`` is read from ``env``
        (default: ``os.environ``).
        """
        data = _mapping(data, path)
        if defaults:
            data = _apply_endpoint_defaults(data, _endpoint_defaults(defaults, "endpoint_defaults"))
        return cls(**_endpoint_values(data, path, env=env))


ENDPOINT_FIELDS = tuple(f.name for f in fields(EndpointConfig))
#: fields ``endpoint_defaults`` may set (identity fields make no sense as defaults)
ENDPOINT_DEFAULTABLE = ("rpm", "tpm", "burst_s", "max_concurrent_requests", "weight", "timeout_s",
                        "stream_timeout_s", "retry", "circuit", "prices", "headers", "options", "enabled")
_DICT_FIELDS = ("retry", "circuit", "prices", "headers", "options")


def _fields_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _key_digest(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else None


def _identity_key(ep: EndpointConfig) -> str | None:
    if ep.api_key:
        return ep.api_key.get()
    access = ep.options.get("access_key_id") if isinstance(ep.options, Mapping) else None
    if isinstance(access, Secret):
        return access.get()
    return access if isinstance(access, str) and access else None


def _export(value: Any, redact: bool, name: str = "") -> Any:
    if isinstance(value, Secret):
        return value.fingerprint if redact else value.get()
    if isinstance(value, SecretHeaders):
        return value.masked() if redact else dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _export(getattr(value, f.name), redact, f.name) for f in fields(value)}
    if isinstance(value, Mapping):
        if name == "headers" and redact:
            return SecretHeaders(value).masked()
        return {k: _export(v, redact, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_export(v, redact, name) for v in value]
    return value


def _endpoint_values(data: Mapping[str, Any], path: str, env: Mapping[str, str] | None) -> dict[str, Any]:
    """Validated, normalized EndpointConfig field values from a mapping."""
    _check_keys(data, ENDPOINT_FIELDS, path)
    out: dict[str, Any] = {}
    ep_id = data.get("id")
    if not isinstance(ep_id, str) or not _ID_RE.fullmatch(ep_id.strip()):
        raise ConfigError(f"{_join(path, 'id')} must be 1-128 letters, digits or . _ - : @ "
                          f"(starting with a letter or digit), got {_show(ep_id)}",
                          details={"field": _join(path, "id")})
    out["id"] = ep_id.strip()
    out["provider"] = _provider(data["provider"], _join(path, "provider"))
    out["base_url"] = _url(data.get("base_url"), _join(path, "base_url"))
    out["api_key_env"] = _env_name(data.get("api_key_env"), _join(path, "api_key_env"))
    api_key = _secret(data.get("api_key"), _join(path, "api_key"))
    if api_key is None and out["api_key_env"]:
        variables = os.environ if env is None else env
        raw = variables.get(out["api_key_env"])
        if raw is None or not str(raw).strip():
            raise ConfigError(f"{_join(path, 'api_key_env')}: environment variable "
                              f"{out['api_key_env']!r} is not set", details={"field": _join(path, "api_key_env")})
        api_key = Secret(str(raw).strip())
    out["api_key"] = api_key
    out["models"] = _string_list(data.get("models"), _join(path, "models"))
    out["default_model"] = _string(data.get("default_model"), _join(path, "default_model"), optional=True)
    out["rpm"] = _optional_positive(data.get("rpm"), _join(path, "rpm"))
    out["tpm"] = _optional_positive(data.get("tpm"), _join(path, "tpm"))
    out["burst_s"] = _positive(data.get("burst_s", 1.0), _join(path, "burst_s"))
    out["max_concurrent_requests"] = _positive_int(data.get("max_concurrent_requests", 64),
                                                   _join(path, "max_concurrent_requests"))
    out["weight"] = _positive(data.get("weight", 1.0), _join(path, "weight"))
    out["timeout_s"] = _positive(data.get("timeout_s", 60.0), _join(path, "timeout_s"))
    out["stream_timeout_s"] = _positive(data.get("stream_timeout_s", 60.0), _join(path, "stream_timeout_s"))
    retry = data.get("retry")
    # cross-field rules (max_retry_delay >= initial_retry_delay) need the
    # gateway's settings too: checked in _gateway_values
    out["retry"] = None if retry is None else _retry_overrides(retry, _join(path, "retry"))
    circuit = data.get("circuit")
    out["circuit"] = None if circuit is None else _circuit_overrides(circuit, _join(path, "circuit"))
    prices = data.get("prices")
    if prices is not None:
        parse_prices(prices, _join(path, "prices"))  # validates; keep the user's shape
        prices = {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in _mapping(prices, "").items()}
    out["prices"] = prices
    out["headers"] = _headers(data.get("headers"), _join(path, "headers"))
    options = data.get("options")
    out["options"] = {} if options is None else _wrap_secrets(_mapping(options, _join(path, "options")),
                                                              _join(path, "options"))
    if out["provider"] == "s3":
        secret = out["options"].get("secret_access_key")
        if secret is not None and not isinstance(secret, Secret):
            raise ConfigError(f"{_join(path, 'options.secret_access_key')} must be a string",
                              details={"field": _join(path, "options.secret_access_key")})
    out["enabled"] = _boolean(data.get("enabled", True), _join(path, "enabled"))
    return out


def _endpoint_defaults(value: Any, path: str) -> dict[str, Any]:
    value = _mapping(value, path)
    _check_keys(value, ENDPOINT_DEFAULTABLE, path)
    out: dict[str, Any] = {}
    for k, v in value.items():
        p = _join(path, k)
        if k in ("rpm", "tpm"):
            out[k] = _optional_positive(v, p)
        elif k == "max_concurrent_requests":
            out[k] = _positive_int(v, p)
        elif k == "enabled":
            out[k] = _boolean(v, p)
        elif k == "retry":
            out[k] = _retry_overrides(v, p)
        elif k == "circuit":
            out[k] = _circuit_overrides(v, p)
        elif k == "prices":
            parse_prices(v, p)
            out[k] = {str(m): (dict(e) if isinstance(e, Mapping) else e) for m, e in v.items()}
        elif k == "headers":
            out[k] = _headers(v, p)
        elif k == "options":
            out[k] = _wrap_secrets(_mapping(v, p), p)
        else:
            out[k] = _positive(v, p)
    return out


def _apply_endpoint_defaults(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults for the fields ``data`` does not set; dict fields merge key by key."""
    out = dict(data)
    for k, v in defaults.items():
        if k not in out or out[k] is None and k in _DICT_FIELDS:
            out[k] = v
        elif k in _DICT_FIELDS and isinstance(out[k], Mapping) and isinstance(v, Mapping):
            out[k] = {**v, **out[k]}
    return out


def endpoint_from_dict(data: Mapping[str, Any] | EndpointConfig, *, defaults: Mapping[str, Any] | None = None,
                       env: Mapping[str, str] | None = None) -> EndpointConfig:
    """An EndpointConfig from a mapping (endpoints added at run time)."""
    if isinstance(data, EndpointConfig):
        data = _explicit_fields(data)
    return EndpointConfig.from_dict(data, defaults=defaults, env=env, path="endpoint")


def _explicit_fields(ep: EndpointConfig) -> dict[str, Any]:
    """The fields of ``ep`` that differ from the built-in defaults."""
    out: dict[str, Any] = {}
    for f in fields(ep):
        value = getattr(ep, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = value
            continue
        if value != default:
            out[f.name] = value
    return out


# ---------------------------------------------------------------------------
# Cache / batching
# ---------------------------------------------------------------------------

@dataclass
class CacheConfig:
    """Semantic cache: exact-match tier plus embedding similarity."""
    enabled: bool = False
    similarity_threshold: float = 0.92
    cache_size: int = 1000
    ttl: float = 3600.0
    #: an embedding model served by the gateway; None = the built-in embedder
    embedding_model: str | None = None

    def __post_init__(self) -> None:
        _section_values(self, "cache")


@dataclass
class BatchingConfig:
    """Coalescing of single embedding calls into upstream batches."""
    enabled: bool = False
    max_batch_size: int = 20
    batch_timeout: float = 0.1
    #: coalesce every single-text embed; when False only calls asking for batching are
    auto_batching: bool = True

    def __post_init__(self) -> None:
        _section_values(self, "batching")


def _section_values(obj: CacheConfig | BatchingConfig, path: str) -> None:
    v = obj
    checks: dict[str, Any]
    if isinstance(v, CacheConfig):
        checks = {
            "enabled": _boolean(v.enabled, _join(path, "enabled")),
            "similarity_threshold": _fraction(v.similarity_threshold, _join(path, "similarity_threshold"),
                                              allow_zero=False),
            "cache_size": _positive_int(v.cache_size, _join(path, "cache_size")),
            "ttl": _positive(v.ttl, _join(path, "ttl")),
            "embedding_model": _string(v.embedding_model, _join(path, "embedding_model"), optional=True),
        }
    else:
        checks = {
            "enabled": _boolean(v.enabled, _join(path, "enabled")),
            "max_batch_size": _positive_int(v.max_batch_size, _join(path, "max_batch_size")),
            "batch_timeout": _non_negative(v.batch_timeout, _join(path, "batch_timeout")),
            "auto_batching": _boolean(v.auto_batching, _join(path, "auto_batching")),
        }
    for k, value in checks.items():
        object.__setattr__(obj, k, value)


def _section(cls: type, value: Any, path: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return dataclasses.replace(value)
    value = _mapping(value, path)
    _check_keys(value, [f.name for f in fields(cls)], path)
    return cls(**value)  # __post_init__ validates, naming "<path>.<field>"


# ---------------------------------------------------------------------------
# GatewayConfig
# ---------------------------------------------------------------------------

@dataclass
class GatewayConfig:
    """Everything one gateway (router + endpoint actors) needs."""
    namespace: str = "ipfs_accelerate"
    #: prefix of the named actors (``<name>:router``, ``<name>:endpoint:<id>``)
    name: str = "ia"
    strategy: str = "round-robin"
    queue_size: int = 10000
    #: RetryPolicy settings (full set after loading: defaults merged with overrides)
    retry: dict = field(default_factory=lambda: dict(DEFAULT_RETRY))
    #: CircuitConfig settings (defaults merged with overrides)
    circuit: dict = field(default_factory=lambda: dict(DEFAULT_CIRCUIT))
    #: field defaults applied to every endpoint that does not set them
    endpoint_defaults: dict = field(default_factory=dict)
    #: model aliases, e.g. {"fast": "groq/llama-3.1-8b-instant"}
    aliases: dict[str, str] = field(default_factory=dict)
    #: bearer tokens the HTTP gateway accepts (none = no auth)
    gateway_keys: list[Secret] = field(default_factory=list)
    cache: CacheConfig = field(default_factory=CacheConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    #: overall deadline of one request, queueing included
    request_timeout_s: float = 600.0
    #: create endpoints from provider environment variables
    discover_env: bool = False
    #: carry unary requests over direct sockets into the actors (actors/lane.py); off: Ray calls only
    direct_lane: bool = True
    endpoints: list[EndpointConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        values = _gateway_values(_fields_of(self), [_Layer("", list(self.endpoints or []))], env=None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # -- lookups -------------------------------------------------------------
    def endpoint(self, endpoint_id: str) -> EndpointConfig:
        """The endpoint with this id; ConfigError (listing the ids) if there is none."""
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        ids = [ep.id for ep in self.endpoints]
        close = difflib.get_close_matches(str(endpoint_id), ids, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"no endpoint with id {endpoint_id!r}{hint}; endpoints: {', '.join(ids) or '(none)'}")

    def retry_for(self, endpoint: str | EndpointConfig) -> dict[str, Any]:
        """RetryPolicy settings for one endpoint: gateway settings + its overrides."""
        ep = endpoint if isinstance(endpoint, EndpointConfig) else self.endpoint(endpoint)
        return {**self.retry, **(ep.retry or {})}

    def circuit_for(self, endpoint: str | EndpointConfig) -> dict[str, Any]:
        """CircuitConfig settings for one endpoint: gateway settings + its overrides."""
        ep = endpoint if isinstance(endpoint, EndpointConfig) else self.endpoint(endpoint)
        return {**self.circuit, **(ep.circuit or {})}

    # -- conversion ----------------------------------------------------------
    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain data (YAML/JSON shape).  Secrets become fingerprints unless
        ``redact=False``, which is only for shipping config between processes."""
        return {f.name: _export(getattr(self, f.name), redact, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> "GatewayConfig":
        """Validate a mapping.  No discovery and no IPFS_ACCELERATE_* variables
        (that is ``load_config``); ``env`` (default os.environ) only serves
        ``api_key_env``."""
        data = _mapping(data, "config")
        endpoints = _endpoint_items(data.get("endpoints"), "endpoints")
        values = _gateway_values({k: v for k, v in data.items() if k != "endpoints"},
                                 [_Layer("", endpoints)], env=env)
        return cls(**values)


GATEWAY_FIELDS = tuple(f.name for f in fields(GatewayConfig))
_MERGED_SECTIONS = ("retry", "circuit", "endpoint_defaults", "aliases", "cache", "batching")


@dataclass
class _Layer:
    """Endpoints from one source; ``label`` prefixes error paths ('' for the config itself)."""
    label: str
    items: list[Any]
    #: ids were generated by discovery (not chosen by the user)
    auto_ids: bool = False


@dataclass
class _Entry:
    raw: dict[str, Any]
    path: str
    auto_id: bool
    identity: tuple[str, str | None, str | None]


def _endpoint_items(value: Any, path: str) -> list[Any]:
    """Endpoints as a list; a mapping ``{id: settings}`` is accepted too."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        items = []
        for ep_id, settings in value.items():
            settings = _mapping(settings, f"{path}[{ep_id!r}]")
            items.append({"id": ep_id, **settings})
        return items
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path} must be a list of endpoints, got {type(value).__name__}",
                          details={"field": path})
    return list(value)


def _layer_path(layer: _Layer, index: int, raw: Mapping[str, Any]) -> str:
    if layer.label:
        return f"{layer.label}: endpoints[{raw.get('id')!r}]"
    return f"endpoints[{index}]"


def _raw_identity(raw: Mapping[str, Any], path: str, env: Mapping[str, str] | None) -> tuple[str, str | None, str | None]:
    """(provider, base_url, key digest) of a not-yet-validated endpoint mapping."""
    provider = _provider(raw.get("provider"), _join(path, "provider"))
    base_url = _url(raw.get("base_url"), _join(path, "base_url"))
    key = _secret(raw.get("api_key"), _join(path, "api_key"))
    key_value: str | None = key.get() if key else None
    if key_value is None and raw.get("api_key_env") is not None:
        name = _env_name(raw.get("api_key_env"), _join(path, "api_key_env"))
        variables = os.environ if env is None else env
        found = variables.get(name or "")
        if found is None or not str(found).strip():
            raise ConfigError(f"{_join(path, 'api_key_env')}: environment variable {name!r} is not set",
                              details={"field": _join(path, "api_key_env")})
        key_value = str(found).strip()
        Secret(key_value)  # registers it for redaction before anything can echo it
    if key_value is None:
        options = raw.get("options")
        access = options.get("access_key_id") if isinstance(options, Mapping) else None
        if isinstance(access, Secret):
            access = access.get()
        key_value = access if isinstance(access, str) and access else None
    return provider, base_url, _key_digest(key_value)


def _overlay(base: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new``'s settings over ``base``'s: later source wins, dict fields key by key."""
    out = dict(base)
    if "api_key" in new or "api_key_env" in new:  # a key source replaces the other one
        out.pop("api_key", None)
        out.pop("api_key_env", None)
    for k, v in new.items():
        if k in _DICT_FIELDS and isinstance(out.get(k), Mapping) and isinstance(v, Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _merge_endpoints(layers: Sequence[_Layer], env: Mapping[str, str] | None) -> list[_Entry]:
    """Merge endpoint lists from several sources into one, in order.

    Same id in a later source: the later settings overlay the earlier ones
    (environment variables override a YAML endpoint's key).  Same id twice in
    one source: an error.  Same (provider, base_url, key) under different
    ids: merged -- one key must have one actor, or its rate limit would be
    enforced twice over -- keeping a user-chosen id over a generated one.
    """
    entries: list[_Entry] = []
    for layer in layers:
        seen: dict[str, str] = {}
        for index, item in enumerate(layer.items):
            if isinstance(item, EndpointConfig):
                raw = _explicit_fields(item)
            else:
                raw = dict(_mapping(item, f"{layer.label + ': ' if layer.label else ''}endpoints[{index}]"))
            path = _layer_path(layer, index, raw)
            ep_id = raw.get("id")
            if not isinstance(ep_id, str) or not ep_id.strip():
                raise ConfigError(f"{_join(path, 'id')} must be a non-empty string, got {_show(ep_id)}",
                                  details={"field": _join(path, "id")})
            raw["id"] = ep_id = ep_id.strip()
            if ep_id in seen:
                raise ConfigError(f"{_join(path, 'id')} {ep_id!r} is already used by {seen[ep_id]}; "
                                  f"endpoint ids must be unique", details={"field": _join(path, "id")})
            seen[ep_id] = path
            identity = _raw_identity(raw, path, env)
            target = next((e for e in entries if e.raw["id"] == ep_id), None)
            if target is None:
                target = next((e for e in entries if e.identity == identity), None)
            if target is None:
                entries.append(_Entry(raw, path, layer.auto_ids, identity))
                continue
            merged = _overlay(target.raw, raw)
            if target.raw["id"] != ep_id:
                keep_old = layer.auto_ids and not target.auto_id
                merged["id"] = target.raw["id"] if keep_old else ep_id
                log.warning("endpoints %r and %r use the same provider, base_url and key; merged into %r "
                            "(one actor per key)", target.raw["id"], ep_id, merged["id"])
                target.auto_id = target.auto_id and layer.auto_ids
            else:
                target.auto_id = target.auto_id and layer.auto_ids
            target.raw, target.path = merged, path
            target.identity = _raw_identity(merged, path, env)
    # an overlay can give an endpoint the identity of another one: fold those too
    folded: list[_Entry] = []
    for entry in entries:
        twin = next((e for e in folded if e.identity == entry.identity), None)
        if twin is None:
            folded.append(entry)
            continue
        keep = twin.raw["id"] if entry.auto_id and not twin.auto_id else entry.raw["id"]
        twin.raw = {**_overlay(twin.raw, entry.raw), "id": keep}
        twin.path = entry.path
    return folded


def _gateway_values(data: Mapping[str, Any], layers: Sequence[_Layer],
                    env: Mapping[str, str] | None) -> dict[str, Any]:
    """Validated GatewayConfig field values (endpoints merged across ``layers``)."""
    _check_keys(data, GATEWAY_FIELDS, "")
    out: dict[str, Any] = {}
    namespace = _string(data.get("namespace", "ipfs_accelerate"), "namespace")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", namespace or ""):
        raise ConfigError(f"namespace must be letters, digits, '_', '.', '-', got {_show(namespace)}",
                          details={"field": "namespace"})
    out["namespace"] = namespace
    name = _string(data.get("name", "ia"), "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ConfigError(f"name must be letters, digits, '_', '.', '-' (it prefixes actor names), "
                          f"got {_show(name)}", details={"field": "name"})
    out["name"] = name
    strategy = _string(data.get("strategy", "round-robin"), "strategy")
    out["strategy"] = (strategy or "").lower().replace("_", "-")
    out["queue_size"] = _positive_int(data.get("queue_size", 10000), "queue_size")
    retry = {**DEFAULT_RETRY, **_retry_overrides(data.get("retry") or {}, "retry")}
    _check_policy(RetryPolicy, retry, "retry")
    out["retry"] = retry
    circuit = {**DEFAULT_CIRCUIT, **_circuit_overrides(data.get("circuit") or {}, "circuit")}
    _check_policy(CircuitConfig, circuit, "circuit")
    out["circuit"] = circuit
    defaults = _endpoint_defaults(data.get("endpoint_defaults") or {}, "endpoint_defaults")
    out["endpoint_defaults"] = defaults
    aliases = _mapping(data.get("aliases") or {}, "aliases")
    out["aliases"] = {}
    for alias, target in aliases.items():
        alias_s = _string(alias, "aliases key")
        target_s = _string(target, f"aliases[{alias!r}]")
        if alias_s == target_s:
            raise ConfigError(f"aliases[{alias!r}] points at itself", details={"field": f"aliases[{alias!r}]"})
        out["aliases"][alias_s] = target_s
    out["gateway_keys"] = _gateway_keys(data.get("gateway_keys"), "gateway_keys")
    out["cache"] = _section(CacheConfig, data.get("cache"), "cache")
    out["batching"] = _section(BatchingConfig, data.get("batching"), "batching")
    out["request_timeout_s"] = _positive(data.get("request_timeout_s", 600.0), "request_timeout_s")
    out["discover_env"] = _boolean(data.get("discover_env", False), "discover_env")
    out["direct_lane"] = _boolean(data.get("direct_lane", True), "direct_lane")

    endpoints: list[EndpointConfig] = []
    for entry in _merge_endpoints(layers, env):
        raw = _apply_endpoint_defaults(entry.raw, defaults) if defaults else entry.raw
        ep = EndpointConfig(**_endpoint_values(raw, entry.path, env=env))
        if ep.retry:
            _check_policy(RetryPolicy, {**retry, **ep.retry}, _join(entry.path, "retry"))
        if ep.circuit:
            _check_policy(CircuitConfig, {**circuit, **ep.circuit}, _join(entry.path, "circuit"))
        endpoints.append(ep)
    out["endpoints"] = endpoints
    return out


def _gateway_keys(value: Any, path: str) -> list[Secret]:
    if value is None:
        return []
    if isinstance(value, (str, Secret)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path} must be a list of tokens, got {type(value).__name__}", details={"field": path})
    out: list[Secret] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and "," in item:
            parts: list[Any] = [p for p in (s.strip() for s in item.split(",")) if p]
        else:
            parts = [item]
        for part in parts:
            secret = _secret(part, f"{path}[{i}]")
            if secret is not None and secret not in out:
                out.append(secret)
    return out


# ---------------------------------------------------------------------------
# Discovery from provider variables (environment or seed metadata)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    provider: str
    key_vars: tuple[str, ...]
    url_vars: tuple[str, ...]
    model_vars: tuple[str, ...] = ()
    #: what must be present to create an endpoint: "key", "url" or "key_or_url"
    needs: str = "key"


def _url_variants(*prefixes: str) -> tuple[str, ...]:
    return tuple(f"{p}_{s}" for p in prefixes for s in ("BASE_URL", "API_URL", "ENDPOINT_URL", "URL"))


_SPECS: tuple[_Spec, ...] = (
    _Spec("openai", ("OPENAI_API_KEY",), _url_variants("OPENAI")),
    _Spec("claude", ("ANTHROPIC_API_KEY", "CLAUDE_API_KEY"), _url_variants("ANTHROPIC", "CLAUDE")),
    _Spec("groq", ("GROQ_API_KEY",), _url_variants("GROQ")),
    _Spec("gemini", ("GOOGLE_API_KEY", "GEMINI_API_KEY"), _url_variants("GEMINI", "GOOGLE_GEMINI")),
    _Spec("hf_tgi", ("HF_API_TOKEN", "HF_TOKEN"), ("HF_TGI_URL",) + _url_variants("HF_TGI", "TGI"),
          ("HF_TGI_MODEL", "TGI_MODEL"), needs="key_or_url"),
    _Spec("hf_tei", ("HF_API_TOKEN", "HF_TOKEN"), ("HF_TEI_URL",) + _url_variants("HF_TEI", "TEI"),
          ("HF_TEI_MODEL", "TEI_MODEL"), needs="key_or_url"),
    _Spec("ollama", ("OLLAMA_API_KEY",), ("OLLAMA_API_URL", "OLLAMA_HOST") + _url_variants("OLLAMA"),
          ("OLLAMA_MODEL",), needs="url"),
    _Spec("llvm", ("LLVM_API_KEY",), _url_variants("LLVM"), ("LLVM_DEFAULT_MODEL", "LLVM_MODEL"),
          needs="key_or_url"),
    _Spec("ovms", ("OVMS_API_KEY",), _url_variants("OVMS"), ("OVMS_MODEL", "OVMS_DEFAULT_MODEL"), needs="url"),
    _Spec("opea", ("OPEA_API_KEY",), _url_variants("OPEA"), ("OPEA_MODEL", "OPEA_DEFAULT_MODEL"), needs="url"),
)
_S3_URL_VARS = ("S3_ENDPOINT_URL", "S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "S3_BASE_URL", "S3_URL")


def _value(variables: Mapping[str, Any], name: str) -> str | None:
    value = variables.get(name)
    if isinstance(value, Secret):
        value = value.get()
    if value is None or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip()
    return text or None


def _keys_from(variables: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Every key in NAME, NAMES (comma separated or a list) and NAME_1, NAME_2, ..."""
    keys: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, Secret):
            value = value.get()
        if isinstance(value, str) and value.strip() and value.strip() not in keys:
            keys.append(value.strip())

    for name in names:
        add(variables.get(name))
        plural = variables.get(name + "S")
        if isinstance(plural, str):
            for part in plural.split(","):
                add(part)
        elif isinstance(plural, (list, tuple)):
            for part in plural:
                add(part)
        numbered = []
        pattern = re.compile(re.escape(name) + r"_(\d+)$")
        for var in variables:
            m = pattern.match(var) if isinstance(var, str) else None
            if m:
                numbered.append((int(m.group(1)), var))
        for _, var in sorted(numbered):
            add(variables.get(var))
    return keys


def _first(variables: Mapping[str, Any], names: Iterable[str]) -> tuple[str | None, str | None]:
    for name in names:
        value = _value(variables, name)
        if value is not None:
            return value, name
    return None, None


def _ollama_url(value: str) -> str:
    """OLLAMA_API_URL (the seed's ``http://host:11434/api``) or OLLAMA_HOST
    (``host:port``, no scheme) -> the server root the ollama provider expects."""
    url = value.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    if "://" not in url:
        host = url
        url = f"http://{host}"
        if not re.search(r":\d+$", host.split("/", 1)[0]):
            url = f"http://{host.split('/', 1)[0]}:11434" + (f"/{host.split('/', 1)[1]}" if "/" in host else "")
    return url.rstrip("/")


def _number_ids(provider: str, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(raws) == 1:
        return [{"id": provider, **raws[0]}]
    return [{"id": f"{provider}-{i}", **raw} for i, raw in enumerate(raws, 1)]


def discover_endpoints(variables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Endpoint mappings from provider variables (upper-case names).

    One endpoint per key; ids are ``<provider>`` for one key and
    ``<provider>-1``, ``<provider>-2``, ... for several.  Values are wrapped in
    Secret right away.
    """
    found: list[dict[str, Any]] = []
    for spec in _SPECS:
        keys = _keys_from(variables, spec.key_vars)
        url, url_var = _first(variables, spec.url_vars)
        model, _ = _first(variables, spec.model_vars)
        if spec.needs == "key" and not keys:
            continue
        if spec.needs == "url" and url is None:
            continue
        if spec.needs == "key_or_url" and not keys and url is None:
            continue
        if url is not None and spec.provider == "ollama":
            url = _ollama_url(url)
        base: dict[str, Any] = {"provider": spec.provider}
        if url is not None:
            base["base_url"] = url
        if model is not None:
            base["default_model"] = model
        raws = [{**base, "api_key": Secret(k)} for k in keys] or [dict(base)]
        found.extend(_number_ids(spec.provider, raws))
    s3 = _s3_endpoint(variables)
    if s3 is not None:
        found.append(s3)
    return found


def _s3_endpoint(variables: Mapping[str, Any]) -> dict[str, Any] | None:
    url, _ = _first(variables, _S3_URL_VARS)
    if url is None:
        return None
    options: dict[str, Any] = {}
    access, _ = _first(variables, ("AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID", "S3_ACCESS_KEY"))
    secret, _ = _first(variables, ("AWS_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY", "S3_SECRET_KEY"))
    bucket, _ = _first(variables, ("S3_BUCKET", "AWS_S3_BUCKET"))
    region, _ = _first(variables, ("AWS_REGION", "AWS_DEFAULT_REGION", "S3_REGION"))
    if access:
        options["access_key_id"] = access
    if secret:
        options["secret_access_key"] = Secret(secret)
    if bucket:
        options["bucket"] = bucket
    if region:
        options["region"] = region
    return {"id": "s3", "provider": "s3", "base_url": url, "options": options}


# seed `resources` keys listing self-hosted servers: [[model, url, ...], ...] or [{model, url}, ...]
_RESOURCE_KEYS = {
    "tgi_endpoints": "hf_tgi", "hf_tgi_endpoints": "hf_tgi", "tei_endpoints": "hf_tei",
    "hf_tei_endpoints": "hf_tei", "ollama_endpoints": "ollama", "llvm_endpoints": "llvm",
    "ovms_endpoints": "ovms", "openvino_endpoints": "ovms", "opea_endpoints": "opea",
}


def _resource_endpoints(resources: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for key, provider in _RESOURCE_KEYS.items():
        items = resources.get(key)
        if not items:
            continue
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"resources[{key!r}] must be a list of [model, url] entries",
                              details={"field": f"resources[{key!r}]"})
        for i, item in enumerate(items):
            where = f"resources[{key!r}][{i}]"
            if isinstance(item, Mapping):
                model = item.get("model") or item.get("model_name")
                url = item.get("endpoint") or item.get("endpoint_url") or item.get("url") or item.get("base_url")
                api_key = item.get("api_key")
            elif isinstance(item, (list, tuple)) and len(item) >= 2:
                model, url, api_key = item[0], item[1], None
            else:
                raise ConfigError(f"{where} must be [model, url, ...] or a mapping with model and endpoint",
                                  details={"field": where})
            url = _url(url, where + ".endpoint")
            if url is None:
                raise ConfigError(f"{where} has no endpoint URL", details={"field": where})
            if provider == "ollama":
                url = _ollama_url(url)
            raw: dict[str, Any] = {"provider": provider, "base_url": url}
            if isinstance(model, str) and model.strip():
                raw["models"] = [model.strip()]
                raw["default_model"] = model.strip()
            secret = _secret(api_key, where + ".api_key")
            if secret is not None:
                raw["api_key"] = secret
            by_provider.setdefault(provider, []).append(raw)
    return by_provider


def config_from_seed_metadata(metadata: Mapping[str, Any],
                              resources: Mapping[str, Any] | None = None) -> list[EndpointConfig]:
    """Endpoints from the seed API's ``metadata`` (and ``resources``) dicts.

    Metadata keys are the lower-case environment names (``openai_api_key``,
    ``anthropic_api_key``/``claude_api_key``, ``hf_api_token``,
    ``ollama_api_url``, ``llvm_base_url``, ``ovms_api_url``, ...) plus
    ``*_endpoint_url``/``*_base_url`` variants and ``s3cfg`` (``accessKey``,
    ``secretKey``, ``endpoint``, ``bucket``).  ``resources`` may list
    self-hosted servers (``tgi_endpoints``, ``tei_endpoints``,
    ``ovms_endpoints``, ...) as ``[model, url]`` pairs.
    """
    metadata = _mapping(metadata or {}, "metadata")
    variables: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(key, str):
            if isinstance(value, str) and is_secret_name(key):
                errors.register_secret(value)
            variables[key.upper()] = value
    s3cfg = metadata.get("s3cfg")
    if isinstance(s3cfg, Mapping):
        mapping = {"accessKey": "AWS_ACCESS_KEY_ID", "secretKey": "AWS_SECRET_ACCESS_KEY",
                   "endpoint": "S3_ENDPOINT_URL", "bucket": "S3_BUCKET", "region": "AWS_REGION"}
        for src, dst in mapping.items():
            if s3cfg.get(src) is not None:
                variables[dst] = s3cfg[src]
    discovered = discover_endpoints(variables)
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for raw in discovered:
        raw = dict(raw)
        raw.pop("id")
        by_provider.setdefault(raw["provider"], []).append(raw)
    for provider, raws in _resource_endpoints(resources or {}).items():
        by_provider.setdefault(provider, []).extend(raws)
    items = [item for provider, raws in by_provider.items() for item in _number_ids(provider, raws)]
    entries = _merge_endpoints([_Layer("metadata", items, auto_ids=True)], env={})
    return [EndpointConfig(**_endpoint_values(e.raw, e.path, env={})) for e in entries]


# ---------------------------------------------------------------------------
# load_config: the layered sources
# ---------------------------------------------------------------------------

def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {str(path)!r}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, "
                          f"got {type(data).__name__}")
    return dict(data)


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _read_dotenv(dotenv: str | os.PathLike[str] | bool | None,
                 environ: Mapping[str, str]) -> dict[str, str]:
    """Variables of the .env file (never put into os.environ).

    ``${VAR}`` / ``${VAR:-default}`` are expanded from earlier .env entries and
    the given environment -- not from os.environ, so an explicit ``env``
    mapping keeps loading hermetic.
    """
    if dotenv is False:
        return {}
    if dotenv is None or dotenv is True:
        path = Path.cwd() / ".env"
        if not path.is_file():
            return {}
    else:
        path = Path(dotenv)
        if not path.is_file():
            raise ConfigError(f".env file {str(path)!r} not found")
    from dotenv import dotenv_values
    raw = dotenv_values(path, interpolate=False)
    out: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue

        def expand(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            found = out.get(name, environ.get(name))
            return found if found else (default or "")

        out[key] = _INTERPOLATION.sub(expand, value)
    return out


def _env_flag(variables: Mapping[str, str], name: str) -> bool:
    raw = variables[name].strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false (1/0, yes/no, on/off), got {raw!r}",
                      details={"field": name})


def _env_int(variables: Mapping[str, str], name: str, check: Callable[[Any, str], Any]) -> Any:
    raw = variables[name].strip()
    try:
        value: Any = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}", details={"field": name}) from None
    return check(value, name)


def _env_float(variables: Mapping[str, str], name: str, check: Callable[[Any, str], Any]) -> Any:
    raw = variables[name].strip()
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}", details={"field": name}) from None
    return check(value, name)


def _env_settings(variables: Mapping[str, str]) -> dict[str, Any]:
    """Scalar settings from IPFS_ACCELERATE_* variables."""
    out: dict[str, Any] = {}
    p = ENV_PREFIX
    for key in ("STRATEGY", "NAMESPACE", "NAME"):
        value = variables.get(p + key)
        if value is not None and value.strip():
            out[key.lower()] = value.strip()
    if (variables.get(p + "QUEUE_SIZE") or "").strip():
        out["queue_size"] = _env_int(variables, p + "QUEUE_SIZE", _positive_int)
    if (variables.get(p + "REQUEST_TIMEOUT_S") or "").strip():
        out["request_timeout_s"] = _env_float(variables, p + "REQUEST_TIMEOUT_S", _positive)
    if (variables.get(p + "DIRECT_LANE") or "").strip():
        out["direct_lane"] = _env_flag(variables, p + "DIRECT_LANE")
    if (variables.get(p + "MAX_RETRIES") or "").strip():
        out["retry"] = {"max_retries": _env_int(variables, p + "MAX_RETRIES", _non_negative_int)}
    if (variables.get(p + "GATEWAY_KEYS") or "").strip():
        out["gateway_keys"] = _gateway_keys(variables[p + "GATEWAY_KEYS"], p + "GATEWAY_KEYS")
    return out


def _as_plain(value: Any) -> Any:
    """Sections given as dataclasses (CacheConfig(...)) as mappings, for merging."""
    if isinstance(value, (CacheConfig, BatchingConfig)):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return value


def _merge_top(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        value = _as_plain(value)
        if key in _MERGED_SECTIONS and isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _register_config_secrets(data: Any, key: str = "") -> None:
    """Register every credential-like string in raw config before validation,
    so no error raised while validating can echo it."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            _register_config_secrets(v, str(k))
    elif isinstance(data, (list, tuple)):
        for v in data:
            _register_config_secrets(v, key)
    elif isinstance(data, str) and (is_secret_name(key) or key == "gateway_keys"):
        errors.register_secret(data)
        if " " in data:
            errors.register_secret(data.split(" ", 1)[1])


def load_config(source: "GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None" = None, *,
                env: Mapping[str, str] | None = None,
                dotenv: str | os.PathLike[str] | bool | None = None,
                **overrides: Any) -> GatewayConfig:
    """Build the gateway config from all sources (later wins)::

        built-in defaults < YAML file < .env < environment < explicit dict / kwargs

    ``source``: None (defaults + environment discovery), a mapping (explicit
    config), a path to a YAML file, or a GatewayConfig.  ``env`` replaces
    ``os.environ`` (tests pass ``{}``); ``dotenv`` is a .env path, None/True
    for ``./.env`` when it exists, False to skip.  ``overrides`` are top-level
    fields and win over everything.

    Endpoints are discovered from provider variables (OPENAI_API_KEY, ...)
    only when ``source`` is None or the merged config sets ``discover_env:
    true``.
    """
    environ: Mapping[str, str] = dict(os.environ) if env is None else dict(env)
    variables = {**_read_dotenv(dotenv, environ), **environ}

    yaml_data: dict[str, Any] = {}
    explicit: dict[str, Any] = {}
    if source is None:
        pass
    elif isinstance(source, GatewayConfig):
        explicit = source.to_dict(redact=False)
    elif isinstance(source, Mapping):
        explicit = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        yaml_data = _read_yaml(Path(source))
    else:
        raise ConfigError(f"config source must be None, a mapping, a YAML path or a GatewayConfig, "
                          f"got {type(source).__name__}")
    for data in (yaml_data, explicit, overrides):
        _register_config_secrets(data)

    top: dict[str, Any] = {}
    for layer in (yaml_data, _env_settings(variables), explicit, overrides):
        top = _merge_top(top, {k: v for k, v in layer.items() if k != "endpoints"})
    discover = top.get("discover_env", source is None)
    discover = _boolean(discover, "discover_env")
    top["discover_env"] = discover

    layers = [_Layer("", _endpoint_items(yaml_data.get("endpoints"), "endpoints"))]
    if discover:
        layers.append(_Layer("environment variables", discover_endpoints(variables), auto_ids=True))
    layers.append(_Layer("", _endpoint_items(explicit.get("endpoints"), "endpoints")))
    layers.append(_Layer("", _endpoint_items(overrides.get("endpoints"), "endpoints")))
    return GatewayConfig(**_gateway_values(top, layers, env=variables))
