"""What model calls cost: the usage ledger, token accounting, usage_context and `kb usage` reports."""
