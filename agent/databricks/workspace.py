"""The databricks-sdk ``WorkspaceClient`` kb's Databricks data features use (Vector Search as the index,
Unity Catalog volumes as a source), built from the same authentication as chat
(``agent.databricks.auth.connect``): the SDK ``Config`` it resolved, or on the PAT route the host and token.
``ingest/`` never builds one itself: it receives the client from here."""

from __future__ import annotations

from typing import Any

from agent.databricks.auth import connect, sdk_config
from agent.errors import ConfigError
from agent.settings import Settings
from ingest.store.vector_search import VectorSearchConfig


def workspace_client(settings: Settings) -> Any:
    """A ``WorkspaceClient`` authenticated like chat; ``ConfigError`` naming what is missing."""
    from databricks.sdk import WorkspaceClient

    connection = connect(settings)
    config = connection.config
    if config is None:  # the PAT route resolves no SDK config: make one with its host and token
        if not connection.host:
            raise ConfigError("DATABRICKS_HOST is not set: Vector Search and volumes need the workspace URL")
        config = sdk_config(settings.model_copy(update={"databricks_host": connection.host}))
    return WorkspaceClient(config=config)


def vector_search_config(settings: Settings) -> Any:
    """The ``VectorSearchConfig`` of ``KB_VS_*`` (checked: a missing or wrong setting is one line naming it),
    or ``None`` when ``KB_VECTOR_STORE`` is ``chroma``."""
    if settings.vector_store != "databricks":
        return None

    return VectorSearchConfig(index=settings.vs_index, endpoint=settings.vs_endpoint, read_only=settings.vs_read_only,
                              columns=dict(settings.vs_columns), max_retries=settings.max_retries).checked()
