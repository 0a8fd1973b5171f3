"""Talking to a Databricks workspace: authentication (``auth``), pooled HTTP clients
(``transport``), the served models' quirks (``quirks``) and ``kb doctor`` (``doctor``)."""
