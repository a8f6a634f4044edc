"""What a node says about itself: the access log and metrics."""
