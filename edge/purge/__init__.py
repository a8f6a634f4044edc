"""Purges: the purge model and its validation (shared with the coordinator), bans, the
sweeper and the subscription.
"""
