"""Network-boot services (TFTP) that serve boot files to firmware."""
