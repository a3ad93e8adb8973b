"""VM networks on a node: bridges, taps, security groups and NAT (driver interface in ``driver``)."""
