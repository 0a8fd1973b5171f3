"""The HTTP API of kb (``kb serve``): OpenAI-compatible chat completions, search/ask, a chat page.

``create_app(settings)`` builds the FastAPI app; see ``agent.api.app``.
"""

from agent.api.app import create_app

__all__ = ["create_app"]
