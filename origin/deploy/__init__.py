"""Deployment: the topology file, the one plan of processes it becomes, and compose."""
