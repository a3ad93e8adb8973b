"""Bramble: a private cloud for small clusters."""

__version__ = "0.1.0"
