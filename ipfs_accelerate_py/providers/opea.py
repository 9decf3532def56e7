"""OPEA GenAIComps microservices and the ChatQnA megaservice (PROTOCOLS.md section 9).

The LLM and embedding microservices speak OpenAI's shape at
``/v1/chat/completions`` and ``/v1/embeddings``, so chat, completion and
embedding calls reuse ``OpenAICompatibleProvider``.  One OPEA twist: the LLM
service picks the backend route from the type of ``messages`` -- a list gives
a ``chat.completion``, a string goes to the backend's ``/completions`` and
comes back as a ``text_completion``.  ``chat`` always sends a list; ``complete``
sends the prompt string as ``messages``; parsing accepts either answer shape.

ChatQnA (``POST /v1/chatqna``) is RAG in one call: ``messages`` (a question
string or OpenAI messages), LLM parameters, and retrieval parameters (``k``,
``top_n``, ``search_type``, ``score_threshold``, ...) all come from the call's
params.  Its non-stream answer is a ``chat.completion`` whose usage is always
zero, so usage is estimated locally and marked ``{"estimated": True}``.  Its
stream is *not* OpenAI-shaped: each event is ``data: b'<text>'``, the Python
repr of the UTF-8 bytes of one fragment, ending with ``data: [DONE]``.
Fragments are unescaped by parsing exactly one bytes literal with ``ast``
(both quote styles, every escape) and decoding UTF-8 incrementally.

Errors are FastAPI's: 422 ``{"detail": [{"loc", "msg", "type"}]}``,
``{"detail": ".."}`` from an HTTPException, plain text for an unhandled 500.
Services have no auth; a configured key is sent as Bearer (for a proxy).
``base_url`` is the service root (``http://host:8888``); a trailing ``/v1``
is accepted and trimmed.
"""
from __future__ import annotations

import codecs
import codecs
import json
from typing import Any, Mapping

from .. import errors
from ..core import tokens
from ..transport import HttpRequest, HttpResponse, SseEvent
from ..types import (ChatRequest, ChatResponse, OperationRequest, OperationResponse, StreamChunk, Usage,
                     coerce_messages)
from .base import Request, Result, StreamDecoder, register
from .openai_compat import (OpenAICompatibleProvider, OpenAIStreamDecoder, content_text, http_request,
                            json_object, op_params, usage_from_dict)

__all__ = ["OPEAProvider", "ChatQnAStreamDecoder", "decode_bytes_literal", "fastapi_error_message"]

#: fields of a ChatQnA call that the provider sets itself
_CHATQNA_PROTECTED = frozenset({"messages", "stream"})
#: longest ``data:`` payload accepted as one fragment (a guard before parsing it)
_MAX_FRAGMENT_CHARS = 1 << 20


def decode_bytes_literal(data: str) -> bytes | None:
    """The bytes of one Python bytes literal (``b'..'`` or ``b".."``, as ``repr`` writes them), else None.

    A scan for the closing quote, then Python's own escape decoding: nothing
    is evaluated, and a payload that is anything else (an expression, two
    literals with an operator, plain text) is not a literal.  Not
    ``ast.parse``: hostile nesting from an upstream can make it raise
    RecursionError, after which CPython 3.11 fails every later compile in
    the process ("AST constructor recursion depth mismatch").
    """
    text = data.strip()
    if len(text) < 3 or text[0] not in "bB" or text[1] not in "'\"" or len(text) > _MAX_FRAGMENT_CHARS:
        return None
    quote = text[1]
    if text[-1] != quote:
        return None
    body = text[2:-1]  # repr(bytes) never writes triple quotes, so neither do we read them
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 == len(body):
                return None  # the backslash escapes the closing quote: unterminated
            i += 2
            continue
        if char == quote or char == "\n" or ord(char) > 127:
            return None  # a bare quote ends the literal early; bytes literals are ASCII
        i += 1
    try:
        return codecs.escape_decode(body.encode("ascii"))[0]
    except ValueError:
        return None


def fastapi_error_message(body: Any) -> str | None:
    """A readable message from FastAPI's ``{"detail": ...}`` error bodies.

    422 validation errors list each problem as ``{"loc": [...], "msg": ..}``;
    they become ``"body.messages: Field required; body.k: ..."``.
    """
    if not isinstance(body, Mapping) or "detail" not in body:
        return None
    detail = body["detail"]
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc") or [])
                msg = str(item.get("msg") or item.get("type") or "invalid")
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts) or None
    return json.dumps(detail)[:500]


def _prompt_tokens(messages: Any, model: str | None) -> int:
    if isinstance(messages, str):
        return tokens.count_tokens(messages, model)
    return tokens.count_message_tokens(messages, model)


def _estimated_usage(messages: Any, answer: str, model: str | None) -> Usage:
    return Usage(prompt_tokens=_prompt_tokens(messages, model),
                 completion_tokens=tokens.count_tokens(answer, model), details={"estimated": True})


class ChatQnAStreamDecoder(StreamDecoder):
    """Decodes ChatQnA's ``data: b'<fragment>'`` stream.

    Each fragment is a bytes literal; its bytes go through one incremental
    UTF-8 decoder, so a character split across two fragments still comes out
    whole.  ``[DONE]`` ends the stream; ending without it is a retryable
    ProviderError (a truncated answer must never look complete).  Payloads
    that are OpenAI chunk JSON (some deployments) or bare text are accepted.
    """

    def __init__(self, provider: "OPEAProvider", messages: Any, model: str | None) -> None:
        self._provider = provider
        self._messages = messages
        self._model = model
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pieces: list[str] = []
        self._done = False
        self._closed = False

    def _text_of(self, data: str) -> str:
        raw = decode_bytes_literal(data)
        if raw is not None:
            return self._utf8.decode(raw)
        stripped = data.strip()
        if stripped.startswith("{"):
            try:
                obj = json.loads(stripped)
            except ValueError:
                obj = None
            if isinstance(obj, Mapping):
                if obj.get("error") is not None:
                    raise self._provider.stream_error(obj)
                choices = [c for c in obj.get("choices") or [] if isinstance(c, Mapping)]
                return _delta_text(choices[0]) if choices else ""
        if stripped[:2].lower() in ("b'", 'b"'):
            raise errors.ProviderError(f"opea sent a malformed bytes fragment: {data[:200]!r}",
                                       provider=self._provider.name, endpoint_id=self._provider.endpoint.id)
        return data

    def feed(self, event: Any) -> list[StreamChunk]:
        data = event.data if isinstance(event, SseEvent) else str(event)
        if data.strip() == "[DONE]":
            self._done = True
            return []
        if self._done or not data:
            return []
        text = self._text_of(data)
        if not text:
            return []
        self._pieces.append(text)
        return [StreamChunk(text=text, model=self._model)]

    def close(self) -> list[StreamChunk]:
        if self._closed:
            return []
        if not self._done:
            raise errors.ProviderError(
                "stream ended before [DONE]: opea closed the ChatQnA response early, so the answer may be "
                "incomplete", retryable=True, provider=self._provider.name,
                endpoint_id=self._provider.endpoint.id)
        self._closed = True
        chunks = []
        tail = self._utf8.decode(b"", final=True)
        if tail:
            self._pieces.append(tail)
            chunks.append(StreamChunk(text=tail, model=self._model))
        usage = _estimated_usage(self._messages, "".join(self._pieces), self._model)
        chunks.append(StreamChunk(done=True, finish_reason="stop", usage=usage, model=self._model))
        return chunks


def _answer_text(choice: Mapping) -> str:
    """Text of a choice of either answer shape (chat ``message`` or completion ``text``)."""
    message = choice.get("message")
    if isinstance(message, Mapping):
        return content_text(message.get("content"))
    return choice.get("text") if isinstance(choice.get("text"), str) else ""


def _delta_text(choice: Mapping) -> str:
    delta = choice.get("delta")
    if isinstance(delta, Mapping) and delta.get("content") is not None:
        return content_text(delta.get("content"))
    return choice.get("text") if isinstance(choice.get("text"), str) else ""


@register
class OPEAProvider(OpenAICompatibleProvider):
    name = "opea"
    default_base_url = "http://localhost:8888"
    operations = frozenset({"chat", "stream_chat", "complete", "stream_complete", "embed", "chatqna",
                            "stream_chatqna", "health"})
    default_model = None
    description = "OPEA: ChatQnA RAG megaservice and OpenAI-shaped LLM / embedding microservices"

    accepts_top_k = True
    chat_path = "v1/chat/completions"
    # the LLM microservice takes a prompt string as ``messages`` on the chat route
    completions_path = "v1/chat/completions"
    embeddings_path = "v1/embeddings"
    chatqna_path = "v1/chatqna"
    health_path = "v1/health_check"

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.base_url = self.base_url.removesuffix("/v1")

    # -- LLM microservice ------------------------------------------------------------
    def completion_body(self, request: OperationRequest, *, stream: bool) -> dict:
        body = super().completion_body(request, stream=stream)
        prompt = body.pop("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise errors.InvalidRequestError("opea complete takes a single string prompt",
                                                 provider=self.name, endpoint_id=self.endpoint.id,
                                                 code="invalid_prompt")
            prompt = prompt[0]
        body["messages"] = prompt
        return body

    def _parse_chat(self, request: ChatRequest, response: HttpResponse) -> ChatResponse:
        body = json_object(self, response, "chat")
        return self._choices_response(request, body, _answer_text)

    def _parse_complete(self, request: OperationRequest, response: HttpResponse) -> ChatResponse:
        body = json_object(self, response, "complete")
        return self._choices_response(request, body, _answer_text)

    def stream_decoder(self, op: str, request: Request, response_headers: Mapping[str, str]) -> StreamDecoder:
        if op in ("stream_chat", "stream_complete"):
            return OpenAIStreamDecoder(self, _delta_text)
        if op == "stream_chatqna":
            messages = self._chatqna_messages(request)
            return ChatQnAStreamDecoder(self, messages, getattr(request, "model", None) or "chatqna")
        return super().stream_decoder(op, request, response_headers)

    # -- ChatQnA -----------------------------------------------------------------
    def _chatqna_messages(self, request: Any) -> Any:
        """The question as the service takes it: a string, or OpenAI messages."""
        messages = op_params(request).get("messages")
        if isinstance(messages, str):
            if not messages.strip():
                raise errors.InvalidRequestError("opea chatqna needs a non-empty question in 'messages'",
                                                 provider=self.name, endpoint_id=self.endpoint.id,
                                                 code="invalid_messages")
            return messages
        if messages is None:
            raise errors.InvalidRequestError("opea chatqna needs 'messages': a question string or a list of "
                                             "{'role', 'content'}", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_messages")
        return [m.to_openai() for m in coerce_messages(messages)]

    def chatqna_body(self, request: OperationRequest, *, stream: bool) -> dict:
        params = op_params(request)
        body: dict[str, Any] = {"messages": self._chatqna_messages(request), "stream": stream}
        model = getattr(request, "model", None)
        if model:
            body["model"] = model
        body.update((k, v) for k, v in params.items() if k not in _CHATQNA_PROTECTED and v is not None)
        return body

    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        if op in ("chatqna", "stream_chatqna"):
            self.require(op)
            stream = op == "stream_chatqna"
            return http_request(self, "POST", self.chatqna_path, request_id,
                                json_body=self.chatqna_body(request, stream=stream), stream=stream)
        if op == "health":
            self.require(op)
            return http_request(self, "GET", self.health_path, request_id)
        return super().build(op, request, request_id)

    def _parse_chatqna(self, request: OperationRequest, response: HttpResponse) -> ChatResponse:
        body = json_object(self, response, "chatqna")
        result = self._choices_response(request, body, _answer_text)
        result.model = body.get("model") or request.model or "chatqna"
        reported = usage_from_dict(body.get("usage"))
        if reported is None or not (reported.prompt_tokens or reported.completion_tokens):
            # ChatQnA always reports zeros: count locally so limits and stats see real numbers
            result.usage = _estimated_usage(self._chatqna_messages(request), result.text, request.model)
        return result

    # -- health ------------------------------------------------------------------------
    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """The default loop, except ``health``: an answer with an error status
        means "not healthy" (False), not a failed call."""
        if op != "health":
            return await super().execute(op, request, request_id, transport)
        self.require(op)
        response = await transport.send(self.build(op, request, request_id), timeout_s=self.endpoint.timeout_s)
        healthy = 200 <= response.status < 300
        body = response.json()
        raw: dict[str, Any] = {"status": response.status}
        if isinstance(body, Mapping):
            raw["service"] = dict(body)
        elif not healthy:
            raw["error"] = self.error_message(response)[0]
        return OperationResponse(op="health", data=healthy, provider=self.name, endpoint_id=self.endpoint.id,
                                 raw=raw), response.headers

    # -- errors --------------------------------------------------------------------
    def error_message(self, response: HttpResponse) -> tuple[str, str | None, str | None]:
        message = fastapi_error_message(response.json())
        if message is None:
            return super().error_message(response)
        body = response.json()
        etype = "validation_error" if isinstance(body.get("detail"), list) else None
        return errors.redact(message, [self.api_key or ""]), etype, None
