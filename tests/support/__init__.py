"""Helpers for tests that run real processes on loopback."""
