"""Placement: pure functions from node capacities and a request to a node name."""
