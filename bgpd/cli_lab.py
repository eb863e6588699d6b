"""`tortie lab ...`: realize a containerlab topology with network namespaces."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="run a containerlab topology with network namespaces")
    p.set_defaults(func=lambda args: p.print_help() or 2)
