"""kb: answers over internal documents with an LLM served by Databricks Model Serving."""

__version__ = "0.1.0"
