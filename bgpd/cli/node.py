"""`tortie run`, `tortie config check`, `tortie status`, `tortie routes`, `tortie pod ...`.

Each command imports what it needs when it runs (see bgpd/cli/main.py): a CLI call pays only for its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from config.load import ConfigError, load_model
from config.node import NodeConfig

DEFAULT_CONFIG = "/etc/tortie/tortie.yaml"


def load_node(path: str) -> NodeConfig:
    return load_model(path, NodeConfig)


def _config_errors(args: argparse.Namespace, func):
    """Runs func(args, node); an invalid configuration gets its errors and exit 2, nothing else happens."""
    try:
        node = load_node(args.config)
    except ConfigError as e:
        print("\n".join(e.errors), file=sys.stderr)
        return 2
    return func(args, node)


def cmd_config_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            node = load_node(path)
            print(f"{path}: ok (node {node.name}, {len(node.bgp_peers())} BGP peers, {len(node.blocks)} blocks)")
        except ConfigError as e:
            print("\n".join(e.errors), file=sys.stderr)
            status = 2
    return status


def cmd_run(args: argparse.Namespace, node: NodeConfig) -> int:
    import asyncio
    import logging

    from bgpd.agent.daemon import Daemon, DaemonFailed, StartupError

    # under systemd (JOURNAL_STREAM set) journald stamps the time itself
    bare = args.no_timestamps or "JOURNAL_STREAM" in os.environ
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s" if bare
                        else "%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every file event at INFO

    async def main() -> None:
        await Daemon(node, Path(args.config), cleanup_on_exit=args.cleanup).run()

    try:
        asyncio.run(main())
    except (StartupError, DaemonFailed) as e:
        print(f"tortie run: {e}", file=sys.stderr)
        return 1
    return 0


def _view(view: str, render):
    def cmd(args: argparse.Namespace, node: NodeConfig) -> int:
        from bgpd.agent.control import DaemonNotRunning, query
        try:
            result = query(node.run_dir / "tortie.sock", view)
        except DaemonNotRunning as e:
            print(f"tortie: {e}", file=sys.stderr)
            return 3
        print(json.dumps(result, indent=2, sort_keys=True) if args.json else render(result))
        return 0
    return cmd


def _render_status(result: dict) -> str:
    from bgpd.agent.views import Status
    s = Status.from_json(result)
    lines = [f"node {s.node}  AS {s.asn}  router id {s.router_id}  blocks {', '.join(s.blocks)}",
             f"kernel routes {s.kernel_routes} (IPv6 {s.kernel_routes_ipv6})"
             f"  initial sync {'done' if s.initial_sync_done else 'pending'}"
             f"  exabgp restarts {s.exabgp_restarts}"]
    if s.datastore:
        lines.append(f"datastore {'connected' if s.datastore.connected else 'DISCONNECTED'}"
                     f"  resyncs {s.datastore.resyncs}")
    if not s.bgp_enabled:
        lines.append("bgp off: routes to other nodes' blocks from the datastore")
    for pool in s.pools:
        lines.append(f"pool {pool.cidr}  vxlan {pool.vxlan}  nat outgoing {'on' if pool.nat_outgoing else 'off'}")
    if o := s.overlay:
        lines.append(f"vxlan {o.device}  vni {o.vni}  port {o.port}  mtu {o.mtu}  remote vteps {o.remote_vteps}  "
                     f"encapsulated routes {o.encapsulated_routes}  repairs {o.repairs}"
                     + (f"  ERROR {o.error}" if o.error else ""))
    if w := s.wireguard:
        lines.append(f"wireguard {w.device} ({w.implementation or 'not up'})  port {w.port}  mtu {w.mtu}  "
                     f"peers {len(w.peers)}  encrypted routes {w.encrypted_routes}  "
                     f"{'required' if w.required else 'without key: unencrypted'} "
                     f"{', '.join(w.nodes_without_key) or '(none)'}" + (f"  ERROR {w.error}" if w.error else ""))
        lines.append(f"wireguard public key {w.public_key}")
    lines.append("")
    fmt = "{:<16} {:<16} {:>10} {:<10} {:>8} {:>9} {:>9} {:>8} {:>10} {:>6} {:<10}  {}"
    lines.append(fmt.format("peer", "address", "asn", "state", "uptime", "received", "accepted", "rejected",
                            "advertised", "stale", "bfd", "last error"))
    for p in s.peers:
        bfd = "-" if p.bfd is None else p.bfd.state + (" (damp)" if p.bfd.dampened else "")
        lines.append(fmt.format(p.name, p.address, p.asn, p.state, int(p.uptime), p.received,
                                p.accepted, p.rejected, p.advertised, p.stale, bfd, p.last_error))
    for prefix, why in s.refused_routes.items():
        lines.append(f"kernel refused {prefix}: {why} (retrying)")
    if s.refused_total > len(s.refused_routes):
        lines.append(f"... {s.refused_total - len(s.refused_routes)} more refused")
    return "\n".join(lines)


def _render_routes(result: list[dict]) -> str:
    from bgpd.agent.views import RouteStatus
    fmt = "{:<28} {:<32} {:<32} {}"  # an IPv6 block: up to 43 characters, most fit in 28
    lines = [fmt.format("prefix", "next hops", "from", "in kernel")]
    for r in map(RouteStatus.from_json, result):
        lines.append(fmt.format(r.prefix, ",".join(r.next_hops), ",".join(r.peers), "yes" if r.in_kernel else "NO"))
    return "\n".join(lines)


def cmd_pod_add(args: argparse.Namespace, node: NodeConfig) -> int:
    from bgpd.dataplane.pods import PodError, add_pod
    try:
        labels = dict(item.split("=", 1) for item in args.label)
    except ValueError:
        print("tortie pod add: --label takes KEY=VALUE", file=sys.stderr)
        return 2
    try:
        pod = add_pod(node, args.pod, ips=args.ip, existing_netns=args.netns, labels=labels)
    except (PodError, ValueError) as e:
        print(f"tortie pod add: {e}", file=sys.stderr)
        return 1
    print("\n".join(pod.ips))
    return 0


def cmd_pod_del(args: argparse.Namespace, node: NodeConfig) -> int:
    from bgpd.dataplane.pods import PodError, del_pod
    try:
        del_pod(node, args.pod)
    except PodError as e:
        print(f"tortie pod del: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_pod_list(args: argparse.Namespace, node: NodeConfig) -> int:
    from bgpd.dataplane.pods import PodError, PodStore
    try:
        pods = PodStore(node).all()
    except PodError as e:
        print(f"tortie pod list: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([p.to_json() for p in pods], indent=2))
    else:
        for p in pods:
            print(f"{p.key:<40} {','.join(p.ips):<40} {p.host_interface:<15} {p.netns}")
    return 0


def cmd_pod_exec(args: argparse.Namespace, node: NodeConfig) -> int:
    from bgpd.dataplane.pods import PodError, exec_in_pod
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("tortie pod exec: give a command after --", file=sys.stderr)
        return 2
    try:
        exec_in_pod(node, args.pod, argv)
    except PodError as e:
        print(f"tortie pod exec: {e}", file=sys.stderr)
        return 1
    return 0  # not reached: exec replaced us


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def with_config(p: argparse.ArgumentParser, func) -> None:
        p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"node configuration (default {DEFAULT_CONFIG})")
        p.set_defaults(func=lambda args: _config_errors(args, func))

    p = sub.add_parser("run", description="Run the node daemon.")
    p.add_argument("--cleanup", action="store_true", help="on exit, withdraw our blocks and remove our kernel routes")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-timestamps", action="store_true", help="leave timestamps to journald")
    with_config(p, cmd_run)

    cfg = sub.add_parser("config").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("check", help="validate node configuration files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_config_check)

    for name, view, render, text in (("status", "status", _render_status, "BGP sessions of the running daemon"),
                                     ("routes", "routes", _render_routes, "the RIB and what is in the kernel")):
        p = sub.add_parser(name, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--json", action="store_true")
        with_config(p, _view(view, render))

    pod = sub.add_parser("pod").add_subparsers(dest="pod_command", required=True)
    p = pod.add_parser("add", help="create a pod's network: netns, veth, address, routes")
    p.add_argument("pod", metavar="NAMESPACE/POD")
    p.add_argument("--ip", action="append", default=[], help="address to use (default: the first free one of the "
                   "node's blocks), one per IP version: repeat it for an IPv4 and an IPv6 address")
    p.add_argument("--netns", help="use this existing network namespace")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of the pod, for policy selectors (with a datastore); repeatable")
    with_config(p, cmd_pod_add)
    p = pod.add_parser("del", help="remove a pod's network")
    p.add_argument("pod", metavar="NAMESPACE/POD")
    with_config(p, cmd_pod_del)
    p = pod.add_parser("list", help="list local pods")
    p.add_argument("--json", action="store_true")
    with_config(p, cmd_pod_list)
    p = pod.add_parser("exec", help="run a command inside a pod")
    p.add_argument("pod", metavar="NAMESPACE/POD")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    with_config(p, cmd_pod_exec)
