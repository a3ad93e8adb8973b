"""Storage drivers: images and VM disks on this node or a shared pool."""
