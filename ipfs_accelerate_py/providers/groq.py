"""Groq: OpenAI-compatible, plus a model catalog and Groq's few differences.

Differences from the OpenAI shape (PROTOCOLS.md section 3): usage carries
timings (kept as-is in ``Usage.details`` by the shared usage parser), the final
stream chunk carries ``x_groq.usage`` even without ``stream_options``, ``n``
must be 1, ``/models`` entries carry ``active`` / ``context_window`` /
``max_completion_tokens``, and HTTP 498 (flex capacity) is retryable, which the
shared status mapping already does.
"""
from __future__ import annotations

from typing import Any, Mapping

from .. import errors
from ..transport import HttpResponse
from ..types import ChatRequest, ModelInfo
from .base import register
from .openai_compat import OpenAICompatibleProvider

CATEGORIES = ("chat", "vision", "audio")

#: models Groq serves or served (the seed's list plus current ones).  The live
#: ``models`` operation is authoritative for what is active; this table adds the
#: category and a description the API does not return.
_CATALOG: tuple[dict[str, Any], ...] = (
    {"id": "llama-3.3-70b-versatile", "category": "chat", "context_window": 131072, "owned_by": "Meta",
     "description": "Llama 3.3 70B, general purpose"},
    {"id": "llama-3.1-8b-instant", "category": "chat", "context_window": 131072, "owned_by": "Meta",
     "description": "Llama 3.1 8B, low latency"},
    {"id": "llama3-70b-8192", "category": "chat", "context_window": 8192, "owned_by": "Meta",
     "description": "Llama 3 70B"},
    {"id": "llama3-8b-8192", "category": "chat", "context_window": 8192, "owned_by": "Meta",
     "description": "Llama 3 8B"},
    {"id": "mixtral-8x7b-32768", "category": "chat", "context_window": 32768, "owned_by": "Mistral AI",
     "description": "Mixtral 8x7B mixture of experts"},
    {"id": "gemma2-9b-it", "category": "chat", "context_window": 8192, "owned_by": "Google",
     "description": "Gemma 2 9B instruct"},
    {"id": "mistral-saba-24b", "category": "chat", "context_window": 32768, "owned_by": "Mistral AI",
     "description": "Mistral Saba 24B, Middle East and South Asia languages"},
    {"id": "qwen-2.5-coder-32b", "category": "chat", "context_window": 131072, "owned_by": "Alibaba Cloud",
     "description": "Qwen 2.5 Coder 32B, code generation"},
    {"id": "deepseek-r1-distill-llama-70b", "category": "chat", "context_window": 131072,
     "owned_by": "DeepSeek / Meta", "description": "DeepSeek R1 distilled into Llama 70B, reasoning"},
    {"id": "llama-guard-3-8b", "category": "chat", "context_window": 8192, "owned_by": "Meta",
     "description": "Llama Guard 3 8B, content safety classifier"},
    {"id": "llama-3.2-11b-vision-preview", "category": "vision", "context_window": 8192, "owned_by": "Meta",
     "description": "Llama 3.2 11B with image input (preview)"},
    {"id": "llama-3.2-90b-vision-preview", "category": "vision", "context_window": 8192, "owned_by": "Meta",
     "description": "Llama 3.2 90B with image input (preview)"},
    {"id": "meta-llama/llama-4-scout-17b-16e-instruct", "category": "vision", "context_window": 131072,
     "owned_by": "Meta", "description": "Llama 4 Scout 17Bx16E, multimodal"},
    {"id": "meta-llama/llama-4-maverick-17b-128e-instruct", "category": "vision", "context_window": 131072,
     "owned_by": "Meta", "description": "Llama 4 Maverick 17Bx128E, multimodal"},
    {"id": "meta-llama/llama-guard-4-12b", "category": "chat", "context_window": 131072, "owned_by": "Meta",
     "description": "Llama Guard 4 12B, content safety classifier"},
    {"id": "meta-llama/llama-prompt-guard-2-86m", "category": "chat", "context_window": 512,
     "owned_by": "Meta", "description": "Prompt Guard 2 86M, prompt-injection classifier"},
    {"id": "qwen/qwen3-32b", "category": "chat", "context_window": 131072, "owned_by": "Alibaba Cloud",
     "description": "Qwen 3 32B, reasoning"},
    {"id": "moonshotai/kimi-k2-instruct", "category": "chat", "context_window": 131072,
     "owned_by": "Moonshot AI", "description": "Kimi K2 mixture of experts, tool use"},
    {"id": "moonshotai/kimi-k2-instruct-0905", "category": "chat", "context_window": 262144,
     "owned_by": "Moonshot AI", "description": "Kimi K2 (0905), long context, tool use"},
    {"id": "openai/gpt-oss-120b", "category": "chat", "context_window": 131072, "owned_by": "OpenAI",
     "description": "gpt-oss 120B open-weight reasoning model"},
    {"id": "openai/gpt-oss-20b", "category": "chat", "context_window": 131072, "owned_by": "OpenAI",
     "description": "gpt-oss 20B open-weight reasoning model"},
    {"id": "groq/compound", "category": "chat", "context_window": 131072, "owned_by": "Groq",
     "description": "Compound system with built-in web search and code execution"},
    {"id": "groq/compound-mini", "category": "chat", "context_window": 131072, "owned_by": "Groq",
     "description": "Smaller compound system with built-in tools"},
    {"id": "whisper-large-v3", "category": "audio", "context_window": 448, "owned_by": "OpenAI",
     "description": "Whisper large v3: transcription and translation"},
    {"id": "whisper-large-v3-turbo", "category": "audio", "context_window": 448, "owned_by": "OpenAI",
     "description": "Whisper large v3 turbo: fast transcription"},
    {"id": "distil-whisper-large-v3-en", "category": "audio", "context_window": 448,
     "owned_by": "Hugging Face", "description": "Distil-Whisper: English-only transcription"},
    {"id": "playai-tts", "category": "audio", "context_window": 8192, "owned_by": "PlayAI",
     "description": "Text to speech (English)"},
    {"id": "playai-tts-arabic", "category": "audio", "context_window": 8192, "owned_by": "PlayAI",
     "description": "Text to speech (Arabic)"},
)
_BY_ID = {entry["id"]: entry for entry in _CATALOG}


def catalog(category: str | None = None) -> list[dict]:
    """Copies of the catalog entries, optionally of one category (chat, vision, audio)."""
    if category is not None and category not in CATEGORIES:
        raise errors.InvalidRequestError(
            f"unknown Groq model category {category!r}; use one of {', '.join(CATEGORIES)}",
            provider="groq", code="invalid_category")
    return [dict(e) for e in _CATALOG if category is None or e["category"] == category]


def guess_category(model: str) -> str:
    """Category of a model the catalog does not know yet, from its name."""
    lowered = model.lower()
    if "whisper" in lowered or "tts" in lowered:
        return "audio"
    if "vision" in lowered or "llama-4" in lowered:
        return "vision"
    return "chat"


def is_compatible_model(model: str, category: str) -> bool:
    """Whether a catalogued Groq model can serve ``category``; vision models
    also chat, since they take plain text turns too.  Unknown ids are False."""
    entry = _BY_ID.get(model)
    if entry is None:
        return False
    if category == "chat":
        return entry["category"] in ("chat", "vision")
    return entry["category"] == category


@register
class GroqProvider(OpenAICompatibleProvider):
    name = "groq"
    default_base_url = "https://api.groq.com/openai/v1"
    operations = frozenset({"chat", "stream_chat", "models", "model_info", "transcribe", "translate", "speech"})
    model_patterns = tuple(_BY_ID)
    default_model = "llama-3.3-70b-versatile"
    description = "Groq: fast OpenAI-compatible chat and Whisper transcription"

    uses_max_completion_tokens = True
    accepts_top_k = False
    # translation is whisper-large-v3 only; the turbo model transcribes faster
    default_models = {"transcribe": "whisper-large-v3-turbo", "translate": "whisper-large-v3",
                      "speech": "playai-tts"}
    default_voice = "Fritz-PlayAI"

    def check_chat(self, request: ChatRequest) -> None:
        if request.n is not None and request.n > 1:
            raise errors.InvalidRequestError(f"groq returns one choice per call; n must be 1, got {request.n}",
                                             provider=self.name, endpoint_id=self.endpoint.id, code="invalid_n")

    def stream_fallback_usage(self, chunk: Mapping) -> Mapping | None:
        x_groq = chunk.get("x_groq")
        usage = x_groq.get("usage") if isinstance(x_groq, Mapping) else None
        return usage if isinstance(usage, Mapping) else None

    def model_info_from(self, item: Mapping) -> ModelInfo:
        info = super().model_info_from(item)
        entry = _BY_ID.get(info.id, {})
        info.category = entry.get("category") or guess_category(info.id)
        info.description = info.description or entry.get("description")
        info.owned_by = info.owned_by or entry.get("owned_by")
        info.context_window = info.context_window or entry.get("context_window")
        return info

    def _parse_models(self, request: Any, response: HttpResponse) -> list[ModelInfo]:
        # Groq lists retired models with active=false; absent means active
        return [m for m in super()._parse_models(request, response) if (m.raw or {}).get("active") is not False]
