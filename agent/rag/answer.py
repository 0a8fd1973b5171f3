"""``Answer``: what every surface gets back for a question, whichever service produced it.

The retrieval pipeline (``agent.rag.service``) and the tool assistant (``agent.assistant.service``) both
return it; ``kb ask --json``, ``/api/ask``, ``kb agent --json`` and chat completions are views of it.

- ``text``: the answer with ``[n]`` citations (the refusal text when ``refused``; what arrived
  before the cut when ``partial``).
- ``sources``: the cited passages/documents (``{"n", "source", "title", "section"/"page"}``);
  ``citations``: the cited numbers in order of first citation.
- ``passages``: what retrieval returned (numbered from 1 in the prompt).
- ``usage``: every model call of the question counted (a follow-up's rewrite included), or
  "unknown" (``agent.usage.tokens.UNKNOWN``) when a call reported nothing or no model was called.
- ``refused`` / ``refusal_reason`` (``"no_passages"`` or ``"below_relevance_floor"``).
- ``timing``: seconds per step (``condense``, ``retrieve``, ``answer``, ``total``).
- ``partial`` / ``error``: a stream cut after the first token (see ``Answer.interrupted``).
- the assistant only: ``steps`` (tool calls), ``consulted``, ``stopped`` and ``message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document

from agent.rag.chain import cited_numbers
from agent.errors import StreamInterruptedError, public_message
from agent.rag.retrieval import explain_json, result_json
from agent.usage.tokens import UNKNOWN

NO_PASSAGES = "no_passages"
BELOW_FLOOR = "below_relevance_floor"


@dataclass
class Answer:
    question: str
    text: str = ""
    standalone: str | None = None  # the follow-up rewritten for retrieval; None when there was no history
    passages: list[Document] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=lambda: dict(UNKNOWN))
    refused: bool = False
    refusal_reason: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    partial: bool = False
    error: str | None = None
    steps: list[dict[str, Any]] | None = None  # the assistant's tool calls
    consulted: list[dict[str, Any]] | None = None
    stopped: str | None = None  # "step_limit"
    message: str | None = None  # why it stopped

    @property
    def citations(self) -> list[int]:
        return cited_numbers(self.text)

    @property
    def finish_reason(self) -> str:
        return "length" if self.stopped else "stop"

    @classmethod
    def interrupted(cls, question: str, error: StreamInterruptedError) -> Answer:
        """The answer of a stream cut after its first token: the text that arrived, marked partial."""
        return cls(question=question, text=error.partial, partial=True, error=public_message(error))

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        """The JSON of ``kb ask --json`` and ``/api/ask`` (and, with the assistant's keys, ``kb agent --json``)."""
        data: dict[str, Any] = {"question": self.question, "answer": self.text}
        if self.standalone is not None:
            data["standalone_question"] = self.standalone
        if self.refused:
            data["refused"] = True
        if self.partial:
            data.update(partial=True, error=self.error)
        data["sources"] = self.sources
        data["usage"] = self.usage
        data["passages"] = [result_json(i, d) for i, d in enumerate(self.passages, 1)]
        if explain:
            for item, document in zip(data["passages"], self.passages):
                item["explain"] = explain_json(document)
        if self.steps is not None:
            data.update(steps=self.steps, stopped=self.stopped, message=self.message, consulted=self.consulted or [])
        return data
