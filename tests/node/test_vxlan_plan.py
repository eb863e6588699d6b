"""The VXLAN overlay's pure parts: configuration, VTEP derivation, which routes are encapsulated, the
datastore's routes without BGP, and the on-link route messages (checked against pyroute2's codec)."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given, strategies as st
from pydantic import ValidationError
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from bgpd.agent.daemon import core_config as core_config_of
from bgpd.bgp.core import CoreConfig, NodeCore, Program
from bgpd.bgp.rib import ImportFilter
from bgpd.dataplane.netlink_routes import RTNH_F_ONLINK, DeviceHop, RouteOp, decode_route, encode
from bgpd.dataplane.vxlan import RTM_DELNEIGH, RTM_NEWNEIGH, EntryOp, encode_entry
from bgpd.overlay.vxlan import OVERHEAD, Overlay, cluster_routes, pod_mtu, vtep_mac, vteps
from bgpd.prefixes import key
from config.effective import ClusterView, effective
from config.load import ConfigError
from config.node import IPPool, NodeConfig

POOL, DIRECT = N("10.244.0.0/16"), N("10.245.0.0/16")
SAME, OTHER, ROUTER = A("192.168.1.12"), A("192.168.2.13"), A("192.168.1.1")
CONNECTED = (N("192.168.1.0/24"),)
OIF = 7

addresses = st.integers(1, 2**32 - 2).map(A)


def overlay(mode: str, nodes=(SAME, OTHER)) -> Overlay:
    return Overlay(((POOL, mode),), CONNECTED, frozenset(nodes), OIF)


def node(**extra) -> dict:
    return {"name": "n1", "router_id": "192.168.1.11", "asn": 64512, "listen_address": "192.168.1.11",
            "pools": [{"cidr": str(POOL), "vxlan": "cross-subnet"}], **extra}


# --- configuration ---------------------------------------------------------------------------------
def test_defaults_are_calicos():
    pool = IPPool(cidr=POOL)
    assert pool.vxlan == "never" and pool.nat_outgoing
    cfg = NodeConfig.model_validate(node())
    assert (cfg.vxlan.vni, cfg.vxlan.port, cfg.vxlan.device, cfg.vxlan.mtu) == (4096, 4789, "tortie.vxlan", None)
    assert cfg.bgp.enabled and cfg.uses_vxlan()


@pytest.mark.parametrize("extra, reason", [
    ({"pools": [{"cidr": str(POOL), "vxlan": "sometimes"}]}, "pools.0.vxlan"),
    ({"vxlan": {"device": "vxlan0"}}, "vxlan.device"),
    ({"vxlan": {"device": "tortie.vxlan.toolong"}}, "vxlan.device"),
    ({"vxlan": {"vni": 0}}, "vxlan.vni"),
    ({"vxlan": {"vni": 1 << 24}}, "vxlan.vni"),
    ({"vxlan": {"port": 70000}}, "vxlan.port"),
    ({"vxlan": {"mtu": 100}}, "vxlan.mtu"),
    ({"bgp": {"enabled": False}}, "needs a datastore"),
])
def test_bad_overlay_settings_are_refused_with_the_field(extra, reason):
    with pytest.raises(ValidationError) as e:
        NodeConfig.model_validate(node(**extra))
    text = str(e.value).replace("\n", " ")
    assert reason in text or reason.replace(".0.", ".0.") in text


def test_bgp_off_refuses_peers_and_has_no_bgp_peers(tmp_path):
    ds = {"type": "files", "path": str(tmp_path)}
    with pytest.raises(ValidationError, match="no BGP peers"):
        NodeConfig.model_validate(node(bgp={"enabled": False}, datastore=ds, peers=[{"address": "10.0.0.1",
                                                                                     "asn": 65000}]))
    cfg = NodeConfig.model_validate(node(bgp={"enabled": False}, datastore=ds, mesh={
        "nodes": [{"name": "n1", "address": "192.168.1.11"}, {"name": "n2", "address": str(SAME)}]}))
    assert cfg.bgp_peers() == []


def test_bgp_off_takes_the_datastores_routes_into_the_effective_config(tmp_path):
    ds = {"type": "files", "path": str(tmp_path)}
    view = ClusterView(routes=((N("10.244.1.0/26"), SAME),))
    on = effective(NodeConfig.model_validate(node(datastore=ds)), view)
    off = effective(NodeConfig.model_validate(node(datastore=ds, bgp={"enabled": False})), view)
    assert on.cluster_routes == {} and off.cluster_routes == {N("10.244.1.0/26"): SAME}
    with pytest.raises(ConfigError):
        effective(NodeConfig.model_validate(node(datastore=ds, bgp={"enabled": False})),
                  ClusterView(routes=((N("10.244.1.0/26"), SAME),), blocks=(N("10.250.0.0/26"),)))


def test_bgp_off_routes_of_both_families_make_a_core_config(tmp_path):
    """A dual-stack cluster's routes from the datastore: sorted IPv4 first (ipaddress cannot order across
    families: the daemon stopped with TypeError)."""
    v6 = (IPv6Network("fd00:246::10/124"), IPv6Address("fd95::6"))
    pools = [{"cidr": "10.244.0.0/16"}, {"cidr": "fd00:246::/120", "block_size": 124}]
    cfg = NodeConfig.model_validate(node(datastore={"type": "files", "path": str(tmp_path)}, bgp={"enabled": False},
                                         listen_address6="fd95::1", pools=pools))
    view = ClusterView(routes=(v6, (N("10.244.1.0/26"), SAME)))
    assert core_config_of(effective(cfg, view)).cluster_routes == ((N("10.244.1.0/26"), SAME), v6)


# --- VTEPs -----------------------------------------------------------------------------------------
@given(addresses, addresses)
def test_vtep_macs_are_unicast_local_and_distinct(a, b):
    mac = vtep_mac(a)
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered
    assert (vtep_mac(a) == vtep_mac(b)) == (a == b)
    assert vteps([b, a]) == {a: vtep_mac(a), b: vtep_mac(b)}


def test_pod_mtu_leaves_room_for_the_outer_headers():
    assert OVERHEAD == {4: 50, 6: 70} and pod_mtu(1500, 4) == 1450 and pod_mtu(9000, 4) == 8950


# --- encapsulation per route -----------------------------------------------------------------------
def test_modes_per_next_hop():
    b = N("10.244.1.0/26")
    same, other = frozenset({SAME}), frozenset({OTHER})
    assert overlay("always").route(b, same) == {DeviceHop(SAME, OIF)}
    assert overlay("cross-subnet").route(b, same) == same  # on our subnet: direct
    assert overlay("cross-subnet").route(b, other) == {DeviceHop(OTHER, OIF)}
    assert overlay("never").route(b, other) == other
    assert overlay("always").route(N("10.245.1.0/26"), other) == other  # a pool without VXLAN
    assert overlay("always").route(b, frozenset({ROUTER})) == {ROUTER}  # not a node: no VTEP there
    assert overlay("always").route(b, frozenset()) == frozenset() and overlay("always").route(b, None) is None
    assert overlay("cross-subnet").route(b, same | other) == {SAME, DeviceHop(OTHER, OIF)}  # ECMP, per hop


@given(st.sampled_from(["never", "always", "cross-subnet"]), st.frozensets(addresses, max_size=4),
       st.frozensets(addresses, max_size=4), st.lists(st.integers(8, 30), max_size=3))
def test_encapsulation_rule(mode, hops, nodes, lengths):
    connected = tuple(N(f"{h}/{l}", strict=False) for h, l in zip(sorted(hops), lengths))
    ov = Overlay(((POOL, mode),), connected, frozenset(nodes), OIF)
    got = ov.route(N("10.244.3.0/26"), hops)
    assert len(got) == len(hops)
    for hop in hops:
        direct = mode == "never" or hop not in nodes or (mode == "cross-subnet" and any(hop in c for c in connected))
        assert (hop in got) == direct and (DeviceHop(hop, OIF) in got) == (not direct)


# --- without BGP -----------------------------------------------------------------------------------
def test_cluster_routes_are_other_nodes_prefixes_via_their_address():
    owned = {"n1": [N("10.244.0.0/26")], "n2": [N("10.244.1.0/26"), N("10.244.0.9/32")], "ghost": [N("10.244.2.0/26")]}
    got = cluster_routes(owned, {"n1": A("192.168.1.11"), "n2": SAME}, "n1")
    assert got == {N("10.244.1.0/26"): SAME, N("10.244.0.9/32"): SAME}


def core_config(routes=(), ov=None) -> CoreConfig:
    return CoreConfig(peers={}, import_filter=ImportFilter((POOL,), (N("10.244.0.0/26"),), frozenset({A("192.168.1.11")})),
                      announced=(N("10.244.0.0/26"),), graceful_restart=0, initial_sync_timeout=30,
                      wait_for_datastore=True, overlay=ov, cluster_routes=tuple(routes))


def test_core_programs_the_datastores_routes_through_the_overlay():
    b1, b2 = N("10.244.1.0/26"), N("10.244.2.0/26")
    core = NodeCore(core_config([(b1, SAME), (b2, OTHER)], overlay("cross-subnet")))
    core.adopted({}, 0.0)
    assert core.datastore_ready(0.0)[-1].__class__.__name__ == "Ready"  # nothing to wait for without BGP
    k0, k1, k2 = key(N("10.244.0.0/26")), key(b1), key(b2)  # the plan is keyed by prefix keys
    assert core.plan() == {k0: frozenset(), k1: {SAME}, k2: {DeviceHop(OTHER, OIF)}}
    out = core.configure(core_config([(b1, OTHER)], overlay("always")), 1.0)
    assert Program() in out
    assert core.plan() == {k0: frozenset(), k1: {DeviceHop(OTHER, OIF)}, k2: None}
    core.configure(core_config([], overlay("always")), 2.0)
    assert core.plan() == {k1: None}


# --- route messages --------------------------------------------------------------------------------
@given(st.frozensets(st.builds(DeviceHop, addresses, st.integers(1, 2**31 - 1)), min_size=1, max_size=3),
       st.frozensets(addresses, max_size=2))
def test_onlink_routes_encode_as_pyroute2_reads_them_and_decode_back(device_hops, plain):
    hops = device_hops | plain
    data = encode(RouteOp(key(N("10.244.1.0/26")), hops), 1, 201)
    msg = rtmsg(data)
    msg.decode()
    if len(hops) == 1:
        (hop,) = hops
        assert msg["flags"] & RTNH_F_ONLINK and A(msg.get("gateway")) == hop.gateway and msg.get("oif") == hop.oif
    else:
        got = set()
        for nh in msg.get("multipath"):
            gw = A(dict(nh["attrs"])["RTA_GATEWAY"])
            got.add(DeviceHop(gw, nh["oif"]) if nh["flags"] & RTNH_F_ONLINK else gw)
        assert got == hops
    assert decode_route(memoryview(data), 16, len(data)) == (254, 201, 0, key(N("10.244.1.0/26")), hops)


@given(st.sampled_from([RTM_NEWNEIGH, RTM_DELNEIGH]), st.sampled_from([2, 7]), addresses,
       st.integers(1, 2**31 - 1), st.integers(0, 2**32 - 1))
def test_vtep_entries_encode_as_pyroute2_reads_them(kind, family, address, index, seq):
    entry_reads_back(kind, family, address, index, seq)


def entry_reads_back(kind: int, family: int, address, index: int, seq: int) -> None:
    """A neighbour (family 2 or 10) or FDB (7) entry of a VTEP, encoded, is what pyroute2 decodes."""
    data = encode_entry(EntryOp(kind, family, address, vtep_mac(address)), index, seq)
    msg = ndmsg(data)
    msg.decode()
    assert msg["header"]["length"] == len(data) and msg["header"]["type"] == kind
    assert msg["family"] == family and msg["ifindex"] == index and msg["state"] == 0x80
    assert ip_address(msg.get_attr("NDA_DST")) == address and msg.get_attr("NDA_LLADDR") == vtep_mac(address)
    assert bool(msg["flags"] & 0x02) == (family == 7)  # FDB entries: NTF_SELF, on the VXLAN device itself
