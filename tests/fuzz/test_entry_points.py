"""Fuzzing every edge that reads user input: `tortie config check`, `tortie policy check` and `compile`, the
endpoints loader and tortie-cni (stdin and environment). Each example must end, within a time bound, in either
success or clean errors: exit 2 (CNI: an error object and exit 1), one `file: ...: reason` line per problem,
never a traceback. In-process for speed; a few subprocess runs prove the real entry points."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgpd.cli.node import cmd_config_check
from policy.cli import _check, _compile_cmd
from tests.cni_driver import CNI_ENV, assert_cni_error
from tests.fuzz.documents import (BOMB, ENDPOINTS, FUZZ, NODE, POLICIES, captured, damaged_text, dump_yaml,
                                  json_input, mutated, time_bound, yaml_input)

pytestmark = pytest.mark.timeout(600)
WORK = Path(tempfile.mkdtemp(prefix="tortie-fuzz-"))  # hypothesis runs many examples per test function


def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def assert_clean(status: int, out: str, err: str, paths: list[Path], prefix: str = "") -> None:
    """Success, or exit 2 with every stderr line naming one of the files: no traceback, no other output."""
    assert "Traceback" not in out + err
    if status == 0:
        assert err == "", err
        return
    assert status == 2, (status, err)
    lines = err.splitlines()
    assert lines, "an error exit without a reason"
    for line in lines:
        assert any(line.startswith(f"{prefix}{p}: ") for p in paths), line
        assert len(line) < 2000, line[:200]


@FUZZ
@given(yaml_input(NODE))
def test_config_check(data: bytes) -> None:
    path = write("tortie.yaml", data)
    with time_bound(), captured() as (out, err):
        status = cmd_config_check(argparse.Namespace(files=[str(path)]))
    assert_clean(status, out.getvalue(), err.getvalue(), [path])
    if status == 0:
        assert out.getvalue().startswith(f"{path}: ok")


def policy_file(docs: list) -> str:
    return "---\n".join(dump_yaml(d) for d in docs)


@st.composite
def policy_files(draw: st.DrawFn) -> bytes:
    """The example policies, one of them mutated, as one multi-document file, possibly damaged."""
    docs = list(POLICIES)
    i = draw(st.integers(0, len(docs) - 1))
    docs[i] = draw(mutated(docs[i]))
    return draw(damaged_text(policy_file(docs)))


@FUZZ
@given(policy_files())
def test_policy_check(data: bytes) -> None:
    path = write("policies.yaml", data)
    with time_bound(), captured() as (out, err):
        status = _check(argparse.Namespace(files=[str(path)], endpoints=None))
    assert_clean(status, out.getvalue(), err.getvalue(), [path], "error: ")


@FUZZ
@given(yaml_input(ENDPOINTS), st.sampled_from(["nft", "iptables"]))
def test_policy_compile_with_broken_endpoints(data: bytes, backend: str) -> None:
    policies = write("good-policies.yaml", policy_file(POLICIES).encode())
    endpoints = write("endpoints.yaml", data)
    with time_bound(), captured() as (out, err):
        status = _compile_cmd(argparse.Namespace(files=[str(policies)], endpoints=str(endpoints), backend=backend))
    assert_clean(status, "", err.getvalue(), [endpoints, policies], "error: ")
    if status == 0:
        assert out.getvalue()


@FUZZ
@given(yaml_input(POLICIES[0]), st.sampled_from(["nft", "iptables"]))
def test_policy_compile_with_broken_policies(data: bytes, backend: str) -> None:
    policies = write("policies.yaml", data)
    endpoints = write("good-endpoints.yaml", dump_yaml(ENDPOINTS).encode())
    with time_bound(), captured() as (out, err):
        status = _compile_cmd(argparse.Namespace(files=[str(policies)], endpoints=str(endpoints), backend=backend))
    assert_clean(status, "", err.getvalue(), [endpoints, policies], "error: ")


NETCONF = {"cniVersion": "1.1.0", "name": "tortie", "type": "tortie-cni", "tortieConfig": "/nonexistent/tortie.yaml",
           "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}}
env_values = st.one_of(st.sampled_from(["", "eth0", "c1", "/run/netns/x", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b",
                                        "a" * 5000, "..", "a/b", "=;=;", "K8S_POD_NAME=" + "x" * 300]),
                       st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20))


@FUZZ
@given(json_input(NETCONF), st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add"]),
       st.dictionaries(st.sampled_from(CNI_ENV[1:]), env_values, max_size=5))
def test_cni(data: bytes, command: str, env: dict[str, str]) -> None:
    import io

    from bgpd.cni import plugin

    class Stdin(io.TextIOWrapper):
        def isatty(self) -> bool:
            return False

    saved = {name: os.environ.pop(name, None) for name in CNI_ENV}
    saved_stdin = sys.stdin
    try:
        os.environ.update({"CNI_COMMAND": command, **env})
        sys.stdin = Stdin(io.BytesIO(data))
        with time_bound(), captured() as (out, err):
            status = plugin.main()
    finally:
        sys.stdin = saved_stdin
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    answer = json.loads(out.getvalue())
    if status == 0:
        assert command == "VERSION" and answer["supportedVersions"] == plugin.SUPPORTED
    else:
        assert_cni_error(status, answer, err.getvalue())


# --- the real entry points, as a shell or a container runtime starts them ----------------------------------

BAD = {
    "duplicate.yaml": b"name: n1\nname: n2\n",
    "bomb.yaml": BOMB.encode(),
    "deep.yaml": b"[" * 100_000,
    "utf8.yaml": b"name: \xff\n",
    "types.yaml": b"name: [1]\nasn: x\npools: 5\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("argv", [["config", "check"], ["policy", "check"],
                                  ["policy", "compile", "--endpoints", "{file}"]])
def test_real_commands_refuse_cleanly(tmp_path, name, argv):
    path = tmp_path / name
    path.write_bytes(BAD[name])
    argv = [a.replace("{file}", str(path)) for a in argv] + [str(path)]
    r = subprocess.run([sys.executable, "-m", "bgpd.cli.main", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert all(str(path) in line for line in r.stderr.splitlines()), r.stderr


@pytest.mark.parametrize("stdin, env", [
    (b"[" * 100_000, {"CNI_COMMAND": "ADD"}),
    (b'{"cniVersion": "1.1.0", "name": "x", "type": "t", "args": []}', {"CNI_COMMAND": "DEL"}),
    (b"\xff\xfe", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0" * 10}),
])
def test_real_cni_refuses_cleanly(stdin, env):
    cni = str(Path(sys.executable).with_name("tortie-cni"))
    base = {k: v for k, v in os.environ.items() if k not in CNI_ENV}
    r = subprocess.run([cni], input=stdin, env={**base, **env}, capture_output=True, timeout=60)
    assert_cni_error(r.returncode, json.loads(r.stdout), r.stderr.decode())
