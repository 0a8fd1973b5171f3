"""Embedding models: ``local`` (registered sentence-transformers models offline, all-MiniLM-L6-v2 by default,
run by ``onnx_encoder`` on ONNX Runtime over the graph ``onnx_graph`` writes), ``databricks`` (a serving
endpoint), ``weights`` (the local models' registry and their sha256-checked weights)."""
