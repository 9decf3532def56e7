"""Fake OPEA services (PROTOCOLS.md section 9): ChatQnA megaservice plus LLM and embedding microservices.

One app serves what a deployment spreads over several ports:

* ``POST /v1/chatqna`` -- the ChatQnA megaservice.  The question (``messages``:
  a string or OpenAI messages) is "embedded" (``base.embedding_vector``),
  the ``k`` nearest documents of a small built-in corpus are retrieved, the
  first ``top_n`` are kept after "reranking", and the answer is
  ``"Echo: <question> Context: <doc> | <doc>"``, cut to ``max_tokens``.  The
  corpus holds quotes of both kinds, a backslash, a newline and non-ASCII
  text, so answers exercise every escape of the stream format.  Non-stream:
  a ``chat.completion`` with zero usage (model ``chatqna``).  Stream (the
  default when ``stream`` is absent, as in the real handler): one
  ``data: b'..'`` event per fragment -- the Python repr of the fragment's
  UTF-8 bytes -- then ``data: [DONE]``.
* ``POST /v1/chat/completions`` -- the LLM microservice: list ``messages``
  answer as ``chat.completion``, a string ``messages`` as ``text_completion``
  (it went to the backend's /completions); streams are OpenAI chunks.
* ``POST /v1/embeddings`` -- the embedding microservice (768 dimensions).
* ``GET /v1/health_check``, ``GET /health``, ``GET /v1/statistics``.

Errors are FastAPI's: request validation fails with 422
``{"detail": [{"type", "loc", "msg", "input"}]}``, other errors are
``{"detail": ".."}``; a ``status`` fault with a string ``body`` gives the plain
text 500 of an unhandled exception.  No auth unless ``valid_keys`` is set
(a proxy in front of the services).
"""
from __future__ import annotations

import json
import time
from typing import Any
from collections.abc import Mapping

import numpy as np
from aiohttp import web

from .base import (
    FakeControls,
    FakeError,
    FakeProtocol,
    FakeServer,
    RequestContext,
    context_of,
    count_tokens,
    echo_reply,
    embedding_base64,
    embedding_vector,
    json_bytes,
    random_id,
    split_chunks,
    truncate_tokens,
)
from .ovms import chat_prompt_tokens, generate_reply, last_user_text, stream_openai_chunks, usage_json

__all__ = ["OPEAProtocol", "make_app", "CORPUS", "bytes_fragment"]

LLM_MODEL = "Intel/neural-chat-7b-v3-3"
EMBED_MODEL = "BAAI/bge-base-en-v1.5"
EMBED_DIM = 768
#: the retriever's documents; deliberately full of characters that need escaping
CORPUS: tuple[str, ...] = (
    "Nike's revenue grew 10% in fiscal 2023, driven by \"direct\" sales.",
    "OPEA's ChatQnA pipeline: embed -> retrieve -> rerank -> generate.\nIt runs on Xeon and Gaudi.",
    "OpenVINO Model Server serves models over KServe v2 and an OpenAI-compatible API.",
    "Caf\u00e9 prices in Z\u00fcrich rose 3\u202f% \u2014 \u2018espresso\u2019 now costs CHF\u00a04.50 \u2615.",
    "A Windows path looks like C:\\models\\llama and a tab is written \\t.",
    "Retrieval-augmented generation grounds answers in documents: \u691c\u7d22\u62e1\u5f35\u751f\u6210.",
)
_CORPUS_DIM = 64
_SEARCH_TYPES = ("similarity", "mmr", "similarity_distance_threshold", "similarity_score_threshold")
#: ChatQnA request fields and the python type pydantic checks them as
_CHATQNA_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "max_tokens": (int, "int"), "k": (int, "int"), "top_n": (int, "int"), "fetch_k": (int, "int"),
    "top_k": (int, "int"), "temperature": ((int, float), "float"), "top_p": ((int, float), "float"),
    "repetition_penalty": ((int, float), "float"), "frequency_penalty": ((int, float), "float"),
    "presence_penalty": ((int, float), "float"), "lambda_mult": ((int, float), "float"),
    "score_threshold": ((int, float), "float"), "distance_threshold": ((int, float), "float"),
    "stream": (bool, "bool"), "model": (str, "string"), "search_type": (str, "string"),
    "chat_template": (str, "string"),
}
_PYDANTIC_MESSAGES = {"int": ("int_type", "Input should be a valid integer"),
                      "float": ("float_type", "Input should be a valid number"),
                      "bool": ("bool_type", "Input should be a valid boolean"),
                      "string": ("string_type", "Input should be a valid string")}


def bytes_fragment(text: str) -> str:
    """How ChatQnA frames one fragment: ``repr`` of its UTF-8 bytes (``b'..'``)."""
    return repr(text.encode("utf-8"))


def _validation_error(errors: list[dict[str, Any]]) -> FakeError:
    return FakeError(422, "validation error", body={"detail": errors})


def _missing(field: str, body: Any) -> dict[str, Any]:
    return {"type": "missing", "loc": ["body", field], "msg": "Field required", "input": body}


def _field_problems(body: Mapping[str, Any], fields: Mapping[str, tuple[Any, str]]) -> list[dict[str, Any]]:
    """pydantic-style type checks of the optional fields."""
    problems = []
    for name, (types, label) in fields.items():
        value = body.get(name)
        if value is None:
            continue
        if (isinstance(value, bool) and label != "bool") or not isinstance(value, types):
            kind, msg = _PYDANTIC_MESSAGES[label]
            problems.append({"type": kind, "loc": ["body", name], "msg": msg, "input": value})
    return problems


def _check_request(body: Mapping[str, Any], fields: Mapping[str, tuple[Any, str]]) -> str | list[dict[str, Any]]:
    """``messages`` plus the typed fields; every problem is listed in one 422, as FastAPI does."""
    messages = body.get("messages")
    problems: list[dict[str, Any]] = []
    if messages is None:
        problems.append(_missing("messages", body))
    elif not (isinstance(messages, str) or (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages))):
        problems.append({"type": "union_type", "loc": ["body", "messages"],
                         "msg": "Input should be a valid string or a list of messages", "input": messages})
    problems.extend(_field_problems(body, fields))
    if problems:
        raise _validation_error(problems)
    return messages


class OPEAProtocol(FakeProtocol):
    name = "opea"
    base_path = "/v1"
    sdk_base_path = "/v1"

    def __init__(self) -> None:
        self._doc_vectors = np.stack([embedding_vector(doc, _CORPUS_DIM) for doc in CORPUS]).astype(np.float64)

    # -- hooks ----------------------------------------------------------------
    def requires_key(self, request: web.Request, controls: FakeControls) -> bool:
        return bool(controls.valid_keys)  # OPEA itself has no auth; a proxy in front may

    def error_defaults(self, status: int) -> tuple[str, str | None, str]:
        messages = {400: "Bad Request", 401: "Not authenticated", 404: "Not Found", 405: "Method Not Allowed",
                    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
        return "", None, messages.get(status, f"HTTP {status}")

    def error_payload(self, err: FakeError, ctx: RequestContext) -> Any:
        return {"detail": err.message}

    def auth_error(self, key: str | None) -> FakeError:
        return FakeError(401, "Not authenticated")

    def invalid_json_error(self, detail: str) -> FakeError:
        return _validation_error([{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error",
                                   "input": {}, "ctx": {"error": detail[:100]}}])

    def route_error(self, request: web.Request, exc: web.HTTPException) -> FakeError:
        return FakeError(exc.status, "Method Not Allowed" if exc.status == 405 else "Not Found")

    def add_routes(self, app: web.Application, server: FakeServer) -> None:
        r = app.router
        r.add_post("/v1/chatqna", self.chatqna)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_get("/v1/health_check", self.health_check)
        r.add_get("/health", self.health)
        r.add_get("/v1/statistics", self.statistics)

    async def _body(self, ctx: RequestContext) -> dict[str, Any]:
        body = await ctx.read_json()
        if not isinstance(body, dict):
            raise _validation_error([{"type": "model_attributes_type", "loc": ["body"],
                                      "msg": "Input should be a valid dictionary or object", "input": body}])
        return body

    # -- ChatQnA ------------------------------------------------------------------
    def retrieve(self, question: str, k: int, top_n: int) -> list[str]:
        """The ``k`` nearest documents, of which the first ``top_n`` survive reranking."""
        query = embedding_vector(question, _CORPUS_DIM).astype(np.float64)
        order = np.argsort(-(self._doc_vectors @ query), kind="stable")
        return [CORPUS[i] for i in order[:max(0, k)]][:max(0, top_n)]

    async def chatqna(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        body = await self._body(ctx)
        messages = _check_request(body, _CHATQNA_FIELDS)
        if body.get("search_type") is not None and body["search_type"] not in _SEARCH_TYPES:
            raise FakeError(400, f"search_type must be one of {', '.join(_SEARCH_TYPES)}")
        question = messages if isinstance(messages, str) else last_user_text(messages)
        docs = self.retrieve(question, body.get("k", 4), body.get("top_n", 1))
        answer = echo_reply(question) + (" Context: " + " | ".join(docs) if docs else "")
        answer, truncated = truncate_tokens(answer, body.get("max_tokens", 1024))
        ctx.charge_tokens(count_tokens(question) + count_tokens(answer))
        if body.get("stream", True):
            stream = await ctx.sse()
            for piece in split_chunks(answer, ctx.controls.stream_chunks):
                await stream.send(bytes_fragment(piece))
            await stream.send("[DONE]")
            return await stream.close()
        out = {"id": random_id("chatcmpl-", 22), "object": "chat.completion", "created": int(time.time()),
               "model": "chatqna",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                            "finish_reason": "length" if truncated else "stop", "metadata": None}],
               "usage": {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0}}
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- LLM microservice ------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        body = await self._body(ctx)
        messages = _check_request(body, _CHATQNA_FIELDS)
        model = body.get("model") or LLM_MODEL
        chat = isinstance(messages, list)
        prompt = last_user_text(messages) if chat else messages
        text, finish = generate_reply(prompt, body.get("max_tokens"), _stops(body))
        prompt_tokens = chat_prompt_tokens(messages) if chat else count_tokens(messages)
        completion = count_tokens(text)
        usage = usage_json(prompt_tokens, completion)
        ctx.charge_tokens(prompt_tokens + completion)
        base = {"id": random_id("chatcmpl-" if chat else "cmpl-", 22), "created": int(time.time()), "model": model,
                "object": "chat.completion" if chat else "text_completion", "system_fingerprint": None}
        if body.get("stream", False):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await stream_openai_chunks(
                ctx, dict(base, object="chat.completion.chunk" if chat else "text_completion"), text, finish,
                usage, chat=chat, include_usage=include_usage, first_content="")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": None}
        else:
            choice["text"] = text
        return web.Response(body=json_bytes(dict(base, choices=[choice], usage=usage)),
                            content_type="application/json")

    # -- embedding microservice --------------------------------------------------------
    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        body = await self._body(ctx)
        raw = body.get("input")
        if raw is None:
            raise _validation_error([_missing("input", body)])
        inputs = _embedding_inputs(raw)
        problems = _field_problems(body, {"dimensions": (int, "int"), "model": (str, "string")})
        if problems:
            raise _validation_error(problems)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _validation_error([{"type": "literal_error", "loc": ["body", "encoding_format"],
                                      "msg": "Input should be 'float' or 'base64'", "input": encoding}])
        dim = body.get("dimensions") or EMBED_DIM
        if not 1 <= dim <= EMBED_DIM:
            raise FakeError(400, f"dimensions must be between 1 and {EMBED_DIM}")
        data = []
        for i, text in enumerate(inputs):
            vec = embedding_vector(text, dim, native_dim=EMBED_DIM)
            data.append({"index": i, "object": "embedding",
                         "embedding": embedding_base64(vec) if encoding == "base64" else vec.astype(float).tolist()})
        tokens = sum(count_tokens(t) for t in inputs)
        ctx.charge_tokens(tokens)
        out = {"object": "list", "model": body.get("model") or EMBED_MODEL, "data": data,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}
        return web.Response(body=json_bytes(out), content_type="application/json")

    # -- health ----------------------------------------------------------------------
    async def health_check(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"Service Title": "opea_service@chatqna", "Version": "1.0",
                                  "Service Description": "OPEA Microservice Infrastructure"})

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def statistics(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})


def _stops(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise _validation_error([{"type": "union_type", "loc": ["body", "stop"],
                              "msg": "Input should be a valid string or list of strings", "input": stop}])


def _embedding_inputs(raw: Any) -> list[str]:
    """``input`` as texts: a string, strings, token ids or lists of token ids."""
    if isinstance(raw, str) and raw:
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(t, str) and t for t in raw):
            return list(raw)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
            return [json.dumps(raw)]
        if all(isinstance(t, list) and t and all(isinstance(i, int) for i in t) for t in raw):
            return [json.dumps(t) for t in raw]
    raise _validation_error([{"type": "union_type", "loc": ["body", "input"],
                              "msg": "Input should be a non-empty string, list of strings or token ids",
                              "input": raw}])


def make_app(controls: Mapping[str, Any] | None = None) -> web.Application:
    return FakeServer(OPEAProtocol(), controls).make_app()
