"""The chat model: ``langchain_openai.ChatOpenAI`` pointed at Databricks Model Serving.

``DatabricksChatOpenAI`` smooths the differences between OpenAI and Databricks' OpenAI-compatible
API so the rest of the code (and notebooks) use an ordinary LangChain chat model:

- ``max_tokens`` is sent as ``max_tokens`` (ChatOpenAI renames it to ``max_completion_tokens``,
  which Databricks rejects);
- ``strict`` is dropped from tool schemas (Databricks rejects it);
- reasoning models answer with ``content`` as a list of blocks: the text blocks become the
  message text, reasoning goes to ``additional_kwargs["reasoning"]``;
- streamed usage that Databricks reports cumulatively on every chunk is counted once (Claude sends
  usage on every chunk with ``completion_tokens`` null until the last: the maximum of each count is kept);
- an assistant message that carries tool calls gets non-empty text (Claude rejects empty text blocks);
- an assistant message with several tool calls is sent as one call per assistant turn, each followed by
  its result (GPT OSS answers 400 "Multiple tool calls are not supported"). Both rewrites are valid
  OpenAI chat for every model, so they apply to all endpoints, whatever their name.

The model families and their sources are in the README's "Model quirks" table.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from agent.databricks.auth import connect
from agent.databricks.transport import clients
from agent.errors import ConfigError
from agent.settings import Settings
from agent.usage import context as usage_context
from agent.usage.ledger import chat_recorder

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
        if isinstance(payload.get("messages"), list):
            payload["messages"] = one_tool_call_per_turn(payload["messages"])
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
        finished = False
        for chunk in super()._stream(*args, **kwargs):
            finished = finished or _finishes(chunk)
            yield _normalise_chunk(chunk, usage)
        if not finished:
            raise IncompleteStream()
        if usage.seen:
            yield usage.chunk()

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        usage = _UsageMax()
        finished = False
        async for chunk in super()._astream(*args, **kwargs):
            finished = finished or _finishes(chunk)
            yield _normalise_chunk(chunk, usage)
        if not finished:
            raise IncompleteStream()
        if usage.seen:
            yield usage.chunk()


class IncompleteStream(openai.OpenAIError):
    """The answer stream ended (the body closed cleanly) without a ``finish_reason``: it was cut.

    An ``openai`` error so that every surface's translation (``chat_failure``) treats it like a
    dropped connection: partial answer kept and marked incomplete, exit 4, an error event in the API."""

    def __init__(self) -> None:
        super().__init__("the stream ended without a finish_reason")


def _finishes(chunk: ChatGenerationChunk) -> bool:
    info = chunk.generation_info or {}
    return bool(info.get("finish_reason") or chunk.message.response_metadata.get("finish_reason"))


def _tool_call_text(calls: list) -> str:
    names = ", ".join(str((call.get("function") or {}).get("name") or "a tool") for call in calls)
    return f"(calling {names})"


def one_tool_call_per_turn(messages: list) -> list:
    """Chat messages with every assistant tool-call turn split into one call per turn, each followed
    by its tool result, and no tool-call turn without text. Order and results are kept."""
    out: list = []
    i = 0
    while i < len(messages):
        message = messages[i]
        calls = message.get("tool_calls") if isinstance(message, dict) and message.get("role") == "assistant" else None
        if not calls:
            out.append(message)
            i += 1
            continue
        j = i + 1
        results: dict[str, dict] = {}
        others: list = []
        while j < len(messages) and isinstance(messages[j], dict) and messages[j].get("role") == "tool":
            tool_id = messages[j].get("tool_call_id")
            if tool_id in results or tool_id is None:
                others.append(messages[j])
            else:
                results[tool_id] = messages[j]
            j += 1
        text = message.get("content")
        has_text = bool(flatten_content(text)[0].strip()) if text else False
        if len(calls) == 1:
            turn = dict(message)
            if not has_text:
                turn["content"] = _tool_call_text(calls)
            out.append(turn)
            out.extend(messages[i + 1 : j])
            i = j
            continue
        for n, call in enumerate(calls):
            turn = {key: value for key, value in message.items() if key != "tool_calls"}
            turn["tool_calls"] = [call]
            turn["content"] = text if (n == 0 and has_text) else _tool_call_text([call])
            out.append(turn)
            result = results.pop(call.get("id"), None)
            if result is not None:
                out.append(result)
        out.extend(results.values())
        out.extend(others)
        i = j
    return out


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
    strings, within the size limits of ``agent.usage.context``."""

    return usage_context.build(settings.usage_context, command, extra)


def build_llm(settings: Settings, *, command: str = "ask", usage_extra: dict[str, str] | None = None, **overrides: Any) -> DatabricksChatOpenAI:
    """The configured chat model. Raises ``ConfigError`` when no token or base URL is set."""
    if not settings.llm_configured:
        missing = " and ".join(settings.missing_llm_settings())
        raise ConfigError(f"no Databricks model configured: set {missing} (see README, Configuration)")

    connection = connect(settings)
    http_client, http_async_client = clients(connection.base_url, auth=connection.auth, timeout=settings.timeout)
    context = chat_usage_context(settings, command, usage_extra)
    params: dict[str, Any] = {
        "model": settings.chat_endpoint,
        "base_url": connection.base_url,
        "api_key": connection.api_key,
        "http_client": http_client,
        "http_async_client": http_async_client,
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
