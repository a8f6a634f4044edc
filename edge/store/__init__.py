"""Where cached responses live: the store's interface and its disk implementation."""
