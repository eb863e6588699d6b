"""Runs tortie-cni's main() in-process, as a runtime would call it, for fast tests of its answers."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from bgpd.cni import plugin

CNI_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


class _Stdin(io.TextIOWrapper):
    def isatty(self) -> bool:
        return False


def call_cni(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, env: dict[str, str],
             stdin: bytes) -> tuple[int, dict, str]:
    """(exit code, the JSON answer on stdout, stderr); fails the test if stdout is not one JSON object."""
    for name in CNI_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", _Stdin(io.BytesIO(stdin)))
    capsys.readouterr()
    code = plugin.main()
    out, err = capsys.readouterr()
    answer = json.loads(out)
    assert isinstance(answer, dict), out
    return code, answer, err


def assert_cni_error(code: int, answer: dict, err: str) -> None:
    """A CNI error object: the four fields, a non-zero exit, nothing on stderr."""
    assert code != 0
    assert set(answer) == {"cniVersion", "code", "msg", "details"}, answer
    assert answer["cniVersion"] in plugin.SUPPORTED
    assert isinstance(answer["code"], int) and answer["code"] > 0
    assert isinstance(answer["msg"], str) and answer["msg"] and isinstance(answer["details"], str)
    assert "Traceback" not in err and err == ""


def write_node_config(directory: Path, ipv6: bool = False) -> Path:
    """A node configuration for CNI tests, without a datastore, with its state and run dirs in `directory`;
    `ipv6`: dual-stack (an IPv6 pool, block and underlay address too)."""
    config = directory / "tortie.yaml"
    pools, blocks = ["{cidr: 10.244.0.0/16}"], ["10.244.7.0/26"]
    if ipv6:
        pools.append("{cidr: 'fd00:244::/56'}")
        blocks.append("'fd00:244::1c0/122'")
    config.write_text(f"""
name: cnihost
router_id: 10.95.1.1
asn: 64512
listen_address: 10.95.1.1
{"listen_address6: 'fd95::1'" if ipv6 else ""}
pools: [{", ".join(pools)}]
blocks: [{", ".join(blocks)}]
mesh: {{enabled: false}}
state_dir: {directory}/state
run_dir: {directory}/run
""")
    return config
