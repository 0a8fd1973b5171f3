"""``POST /v1/chat/completions``: OpenAI-compatible answers from kb-rag and kb-agent.

Streaming follows OpenAI's SSE format: a role chunk, content chunks, a final chunk with
``finish_reason``, then ``data: [DONE]``. ``sources`` (and ``usage``) ride on the last chunk; with
``stream_options.include_usage`` they come, as OpenAI does, in an extra chunk with empty ``choices``.

The response starts only once the answer's first token (kb-agent: its first tool call) is there, so a
failure before it (Databricks down, no index, bad token...) gets a proper HTTP status and an
OpenAI-shaped error body. kb-agent's tool calls and results then stream as they happen, each as an
extra chunk with an empty delta and a ``step`` key (``step_json``), which OpenAI clients ignore.
A failure after it ends the stream with an error event (``data: {"error": {...}}``), which the
``openai`` client raises as ``APIError``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agent.api.auth import require_caller
from agent.api.backend import ModelCache
from agent.api.errors import ApiError, from_kb_error
from agent.api.runs import AnswerRun, agent_run, rag_run, resume
from agent.api.schemas import (
    MODELS,
    ChatRequest,
    chunk_json,
    completion_id,
    completion_json,
    openai_usage,
)
from agent.api.sources import chat_sources
from agent.errors import KbError
from agent.rag.answer import Answer

log = logging.getLogger("kb.api")


def check_request(body: ChatRequest, models: ModelCache) -> tuple[str, dict[str, Any]]:
    """The question and the model overrides, or ApiError 400/404 for what the limits refuse."""
    settings = models.settings
    if body.model not in MODELS:
        raise ApiError(404, f"unknown model '{body.model}': use one of {', '.join(MODELS)}",
                       code="model_not_found", param="model")
    if body.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", code="invalid_request", param="n")
    if len(body.messages) > settings.api_max_messages:
        raise ApiError(400, f"too many messages: {len(body.messages)} (the limit is {settings.api_max_messages}, "
                       "KB_API_MAX_MESSAGES)", code="too_many_messages", param="messages")
    for i, message in enumerate(body.messages):
        if message.has_non_text():
            raise ApiError(400, "only text content is supported", code="unsupported_content", param=f"messages[{i}].content")
    last = body.messages[-1]
    if last.role != "user":
        raise ApiError(400, "the last message must be the user's question (role 'user')",
                       code="invalid_request", param="messages")
    question = last.text().strip()
    if not question:
        raise ApiError(400, "the question (last user message) is empty", code="invalid_request", param="messages")
    if len(question) > settings.api_max_question_chars:
        raise ApiError(400, f"the question is too long: {len(question)} characters (the limit is "
                       f"{settings.api_max_question_chars}, KB_API_MAX_QUESTION_CHARS)",
                       code="question_too_long", param="messages")
    overrides: dict[str, Any] = {}
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        if max_tokens > settings.api_max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is above this server's ceiling of {settings.api_max_tokens} "
                           "(KB_API_MAX_TOKENS)", code="max_tokens_too_large", param="max_tokens")
        overrides["max_tokens"] = max_tokens
    elif settings.max_tokens > settings.api_max_tokens:
        overrides["max_tokens"] = settings.api_max_tokens
    if body.temperature is not None:
        overrides["temperature"] = body.temperature
    return question, overrides


def history_of(body: ChatRequest) -> list[tuple[str, str]]:
    """Earlier user/assistant turns (system prompts and tool messages of the client are not used by kb-rag)."""
    return [(m.role, m.text()) for m in body.messages[:-1] if m.role in ("user", "assistant") and m.text().strip()]


def start_run(body: ChatRequest, request: Request, caller: str) -> AnswerRun:
    models: ModelCache = request.app.state.backend
    question, overrides = check_request(body, models)
    slot = request.app.state.gate.acquire()
    try:
        if body.model == "kb-agent":
            messages = [{"role": m.role, "content": m.text()} for m in body.messages
                        if m.role in ("system", "developer", "user", "assistant") and m.text().strip()]
            return agent_run(models, messages=messages, caller=caller, overrides=overrides, on_finished=slot.release,
                             groups=request.state.groups, surface=f"{request.url.path} kb-agent")
        k = body.k or models.settings.top_k
        return rag_run(models, question=question, history=history_of(body), caller=caller, k=k,
                       overrides=overrides, on_finished=slot.release, groups=request.state.groups,
                       surface=f"{request.url.path} kb-rag")
    except BaseException:
        slot.release()
        raise


async def chat_completions(body: ChatRequest, request: Request, caller: str = Depends(require_caller)) -> Any:
    run = start_run(body, request, caller)
    cid = completion_id()
    if not body.stream:
        try:
            done = await run.collect()
        finally:
            run.close()
        payload = completion_json(cid, body.model, done.text, chat_sources(done), done.usage, done.finish_reason)
        if done.steps is not None:
            payload["steps"] = done.steps
        return JSONResponse(payload)
    # Wait for the first token or tool call (or the end) so that early failures get a real status code.
    early: list[tuple[str, Any]] = []
    try:
        async for kind, value in run:
            early.append((kind, value))
            if kind in ("token", "step", "done"):
                break
    except BaseException:
        run.close()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return SSEResponse(_sse(run, early, cid, body.model, include_usage), on_close=run.close)


async def _sse(run: AnswerRun, early: list, cid: str, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())

    def event(data: dict) -> bytes:
        return b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n"

    yield event(chunk_json(cid, model, created, {"role": "assistant", "content": ""}))
    try:
        async for kind, value in resume(early, run):
            if kind == "token" and value:
                yield event(chunk_json(cid, model, created, {"content": value}))
            elif kind == "step" and value.get("type") in ("tool_call", "tool_result"):
                yield event({**chunk_json(cid, model, created, {}), "step": step_json(value)})
            elif kind == "done":
                yield _final(event, cid, model, created, value, include_usage)
                yield b"data: [DONE]\n\n"
                return
    except KbError as exc:
        error = from_kb_error(exc)
        log.warning("stream for %s ended by %s", model, error.message)
        yield event(error.body())
    except Exception:
        log.exception("stream for %s failed", model)
        yield event(ApiError(500, "internal error; the server log has the details", code="internal_error").body())


def step_json(event: dict[str, Any]) -> dict[str, Any]:
    """A kb-agent event (``agent.assistant.service.run_assistant``) as a stream chunk's ``step``:
    ``{"type": "tool_call"|"tool_result", "id", "tool", "args", "summary", "error"}`` (a result's
    ``id`` is its call's)."""
    return {"type": event.get("type"), "id": event.get("id"), "tool": event.get("name"),
            "args": event.get("args"), "summary": event.get("summary"), "error": bool(event.get("error"))}


def _final(event, cid: str, model: str, created: int, done: Answer, include_usage: bool) -> bytes:
    finish = chunk_json(cid, model, created, {}, done.finish_reason)
    extra: dict[str, Any] = {"sources": chat_sources(done)}
    if done.steps is not None:
        extra["steps"] = done.steps
    if include_usage:  # OpenAI's layout: usage alone in a last chunk with no choices
        last = {**chunk_json(cid, model, created, {}), "choices": [], "usage": openai_usage(done.usage), **extra}
        return event(finish) + event(last)
    return event({**finish, "usage": openai_usage(done.usage), **extra})


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always stops the answer's work when it ends, also when the
    client goes away mid-stream."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, *, on_close: Any) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
