"""The hand-packed link, address, neighbour and route messages of pod wiring decode, with pyroute2 as the
reference, to what we meant; a link pyroute2 encodes decodes by hand to what pyroute2 meant."""
from ipaddress import IPv4Address as A, IPv4Network as N, IPv6Address, ip_address, ip_network

from hypothesis import given, strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from bgpd.dataplane.netlink_links import (NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, RTM_GETADDR, RTM_GETLINK,
                                          RTM_NEWADDR, RTM_NEWNEIGH, address, addresses, decode_address, decode_link,
                                          delete_link, device_route, get_link, get_link_at, link_up,
                                          permanent_neighbour, route_oif, route_to, veth)
from bgpd.dataplane.netlink_routes import RTM_DELLINK, RTM_GETROUTE, RTM_NEWLINK, RTM_NEWROUTE

names = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=15)
ips = st.integers(1, 2**32 - 2).map(A)
ips6 = st.integers(1, 2**128 - 1).map(IPv6Address)
any_ips = st.one_of(ips, ips6)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


def decoded(cls, data: bytes):
    msg = cls(data)
    msg.decode()
    assert msg["header"]["length"] == len(data) and msg["header"]["flags"] & NLM_F_ACK
    return msg


@given(names, names, st.integers(0, 1 << 20), st.one_of(st.none(), st.integers(68, 65535)))
def test_veth(name, peer, fd, mtu):
    msg = decoded(ifinfmsg, veth(name, peer, fd, mtu))
    assert msg["header"]["type"] == RTM_NEWLINK
    assert msg["header"]["flags"] & (NLM_F_CREATE | NLM_F_EXCL) == NLM_F_CREATE | NLM_F_EXCL
    assert msg.get("ifname") == name and msg.get("mtu") == mtu and msg["flags"] == 0
    info = msg.get("linkinfo")
    assert info.get("kind") == "veth"
    peer_msg = info.get("data").get_attr("VETH_INFO_PEER")
    assert peer_msg.get("ifname") == peer and peer_msg.get("net_ns_fd") == fd and peer_msg.get("mtu") == mtu


@given(names)
def test_link_requests(name):
    up, get, delete = decoded(ifinfmsg, link_up(name)), decoded(ifinfmsg, get_link(name)), \
        decoded(ifinfmsg, delete_link(name))
    assert [m["header"]["type"] for m in (up, get, delete)] == [RTM_NEWLINK, RTM_GETLINK, RTM_DELLINK]
    assert all(m.get("ifname") == name and m["index"] == 0 for m in (up, get, delete))
    assert up["flags"] == up["change"] == 1 and not up["header"]["flags"] & NLM_F_CREATE


FAMILY = {4: 2, 6: 10}


@given(st.integers(1, 2**31 - 1), any_ips, st.integers(0, 32))
def test_address(index, ip, prefixlen):
    msg = decoded(ifaddrmsg, address(index, ip, prefixlen))
    assert msg["header"]["type"] == RTM_NEWADDR and msg["index"] == index and msg["prefixlen"] == prefixlen
    assert ip_address(msg.get("local")) == ip_address(msg.get("address")) == ip  # pyroute2 writes ::1:0 as ::0.1.0.0
    assert msg["family"] == FAMILY[ip.version]
    assert msg["flags"] == (0x02 if ip.version == 6 else 0)  # IPv6: IFA_F_NODAD


@given(st.integers(1, 2**31 - 1), any_ips, macs)
def test_permanent_neighbour(index, ip, mac):
    msg = decoded(ndmsg, permanent_neighbour(index, ip, mac))
    assert msg["header"]["type"] == RTM_NEWNEIGH and msg["ifindex"] == index and msg["state"] == 0x80
    assert ip_address(msg.get("dst")) == ip and msg.get("lladdr") == mac and msg["family"] == FAMILY[ip.version]


@given(st.data(), any_ips, st.integers(1, 2**31 - 1), st.integers(1, 255))
def test_device_route(data, ip, oif, protocol):
    prefixlen = data.draw(st.integers(0, ip.max_prefixlen))
    gateway = data.draw(st.one_of(st.none(), ips if ip.version == 4 else ips6))
    dst = ip_network(f"{ip}/{prefixlen}", strict=False)
    msg = decoded(rtmsg, device_route(dst, oif, protocol, gateway))
    assert msg["header"]["type"] == RTM_NEWROUTE and msg["header"]["flags"] & NLM_F_EXCL
    assert msg["family"] == FAMILY[ip.version] and msg["dst_len"] == prefixlen
    assert ip_address(msg.get("dst") or ("0.0.0.0" if ip.version == 4 else "::")) == dst.network_address
    assert msg.get("oif") == oif and msg["proto"] == protocol and msg.get("table") == 254
    assert (ip_address(msg.get("gateway")) if gateway else msg.get("gateway")) == gateway
    assert msg["scope"] == (0 if gateway or ip.version == 6 else 253)


@given(st.integers(1, 2**31 - 1), names, macs, st.integers(68, 65535), st.integers(1, 2**31 - 1))
def test_decode_link_matches_pyroute2(index, name, mac, mtu, peer):
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac), ("IFLA_MTU", mtu), ("IFLA_LINK", peer)]
    msg.encode()
    link = decode_link(bytes(msg.data))
    assert (link.index, link.name, link.mac, link.mtu, link.peer_index) == (index, name, mac, mtu, peer)


def test_dump_and_route_requests():
    dump, get = decoded(ifaddrmsg, addresses()), decoded(rtmsg, route_to(A("10.1.2.3")))
    assert dump["header"]["type"] == RTM_GETADDR and dump["header"]["flags"] & NLM_F_DUMP == NLM_F_DUMP
    assert dump["family"] == 0  # both versions
    assert [decoded(ifaddrmsg, addresses(v))["family"] for v in (4, 6)] == [2, 10]
    assert get["header"]["type"] == RTM_GETROUTE and get["dst_len"] == 32 and get.get("dst") == "10.1.2.3"
    get6 = decoded(rtmsg, route_to(IPv6Address("fd00::1")))
    assert (get6["family"], get6["dst_len"], get6.get("dst")) == (10, 128, "fd00::1")


@given(st.integers(1, 2**31 - 1), any_ips, st.integers(0, 32), st.integers(1, 2**31 - 1))
def test_decode_address_and_route_match_pyroute2(index, ip, prefixlen, oif):
    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["family"], msg["prefixlen"], msg["index"] = FAMILY[ip.version], prefixlen, index
    msg["attrs"] = [("IFA_ADDRESS", str(ip)), ("IFA_LOCAL", str(ip)), ("IFA_LABEL", "eth0")]
    msg.encode()
    assert decode_address(bytes(msg.data)) == (index, ip, prefixlen)
    route = rtmsg()
    route["header"]["type"] = RTM_NEWROUTE
    route["family"], route["dst_len"] = FAMILY[ip.version], ip.max_prefixlen
    route["attrs"] = [("RTA_TABLE", 254), ("RTA_DST", str(ip)), ("RTA_OIF", oif)]
    route.encode()
    assert route_oif(bytes(route.data)) == oif


@given(st.integers(1, 2**31 - 1))
def test_get_link_at(index):
    msg = decoded(ifinfmsg, get_link_at(index))
    assert msg["header"]["type"] == RTM_GETLINK and msg["index"] == index and msg.get("ifname") is None
    assert not msg["header"]["flags"] & NLM_F_DUMP
