"""tortie-cni answers every broken input and failure with a CNI error object; no root needed."""
from __future__ import annotations

import socket
import threading

import pytest

from bgpd.cni import plugin
from tests.cni_driver import assert_cni_error, call_cni, write_node_config

pytestmark = pytest.mark.timeout(30)
GOOD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/none"}


@pytest.fixture
def netconf(tmp_path):
    config = write_node_config(tmp_path)
    (tmp_path / "run").mkdir()
    return {"cniVersion": "1.0.0", "name": "tortie", "type": "tortie-cni", "tortieConfig": str(config)}


def dumps(conf: dict) -> bytes:
    import json
    return json.dumps(conf).encode()


@pytest.mark.parametrize("stdin, code", [
    (b"", 6), (b"{not json", 6), (b"[1, 2]", 6), (b'"a string"', 6), (b"null", 6), (b"\xff\xfe", 6),
    (b"[" * 50_000 + b"]" * 50_000, 6), (b'{"a": 1, "a": 2}', 6), (b" " * (plugin.MAX_STDIN + 1), 6),
    (b'{"cniVersion": ["1.0.0"], "name": "x", "type": "t"}', 1),
    (b'{"cniVersion": "1.0.0", "name": 5, "type": "t"}', 7),
    (b'{"cniVersion": "1.0.0", "name": "x", "type": "t", "tortieConfig": ["/etc"]}', 7),
    (b'{"cniVersion": "1.0.0", "name": "x", "type": "t", "args": [1]}', 7),
    (b'{"cniVersion": "1.0.0", "name": "x", "type": "t", "args": {"cni": {"labels": [{"key": 1}]}}}', 7),
    (b'{"cniVersion": "1.0.0", "name": "x", "type": "t", "tortieConfig": "/nonexistent/tortie.yaml"}', 7),
])
def test_odd_stdin(monkeypatch, capsys, stdin, code):
    rc, answer, err = call_cni(monkeypatch, capsys, GOOD_ENV, stdin)
    assert_cni_error(rc, answer, err)
    assert answer["code"] == code, answer


@pytest.mark.parametrize("env, code", [
    ({"CNI_COMMAND": ""}, 4), ({"CNI_COMMAND": "EXPLODE" * 100}, 4),
    ({"CNI_CONTAINERID": ""}, 4), ({"CNI_CONTAINERID": "a b"}, 4), ({"CNI_CONTAINERID": "x" * 2000}, 4),
    ({"CNI_IFNAME": "a-very-long-ifname"}, 4), ({"CNI_IFNAME": "../x"}, 4), ({"CNI_IFNAME": ".."}, 4),
    ({"CNI_NETNS": ""}, 4), ({"CNI_ARGS": "novalue"}, 4),
    ({"CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + "x" * 300}, 4),
    ({"CNI_ARGS": "K8S_POD_NAMESPACE=shop"}, 4), ({"CNI_ARGS": "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=a"}, 4),
])
def test_odd_environment(monkeypatch, capsys, netconf, env, code):
    rc, answer, err = call_cni(monkeypatch, capsys, {**GOOD_ENV, **env}, dumps(netconf))
    assert_cni_error(rc, answer, err)
    assert answer["code"] == code and answer["cniVersion"] == "1.0.0", answer


@pytest.mark.parametrize("content", ["", "{", "[]", '{"namespace": "a"}', "\x00\x01"])
@pytest.mark.parametrize("command", ["CHECK", "DEL", "GC"])
def test_corrupt_pod_state_file(monkeypatch, capsys, netconf, tmp_path, content, command):
    pods = tmp_path / "state" / "pods"
    pods.mkdir(parents=True)
    (pods / "shop_web.json").write_text(content)
    rc, answer, err = call_cni(monkeypatch, capsys, {**GOOD_ENV, "CNI_COMMAND": command}, dumps(netconf))
    assert_cni_error(rc, answer, err)
    assert answer["code"] == 5 and "unreadable" in answer["msg"], answer


def daemon(path, behaviour: str) -> threading.Thread:
    """A fake daemon on the control socket that answers nothing, an empty reply or garbage."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(1 << 16)
        if behaviour == "silent":
            conn.recv(1)  # until the client gives up and closes
        elif behaviour == "garbage":
            conn.sendall(b"[1, 2")
        conn.close()
        server.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("behaviour", ["silent", "empty", "garbage"])
def test_status_with_a_broken_daemon(monkeypatch, capsys, netconf, tmp_path, behaviour):
    t = daemon(tmp_path / "run" / "tortie.sock", behaviour)
    rc, answer, err = call_cni(monkeypatch, capsys, {"CNI_COMMAND": "STATUS"}, dumps(netconf))
    assert_cni_error(rc, answer, err)
    assert answer["code"] == 50 and ("did not answer" in answer["details"] or "no valid answer" in answer["details"])
    t.join(5)


def test_an_unforeseen_failure_is_still_a_cni_error(monkeypatch, capsys, netconf):
    def explode(conf):
        raise RuntimeError("boom")
    monkeypatch.setitem(plugin.HANDLERS, "DEL", explode)
    rc, answer, err = call_cni(monkeypatch, capsys, {**GOOD_ENV, "CNI_COMMAND": "DEL"}, dumps(netconf))
    assert_cni_error(rc, answer, err)
    assert answer["code"] == 100 and answer["details"] == "RuntimeError: boom"


@pytest.mark.parametrize("stdin, version", [(b"", "1.1.0"), (b"[1]", "1.1.0"), (b'{"cniVersion": 5}', "1.1.0"),
                                            (b'{"cniVersion": "0.4.0"}', "0.4.0"), (b"\xff" * 100, "1.1.0")])
def test_version_answers_whatever_stdin_holds(monkeypatch, capsys, stdin, version):
    rc, answer, err = call_cni(monkeypatch, capsys, {"CNI_COMMAND": "VERSION"}, stdin)
    assert (rc, answer, err) == (0, {"cniVersion": version, "supportedVersions": plugin.SUPPORTED}, "")


def test_version_imports_neither_pyroute2_nor_pydantic():
    import subprocess
    import sys
    code = ("import sys; from bgpd.cni.plugin import run; run('VERSION', b'');"
            "print(sorted(m for m in ('pyroute2', 'pydantic', 'yaml', 'aiomqtt', 'watchfiles') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"
