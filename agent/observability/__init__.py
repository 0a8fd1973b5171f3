"""Logs (with secrets redacted) and MLflow tracing."""
