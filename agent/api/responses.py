"""``POST /v1/responses``: the OpenAI Responses API for kb-rag and kb-agent.

Databricks Apps chat front ends and ``DatabricksOpenAI`` clients call this API rather than chat
completions. A request is translated into the chat route's request and run by the same code
(``agent.api.chat.start_run``: the same caller, model checks, limits, concurrency slot, answer
runs), so the two routes cannot drift apart:

- ``input`` and ``instructions`` are read by ``agent.deploy.messages.text_messages`` (shared with the
  MLflow ``ResponsesAgent``): text messages kept, images and files refused, items that are not
  messages skipped. ``instructions`` is a system message (kb-agent uses it; kb-rag, like its chat
  route, uses only user/assistant turns).
- ``max_output_tokens`` is ``max_tokens`` (same ceiling, ``KB_API_MAX_TOKENS``), ``temperature``
  as in chat, ``k`` (passages to retrieve) is kb's extension. ``previous_response_id`` is refused:
  kb keeps no responses (``store`` is accepted and ignored), send the conversation in ``input``.
- The response: one assistant ``message`` item with one ``output_text`` part, ``usage`` in the
  Responses layout, and kb's extensions ``sources`` (the cited passages, as in chat) and, for
  kb-agent, ``steps``.

Streaming sends OpenAI's typed events (``event: <type>`` and ``data: {..., "sequence_number"}``):
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, ``response.completed``. As in chat,
the response starts only once the first token is there, so an early failure gets its HTTP status
and an OpenAI-shaped error body; a failure after it ends the stream with an ``error`` event and
``response.failed`` (its ``error`` carries the same public message).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.api.auth import require_caller
from agent.api.chat import SSEResponse, start_run
from agent.api.errors import ApiError, from_kb_error
from agent.api.runs import AnswerRun, resume
from agent.api.schemas import ChatRequest, openai_usage
from agent.api.sources import chat_sources
from agent.deploy.messages import InputError, text_messages
from agent.errors import KbError
from agent.rag.answer import Answer

log = logging.getLogger("kb.api")

# The chat route's parameter names as the Responses API spells them (for error bodies).
PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "n": "n"}


class InputPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class InputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str | None = None  # "message" (or absent for the short form); other item types are skipped
    role: str | None = None
    content: str | list[InputPart] | None = None


class ResponsesRequest(BaseModel):
    """What OpenAI Responses clients send; fields kb has no use for (``tools``, ``metadata``,
    ``user``, ``top_p``, ``store``...) are accepted and ignored, as in the chat route."""

    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    previous_response_id: str | None = None
    k: int | None = Field(None, ge=1, le=50, description="passages to retrieve (kb extension)")


def chat_request(body: ResponsesRequest, max_items: int) -> ChatRequest:
    """The chat route's request for this Responses request, or ApiError 400."""

    if body.previous_response_id:
        raise ApiError(400, "previous_response_id is not supported: kb keeps no responses; send the conversation "
                       "in 'input'", code="unsupported_parameter", param="previous_response_id")
    try:
        messages = text_messages(body.input, body.instructions, max_items=max_items)
    except InputError as exc:
        raise ApiError(400, str(exc), code=exc.code, param=exc.param) from None
    try:
        return ChatRequest(model=body.model, messages=messages, stream=body.stream, max_tokens=body.max_output_tokens,
                           temperature=body.temperature, k=body.k)
    except ValidationError:  # pragma: no cover - every field was checked by ResponsesRequest already
        raise ApiError(400, "invalid request", code="invalid_request") from None


def _start(body: ResponsesRequest, request: Request, caller: Any) -> AnswerRun:
    """The chat route's run for this request, its errors naming the Responses API's parameters."""
    settings = request.app.state.backend.settings
    try:
        return start_run(chat_request(body, settings.api_max_messages), request, caller)
    except ApiError as exc:
        if exc.param in PARAMS:
            exc.param = PARAMS[exc.param]
        raise


async def create_response(body: ResponsesRequest, request: Request, caller: Any = Depends(require_caller)) -> Any:
    run = _start(body, request, caller)
    shape = _Shape(body)
    if not body.stream:
        try:
            done = await run.collect()
        finally:
            run.close()
        return JSONResponse(shape.response("completed", done))
    early: list[tuple[str, Any]] = []  # wait for the first token so that early failures get a status code
    try:
        async for kind, value in run:
            early.append((kind, value))
            if kind in ("token", "done"):
                break
    except BaseException:
        run.close()
        raise
    return SSEResponse(_events(run, early, shape), on_close=run.close)


class _Shape:
    """The Responses objects of one response (ids and timestamps fixed at the start)."""

    def __init__(self, body: ResponsesRequest) -> None:
        self.body = body
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self.part(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def response(self, status: str, done: Answer | None = None, error: dict[str, Any] | None = None,
                 text: str | None = None) -> dict[str, Any]:
        body = self.body
        output = []
        if done is not None:
            output = [self.message("completed", done.text)]
        elif text:
            output = [self.message("incomplete", text)]
        data: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "model": body.model,
            "output": output, "error": error, "incomplete_details": None, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": None,
            "parallel_tool_calls": False, "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "truncation": "disabled", "previous_response_id": None, "reasoning": None, "store": False,
            "metadata": {}, "usage": None,
        }
        if done is not None:
            usage = openai_usage(done.usage)
            data["usage"] = {
                "input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"],
            }
            data["sources"] = chat_sources(done)
            if done.steps is not None:
                data["steps"] = done.steps
                data["stopped"] = done.stopped
        return data


async def _events(run: AnswerRun, early: list, shape: _Shape) -> AsyncIterator[bytes]:
    sequence = 0
    parts: list[str] = []

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n"

    where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
    yield event("response.created", response=shape.response("in_progress"))
    yield event("response.in_progress", response=shape.response("in_progress"))
    yield event("response.output_item.added", output_index=0, item=shape.message("in_progress", None))
    yield event("response.content_part.added", **where, part=shape.part(""))
    try:
        async for kind, value in resume(early, run):
            if kind == "token" and value:
                parts.append(value)
                yield event("response.output_text.delta", **where, delta=value, logprobs=[])
            elif kind == "done":
                text = value.text
                yield event("response.output_text.done", **where, text=text, logprobs=[])
                yield event("response.content_part.done", **where, part=shape.part(text))
                yield event("response.output_item.done", output_index=0, item=shape.message("completed", text))
                yield event("response.completed", response=shape.response("completed", value))
                return
    except KbError as exc:
        error = from_kb_error(exc)
        log.warning("response stream for %s ended by %s", shape.body.model, error.message)
    except Exception:
        log.exception("response stream for %s failed", shape.body.model)
        error = ApiError(500, "internal error; the server log has the details", code="internal_error")
    yield event("error", code=error.code, message=error.message, param=None)
    failure = {"code": "rate_limit_exceeded" if error.status == 429 else "server_error", "message": error.message}
    yield event("response.failed", response=shape.response("failed", error=failure, text="".join(parts)))
