"""IPv6 BGP with FRR and GoBGP (containers/labs/tor-frr-gobgp-v6.clab.yml): a dual-stack Tortie host has an eBGP
session over IPv6 with each. Both get our IPv6 block; their in-pool IPv6 blocks land in our kernel via their global
next hop (FRR sends a link-local one beside it, GoBGP does not); ::/0, out-of-pool prefixes and our own block sent
back are refused and counted; max-prefixes on the GoBGP session; ICMPv6 from a pod to addresses behind both
routers; graceful restart both ways: our daemon restarted (both keep our block as stale, FRR forwards on) and
ExaBGP killed under us (no route of ours leaves the kernel, no echo lost)."""
import json
import select
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.test_ipv6_lab import PINGER

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]

FRR, GOBGP = "fd97::11", "fd97::12"
OURS = "fd00:244:0:1::/122"
BEHIND = {FRR: ("fd00:244:0:f1::/122", "fd00:244:0:f1::1"), GOBGP: ("fd00:244:0:f2::/122", "fd00:244:0:f2::1")}
REFUSED = {FRR: {"default_route": 1, "not_in_pool": 1, "own_block": 1}, GOBGP: {"default_route": 1, "not_in_pool": 1}}

# In node1: every RTM_DELROUTE of protocol 201 (ours) for IPv6 until the file argv[1] exists; prints them as JSON.
DELETES = """
import ipaddress, json, os, socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 0x400))  # RTMGRP_IPV6_ROUTE
s.settimeout(0.1)
print("ready", flush=True)
deleted = []
while not os.path.exists(sys.argv[1]):
    try:
        data = s.recv(1 << 16)
    except TimeoutError:
        continue
    off = 0
    while off + 28 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == 25 and data[off + 21] == 201:  # RTM_DELROUTE, rtm_protocol
            dst, at = "::", off + 28
            while at + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, at)
                if atype == 1:  # RTA_DST
                    dst = str(ipaddress.IPv6Address(data[at + 4:at + 20]))
                at += (alen + 3) & ~3
            deleted.append(f"{dst}/{data[off + 17]}")
        off += (length + 3) & ~3
print(json.dumps(deleted))
"""


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("tor-frr-gobgp-v6.clab.yml", "i")


def kernel(lab):
    return {r["dst"]: r for r in lab.json("node1", "ip", "-j", "-6", "route", "show", "proto", "201")}


def installed(lab) -> bool:
    routes = kernel(lab)
    return (routes.get(OURS, {}).get("type") == "blackhole" and len(routes) == 3
            and all(routes.get(block, {}).get("gateway") == peer for peer, (block, _) in BEHIND.items()))


def peers(lab):
    return {p["address"]: p for p in lab.json("node1", "tortie", "status", "--json")["peers"]}


def metrics(lab):
    return lab.exec("node1", "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://[::1]:9473/metrics').read().decode())").stdout


def frr_path(lab, prefix):
    """FRR's one path to `prefix` (its JSON), or None."""
    out = lab.json("frr", "vtysh", "-c", f"show bgp ipv6 unicast {prefix} json")
    return (out.get("paths") or [None])[0]


def gobgp_path(lab, prefix):
    paths = json.loads(lab.exec("gobgp", "gobgp", "global", "rib", "-a", "ipv6", "-j").stdout).get(prefix)
    return paths[0] if paths else None


def pod_ip6(lab):
    (pod,) = lab.json("node1", "tortie", "pod", "list", "--json")
    (ip,) = [ip for ip in pod["ips"] if ":" in ip]
    return ip


def start(lab, node, *cmd):
    """Starts a script that prints "ready" first; returns once it has."""
    proc = lab.popen(node, *cmd)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready and proc.stdout.readline().strip() == "ready", proc.stderr.read() if not ready else ""
    return proc


def echo_loss(lab, node, probes, stop):
    """Stops the PINGERs (touching `stop` in `node`): {destination: (sent, answered)}."""
    lab.exec(node, "touch", stop)
    return {dst: tuple(map(int, proc.communicate(timeout=30)[0].split())) for dst, proc in probes.items()}


def test_frr_and_gobgp_get_our_ipv6_block_only(lab):
    path, gobgp = wait_for(lambda: (f := frr_path(lab, OURS)) and (g := gobgp_path(lab, OURS)) and (f, g), 20,
                           what="our block at FRR and GoBGP")
    assert [h["ip"] for h in path["nexthops"] if h.get("scope") == "global"] == ["fd97::1"], path
    assert path["aspath"]["string"] == "64512"
    hops = {a.get("nexthop") for a in gobgp["attrs"] if a["type"] == 14}  # MP_REACH_NLRI
    assert hops == {"fd97::1"}
    # FRR installs it (zebra) via our global address; our IPv4 block went nowhere (no IPv4 session)
    (route,) = lab.json("frr", "ip", "-j", "-6", "route", "show", OURS)
    assert route["gateway"] == "fd97::1" and route["protocol"] == "bgp"
    assert lab.json("frr", "vtysh", "-c", "show bgp ipv4 unicast json").get("routes", {}) == {}
    assert {p["advertised"] for p in peers(lab).values()} == {1}  # the IPv6 block, not the IPv4 one


def refusals(lab) -> dict:
    return {peer: {k: v for k, v in p["rejected_by_reason"].items() if v} for peer, p in peers(lab).items()}


def test_in_pool_routes_via_global_next_hops_the_rest_refused_and_counted(lab):
    wait_for(lambda: installed(lab), 20, what="node1's IPv6 routes")
    # FRR sends our block back once it has it: that may trail its own routes
    wait_for(lambda: refusals(lab) == REFUSED, 20, what="every refusal counted")
    everything = {r["dst"] for r in lab.json("node1", "ip", "-j", "-6", "route", "show")}
    assert not {"default", "2001:db8:f1::/48", "2001:db8:f2::/48"} & everything, everything
    routes = {r["prefix"]: r for r in lab.json("node1", "tortie", "routes", "--json")}
    for peer, (block, _) in BEHIND.items():
        assert routes[block]["next_hops"] == [peer] and routes[block]["peers"] == [peer]  # not FRR's link-local
    text = metrics(lab)
    for peer, p in peers(lab).items():
        assert p["state"] == "up" and p["accepted"] == 1 and p["rejected"] == sum(REFUSED[peer].values()), p
        for reason, n in REFUSED[peer].items():
            assert f'tortie_bgp_prefixes_rejected_total{{peer="{peer}",reason="{reason}"}} {n}.0' in text
    log = lab.log("node1")
    assert log.count(f"rejecting routes peer={FRR} reason=default_route") == 1
    assert "is not configured on neighbor" not in log and "malformed" not in log, log[-3000:]


def test_icmpv6_from_a_pod_to_addresses_behind_both_routers(lab):
    """FRR routes back to the pod by the route it learned from us; GoBGP's host by a static route."""
    wait_for(lambda: installed(lab), 20, what="node1's IPv6 routes")
    for _, address in BEHIND.values():
        lab.exec("node1", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-6", "-c", "1", "-W", "2", address)


def test_max_prefixes_on_the_gobgp_session(lab):
    """node1 takes at most 1 prefix from GoBGP: a second in-pool one is refused and counted, and its withdraw
    leaves the first alone."""
    extra = "fd00:244:0:f3::/122"
    lab.exec("gobgp", "gobgp", "global", "rib", "-a", "ipv6", "add", extra, "nexthop", GOBGP)
    p = wait_for(lambda: (p := peers(lab)[GOBGP])["rejected_by_reason"]["max_prefixes"] == 1 and p, 20,
                 what="the refusal")
    assert extra not in kernel(lab)
    assert f'tortie_bgp_prefixes_rejected_total{{peer="{GOBGP}",reason="max_prefixes"}} 1.0' in metrics(lab)
    lab.exec("gobgp", "gobgp", "global", "rib", "-a", "ipv6", "del", extra)
    p = wait_for(lambda: (q := peers(lab)[GOBGP])["updates"] > p["updates"] and q, 20, what="the withdraw")
    assert p["accepted"] == 1 and installed(lab)


def test_our_daemon_restarts_and_both_routers_keep_our_block(lab):
    """Graceful restart with FRR and GoBGP as helpers: while node1's daemon is down, both keep our block (as
    stale) and FRR forwards to the pod; an ICMPv6 echo from FRR every 10 ms loses nothing."""
    probe = start(lab, "frr", "python3", "-c", PINGER, pod_ip6(lab), "/tmp/stop-restart")
    time.sleep(0.5)  # echoes answered before the stop, for the record
    pid = lab.exec("node1", "cat", "/run/tortie/tortie.pid").stdout.strip()
    lab.exec("node1", "kill", "-TERM", pid)
    wait_for(lambda: lab.exec("node1", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="node1's daemon to stop")
    assert installed(lab)  # SIGTERM leaves our routes in the kernel
    wait_for(lambda: frr_path(lab, OURS).get("stale") and gobgp_path(lab, OURS)["stale"], 15,
             what="both routers to hold our block as stale")
    lab.exec("node1", "sh", "-c", "tortie run --config /etc/tortie/tortie.yaml >>/tmp/tortie.log 2>&1 &")

    def back() -> bool:  # until the new daemon listens, status exits 3 ("not running")
        r = lab.exec("node1", "tortie", "status", "--json", check=False)
        return r.returncode == 0 and all(p["state"] == "up" for p in json.loads(r.stdout)["peers"])

    wait_for(back, 40, what="node1's sessions back")
    wait_for(lambda: not frr_path(lab, OURS).get("stale") and not gobgp_path(lab, OURS)["stale"], 20,
             what="our block fresh again at both routers")
    ((sent, answered),) = echo_loss(lab, "frr", {"pod": probe}, "/tmp/stop-restart").values()
    print(f"ICMPv6 echo from FRR to the pod every 10 ms through node1's restart: {sent} sent, {sent - answered} lost")
    assert sent > 100 and answered == sent
    assert "adopted kernel routes=4" in lab.exec("node1", "cat", "/tmp/tortie.log").stdout
    wait_for(lambda: installed(lab), 20, what="node1's IPv6 routes")


def test_exabgp_killed_no_route_leaves_our_kernel(lab):
    """ExaBGP dies under the daemon: the routes from FRR and GoBGP stay in our kernel as stale until they are
    announced again (no RTM_DELROUTE of ours at all), the routers keep ours, the pod's echoes all come back."""
    status = lab.json("node1", "tortie", "status", "--json")
    restarts, daemon = status["exabgp_restarts"], lab.exec("node1", "cat", "/run/tortie/tortie.pid").stdout.strip()
    monitor = start(lab, "node1", "python3", "-c", DELETES, "/tmp/stop-exabgp")
    probes = {address: start(lab, "node1", "tortie", "pod", "exec", "default/pod1", "--", "python3", "-c", PINGER,
                             address, "/tmp/stop-exabgp") for _, address in BEHIND.values()}
    time.sleep(0.5)
    children = lab.exec("node1", "sh", "-c", f"cat /proc/{daemon}/task/*/children").stdout.split()
    (exabgp,) = [c for c in children if "exabgp" in lab.exec("node1", "cat", f"/proc/{c}/cmdline").stdout]
    lab.exec("node1", "kill", "-KILL", exabgp)

    def recovered() -> bool:
        s = lab.json("node1", "tortie", "status", "--json")
        return s["exabgp_restarts"] == restarts + 1 and all(p["state"] == "up" and p["stale"] == 0
                                                            for p in s["peers"])

    wait_for(recovered, 40, what="ExaBGP restarted and both sessions fresh")
    assert installed(lab)
    losses = echo_loss(lab, "node1", probes, "/tmp/stop-exabgp")
    assert json.loads(monitor.communicate(timeout=30)[0]) == []
    for address, (sent, answered) in losses.items():
        print(f"ICMPv6 echo from the pod to {address} every 10 ms through ExaBGP's restart: {sent} sent, "
              f"{sent - answered} lost")
        assert sent > 100 and answered == sent
