"""Parsing ExaBGP 5 JSON (shapes from ExaBGP 5.0.15) and rendering its configuration."""
import getpass
import json
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address as A, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bgpd.bgp import messages as m
from bgpd.bgp.exabgp_config import render_config
from bgpd.bgp.exabgp_process import relay_program
from bgpd.prefixes import key
from config.node import NodeConfig

def K(text):
    return key(ip_network(text))


NEIGHBOR = {"address": {"local": "10.99.0.1", "peer": "10.99.0.2"}, "asn": {"local": 64512, "peer": 64512}}


def line(**neighbor):
    return json.dumps({"exabgp": "5.0.0", "time": 1.0, "host": "h", "pid": 1, "ppid": 1, "counter": 1,
                       "type": neighbor.pop("type"), "neighbor": {**NEIGHBOR, **neighbor}})


def test_state():
    assert m.parse_line(line(type="state", state="up")) == [m.SessionState("10.99.0.2", "up")]
    down = m.parse_line(line(type="state", state="down", reason="closing connection"))[0]
    assert down.graceful
    hold = m.parse_line(line(type="state", state="down", reason="notification sent (4,0)"))[0]
    assert not hold.graceful


def test_update_announce_withdraw_eor():
    upd = {"update": {"attribute": {"origin": "igp", "local-preference": 100},
                      "announce": {"ipv4 unicast": {"10.99.0.2": [{"nlri": "10.244.2.0/26"}, {"nlri": "10.244.3.0/26"}]},
                                   "ipv6 unicast": {"fe80::1": [{"nlri": "fd00::/64"}]}},
                      "withdraw": {"ipv4 unicast": [{"nlri": "10.244.9.0/26"}]}}}
    events = m.parse_line(line(type="update", direction="receive", message=upd))
    assert events == [m.Withdraw("10.99.0.2", (K("10.244.9.0/26"),)),
                      m.Announce("10.99.0.2", A("10.99.0.2"), (K("10.244.2.0/26"), K("10.244.3.0/26"))),
                      # parsed (tests/node/test_ipv6_bgp.py); a link-local next hop alone is the filter's to refuse
                      m.Announce("10.99.0.2", ip_address("fe80::1"), (K("fd00::/64"),))]
    compact = {"update": {"announce": {"ipv4 unicast": {"10.99.0.2": ["10.244.2.0/26"]}},
                          "withdraw": {"ipv4 unicast": ["10.244.9.0/26"]}}}
    assert m.parse_line(line(type="update", message=compact)) == [
        m.Withdraw("10.99.0.2", (K("10.244.9.0/26"),)), m.Announce("10.99.0.2", A("10.99.0.2"), (K("10.244.2.0/26"),))]
    eor = m.parse_line(line(type="update", message={"eor": {"afi": "ipv4", "safi": "unicast"}}))
    assert eor == [m.EndOfRib("10.99.0.2")]


def test_noise_and_garbage():
    assert m.parse_line("") == [] and m.parse_line("done") == []
    assert m.parse_line(line(type="keepalive")) == []
    bad = m.parse_line('{"type": "update", "neighbor": {}}')
    assert isinstance(bad[0], m.Malformed)
    bad = m.parse_line(line(type="update", message={"update": {"announce": {"ipv4 unicast": {"x": [{"nlri": "1"}]}}}}))
    assert isinstance(bad[0], m.Malformed)


@given(st.text(max_size=300))
def test_parse_never_raises(text):
    m.parse_line(text)


def test_rendered_config_is_valid_for_exabgp(tmp_path):
    node = NodeConfig.model_validate({
        "name": "n1", "router_id": "10.99.0.1", "asn": 64512, "listen_address": "10.99.0.1",
        "pools": [{"cidr": "10.244.0.0/16"}], "blocks": ["10.244.1.0/26"],
        "peers": [{"address": "10.98.0.254", "asn": 65000, "password": "pw", "passive": True}],
        "mesh": {"nodes": [{"name": "n1", "address": "10.99.0.1"}, {"name": "n2", "address": "10.99.0.2"}]}})
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_config(node, tmp_path / "sock", relay_program()))
    text = conf.read_text()
    assert 'md5-password "pw"' in text and "passive true" in text and "manual-eor true" in text
    exabgp = Path(sys.executable).with_name("exabgp")
    r = subprocess.run([str(exabgp), "validate", str(conf)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prefixes_are_keys_of_their_family():
    upd = {"update": {"announce": {"ipv4 unicast": {"10.99.0.2": ["10.244.2.0/26", "10.244.3.0/26"]}}}}
    [event] = m.parse_line(line(type="update", message=upd))
    assert event.prefixes == (K("10.244.2.0/26"), K("10.244.3.0/26"))
    for bad in ({"ipv4 unicast": {"10.99.0.2": ["fd00::/64"]}}, {"ipv6 unicast": {"fd00::1": ["10.244.2.0/26"]}},
                {"ipv4 unicast": {"fd00::1": ["10.244.2.0/26"]}}, {"ipv4 unicast": {"10.99.0.2": ["10.244.2.1/26"]}}):
        assert isinstance(m.parse_line(line(type="update", message={"update": {"announce": bad}}))[0], m.Malformed)
    withdraw = {"update": {"withdraw": {"ipv4 unicast": ["fd00::/64"]}}}
    assert isinstance(m.parse_line(line(type="update", message=withdraw))[0], m.Malformed)


@pytest.mark.timeout(60)
def test_exabgp_answers_the_session_question_in_the_shape_parsed(tmp_path):
    """Real ExaBGP with two passive sessions on loopback addresses and no listening socket: nothing connects.
    Its API helper asks SHOW_NEIGHBORS and keeps the answer."""
    answer, helper = tmp_path / "answer", tmp_path / "ask.py"
    helper.write_text(f"import sys\nprint({m.SHOW_NEIGHBORS!r}, flush=True)\nfor text in sys.stdin:\n"
                      f"    if text.startswith('['):\n        open({str(answer)!r}, 'w').write(text)\n        break\n")
    conf = tmp_path / "exabgp.conf"
    conf.write_text(f"process ask {{ run {sys.executable} {helper}; encoder json; }}\n" + "".join(
        f"neighbor {ip} {{ router-id 127.0.0.1; local-address 127.0.0.1; local-as 64512; peer-as {asn}; "
        "passive true; family { ipv4 unicast; } api { processes [ ask ]; } }\n"
        for ip, asn in (("127.0.0.2", 64512), ("127.0.0.3", 65003))))
    env = {**os.environ, "exabgp.api.ack": "false", "exabgp.tcp.bind": "", "exabgp.daemon.daemonize": "false",
           "exabgp.daemon.user": getpass.getuser(), "exabgp.log.level": "CRITICAL", "exabgp.daemon.pid": ""}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("exabgp")), str(conf)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not answer.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert m.parse_line(answer.read_text()) == [m.Neighbors(frozenset({("127.0.0.2", 64512), ("127.0.0.3", 65003)}))]


def test_a_session_answer_that_is_not_one_is_malformed():
    assert m.parse_line("[]") == [m.Neighbors(frozenset())]
    for bad in ('[{"peer": {}}]', '[1]', '[{"peer": {"address": "x", "as": 1}}]', '[{"peer": {"address": "::1"}}]'):
        assert isinstance(m.parse_line(bad)[0], m.Malformed), bad
