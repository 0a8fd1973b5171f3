"""Errors of the application: the shared hierarchy from ``ingest.errors`` plus configuration errors."""

from agent.observability.logs import redact
from ingest.errors import *  # noqa: F401,F403  (one hierarchy for the whole project)
from ingest.errors import KbError


class ConfigError(KbError):
    """A setting is missing or invalid; the message names the variable."""

    exit_code = 2
    http_status = 500


def public_message(exc: BaseException | str) -> str:
    """The one line to show a user for ``exc``, with every secret masked (``agent.observability.logs.redact``).

    Upstream error bodies are quoted into messages and some servers echo the request's
    ``Authorization`` header or token back: every surface (the CLI's ``error:`` line and its
    ``--json`` output, ``kb chat``, the API's ``error.message``) goes through here.
    """

    return redact(" ".join(str(exc).split()))
