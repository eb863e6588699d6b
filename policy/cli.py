"""`tortie policy ...` subcommands."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="network policy: check, compile, apply, show, flush")
    p.set_defaults(func=lambda args: p.print_help() or 2)
