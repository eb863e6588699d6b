"""The `tortie` command line."""
from __future__ import annotations

import argparse
import sys

from bgpd import __version__


def build_parser() -> argparse.ArgumentParser:
    from bgpd.cli import cluster as cli_cluster, lab as cli_lab, node as cli_node
    from policy import cli as policy_cli

    parser = argparse.ArgumentParser(prog="tortie", description="Tortie pod networking")
    parser.add_argument("--version", action="version", version=f"tortie {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_node.add_parsers(sub)
    cli_cluster.add_parsers(sub)
    cli_lab.add_parser(sub)
    policy_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
