"""The answer service: one route from a question (and the conversation so far) to a cited ``Answer``.

- ``agent.rag.answer``: ``Answer``, the one result every surface gets (``kb ask``, ``kb chat``,
  the API's kb-rag and kb-agent, ``kb eval``, the tool assistant).
- ``agent.rag.service``: ``AnswerService``: condense a follow-up -> retrieve -> relevance gate ->
  answer with citations, streamed as events (sync ``stream``, async ``astream``).
- ``agent.rag.failures``: ``translate_failures``, the one place remote failures become the
  project's errors.
"""
