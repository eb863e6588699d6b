"""UDP echo on port 7007: every datagram goes back to its sender (the failover probe's far end)."""
import socket

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 7007))
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
