"""Renders ExaBGP's configuration and environment from the node configuration (pure), and writes the
configuration, which holds the peers' MD5 passwords, readable by root only."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from config.node import NodeConfig, Peer

PROCESS = "tortie"


def _q(s: str) -> str:
    # config.node refuses quotes, backslashes and braces in passwords and names; this only wraps
    return f'"{s}"'


def render_neighbor(node: NodeConfig, peer: Peer) -> str:
    """One session of the peer's address family: IPv6 unicast over IPv6 addresses (docs/ipv6.md)."""
    v6 = peer.address.version == 6
    lines = [
        f"neighbor {peer.address} {{",
        f"    description {_q(peer.name or str(peer.address))};",
        f"    router-id {node.router_id};",
        f"    local-address {node.listen_address6 if v6 else node.listen_address};",
        f"    local-as {node.asn};",
        f"    peer-as {peer.asn};",
        f"    hold-time {peer.hold_time};",
        # we keep our own RIB: ExaBGP's adj-rib-in would double the memory for nothing
        "    adj-rib-in false;",
        # End-of-RIB only once our routes are re-announced, so peers keep stale routes until then
        "    manual-eor true;",
        "    group-updates true;",
    ]
    if peer.passive:
        lines += ["    passive true;", "    listen 179;"]
    if peer.password:
        lines.append(f"    md5-password {_q(peer.password)};")
    lines += [
        f"    family {{ {'ipv6' if v6 else 'ipv4'} unicast; }}",
        "    capability {",
        "        route-refresh enable;",
        f"        graceful-restart {node.graceful_restart};" if node.graceful_restart else "",
        "    }",
        f"    api {{ processes [ {PROCESS} ]; neighbor-changes; receive {{ parsed; update; }} }}",
        "}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def render_config(node: NodeConfig, relay_socket: Path, relay: str) -> str:
    """ExaBGP's configuration; `relay` is the path of exabgp_process.relay_program()."""
    head = (
        f"process {PROCESS} {{\n"
        f"    run {relay} -N -U {relay_socket};\n"
        "    encoder json;\n"
        "}\n"
    )
    return head + "".join(render_neighbor(node, p) for p in node.bgp_peers())


def exabgp_environment(node: NodeConfig) -> dict[str, str]:
    """ExaBGP settings passed as environment variables (see shared notes: privileges, acks, logging)."""
    return {
        "exabgp.daemon.user": "root",
        "exabgp.daemon.daemonize": "false",
        "exabgp.daemon.drop": "false",
        "exabgp.api.ack": "false",
        "exabgp.api.cli": "false",  # no named pipes: the daemon is the only API user
        "exabgp.api.compact": "true",  # prefixes as bare strings: less JSON to write and to read
        "exabgp.log.level": "WARNING",
        # the reactor's idle poll: 1.0 (the default) wakes it every 10 ms, most of an idle node's CPU; I/O from
        # peers and from the relay still wakes it at once
        "exabgp.reactor.speed": "10.0",
        "exabgp.log.destination": "stdout",
        # always listen: peers that wait for us may be added by a reload (the datastore's mesh), and ExaBGP
        # only binds at start
        "exabgp.tcp.bind": " ".join(str(a) for a in (node.listen_address, node.listen_address6) if a is not None),
        "exabgp.tcp.port": "179",
        "exabgp.daemon.pid": "",
    }


def private_dir(path: Path) -> None:
    """Creates the run directory 0700; one we own that is open to others (not sticky, as /tmp) is closed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077 and not st.st_mode & stat.S_ISVTX:
        path.chmod(0o700)


def write_config(path: Path, text: str) -> None:
    """Replaces ExaBGP's configuration atomically with a file that is 0600 from its creation (umask 077)."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    old = os.umask(0o077)
    try:
        tmp.unlink(missing_ok=True)  # a leftover could have other permissions; O_EXCL makes ours
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        os.umask(old)
