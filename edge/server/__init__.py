"""Connections: the HTTP/1.1 layer, TLS, zero-copy sends, node wiring and admin endpoints."""
