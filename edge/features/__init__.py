"""Policy a node's configuration switches on: the guard (framing, targets, rates), the WAF,
compression.
"""
