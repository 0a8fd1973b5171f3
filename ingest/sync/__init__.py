"""``kb ingest``: ``plan`` (what changed since the records), ``writer`` (apply a plan to a chunk store,
crash-safe), ``records`` (what the index holds per file, the writer lock), ``isolation`` (the parse
worker process), ``job`` (the whole run)."""
