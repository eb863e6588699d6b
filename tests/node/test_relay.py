"""ExaBGP's relay (OpenBSD netcat), run as the rendered configuration tells ExaBGP to run it: copies both ways,
passes each side's end on to the other, and exits."""
import socket
import subprocess
import threading

from bgpd.bgp.exabgp_config import render_config
from bgpd.bgp.exabgp_process import relay_program
from config.node import NodeConfig

NODE = NodeConfig.model_validate({"name": "n1", "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1",
                                  "pools": [{"cidr": "10.244.0.0/16"}], "mesh": {"enabled": False}})


def _relay(path):
    """The relay from ExaBGP's `run` line (ExaBGP splits it on spaces)."""
    (run,) = [line.strip() for line in render_config(NODE, path, relay_program()).splitlines()
              if line.strip().startswith("run ")]
    return subprocess.Popen(run.removeprefix("run ").removesuffix(";").split(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _accept(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "r.sock"))
    server.listen(1)
    server.settimeout(10)
    return server


def _read_exactly(read, n):
    data = b""
    while len(data) < n:
        chunk = read(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def test_copies_both_ways_and_exits_when_exabgp_closes(tmp_path):
    server = _accept(tmp_path)
    relay = _relay(tmp_path / "r.sock")
    try:
        conn, _ = server.accept()
        conn.settimeout(10)
        lines = b"".join(b'{"type": "update", "n": %d}\n' % i for i in range(20000))
        writer = threading.Thread(target=lambda: (relay.stdin.write(lines), relay.stdin.flush()))
        writer.start()  # more than the pipe and socket buffers hold: read while it writes
        assert _read_exactly(conn.recv, len(lines)) == lines
        writer.join(10)
        conn.sendall(b"announce route 10.244.1.0/26 next-hop self\n")
        assert relay.stdout.readline() == b"announce route 10.244.1.0/26 next-hop self\n"
        relay.stdin.close()  # ExaBGP died: the daemon sees the end
        assert conn.recv(1) == b""
        conn.close()
        assert relay.wait(10) == 0
    finally:
        relay.kill()
        relay.wait()


def test_exits_when_the_daemon_closes(tmp_path):
    server = _accept(tmp_path)
    relay = _relay(tmp_path / "r.sock")
    try:
        conn, _ = server.accept()
        conn.close()
        assert relay.wait(10) == 0
        assert relay.stdout.read() == b""
    finally:
        relay.kill()
        relay.wait()
