"""`tortie wireguard rotate`: a new WireGuard key pair for the running daemon (docs/wireguard.md)."""
from __future__ import annotations

import argparse
import sys

from bgpd.cli.node import DEFAULT_CONFIG, _config_errors
from config.node import NodeConfig


def cmd_rotate(args: argparse.Namespace, node: NodeConfig) -> int:
    from bgpd.agent.control import DaemonNotRunning, query
    try:
        result = query(node.run_dir / "tortie.sock", "wireguard_rotate", timeout=30.0)
    except DaemonNotRunning as e:
        print(f"tortie: {e}", file=sys.stderr)
        return 3
    if "error" in result:
        print(f"tortie wireguard rotate: {result['error']}", file=sys.stderr)
        return 1
    print(f"new public key {result['public_key']}")
    if not result.get("published", True):
        print("no datastore: put this key in mesh.nodes[].public_key of every other node and reload them; "
              "until then they cannot reach this node's pods", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    wg = sub.add_parser("wireguard", help="WireGuard encryption between nodes").add_subparsers(
        dest="wireguard_command", required=True)
    p = wg.add_parser("rotate", help="replace this node's key pair; peers learn the new public key from the "
                                     "datastore")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"node configuration (default {DEFAULT_CONFIG})")
    p.set_defaults(func=lambda args: _config_errors(args, cmd_rotate))
