"""ExaBGP's configuration: MD5 passwords that ExaBGP reads back as written, and written readable by root only."""
from __future__ import annotations

import ast
import os
import re
import stat
import string
import subprocess
import sys

import pytest
from pydantic import ValidationError

from bgpd.bgp.exabgp_config import private_dir, render_config, write_config
from bgpd.bgp.exabgp_process import relay_program
from config.node import NodeConfig

pytestmark = pytest.mark.timeout(120)
FORBIDDEN = "\"'\\;{}"
# every character the validator accepts, spread over passwords, with spaces at the ends and the longest length
ACCEPTED = "".join(c for c in string.printable if c.isprintable() and c not in FORBIDDEN)
PASSWORDS = [ACCEPTED[i:i + 20] for i in range(0, len(ACCEPTED), 20)] + [" lead", "trail ", "x" * 80, "deadbeef",
                                                                            "abc=", "kernel", "#not-a-comment"]


def node(passwords: list[str]) -> NodeConfig:
    return NodeConfig.model_validate({
        "name": "n1", "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1",
        "pools": [{"cidr": "10.244.0.0/16"}], "mesh": {"enabled": False},
        "peers": [{"address": f"10.0.1.{i + 1}", "asn": 64512, "password": p} for i, p in enumerate(passwords)]})


def test_every_accepted_password_is_read_back_by_exabgp_as_written(tmp_path):
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_config(node(PASSWORDS), tmp_path / "exabgp.sock", relay_program()))
    r = subprocess.run([sys.executable, "-m", "exabgp", "validate", "-nv", str(conf)], capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    read = [ast.literal_eval(m) for m in re.findall(r"md5-password\s+\| (.*)$", r.stdout + r.stderr, re.M)]
    assert read == PASSWORDS


@pytest.mark.parametrize("password", ["a'b", 'a"b', "a\\b", "a;b", "{", "}", "café", "tab\there", "a\x01b",
                                      "zero\u200bwidth", "new\nline", "x" * 81, ""])
def test_passwords_exabgp_would_misread_are_refused(password):
    with pytest.raises(ValidationError):
        node([password])
    with pytest.raises(ValidationError):
        NodeConfig.model_validate({**node([]).model_dump(mode="json"), "mesh": {"password": password}})


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_is_0600_in_a_0700_run_dir_whatever_the_umask(tmp_path, umask_022):
    run = tmp_path / "run"
    write_config(run / "exabgp.conf", "neighbor 10.0.0.2 { md5-password \"s\"; }\n")
    assert (mode(run), mode(run / "exabgp.conf")) == (0o700, 0o600)
    assert (run / "exabgp.conf").read_text().startswith("neighbor")
    assert os.umask(0o022) == 0o022  # restored


def test_a_world_readable_config_and_run_dir_are_closed(tmp_path, umask_022):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (run / "exabgp.conf").write_text("old")
    (run / "exabgp.conf.tmp").write_text("leftover")
    os.chmod(run / "exabgp.conf.tmp", 0o666)
    write_config(run / "exabgp.conf", "new")
    assert (mode(run), mode(run / "exabgp.conf"), (run / "exabgp.conf").read_text()) == (0o700, 0o600, "new")
    assert not (run / "exabgp.conf.tmp").exists()


def test_a_shared_sticky_directory_is_left_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    private_dir(shared)
    assert mode(shared) == 0o1777


def test_the_daemon_makes_its_run_dir_private(tmp_path, umask_022):
    from bgpd.agent.daemon import Daemon
    config = node([]).model_copy(update={"run_dir": tmp_path / "run", "state_dir": tmp_path / "state"})
    Daemon(NodeConfig.model_validate(config.model_dump()))
    assert mode(tmp_path / "run") == 0o700
