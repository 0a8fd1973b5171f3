"""Request bodies (pydantic) and the OpenAI-shaped response objects the API sends.

Chat requests accept what OpenAI clients and chat UIs send; fields kb has no use for (``top_p``,
``user``, ``presence_penalty``...) are accepted and ignored, so clients work unchanged. Two
extensions: ``k`` (passages to retrieve) in the request, ``sources`` (the cited passages) in the
response.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MODELS = {
    "kb-rag": "retrieval-augmented answer over the indexed documents, with [n] citations",
    "kb-agent": "tool-using assistant over the indexed documents (searches, reads, then answers with [n] citations)",
}
CREATED = 1_735_689_600  # fixed "created" of the model list (2025-01-01)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; non-text parts (images, audio) are refused by the caller's check."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type in ("text", "input_text"))

    def has_non_text(self) -> bool:
        return isinstance(self.content, list) and any(p.type not in ("text", "input_text") for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    n: int | None = Field(None, ge=1)
    k: int | None = Field(None, ge=1, le=50, description="passages to retrieve (kb extension)")


class SearchRequest(BaseModel):
    """``kb search QUERY [-k N] [--mode M] [--explain] --json``"""

    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=50)
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    explain: bool = False


class AskRequest(BaseModel):
    """``kb ask QUESTION [-k N] [--mode M] [--explain] --json``"""

    question: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=50)
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    explain: bool = False


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def model_json(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "kb", "description": MODELS[name]}


def openai_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """Usage as OpenAI's three integers (0 when the serving endpoint reported none)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_json(
    cid: str, model: str, answer: str, sources: list[dict], usage: dict, finish_reason: str = "stop"
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": openai_usage(usage),
        "sources": sources,
    }


def chunk_json(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
