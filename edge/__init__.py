"""edge: the caching reverse-proxy engine and the edge node (the shield reuses it)."""

__version__ = "0.1.0"
