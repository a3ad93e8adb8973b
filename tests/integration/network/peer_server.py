"""A TCP server that answers every connection with the peer's address, then closes it; stopped by PID.

With a third argument ``echo`` it keeps each connection open instead and echoes what arrives, so a test
can hold a connection across firewall changes (``netns_lab.Lab.held_connection``).
"""

from __future__ import annotations

import socket
import sys
import threading


def echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen(16)
hold = len(sys.argv) > 3 and sys.argv[3] == "echo"
while True:
    conn, peer = listener.accept()
    if hold:
        conn.sendall(peer[0].encode() + b"\n")
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
        continue
    with conn:
        conn.sendall(peer[0].encode())
