"""The GeoDNS authority: the selector, the server and its wire-level fast path."""
