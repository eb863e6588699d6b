"""WireGuard's pure parts and keys: configuration, which routes go through the device (with and without the
VXLAN overlay, mixed clusters, required), peers and AllowedIPs, the wg configuration, `wg show dump`, and
the key file (0600, kept, rotated)."""
from __future__ import annotations

import base64
import json
import stat
from ipaddress import IPv4Address as A, IPv4Network as N

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from bgpd.agent.cluster import mesh_members
from bgpd.bgp.core import CoreConfig, NodeCore
from bgpd.bgp.rib import ImportFilter
from bgpd.dataplane.netlink_routes import DeviceHop
from bgpd.overlay.vxlan import Overlay
from bgpd.prefixes import key, network
from bgpd.wireguard import keys
from bgpd.wireguard.plan import OVERHEAD, AllowedIps, Encryption, Peer, encryption, parse_dump, pod_mtu, render
from config.node import MeshMember, NodeConfig
from tests.netns import requires_root, run_in_netns

POOL = N("10.244.0.0/16")
ME, KEYED, KEYLESS, ROUTER = A("192.168.1.11"), A("192.168.1.12"), A("192.168.1.13"), A("192.168.1.1")
WG, VTEP = 9, 7
KEY_A = keys.public_key(keys.generate())
KEY_B = keys.public_key(keys.generate())
MEMBERS = [MeshMember(name="n1", address=ME, public_key=KEY_A), MeshMember(name="n2", address=KEYED, public_key=KEY_B),
           MeshMember(name="n3", address=KEYLESS)]


def enc(required: bool = False) -> Encryption:
    return encryption(MEMBERS, "n1", ME, [POOL], required, WG)


def node(**extra) -> dict:
    return {"name": "n1", "router_id": str(ME), "asn": 64512, "listen_address": str(ME),
            "pools": [{"cidr": str(POOL)}], **extra}


# --- configuration ---------------------------------------------------------------------------------
def test_defaults_are_calicos():
    cfg = NodeConfig.model_validate(node())
    w = cfg.wireguard
    assert (w.enabled, w.required, w.port, w.device, w.mtu) == (False, False, 51820, "tortie.wg", None)
    assert OVERHEAD == 60 and pod_mtu(1500) == 1440


@pytest.mark.parametrize("extra, field", [
    ({"wireguard": {"device": "wg0"}}, "wireguard.device"),
    ({"wireguard": {"port": 0}}, "wireguard.port"),
    ({"wireguard": {"mtu": 100}}, "wireguard.mtu"),
    ({"wireguard": {"enabled": "yes please"}}, "wireguard.enabled"),
    ({"mesh": {"nodes": [{"name": "n2", "address": "192.168.1.12", "public_key": "not-a-key"}]}},
     "mesh.nodes.0.public_key"),
    ({"mesh": {"nodes": [{"name": "n2", "address": "192.168.1.12", "public_key": KEY_A[:-2] + "B="}]}},
     "mesh.nodes.0.public_key"),  # 44 characters, but not 32 bytes in canonical base64
])
def test_bad_settings_are_refused_with_the_field(extra, field):
    with pytest.raises(ValidationError) as e:
        NodeConfig.model_validate(node(**extra))
    assert field in str(e.value).replace("\n", " ")


def test_node_records_give_public_keys_and_a_bad_key_counts_as_none():
    records = {"nodes/n2": {"address": str(KEYED), "wireguard": {"public_key": KEY_B, "port": 51820}},
               "nodes/n3": {"address": str(KEYLESS), "wireguard": {"public_key": "garbage"}},
               "nodes/n4": {"address": "192.168.1.14"}}
    got = {m.name: m.public_key for m in mesh_members(records, set())}
    assert got == {"n2": KEY_B, "n3": None, "n4": None}


# --- routes ----------------------------------------------------------------------------------------
def test_a_node_with_a_key_is_reached_through_the_device():
    assert enc().route(N("10.244.2.0/26"), frozenset({KEYED})) == frozenset({DeviceHop(KEYED, WG)})


def test_a_node_without_a_key_is_reached_in_the_clear_unless_required():
    hops = frozenset({KEYLESS})
    assert enc().route(N("10.244.3.0/26"), hops) == hops
    assert enc(required=True).route(N("10.244.3.0/26"), hops) == frozenset()  # a blackhole, never the clear


def test_only_pod_traffic_is_encrypted_and_blackholes_stay():
    assert enc().route(N("172.16.0.0/24"), frozenset({KEYED})) == frozenset({KEYED})  # not a pool: host traffic
    assert enc(required=True).route(N("10.244.1.0/26"), frozenset()) == frozenset()
    assert enc().route(N("10.244.1.0/26"), None) is None


def test_ecmp_keeps_each_hop_its_own_way():
    hops = frozenset({KEYED, KEYLESS, ROUTER})
    assert enc().route(N("10.244.9.0/26"), hops) == frozenset({DeviceHop(KEYED, WG), KEYLESS, ROUTER})
    assert enc(True).route(N("10.244.9.0/26"), hops) == frozenset({DeviceHop(KEYED, WG), ROUTER})


def core(encrypt, overlay=None) -> NodeCore:
    c = NodeCore(CoreConfig(peers={}, import_filter=ImportFilter((POOL,), (N("10.244.1.0/26"),), frozenset({ME})),
                            announced=(), graceful_restart=0, initial_sync_timeout=5, wait_for_datastore=True,
                            overlay=overlay, encryption=encrypt,
                            cluster_routes=((N("10.244.2.0/26"), KEYED), (N("10.244.3.0/26"), KEYLESS))))
    return c


def test_encryption_replaces_vxlan_encapsulation_in_the_core():
    """The core's one decision per route: WireGuard first, VXLAN for what it leaves in the clear."""
    overlay = Overlay(((POOL, "always"),), (), frozenset({KEYED, KEYLESS}), VTEP)
    c = core(enc(), overlay)
    assert c.desired(key(N("10.244.2.0/26"))) == frozenset({DeviceHop(KEYED, WG)})  # the core's keys
    assert c.desired(key(N("10.244.3.0/26"))) == frozenset({DeviceHop(KEYLESS, VTEP)})
    assert core(None, overlay).desired(key(N("10.244.2.0/26"))) == frozenset({DeviceHop(KEYED, VTEP)})


def test_the_device_appearing_replans_every_route():
    c = core(None)
    c.plan()
    cfg = c.config
    c.configure(CoreConfig(**{**cfg.__dict__, "encryption": enc()}), 1.0)
    assert c.plan()[key(N("10.244.2.0/26"))] == frozenset({DeviceHop(KEYED, WG)})


# --- peers and configuration text --------------------------------------------------------------------
def full(members, routes, oif, me) -> list[Peer]:
    """The reference: peers and AllowedIPs recomputed over every route (what the daemon did before the
    AllowedIPs became incremental)."""
    by_node: dict = {}
    for prefix, hops in routes.items():
        through = sorted(h.gateway for h in hops or () if isinstance(h, DeviceHop) and h.oif == oif)
        if through:
            by_node.setdefault(through[0], []).append(network(prefix))
    return [Peer(m.public_key, m.address, tuple(sorted(by_node.get(m.address, ()))))
            for m in sorted(members, key=lambda m: m.address) if m.public_key and m.name != me]


def peers(members, routes, oif, me) -> list[Peer]:
    """AllowedIps fed every route in one batch."""
    allowed = AllowedIps()
    allowed.update({key(p): hops for p, hops in routes.items()}, oif)
    return allowed.peers(members, me)


def test_allowed_ips_are_the_prefixes_routed_to_the_peer():
    routes = {N("10.244.2.0/26"): frozenset({DeviceHop(KEYED, WG)}),
              N("10.244.7.5/32"): frozenset({DeviceHop(KEYED, WG)}),
              N("10.244.3.0/26"): frozenset({KEYLESS}), N("10.244.4.0/26"): frozenset({DeviceHop(KEYED, VTEP)}),
              N("10.244.1.0/26"): frozenset()}
    got = peers(MEMBERS, routes, WG, "n1")
    assert [(p.public_key, p.endpoint, p.allowed_ips) for p in got] == [
        (KEY_B, KEYED, (N("10.244.2.0/26"), N("10.244.7.5/32")))]


@given(st.lists(st.tuples(st.integers(0, 255), st.sets(st.sampled_from([KEYED, A("192.168.1.14")]), min_size=1)),
                max_size=20))
@settings(derandomize=True)
def test_allowed_ips_never_overlap_between_peers(entries):
    members = MEMBERS + [MeshMember(name="n4", address=A("192.168.1.14"), public_key=KEY_A)]
    routes = {N(f"10.244.{i}.0/24"): frozenset(DeviceHop(h, WG) for h in hops) for i, hops in entries}
    got = peers(members, routes, WG, "n1")
    flat = [ip for p in got for ip in p.allowed_ips]
    assert len(flat) == len(set(flat)) == len(routes)


N4 = A("192.168.1.14")
HOPS = st.one_of(st.none(), st.just(frozenset()), st.frozensets(st.sampled_from(
    [DeviceHop(KEYED, WG), DeviceHop(N4, WG), DeviceHop(KEYLESS, WG), DeviceHop(KEYED, VTEP), KEYED, KEYLESS, N4,
     ROUTER]), min_size=1, max_size=3))
PREFIXES = st.sampled_from([key(N(f"10.244.{i}.0/26")) for i in range(6)] + [key(N("10.244.7.5/32"))])


@given(st.lists(st.dictionaries(PREFIXES, HOPS, max_size=5), max_size=12))
@settings(derandomize=True, max_examples=300)
def test_incremental_allowed_ips_equal_a_full_recomputation(batches):
    """Batches of changed routes, as the core's plan hands them out: after each, the peers equal a
    recomputation over every route, and `update` says whether they changed."""
    members = MEMBERS + [MeshMember(name="n4", address=N4, public_key=KEY_A)]
    allowed, routes = AllowedIps(), {}
    before = full(members, routes, WG, "n1")
    for batch in batches:
        changed = allowed.update(batch, WG)
        routes.update(batch)
        after = full(members, routes, WG, "n1")
        assert allowed.peers(members, "n1") == after
        assert changed or after == before
        before = after


def test_render_is_what_wg_syncconf_reads():
    private = keys.generate()
    text = render(private, 51820, peers(MEMBERS, {N("10.244.2.0/26"): frozenset({DeviceHop(KEYED, WG)})}, WG, "n1"))
    assert text == (f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\n\n[Peer]\nPublicKey = {KEY_B}\n"
                    f"Endpoint = 192.168.1.12:51820\nAllowedIPs = 10.244.2.0/26\n")


def test_parse_dump():
    dump = (f"PRIV\t{KEY_A}\t51820\toff\n"
            f"{KEY_B}\t(none)\t192.168.1.12:51820\t10.244.2.0/26\t1796063196\t1184\t1240\toff\n")
    (s,) = parse_dump(dump)
    assert (s.public_key, s.endpoint, s.latest_handshake, s.rx_bytes, s.tx_bytes) == (
        KEY_B, "192.168.1.12:51820", 1796063196, 1184, 1240)


# --- keys ------------------------------------------------------------------------------------------
def test_the_key_is_made_once_0600_and_kept(tmp_path):
    private = keys.load_or_create(tmp_path)
    path = keys.key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(base64.b64decode(private)) == 32
    assert keys.load_or_create(tmp_path) == private
    MeshMember(name="x", address=ME, public_key=keys.public_key(private))  # the configuration takes it


def test_rotation_replaces_the_pair(tmp_path):
    old = keys.load_or_create(tmp_path)
    public = keys.rotate(tmp_path)
    new = keys.load_or_create(tmp_path)
    assert new != old and public == keys.public_key(new)
    assert stat.S_IMODE(keys.key_path(tmp_path).stat().st_mode) == 0o600


def test_a_file_that_is_no_key_is_refused_and_left_alone(tmp_path):
    keys.key_path(tmp_path).write_text("hello\n")
    with pytest.raises(ValueError, match="not a WireGuard private key"):
        keys.load_or_create(tmp_path)
    assert keys.key_path(tmp_path).read_text() == "hello\n"


# --- the guard of wireguard.required (applied in a throwaway namespace with each backend) -------------
GUARD_CODE = """
import sys, json
from ipaddress import IPv4Network as N
from bgpd.dataplane.wireguard import WireguardGuard
from bgpd.wireguard.guard import GuardRules
g = WireguardGuard(sys.argv[1])
rules = GuardRules("tortie.wg", (N("10.244.0.0/16"),), (N("10.244.1.0/26"), N("10.244.9.7/32")))
g.apply(rules)
g.apply(rules)  # idempotent
import subprocess
shown = subprocess.run(["nft", "list", "table", "ip", "tortie-wireguard"] if sys.argv[1] == "nft" else
                       ["iptables-legacy-save", "-t", "raw"], capture_output=True, text=True).stdout
g.apply(None)
gone = subprocess.run(["nft", "list", "tables"] if sys.argv[1] == "nft" else ["iptables-legacy-save", "-t", "raw"],
                      capture_output=True, text=True).stdout
print(json.dumps({"shown": shown, "gone": gone}))
"""


@pytest.mark.netns
@requires_root
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_the_guard_is_applied_and_removed_whole(make_netns, backend):
    r = run_in_netns(make_netns("wg"), GUARD_CODE.replace("sys.argv[1]", repr(backend)))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    if backend == "nft":
        assert 'iifname != "tortie.wg" ip saddr @pools ip saddr != @local ip daddr @pools counter' in out["shown"]
        assert "10.244.9.7" in out["shown"] and "tortie-wireguard" not in out["gone"]
    else:
        assert "-A PREROUTING -j TORTIE-WG-GUARD" in out["shown"]
        assert "! -i tortie.wg -m set --match-set tortie-wg-pools src" in out["shown"]
        assert "TORTIE-WG-GUARD" not in out["gone"]
