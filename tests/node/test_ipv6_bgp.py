"""IPv6 over BGP: one ExaBGP session per family, IPv6 unicast over IPv6 addresses (docs/ipv6.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgpd.bgp.exabgp_config import exabgp_environment, render_config
from config.node import NodeConfig

pytestmark = pytest.mark.timeout(120)

DUAL = NodeConfig.model_validate({
    "name": "n1", "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1", "listen_address6": "fd00::1",
    "pools": [{"cidr": "10.244.0.0/16"}, {"cidr": "fd00:244::/56"}],
    "peers": [{"address": "10.0.1.1", "asn": 65000}, {"address": "fd00:1::1", "asn": 65000}],
    "mesh": {"nodes": [{"name": "n2", "address": "10.0.0.2", "address6": "fd00::2"}]}})


def neighbors(text: str) -> dict[str, str]:
    return dict(re.findall(r"^neighbor (\S+) \{\n(.*?)^\}", text, re.M | re.S))


def test_one_session_per_family_with_its_own_source(tmp_path):
    text = render_config(DUAL, tmp_path / "exabgp.sock")
    sessions = neighbors(text)
    assert set(sessions) == {"10.0.1.1", "fd00:1::1", "10.0.0.2", "fd00::2"}
    for peer, body in sessions.items():
        v6 = ":" in peer
        assert f"local-address {'fd00::1' if v6 else '10.0.0.1'};" in body
        assert f"family {{ {'ipv6' if v6 else 'ipv4'} unicast; }}" in body
        assert "router-id 10.0.0.1;" in body  # the router id stays IPv4
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    r = subprocess.run([sys.executable, "-m", "exabgp", "validate", "-nv", str(conf)], capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr


def test_exabgp_listens_on_both_underlay_addresses():
    assert exabgp_environment(DUAL)["exabgp.tcp.bind"] == "10.0.0.1 fd00::1"
    v6only = NodeConfig.model_validate({"name": "n1", "router_id": "10.0.0.1", "asn": 64512,
                                        "listen_address6": "fd00::1", "pools": [{"cidr": "fd00:244::/56"}]})
    assert exabgp_environment(v6only)["exabgp.tcp.bind"] == "fd00::1"
    assert "family { ipv4" not in render_config(v6only, Path("/nonexistent"))
