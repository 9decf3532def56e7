"""Everything the seed-compatible classes share: one thin layer over ``Gateway``.

The older ``ipfs_accelerate_py.api_backends`` classes each carried their own
queue, retry loop, circuit breaker, counters and key rotation.  Here every one
of those is the runtime's (router and endpoint actors); this module only maps
the seed's names and shapes onto ``Gateway`` calls:

* **Instance -> gateway.**  An instance is a *view* of one gateway.  Instances
  of the same class built from the same credentials (same metadata/resources,
  or the same environment) share that gateway, because the runtime's rule is
  one actor per API key: two gateways for one key would enforce its rate limit
  twice over.  Gateways live in a namespace private to this process
  (``ipfs_accelerate_seed_<pid>_<token>``), start lazily on the first call
  that needs the runtime (on an embedded local Ray when Ray is not running),
  and stop when the last instance is closed (``close()``, ``with``, garbage
  collection) or at interpreter exit.
* **Settings.**  The seed's attributes (``max_retries``, ``queue_size``,
  ``circuit_failure_threshold`` ...) are properties whose setters call
  ``Gateway.configure`` / ``Gateway.configure_endpoint`` for every endpoint,
  so they change what the runtime does; their values are kept per gateway,
  so every view agrees on them.
* **Results.**  Responses are the runtime's types, which already answer
  ``r["text"]``, ``chunk["text"]``, ``chunk["done"]``, ``r["embedding"]``.
* **Handlers** (``init``, ``create_*_endpoint_handler``) run synchronously when
  called outside an event loop and return an awaitable inside one, so both
  ``response = handler(messages)`` and ``await handler(prompt)`` work.

Nothing here queues, retries, counts or caches: a second copy of any of those
would disagree with the runtime's.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import uuid
import weakref
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar, Generator, Iterator, Mapping, Sequence

from .. import errors
from ..actors.naming import ENDPOINT_MAX_CONCURRENCY
from ..config import EndpointConfig, GatewayConfig, config_from_seed_metadata, load_config
from ..providers.base import Provider, get_provider_class
from ..types import ChatResponse, EmbeddingResponse, StreamChunk

if TYPE_CHECKING:  # pragma: no cover
    from ..gateway import Gateway

__all__ = ["ApiBackend", "ModelFirstChat", "MessagesFirstChat", "EndpointHandler", "PendingResult",
           "QueueView", "close_all", "HANDLER_KINDS"]

#: what ``init(endpoint_type=...)`` and the handler factories accept
HANDLER_KINDS = ("chat", "completion", "streaming", "embedding", "vision")
#: metadata keys any class accepts for "where the server is" (mapped to the class's own key)
GENERIC_URL_KEYS = ("api_base", "base_url", "endpoint_url")
#: how Ray starts when no Ray is running in this process: quiet, like the seed library was
_RAY_INIT: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
_PROCESS_TOKEN = uuid.uuid4().hex[:8]
_ROUTER_SETTINGS = ("queue_size", "max_retries", "initial_retry_delay", "backoff_factor", "max_retry_delay")
#: seed attribute -> CircuitConfig field
_CIRCUIT_SETTINGS = {"circuit_failure_threshold": "failure_threshold", "circuit_reset_timeout": "reset_timeout",
                     "circuit_success_threshold": "success_threshold"}
_ENDPOINT_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:@-]+")


def _namespace() -> str:
    # the pid is read at call time: a forked child must not share its parent's actors
    return f"ipfs_accelerate_seed_{os.getpid()}_{_PROCESS_TOKEN}"


# ---------------------------------------------------------------------------
# One gateway, shared by the instances built from the same configuration
# ---------------------------------------------------------------------------

class _SharedGateway:
    """The gateway behind every instance of one (class, configuration).

    Holds what the seed kept per client and the runtime has no name for: the
    seed-facing settings (so getters need no round trip and new endpoints get
    them), the ``add_api_key`` names, and which endpoint ``init`` made for a
    (base_url, key).  The gateway itself is started on first use.
    """

    _names = itertools.count(1)

    def __init__(self, key: str, provider: str, config: GatewayConfig) -> None:
        self.key = key
        self.provider = provider
        self.config = config
        self.refs = 0
        self._gateway: Gateway | None = None
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.template: EndpointConfig | None = None
        self.settings: dict[str, Any] = {}
        self.key_names: dict[str, str] = {}
        self.identities: dict[tuple, str] = {}
        self._reset()

    def _reset(self) -> None:
        """What a gateway started from the configuration looks like: its endpoints,
        the configured settings, no named keys.  Also after a stop, so a restarted
        gateway and what the getters report agree."""
        config = self.config
        template = config.endpoints[0] if config.endpoints else None
        self.template = template
        self.settings = {
            "queue_size": config.queue_size,
            **{name: config.retry[name] for name in _ROUTER_SETTINGS if name != "queue_size"},
            **{seed: config.circuit[field] for seed, field in _CIRCUIT_SETTINGS.items()},
            "max_concurrent_requests": template.max_concurrent_requests if template
            else EndpointConfig.__dataclass_fields__["max_concurrent_requests"].default,
            "queue_enabled": True,
            "key_selection_strategy": config.strategy,
        }
        self.key_names = {}
        self.identities = {ep.identity: ep.id for ep in config.endpoints}

    def __repr__(self) -> str:
        state = "running" if self._gateway is not None else "not started"
        return f"<shared gateway {self.config.name!r} ({self.provider}, {state}, {self.refs} views)>"

    # -- lifecycle ---------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._gateway is not None

    @property
    def gateway(self) -> "Gateway":
        with self._lock:
            started = self._gateway is None
            if started:
                from ..gateway import Gateway
                self._gateway = Gateway.start(self.config, ray_init=_RAY_INIT, enable_metrics=False)
                # registered after Ray's own exit hook (ray.init just ran), so it runs first
                atexit.register(self.shutdown)
            gw = self._gateway
        if started:  # back in the registry after a close_all (outside our lock: the registry's comes first)
            with _REGISTRY_LOCK:
                _REGISTRY.setdefault(self.key, self)
        return gw

    def acquire(self) -> None:
        with self._lock:
            self.refs += 1

    def release(self) -> None:
        """One view fewer; the last one stops the gateway (its actors are detached
        in our namespace, so nothing else would)."""
        with self._lock:
            self.refs -= 1
            last = self.refs <= 0
        if last:
            self.shutdown()

    def shutdown(self) -> None:
        with _REGISTRY_LOCK:
            if _REGISTRY.get(self.key) is self:
                del _REGISTRY[self.key]
        with self._lock:
            gw, self._gateway = self._gateway, None
            self._reset()
        if gw is not None:
            atexit.unregister(self.shutdown)
            gw.shutdown()

    # -- endpoints -----------------------------------------------------------------
    def endpoint_ids(self) -> list[str]:
        return [info["id"] for info in self.gateway.endpoints()]

    def new_endpoint(self, *, endpoint_id: str | None = None, label: str = "ep", **fields: Any) -> EndpointConfig:
        """Add an endpoint like the configured one (same base URL, model, options)
        with ``fields`` changed and the current settings applied."""
        with self._lock:
            eid = endpoint_id or f"{self.provider}-{label}-{next(self._ids)}"
            base = self.template or EndpointConfig(id=eid, provider=self.provider)
            fields = {k: v for k, v in fields.items() if v is not None}
            fields.setdefault("max_concurrent_requests", self.endpoint_concurrency(self.settings))
            fields.setdefault("circuit", {f: self.settings[s] for s, f in _CIRCUIT_SETTINGS.items()})
            ep = dataclasses.replace(base, id=eid, api_key_env=None, enabled=True, **fields)
            self.gateway.add_endpoint(ep.to_dict(redact=False))
            self.identities.setdefault(ep.identity, ep.id)
            return ep

    def endpoint_for(self, base_url: str | None, api_key: str | None, default_model: str | None) -> str:
        """The endpoint serving (base_url, key), added on first use (``init`` is
        called again and again with the same arguments in seed code)."""
        with self._lock:
            base = self.template or EndpointConfig(id="probe", provider=self.provider)
            probe = dataclasses.replace(base, id="probe", api_key_env=None, base_url=base_url or base.base_url,
                                        api_key=api_key or base.api_key)
            if probe.identity in self.identities:
                return self.identities[probe.identity]
            return self.new_endpoint(label="init", base_url=probe.base_url, api_key=probe.api_key,
                                     default_model=default_model).id

    def endpoint_for_key(self, name: str) -> str:
        if name not in self.key_names:
            known = ", ".join(sorted(self.key_names)) or "none (add one with add_api_key)"
            raise errors.InvalidRequestError(f"no API key named {name!r}; key names: {known}",
                                             provider=self.provider, code="unknown_api_key_name")
        return self.key_names[name]

    # -- settings --------------------------------------------------------------------
    @staticmethod
    def endpoint_concurrency(settings: Mapping[str, Any]) -> int:
        """With the queue disabled nothing waits for a concurrency slot: the seed sent
        such requests straight away instead of queueing them."""
        return int(settings["max_concurrent_requests"]) if settings["queue_enabled"] else ENDPOINT_MAX_CONCURRENCY

    def update(self, name: str, value: Any) -> None:
        """Apply one seed setting to the running gateway, then remember it."""
        with self._lock:
            gw = self.gateway
            if name in _ROUTER_SETTINGS:
                value = gw.configure(**{name: value})[name]
            elif name == "key_selection_strategy":
                value = gw.set_strategy(value)
            elif name in _CIRCUIT_SETTINGS:
                for eid in self.endpoint_ids():
                    gw.configure_endpoint(eid, **{_CIRCUIT_SETTINGS[name]: value})
            elif name in ("max_concurrent_requests", "queue_enabled"):
                if name == "queue_enabled" and not isinstance(value, bool):
                    raise errors.ConfigError(f"queue_enabled must be True or False, got {value!r}")
                concurrency = self.endpoint_concurrency({**self.settings, name: value})
                for eid in self.endpoint_ids():
                    gw.configure_endpoint(eid, max_concurrent_requests=concurrency)
            else:  # pragma: no cover - the descriptors only name the settings above
                raise AttributeError(name)
            self.settings[name] = value


_REGISTRY: dict[str, _SharedGateway] = {}
_REGISTRY_LOCK = threading.Lock()


def _shared_gateway(cls: type["ApiBackend"], endpoints: list[EndpointConfig]) -> _SharedGateway:
    """The gateway for this class and these endpoints, created (not started) on first request."""
    material = json.dumps([cls.__qualname__, [ep.to_dict(redact=False) for ep in endpoints]],
                          sort_keys=True, default=str)
    key = hashlib.sha256(material.encode()).hexdigest()
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(key)
        if shared is None:
            name = f"{cls.PROVIDER}-{next(_SharedGateway._names)}"
            config = load_config({"namespace": _namespace(), "name": name, "endpoints": endpoints})
            shared = _REGISTRY[key] = _SharedGateway(key, cls.PROVIDER, config)
        shared.acquire()
        return shared


def close_all() -> None:
    """Stop every gateway this process started for seed-style instances.

    Instances stay usable: their next call starts a fresh gateway.  For tests
    and long-lived processes that want a clean slate; exit does it anyway.
    """
    with _REGISTRY_LOCK:
        shared = list(_REGISTRY.values())
    for item in shared:
        item.shutdown()


# ---------------------------------------------------------------------------
# Sync + async results for handlers
# ---------------------------------------------------------------------------

class _LoopThread:
    """One event loop on a daemon thread for awaited handler calls.

    Why not the caller's loop: a handler's result must also answer
    ``result["text"]`` in code that forgot to ``await`` (the seed README does
    ``response = handler(messages)``), and blocking the caller's own loop on a
    coroutine scheduled on that same loop would deadlock.  One loop for all
    such calls (rather than a thread per call) means no cap on how many run at
    once: the runtime's queue is the only queue.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def submit(cls, coro: Any) -> concurrent.futures.Future:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="api_backends-async", daemon=True).start()
                cls._loop = loop
        return asyncio.run_coroutine_threadsafe(coro, cls._loop)


class PendingResult:
    """A handler's result started inside a running event loop.

    ``await`` it for the response; or use it like the response (``r["text"]``,
    ``r.get(...)``, attributes), which waits for it.  The request is already
    running when this object exists: nothing depends on it being awaited.
    """

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def __getitem__(self, key: Any) -> Any:
        return self.result()[key]

    def __contains__(self, key: Any) -> bool:
        return self.get(key) is not None

    def get(self, key: Any, default: Any = None) -> Any:
        # through __getitem__ only: every result type (and a plain dict) has that
        try:
            return self.result()[key]
        except KeyError:
            return default

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result(), name)

    def __repr__(self) -> str:
        return f"PendingResult({self.result()!r})" if self.done() else "PendingResult(<running>)"


class _DualStream:
    """A streamed answer usable with ``for`` and with ``async for``; nothing is
    sent until iteration starts (like a generator)."""

    def __init__(self, sync: Callable[[], Iterator[StreamChunk]],
                 async_: Callable[[], AsyncIterator[StreamChunk]]) -> None:
        self._sync, self._async = sync, async_

    def __iter__(self) -> Iterator[StreamChunk]:
        return iter(self._sync())

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._async().__aiter__()


class QueueView:
    """What ``init`` returns as its queue: a read-only window on the gateway's queue.

    The seed returned its own ``asyncio.Queue``; requests now wait in the
    router's bounded priority queue, so this object only reports on that one
    (``qsize()``, ``maxsize``, ``empty()``, ``full()``, ``info()``).
    """

    def __init__(self, shared: _SharedGateway) -> None:
        self._shared = shared

    def info(self) -> dict:
        return self._shared.gateway.queue_info()

    def qsize(self) -> int:
        return int(self.info()["size"])

    @property
    def maxsize(self) -> int:
        return int(self.info()["capacity"])

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        info = self.info()
        return info["size"] >= info["capacity"]

    def __len__(self) -> int:
        return self.qsize()

    def __repr__(self) -> str:
        return f"QueueView({self._shared.config.name!r})"


class EndpointHandler:
    """The callable ``init`` and the ``create_*_endpoint_handler`` factories return.

    ``handler(messages_or_prompt, parameters={...}, image_data=None, **options)``:
    ``parameters`` are sampling/provider fields (``temperature``,
    ``max_tokens``, ``num_predict``, ``max_output_tokens`` ...), ``options``
    are request options (``priority``, ``request_id``).  Called outside an
    event loop it returns the response; inside one it returns a
    ``PendingResult`` to ``await``.  Streaming handlers return a stream for
    ``for`` or ``async for``.
    """

    def __init__(self, backend: "ApiBackend", kind: str, model: str | None, endpoint_id: str | None,
                 endpoint_url: str | None) -> None:
        if kind not in HANDLER_KINDS:
            raise errors.InvalidRequestError(f"endpoint_type must be one of {', '.join(HANDLER_KINDS)}, got {kind!r}",
                                             code="invalid_endpoint_type")
        self.backend = backend
        self.kind = kind
        self.model = model
        self.endpoint_id = endpoint_id
        self.endpoint_url = endpoint_url

    def __repr__(self) -> str:
        return (f"EndpointHandler({type(self.backend).__name__}, kind={self.kind!r}, model={self.model!r}, "
                f"endpoint_id={self.endpoint_id!r})")

    @property
    def batch_size(self) -> int:
        """Inputs one call may carry: 1 for generation; for embeddings the
        provider's per-request limit, 0 where it declares none."""
        if self.kind != "embedding":
            return 1
        return int(self.backend.provider_class().max_embed_batch or 0)

    def _plan(self, data: Any, parameters: Mapping[str, Any] | None, image_data: Any,
              options: dict) -> tuple[str, tuple, dict]:
        """(Gateway method, args, kwargs) for one call."""
        b = self.backend
        kwargs = b._options({**dict(parameters or {}), **options, "endpoint_id": self.endpoint_id})
        if self.kind == "embedding":
            return "embed", (b._route(self.model), data), kwargs
        if self.kind == "completion" and isinstance(data, str) and image_data is None \
                and b.provider_class().supports("complete"):
            return "complete", (b._route(self.model), data), kwargs
        return "chat", (b._route(self.model), b._messages(data, image_data=image_data)), kwargs

    def __call__(self, messages: Any = None, parameters: Mapping[str, Any] | None = None, *,
                 image_data: Any = None, prompt: Any = None, **options: Any) -> Any:
        data = messages if messages is not None else prompt
        method, args, kwargs = self._plan(data, parameters, image_data, options)
        gw = self.backend.gateway
        if self.kind == "streaming":
            return _DualStream(lambda: gw.stream_chat(*args, **kwargs), lambda: gw.astream_chat(*args, **kwargs))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return getattr(gw, method)(*args, **kwargs)
        return PendingResult(_LoopThread.submit(getattr(gw, "a" + method)(*args, **kwargs)))


# ---------------------------------------------------------------------------
# Settings as attributes
# ---------------------------------------------------------------------------

class _Setting:
    """A seed attribute whose assignment reconfigures the running gateway."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: "ApiBackend | None", owner: type) -> Any:
        if obj is None:
            return self
        return obj._shared.settings[self.name]

    def __set__(self, obj: "ApiBackend", value: Any) -> None:
        obj._require_open()
        obj._shared.update(self.name, value)


# ---------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------

class ApiBackend:
    """Shared behaviour of every seed-compatible class.

    Subclasses set ``PROVIDER`` (the runtime's provider name),
    ``URL_METADATA_KEY`` (the metadata key naming the server, documented in
    docs/porting.md) and, where it helps seed code that names no model,
    ``DEFAULT_MODEL``; ``SELF_HOSTED`` classes get an endpoint at the
    provider's default local URL when nothing is configured, as the seed's
    defaults (``http://localhost:11434`` for Ollama ...) did.
    """

    PROVIDER: ClassVar[str] = ""
    URL_METADATA_KEY: ClassVar[str] = ""
    DEFAULT_MODEL: ClassVar[str | None] = None
    SELF_HOSTED: ClassVar[bool] = False

    max_concurrent_requests = _Setting("max_concurrent_requests", "Requests in flight per endpoint (key).")
    queue_size = _Setting("queue_size", "Bound of the gateway's request queue.")
    queue_enabled = _Setting(
        "queue_enabled", "False: requests no longer wait for a concurrency slot (sent at once, as the seed "
        "did without its queue); rate limits, retries and circuits still apply.")
    max_retries = _Setting("max_retries", "Retries after the first attempt.")
    initial_retry_delay = _Setting("initial_retry_delay", "Seconds before the first retry.")
    backoff_factor = _Setting("backoff_factor", "Multiplier of the delay per retry.")
    max_retry_delay = _Setting("max_retry_delay", "Cap of the retry delay in seconds.")
    circuit_failure_threshold = _Setting("circuit_failure_threshold", "Failures that open an endpoint's circuit.")
    circuit_reset_timeout = _Setting("circuit_reset_timeout", "Seconds an open circuit waits before probing.")
    circuit_success_threshold = _Setting("circuit_success_threshold", "Probe successes that close a circuit.")
    # the quickstart's shorter spellings
    failure_threshold = _Setting("circuit_failure_threshold", "Alias of circuit_failure_threshold.")
    reset_timeout = _Setting("circuit_reset_timeout", "Alias of circuit_reset_timeout.")
    success_threshold = _Setting("circuit_success_threshold", "Alias of circuit_success_threshold.")
    key_selection_strategy = _Setting("key_selection_strategy", "'round-robin' or 'least-loaded'.")

    def __init__(self, resources: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        self.resources = dict(resources or {})
        self.metadata = dict(metadata or {})
        self._shared = _shared_gateway(type(self), self._endpoints())
        self._finalizer = weakref.finalize(self, _SharedGateway.release, self._shared)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shared!r})"

    # -- configuration -------------------------------------------------------------
    @classmethod
    def provider_class(cls) -> type[Provider]:
        return get_provider_class(cls.PROVIDER)

    def _endpoints(self) -> list[EndpointConfig]:
        """This class's endpoints: from metadata/resources when they name any,
        else from the environment and ./.env (the seed's ``metadata.get(...) or
        os.environ.get(...)``), else the provider's local default."""
        metadata = dict(self.metadata)
        for alias in GENERIC_URL_KEYS:
            if alias in metadata:
                metadata.setdefault(self.URL_METADATA_KEY, metadata.pop(alias))
        found: list[EndpointConfig] = []
        if metadata or self.resources:
            found = [ep for ep in config_from_seed_metadata(metadata, self.resources) if ep.provider == self.PROVIDER]
        if not found:
            found = [ep for ep in load_config(None).endpoints if ep.provider == self.PROVIDER]
        if not found and self.SELF_HOSTED:
            found = [EndpointConfig(id=f"{self.PROVIDER}-1", provider=self.PROVIDER)]
        # an endpoint named like the provider would capture every "<provider>/<model>" route
        return [dataclasses.replace(ep, id=f"{ep.id}-1") if ep.id == self.PROVIDER else ep for ep in found]

    @property
    def gateway(self) -> "Gateway":
        """The running Gateway behind this instance (the new API, for code moving off the seed one)."""
        self._require_open()
        return self._shared.gateway

    def _require_open(self) -> None:
        if not self._finalizer.alive:
            raise errors.ConfigError(f"this {type(self).__name__} instance was closed; create a new one")

    def close(self) -> None:
        """Let go of the gateway; the last instance using it stops it.  The instance
        cannot be used afterwards (it would start a gateway nobody stops)."""
        self._finalizer()

    def __enter__(self) -> "ApiBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- request plumbing ----------------------------------------------------------
    def _model(self, model: str | None) -> str:
        template = self._shared.template
        name = model or (template.default_model if template else None) or self.DEFAULT_MODEL \
            or self.provider_class().default_model
        if not name:
            raise errors.InvalidRequestError(
                f"{self.PROVIDER}: name a model (or set it in metadata / the environment, e.g. "
                f"{self.PROVIDER.upper()}_MODEL)", provider=self.PROVIDER, code="missing_model")
        return name

    def _route(self, model: str | None) -> str:
        """``<provider>/<model>``: the router then sends it to this class's endpoints
        whatever the model is called (Ollama and LLVM serve any name)."""
        name = self._model(model)
        return name if name.startswith(self.PROVIDER + "/") else f"{self.PROVIDER}/{name}"

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Request kwargs for the gateway: ``api_key_name`` becomes the endpoint
        ``add_api_key`` made for that key; unset (None) values are dropped."""
        name = kwargs.pop("api_key_name", None)
        if name is not None:
            if kwargs.get("endpoint_id"):
                raise errors.InvalidRequestError("pass endpoint_id or api_key_name, not both",
                                                 provider=self.PROVIDER, code="conflicting_endpoint")
            kwargs["endpoint_id"] = self._shared.endpoint_for_key(name)
        return {k: v for k, v in kwargs.items() if v is not None}

    def _messages(self, messages: Any, *, prompt: str | None = None, system: str | None = None,
                  image_data: Any = None) -> list[dict]:
        """The seed's message shapes as one list: a bare prompt string, ``prompt=``
        appended as a user turn, ``system=`` first, ``image_data=`` (bytes, PIL
        image, or a list of them) attached to the last user turn."""
        turns = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages or [])
        if system:
            turns.insert(0, {"role": "system", "content": system})
        if prompt:
            turns.append({"role": "user", "content": prompt})
        if image_data is not None:
            images = list(image_data) if isinstance(image_data, (list, tuple)) else [image_data]
            if not turns or turns[-1].get("role") != "user":
                turns.append({"role": "user", "content": ""})
            last = dict(turns[-1])
            content = last.get("content")
            parts = list(content) if isinstance(content, list) else (
                [{"type": "text", "text": content}] if content else [])
            parts.extend({"type": "image_url", "image_url": {"url": self._data_url(i)}} for i in images)
            last["content"] = parts
            turns[-1] = last
        return turns

    def _data_url(self, image: Any) -> str:
        """An image as a base64 data: URL, the one image form every provider takes;
        encoding is the library's (PNG for PIL images and unusual formats)."""
        from ..providers.openai_compat import image_payload
        owner = SimpleNamespace(name=self.PROVIDER, endpoint=SimpleNamespace(id=None))
        mime, data = image_payload(owner, image)  # type: ignore[arg-type]
        return f"data:{mime};base64,{data}"

    def _chat(self, model: str | None, messages: Any, *, prompt: str | None = None, system: str | None = None,
              image_data: Any = None, **kwargs: Any) -> ChatResponse:
        turns = self._messages(messages, prompt=prompt, system=system, image_data=image_data)
        return self.gateway.chat(self._route(model), turns, **self._options(kwargs))

    def _stream_chat(self, model: str | None, messages: Any, *, prompt: str | None = None,
                     system: str | None = None, image_data: Any = None, **kwargs: Any) -> Iterator[StreamChunk]:
        turns = self._messages(messages, prompt=prompt, system=system, image_data=image_data)
        return self.gateway.stream_chat(self._route(model), turns, **self._options(kwargs))

    def _complete(self, model: str | None, prompt: str, **kwargs: Any) -> ChatResponse:
        return self.gateway.complete(self._route(model), prompt, **self._options(kwargs))

    def _embed(self, model: str | None, text: str | Sequence[str], **kwargs: Any) -> EmbeddingResponse:
        return self.gateway.embed(self._route(model), text, **self._options(kwargs))

    def _call(self, op: str, model: str | None = None, **kwargs: Any) -> Any:
        """A non-chat operation (images, infer, model_info, chatqna ...) on this class's endpoints."""
        return self.gateway.call(op, model, provider=self.PROVIDER, **self._options(kwargs))

    # -- endpoints and keys ----------------------------------------------------------
    def create_endpoint(self, endpoint_id: str | None = None, api_key: str | None = None,
                        max_retries: int | None = None, initial_retry_delay: float | None = None,
                        backoff_factor: float | None = None, max_retry_delay: float | None = None,
                        queue_enabled: bool | None = None, max_concurrent_requests: int | None = None,
                        queue_size: int | None = None) -> str:
        """Add an endpoint (its own actor, counters and limits) and return its id,
        for ``endpoint_id=`` on requests and ``get_stats(endpoint_id)``.

        Without ``api_key`` it uses the configured key.  The retry fields become
        the endpoint's retry overrides; ``queue_size`` can only raise the
        gateway's one queue bound (there is no per-endpoint queue any more).
        """
        retry = {k: v for k, v in {"max_retries": max_retries, "initial_retry_delay": initial_retry_delay,
                                   "backoff_factor": backoff_factor, "max_retry_delay": max_retry_delay}.items()
                 if v is not None}
        concurrency = ENDPOINT_MAX_CONCURRENCY if queue_enabled is False else max_concurrent_requests
        eid = self._shared.new_endpoint(endpoint_id=endpoint_id, api_key=api_key, retry=retry or None,
                                        max_concurrent_requests=concurrency).id
        if queue_size is not None and int(queue_size) > int(self.queue_size):
            self.queue_size = int(queue_size)
        return eid

    def add_api_key(self, name: str, key: str) -> str:
        """Add a key under a name (an endpoint of its own); requests may then pick it
        with ``api_key_name=name``.  A name used again replaces its key."""
        if not isinstance(name, str) or not name.strip():
            raise errors.InvalidRequestError("the key name must be a non-empty string", code="invalid_key_name")
        shared = self._shared
        with shared._lock:
            old = shared.key_names.pop(name, None)
            if old is not None:
                self.gateway.remove_endpoint(old)
            slug = _ENDPOINT_ID_CHARS.sub("_", name.strip())[:80]
            eid = shared.new_endpoint(endpoint_id=f"{self.PROVIDER}-key-{slug}-{next(shared._ids)}", api_key=key).id
            shared.key_names[name] = eid
            return eid

    def set_api_key(self, api_key: str) -> str:
        """Use ``api_key`` for this instance's requests (the seed's setter): the
        configured endpoints are replaced by one endpoint with this key."""
        shared = self._shared
        with shared._lock:
            keep = set(shared.key_names.values())
            old = [eid for eid in shared.endpoint_ids() if eid not in keep]
            ep = shared.new_endpoint(label="key", api_key=api_key)
            for stale in old:
                self.gateway.remove_endpoint(stale)
            shared.identities = {i: e for i, e in shared.identities.items() if e not in old}
            shared.template = ep  # later endpoints (create_endpoint, init) use the new key too
            return ep.id

    def get_key_usage_stats(self) -> dict[str, dict[str, Any]]:
        """``{key name: {"requests", "tokens", "cost"}}`` from the endpoint counters;
        endpoints not added by ``add_api_key`` appear under their endpoint id."""
        names = {eid: name for name, eid in self._shared.key_names.items()}
        per = self.gateway.stats()["endpoints"]
        return {names.get(eid, eid): {"requests": s["total_requests"], "tokens": s["total_tokens"],
                                      "cost": s["cost_usd"], "endpoint_id": eid}
                for eid, s in per.items() if "error" not in s}

    # -- statistics ------------------------------------------------------------------
    def get_stats(self, endpoint_id: str | None = None) -> dict[str, Any]:
        """One endpoint's counters, or the aggregate (``endpoints_count``,
        ``total_requests``, ``total_tokens``, ``cost_usd``, per-endpoint dicts)."""
        return self.gateway.stats(endpoint_id)

    def get_usage_stats(self) -> dict[str, Any]:
        s = self.gateway.stats()
        return {"total_tokens": s["total_tokens"], "input_tokens": s["input_tokens"],
                "output_tokens": s["output_tokens"], "total_requests": s["total_requests"],
                "successful_requests": s["successful_requests"], "failed_requests": s["failed_requests"],
                "estimated_cost_usd": s["cost_usd"], "endpoints_count": s["endpoints_count"]}

    def reset_usage_stats(self) -> None:
        self.gateway.reset_stats()

    # -- queue -----------------------------------------------------------------------
    def get_queue_info(self) -> dict[str, Any]:
        """``size`` (waiting), ``active_requests`` (in flight), ``capacity`` and the rest
        of the router's queue report."""
        settings = self._shared.settings
        return {**self.gateway.queue_info(), "queue_enabled": settings["queue_enabled"],
                "max_concurrent_requests": settings["max_concurrent_requests"]}

    def get_queue_status(self) -> dict[str, Any]:
        info = self.gateway.queue_info()
        levels = info["by_priority"]
        return {"high_priority": levels["HIGH"], "normal_priority": levels["NORMAL"], "low_priority": levels["LOW"],
                "size": info["size"], "capacity": info["capacity"], "active_requests": info["active_requests"]}

    # -- circuit breaker ---------------------------------------------------------------
    def get_circuit_state(self, endpoint_id: str | None = None) -> str:
        """One endpoint's state, or this instance's: CLOSED while any endpoint is
        closed (requests still get through), else HALF_OPEN if one is probing,
        else OPEN (every key is failing)."""
        if endpoint_id is not None:
            return self.gateway.circuit_state(endpoint_id)
        states = set(self.gateway.circuit_state().values())
        return next((s for s in ("CLOSED", "HALF_OPEN", "OPEN") if s in states), "CLOSED")

    @property
    def circuit_state(self) -> str:
        return self.get_circuit_state()

    def get_circuit_metrics(self, endpoint_id: str | None = None) -> dict[str, Any]:
        """``recent_failures``, ``recent_requests``, ``failure_rate`` (a percentage, as
        the seed prints it) and ``state``; without an id summed over endpoints,
        with each endpoint's metrics under ``endpoints``."""
        def percent(m: dict) -> dict:
            return {**m, "failure_rate": 100.0 * float(m.get("failure_rate") or 0.0)}

        if endpoint_id is not None:
            return percent(self.gateway.circuit_metrics(endpoint_id))
        per = {eid: percent(m) for eid, m in self.gateway.circuit_metrics().items()}
        failures = sum(m["recent_failures"] for m in per.values())
        requests = sum(m["recent_requests"] for m in per.values())
        return {"state": self.get_circuit_state(), "recent_failures": failures, "recent_requests": requests,
                "failure_rate": 100.0 * failures / requests if requests else 0.0, "endpoints": per}

    # -- cache and batching -------------------------------------------------------------
    def enable_semantic_cache(self, similarity_threshold: float = 0.92, cache_size: int = 1000,
                              ttl: float | None = 3600, embedding_model: str | None = None) -> dict:
        """The gateway's semantic cache; ``embedding_model="mini"`` (the seed's value)
        is MiniLM when installed, else the built-in embedder."""
        return self.gateway.enable_semantic_cache(similarity_threshold, cache_size, ttl, embedding_model)

    def disable_semantic_cache(self) -> None:
        self.gateway.disable_semantic_cache()

    def get_cache_stats(self) -> dict[str, Any]:
        """The cache's counters with ``hit_rate`` as a percentage (the seed prints it with %)."""
        stats = self.gateway.cache_stats()
        return {**stats, "hit_rate": 100.0 * float(stats.get("hit_rate") or 0.0)}

    def enable_embedding_batching(self, max_batch_size: int = 20, batch_timeout: float = 0.1,
                                  auto_batching: bool = True) -> dict:
        return self.gateway.enable_embedding_batching(max_batch_size, batch_timeout, auto_batching)

    def disable_embedding_batching(self) -> None:
        self.gateway.disable_embedding_batching()

    def get_batching_stats(self) -> dict[str, Any]:
        """``batches``, ``batched_requests``, ``avg_batch_size`` and ``cost_savings``
        (USD; batching saves requests against a key's budget, not tokens)."""
        stats = self.gateway.batching_stats()
        return {**stats, "cost_savings": float(stats["estimated_savings"]["cost_usd"])}

    # -- handlers ------------------------------------------------------------------------
    def init(self, endpoint_url: str | None = None, api_key: str | None = None, model_name: str | None = None,
             endpoint_type: str = "chat") -> tuple[str | None, str | None, EndpointHandler, QueueView, int]:
        """``(endpoint_url, api_key, handler, queue, batch_size)`` as the seed returned.

        A given ``endpoint_url`` or ``api_key`` gets an endpoint of its own (made
        once per pair) and the handler is pinned to it; ``api_key`` is returned
        as passed (the configured key is never handed back).
        """
        handler = self.create_endpoint_handler(endpoint_type, model_name, endpoint_url, api_key)
        return handler.endpoint_url, api_key, handler, QueueView(self._shared), handler.batch_size

    def create_endpoint_handler(self, endpoint_type: str = "chat", model_name: str | None = None,
                                endpoint_url: str | None = None, api_key: str | None = None) -> EndpointHandler:
        endpoint_id = None
        if endpoint_url or api_key:
            endpoint_id = self._shared.endpoint_for(endpoint_url, api_key, model_name)
        template = self._shared.template
        url = endpoint_url or (template.base_url if template else None) or self.provider_class().default_base_url
        return EndpointHandler(self, endpoint_type, model_name, endpoint_id, url or None)


class ModelFirstChat:
    """``chat(model, messages, ...)`` / ``stream_chat(model, messages, ...)``: the
    OpenAI, Groq, Ollama, TGI, LLVM, OVMS and OPEA seed signatures.  Groq's
    ``model_name=`` keyword works too."""

    def chat(self: Any, model: str | None = None, messages: Any = None, prompt: str | None = None,
             system: str | None = None, temperature: float | None = None, max_tokens: int | None = None,
             **kwargs: Any) -> ChatResponse:
        model = kwargs.pop("model_name", None) or model
        return self._chat(model, messages, prompt=prompt, system=system, temperature=temperature,
                          max_tokens=max_tokens, **kwargs)

    def stream_chat(self: Any, model: str | None = None, messages: Any = None, **kwargs: Any) -> Iterator[StreamChunk]:
        model = kwargs.pop("model_name", None) or model
        return self._stream_chat(model, messages, **kwargs)


class MessagesFirstChat:
    """``chat(messages, model=None, ...)`` / ``stream_chat(messages, model=None, ...)``:
    the Claude and Gemini seed signatures."""

    def chat(self: Any, messages: Any, model: str | None = None, **kwargs: Any) -> ChatResponse:
        return self._chat(model, messages, **kwargs)

    def stream_chat(self: Any, messages: Any, model: str | None = None, **kwargs: Any) -> Iterator[StreamChunk]:
        return self._stream_chat(model, messages, **kwargs)
