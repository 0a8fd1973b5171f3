"""Embedding models: ``local`` (all-MiniLM-L6-v2 offline; ``fast_embed`` runs it in NumPy for queries),
``databricks`` (a serving endpoint), ``weights`` (the local weights, sha256-checked)."""
