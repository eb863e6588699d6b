"""`tortie run`, `tortie config check`, `tortie status`, `tortie pod ...`."""
from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pass
