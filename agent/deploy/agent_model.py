"""The models-from-code file of kb's MLflow agent: ``mlflow.pyfunc.log_model(python_model=<this file>)``.

MLflow runs this file to get the model (``mlflow.models.set_model``); what the model answers with
(kb-rag or kb-agent, endpoints, index) is its ``model_config`` (see ``agent.deploy.model``).
"""

import mlflow

from agent.deploy.responses_agent import KbResponsesAgent

mlflow.models.set_model(KbResponsesAgent())
