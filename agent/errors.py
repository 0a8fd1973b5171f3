"""Errors of the application: the shared hierarchy from ``ingest.errors`` plus configuration errors."""

from ingest.errors import *  # noqa: F401,F403  (one hierarchy for the whole project)
from ingest.errors import KbError


class ConfigError(KbError):
    """A setting is missing or invalid; the message names the variable."""

    exit_code = 2
    http_status = 500
