"""The `tortie` command line.

Every call starts a Python process, so the parser is built without importing the implementations:
only the module of the command given is imported (it adds its real subparsers); the others appear
in the command list by name and help text alone.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# "module:function that adds the subparsers" -> its commands and their help, as `tortie --help` lists them
COMMANDS = {
    "bgpd.cli.node:add_parsers": {"run": "run the node daemon", "config": "configuration tools",
                      "status": "BGP sessions of the running daemon", "routes": "the RIB and what is in the kernel",
                      "pod": "local pods"},
    "bgpd.cli.cluster:add_parsers": {"ipam": "address management", "node": "cluster nodes"},
    "bgpd.cli.resource_commands:add_parsers": {"apply": "create or update cluster resources from YAML files",
                                               "get": "show cluster resources", "delete": "delete cluster resources"},
    "bgpd.cli.lab:add_parser": {"lab": "run a containerlab topology with network namespaces"},
    "bgpd.cli.wireguard:add_parser": {"wireguard": "WireGuard encryption between nodes: rotate the key"},
    "policy.cli:add_parser": {"policy": "network policy: check, compile, apply, show, flush"},
}


class _Version(argparse.Action):
    """Looks the version up only when asked: the package metadata costs more than the rest of the parser."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from bgpd import __version__
        print(f"tortie {__version__}")
        parser.exit()


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tortie", description="Tortie pod networking")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level has no options with values
    for entry, commands in COMMANDS.items():
        if command in commands:
            module, function = entry.split(":")
            getattr(importlib.import_module(module), function)(sub)
        else:
            for name, text in commands.items():
                sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
