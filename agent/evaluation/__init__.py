"""`kb eval`: gold sets, retrieval metrics, answer judging and the report."""
