"""The chat model: ``langchain_openai.ChatOpenAI`` pointed at Databricks Model Serving.

``DatabricksChatOpenAI`` smooths the differences between OpenAI and Databricks' OpenAI-compatible
API so the rest of the code (and notebooks) use an ordinary LangChain chat model:

- ``max_tokens`` is sent as ``max_tokens`` (ChatOpenAI renames it to ``max_completion_tokens``,
  which Databricks rejects);
- ``strict`` is dropped from tool schemas (Databricks rejects it);
- reasoning models answer with ``content`` as a list of blocks: the text blocks become the
  message text, reasoning goes to ``additional_kwargs["reasoning"]``;
- streamed usage that Databricks reports cumulatively on every chunk is counted once.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from agent.errors import ConfigError
from agent.settings import Settings

# Streamed reasoning models send delta.content as a list of blocks; openai's typed delta says str
# and pydantic warns on every chunk. The list is handled below, so the warning is noise.
warnings.filterwarnings("ignore", message="Pydantic serializer warnings", category=UserWarning)


def flatten_content(content: Any) -> tuple[str, str]:
    """(text, reasoning) from a message content that may be a string or a list of blocks."""
    if isinstance(content, str):
        return content, ""
    text: list[str] = []
    reasoning: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            text.append(block)
        elif isinstance(block, dict):
            kind = block.get("type")
            if kind == "text":
                text.append(str(block.get("text", "")))
            elif kind in ("reasoning", "thinking"):
                for part in block.get("summary") or []:
                    if isinstance(part, dict):
                        reasoning.append(str(part.get("text", "")))
                if block.get("thinking"):
                    reasoning.append(str(block["thinking"]))
    return "".join(text), "".join(reasoning)


class DatabricksChatOpenAI(ChatOpenAI):
    """ChatOpenAI for Databricks Model Serving's OpenAI-compatible chat completions."""

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        for tool in payload.get("tools") or []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict):
                function.pop("strict", None)
                function.setdefault("parameters", {"type": "object", "properties": {}})
        return payload

    def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        for generation in result.generations:
            message = generation.message
            if not isinstance(message.content, str):
                text, reasoning = flatten_content(message.content)
                message.content = text
                if reasoning:
                    message.additional_kwargs["reasoning"] = reasoning
                generation.text = text
        return result

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        usage = _UsageMax()
        for chunk in super()._stream(*args, **kwargs):
            yield _normalise_chunk(chunk, usage)
        if usage.seen:
            yield usage.chunk()

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        usage = _UsageMax()
        async for chunk in super()._astream(*args, **kwargs):
            yield _normalise_chunk(chunk, usage)
        if usage.seen:
            yield usage.chunk()


class _UsageMax:
    """Usage seen in a stream: the maximum of each count, right whether a server reports usage once
    at the end (OpenAI) or cumulatively on every chunk (some Databricks endpoints)."""

    def __init__(self) -> None:
        self.seen = False
        self.input = 0
        self.output = 0

    def add(self, usage: dict) -> None:
        self.seen = True
        self.input = max(self.input, int(usage.get("input_tokens") or 0))
        self.output = max(self.output, int(usage.get("output_tokens") or 0))

    def chunk(self) -> ChatGenerationChunk:
        totals = {"input_tokens": self.input, "output_tokens": self.output, "total_tokens": self.input + self.output}
        return ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=totals))


def _normalise_chunk(chunk: ChatGenerationChunk, usage: _UsageMax) -> ChatGenerationChunk:
    message = chunk.message
    if getattr(message, "usage_metadata", None):
        usage.add(dict(message.usage_metadata))
        message.usage_metadata = None
    if isinstance(message.content, str):
        return chunk
    text, reasoning = flatten_content(message.content)
    extra = dict(message.additional_kwargs)
    if reasoning:
        extra["reasoning"] = reasoning
    new_message = AIMessageChunk(
        content=text,
        additional_kwargs=extra,
        response_metadata=message.response_metadata,
        tool_call_chunks=getattr(message, "tool_call_chunks", []),
        id=message.id,
    )
    return ChatGenerationChunk(message=new_message, generation_info=chunk.generation_info)


def chat_usage_context(settings: Settings, command: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``usage_context`` of every Databricks request (chat and embeddings): automatic keys
    (``command``, ``caller``...) under the user's configured ones (the user's keys win), all values
    strings, within the size limits of ``agent.usage_context``."""
    from agent import usage_context

    return usage_context.build(settings.usage_context, command, extra)


def build_llm(settings: Settings, *, command: str = "ask", usage_extra: dict[str, str] | None = None, **overrides: Any) -> DatabricksChatOpenAI:
    """The configured chat model. Raises ``ConfigError`` when no token or base URL is set."""
    if not settings.llm_configured:
        missing = " and ".join(settings.missing_llm_settings())
        raise ConfigError(f"no Databricks model configured: set {missing} (see README, Configuration)")
    from agent.ledger import chat_recorder

    context = chat_usage_context(settings, command, usage_extra)
    params: dict[str, Any] = {
        "model": settings.chat_endpoint,
        "base_url": settings.serving_base_url,
        "api_key": settings.databricks_token,
        "temperature": 0,
        "max_tokens": settings.max_tokens,
        "timeout": settings.timeout,
        "max_retries": settings.max_retries,
        "stream_usage": True,
        "extra_body": {"usage_context": context},
    }
    params.update(overrides)
    # One ledger row and one --verbose log line per call (agent/ledger.py).
    sent = (params.get("extra_body") or {}).get("usage_context")
    sent = sent if isinstance(sent, dict) else context
    recorder = chat_recorder(settings, endpoint=str(params["model"]), command=command, usage_context=sent)
    params["callbacks"] = [recorder, *(params.get("callbacks") or [])]
    return DatabricksChatOpenAI(**params)
