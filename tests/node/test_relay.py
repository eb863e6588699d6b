"""The ExaBGP relay as ExaBGP runs it (python -S -E -I relay.py SOCKET): copies both ways, exits when either
side closes, imports nothing beyond built-ins."""
import socket
import subprocess
import sys
import threading

from bgpd.bgp.exabgp_config import RELAY


def _relay(path):
    return subprocess.Popen([sys.executable, "-S", "-E", "-I", str(RELAY), str(path)],
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


def test_imports_only_builtins():
    r = subprocess.run([sys.executable, "-S", "-E", "-I", "-c",
                        f"import sys; sys.path.insert(0, {str(RELAY.parent)!r}); import relay; "
                        "print(' '.join(m for m in ('socket', 'threading', 'selectors', 'site') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
