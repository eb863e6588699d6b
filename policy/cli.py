"""`tortie policy ...` subcommands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config.load import ConfigError
from policy import render_iptables, render_nft
from policy.applier import DEFAULT_STATE_DIR, PolicyApplier
from policy.binding import compile_ruleset
from policy.compiler import CompileError
from policy.ir import Ruleset
from policy.kernel import ApplyError
from policy.load import load_endpoints, load_policies


def _compile(args: argparse.Namespace) -> Ruleset:
    return compile_ruleset(load_policies(args.files), load_endpoints(args.endpoints))


def _errors(e: Exception, status: int = 1) -> int:
    lines = e.errors if isinstance(e, ConfigError) else [str(e)]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return status


BAD_INPUT = 2  # the exit status of check and compile for invalid files, as `tortie config check`


def _check(args: argparse.Namespace) -> int:
    try:
        policies = load_policies(args.files)
        if args.endpoints:
            compile_ruleset(policies, load_endpoints(args.endpoints))
    except (ConfigError, CompileError) as e:
        return _errors(e, BAD_INPUT)
    print(f"ok: {len(policies)} policies")
    return 0


def render_text(rs: Ruleset, backend: str) -> str:
    if backend == "nft":
        return render_nft.render(rs)
    parts = ["# ipset restore", render_iptables.ipset_script(rs.sets.values(), "a")]
    for fam in (4, 6):
        parts += [f"# {'ip6tables' if fam == 6 else 'iptables'}-restore --noflush",
                  render_iptables.restore_script(rs, fam, "a")]
    return "\n".join(parts)


def _compile_cmd(args: argparse.Namespace) -> int:
    try:
        rs = _compile(args)
    except (ConfigError, CompileError) as e:
        return _errors(e, BAD_INPUT)
    sys.stdout.write(render_text(rs, args.backend))
    return 0


def _applier(args: argparse.Namespace) -> PolicyApplier:
    return PolicyApplier(getattr(args, "backend", "nft"), Path(args.state_dir), args.iptables_variant)


def _apply(args: argparse.Namespace) -> int:
    try:
        rs = _compile(args)
    except (ConfigError, CompileError) as e:
        print("error: nothing applied", file=sys.stderr)
        return _errors(e)
    try:
        mode = _applier(args).apply(rs, full=args.full)
    except ApplyError as e:
        print("error: apply failed; the previous ruleset is still enforced", file=sys.stderr)
        return _errors(e)
    print(f"applied ({mode}): {len(rs.policy_chains)} policy chains, {len(rs.endpoint_chains)} endpoint chains, "
          f"{len(rs.sets)} sets")
    return 0


def _flush(args: argparse.Namespace) -> int:
    try:
        _applier(args).flush()
    except ApplyError as e:
        return _errors(e)
    return 0


def _show(args: argparse.Namespace) -> int:
    applier = _applier(args)
    try:
        counters = applier.counters()
    except ApplyError as e:
        return _errors(e)
    if args.prometheus:
        from prometheus_client import CollectorRegistry, generate_latest

        from policy.metrics import RuleCounterCollector

        registry = CollectorRegistry()
        registry.register(RuleCounterCollector(lambda: counters))
        sys.stdout.write(generate_latest(registry).decode())
        return 0
    cur = applier.current()
    if cur is None:
        print("no Tortie policy applied in this network namespace")
        return 0
    print(f"backend: {cur[0]}")
    width = max([len(c.policy) for c in counters] + [6])
    print(f"{'POLICY':<{width}}  {'DIRECTION':<9}  {'RULE':<12}  {'ACTION':<6}  {'PACKETS':>10}  {'BYTES':>12}")
    for c in counters:
        print(f"{c.policy:<{width}}  {c.direction:<9}  {c.rule:<12}  {c.action:<6}  {c.packets:>10}  {c.bytes:>12}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="network policy: check, compile, apply, show, flush")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    psub = p.add_subparsers(dest="policy_command")

    def common(q: argparse.ArgumentParser, backend: bool = True) -> None:
        if backend:
            q.add_argument("--backend", choices=["nft", "iptables"], default="nft")
        q.add_argument("--iptables-variant", choices=["legacy", "nft"], default="legacy",
                       help="which iptables the iptables backend drives (default: legacy)")
        q.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                       help="where the last applied ruleset is remembered (env TORTIE_POLICY_STATE_DIR)")

    q = psub.add_parser("check", help="validate policy files (and compile them against --endpoints if given)")
    q.add_argument("--endpoints", help="endpoints YAML file")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.set_defaults(func=_check)

    q = psub.add_parser("compile", help="print the ruleset for the given policies and endpoints")
    q.add_argument("--endpoints", required=True, help="endpoints YAML file")
    q.add_argument("--backend", choices=["nft", "iptables"], default="nft")
    q.add_argument("files", nargs="*", metavar="FILE")
    q.set_defaults(func=_compile_cmd)

    q = psub.add_parser("apply", help="enforce exactly these policies in the current network namespace")
    q.add_argument("--endpoints", required=True, help="endpoints YAML file")
    q.add_argument("--full", action="store_true", help="replace the whole ruleset even if a small change would do")
    common(q)
    q.add_argument("files", nargs="*", metavar="FILE")
    q.set_defaults(func=_apply)

    q = psub.add_parser("flush", help="remove every Tortie policy rule from the current network namespace")
    common(q, backend=False)
    q.set_defaults(func=_flush)

    q = psub.add_parser("show", help="show the applied policies' per-rule packet and byte counters")
    q.add_argument("--prometheus", action="store_true", help="print Prometheus text exposition format")
    common(q, backend=False)
    q.set_defaults(func=_show)
