"""A TCP server that answers every connection with the peer's address, then closes it; stopped by PID."""

from __future__ import annotations

import socket
import sys

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen(16)
while True:
    conn, peer = listener.accept()
    with conn:
        conn.sendall(peer[0].encode())
