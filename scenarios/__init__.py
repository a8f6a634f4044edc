"""Runnable end-to-end scenarios and benchmarks of edge, each printing a report."""
