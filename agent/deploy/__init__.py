"""Deploying kb on Databricks.

- ``agent.deploy.model``: kb-rag / kb-agent as an MLflow ``ResponsesAgent`` logged as models-from-code
  (``agent/deploy/agent_model.py``) with its Databricks resources declared, for
  ``databricks.agents.deploy`` (``agent.deploy.responses_agent`` is the agent).
- ``agent.deploy.app``: what a Databricks App running ``kb serve`` needs (``kb deploy app --dry-run``).
- ``agent.deploy.messages``: the Responses API's ``input`` as kb's messages (shared with ``/v1/responses``).

MLflow is imported only by the agent modules (the ``agents`` extra: ``pip install 'kb[agents]'``).
"""
