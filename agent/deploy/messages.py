"""OpenAI Responses ``input`` as the text messages kb's pipelines take: one reading for the API's
``POST /v1/responses`` (``agent.api.responses``) and the MLflow ``ResponsesAgent``
(``agent.deploy.responses_agent``).

- ``input``: a string (the question) or items. Message items (``{"role", "content"}``, ``type``
  ``"message"`` or absent) with role system / developer / user / assistant are kept; ``content`` is
  a string or parts, of which ``input_text`` / ``output_text`` / ``text`` are read and anything else
  (images, files) is refused. Other items (``function_call``, ``function_call_output``,
  ``reasoning`` of an earlier output played back) are skipped: kb's tools run on the server.
- ``instructions`` (when given) becomes the first, system, message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant"})


class InputError(ValueError):
    """The input cannot be answered; ``param`` names the offending part (``input[2].content``)."""

    def __init__(self, message: str, *, param: str = "input", code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def text_messages(input: str | Sequence[Any], instructions: str | None = None, *, max_items: int) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` for a Responses ``input`` (items as dicts or pydantic models)."""
    items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
    if len(items) > max_items:
        raise InputError(f"too many input items: {len(items)} (the limit is {max_items}, KB_API_MAX_MESSAGES)",
                         code="too_many_messages")
    messages: list[dict[str, str]] = []
    if instructions and instructions.strip():
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        item = item.model_dump() if hasattr(item, "model_dump") else item
        if not isinstance(item, dict) or item.get("type") not in (None, "message") or item.get("role") not in MESSAGE_ROLES:
            continue
        content = item.get("content")
        if isinstance(content, list):
            parts = [part if isinstance(part, dict) else {"type": None} for part in content]
            if any(part.get("type") not in TEXT_PARTS for part in parts):
                raise InputError("only text content is supported", param=f"input[{i}].content", code="unsupported_content")
            text = "".join(str(part.get("text") or "") for part in parts)
        else:
            text = content if isinstance(content, str) else ""
        messages.append({"role": item["role"], "content": text})
    if not any(m["role"] == "user" for m in messages):
        raise InputError("'input' has no user message: send the question as a string or a user message")
    return messages
