"""Compute drivers: run virtual machines on this node."""
