"""Running the kernel's firewall tools (nft, iptables-restore, ipset) in the current network namespace."""
from __future__ import annotations

import subprocess


class ApplyError(RuntimeError):
    """A tool rejected a change; the previous ruleset is still in force."""


class Interrupted(Exception):
    """The kernel's ruleset changed while it was being read: read it again later."""


def run(args: list[str], stdin: str | None = None, timeout: float = 300) -> str:
    try:
        p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ApplyError(f"{args[0]}: not installed") from None
    except subprocess.TimeoutExpired:
        raise ApplyError(f"{' '.join(args)}: timed out after {timeout} s") from None
    if p.returncode != 0:
        raise ApplyError(f"{' '.join(args)} failed: {p.stderr.strip()[:4000]}")
    return p.stdout
