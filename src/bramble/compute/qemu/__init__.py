"""The QEMU compute driver: QEMU processes driven over QMP, no libvirt."""
