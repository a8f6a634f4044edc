"""The upstream side: pools, balancing, health checks and the HTTP/1.1 client."""
