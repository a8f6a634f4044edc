"""The demo archive origin: its HTTP server, cache rules and generated sample content."""
