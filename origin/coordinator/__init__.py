"""The purge coordinator: the purge log, node registry and fan-out to every node."""
