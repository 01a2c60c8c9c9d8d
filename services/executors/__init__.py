"""Executors: where a node's `invoke()` runs (in this process, or in the AI worker process)."""
