"""`tortie lab ...`: realize a containerlab topology with network namespaces, or with containers."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.load import ConfigError


def _lab(args: argparse.Namespace):
    from bgpd.lab.topology import load_lab
    return load_lab(args.file, args.name)


def _fail(msg: str) -> int:
    print(f"tortie lab: {msg}", file=sys.stderr)
    return 1


def _up(args: argparse.Namespace) -> int:
    from bgpd.lab import runner
    try:
        runner.up(_lab(args), args.timeout, args.engine)
    except (ConfigError, runner.LabError) as e:
        return _fail(str(e))
    return 0


def _down(args: argparse.Namespace) -> int:
    from bgpd.lab import runner
    from bgpd.lab.state import LabState
    try:
        lab = _lab(args)
    except ConfigError as e:
        # Still clean up what the state file recorded, if the file became unreadable since `up`.
        if not (args.name and LabState.load(args.name)):
            return _fail(str(e))
        lab = None
    problems = runner.down(lab.name if lab else args.name, lab, args.engine)
    return _fail("\n".join(problems)) if problems else 0


def _status(args: argparse.Namespace) -> int:
    from bgpd.lab import runner
    try:
        st = runner.status(_lab(args))
    except ConfigError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"lab {st['name']} ({st['state_dir']})")
        for name, n in st["nodes"].items():
            cmd = "-" if n["cmd_alive"] is None else ("running" if n["cmd_alive"] else "stopped")
            print(f"  {name:<12} netns {'present' if n['netns_present'] else 'absent':<8}"
                  f"keeper {'alive' if n['keeper_alive'] else 'dead':<6} cmd {cmd}")
            for p in n.get("peers", []):
                print(f"      peer {p.get('name') or '?'} {p.get('address')}: {p.get('state')}")
            if "bgp_error" in n:
                print(f"      bgp: {n['bgp_error']}")
    up = all(n["netns_present"] and n["keeper_alive"] and n["cmd_alive"] is not False for n in st["nodes"].values())
    return 0 if up else 3


def _exec(args: argparse.Namespace) -> int:
    from bgpd.lab import runner
    command = args.command
    if command[:1] != ["--"] and command[:1] and command[0].startswith("-") and "--" in command:
        # options between NODE and `--` land in the remainder: parse them here
        i = command.index("--")
        late = argparse.ArgumentParser(prog="tortie lab exec", add_help=False)
        late.add_argument("--name")
        late.parse_args(command[:i], namespace=args)
        command = command[i:]
    command = command[1:] if command[:1] == ["--"] else command
    if not command:
        return _fail("lab exec: no command given (tortie lab exec FILE NODE -- CMD...)")
    try:
        return runner.exec_in(_lab(args), args.node, command)
    except (ConfigError, runner.LabError) as e:
        return _fail(str(e))


def _gen(args: argparse.Namespace) -> int:
    from bgpd.lab import generate
    spec = generate.Spec(args.hosts, args.reflectors, args.broker, args.pods, args.name or "", args.reflector_impl)
    try:
        path = generate.write(spec, args.out)
    except generate.GenError as e:
        return _fail(f"lab gen: {e}")
    except OSError as e:
        return _fail(f"lab gen: {args.out}: {e.strerror}")
    if problem := generate.neighbour_problem(spec):
        print(f"tortie lab gen: warning: {problem}", file=sys.stderr)
    print(path)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", description="Realize a containerlab topology (.clab.yml) on this host with network "
                                   "namespaces, veth links and processes (no container engine needed), or with "
                                   "containers of the nodes' images (--engine docker).")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    lab_sub = p.add_subparsers(dest="lab_command", metavar="{gen,up,down,status,exec}")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        c = lab_sub.add_parser(name, help=help, description=help)
        c.add_argument("file", help="the topology file (containerlab .clab.yml)")
        c.add_argument("--name", help="lab name overriding the file's `name` (namespaces are clab-NAME-NODE)")
        c.set_defaults(func=func)
        return c

    c = lab_sub.add_parser("gen", help="write a topology of N hosts on one switch, and the files it binds",
                           description="Write DIR/NAME.clab.yml (N Tortie hosts on one switch: an iBGP full mesh, "
                                       "or clients of K route reflectors, BIRD 2 or FRR; optionally an MQTT broker as the "
                                       "datastore; P pods per host) and the node files it binds.")
    c.add_argument("--hosts", type=int, required=True, help="number of Tortie hosts")
    c.add_argument("--reflectors", type=int, default=0, help="route reflectors instead of a full mesh (default 0)")
    c.add_argument("--reflector-impl", default="bird", help="what runs the reflectors: bird (BIRD 2, the default) or frr")
    c.add_argument("--broker", action="store_true", help="an MQTT broker node as the datastore (blocks claimed there)")
    c.add_argument("--pods", type=int, default=1, help="pods per host (default 1)")
    c.add_argument("--name", help="the lab's name (default from the options, e.g. gen20-rr2)")
    c.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    c.set_defaults(func=_gen)
    c = command("up", _up, "create the lab and wait until every BGP session is up")
    c.add_argument("--engine", choices=("netns", "docker", "podman"), default="netns",
                   help="netns (default): namespaces and processes on this host; docker or podman: each node a "
                        "container of its image, as containerlab runs it (status, exec and down follow)")
    c.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each exec command, then for the BGP sessions (default 90)")
    c = command("down", _down, "stop every process of the lab and remove its namespaces, links and state")
    c.add_argument("--engine", choices=("netns", "docker", "podman"),
                   help="what ran the lab, when its state file is gone (default: as recorded, else netns)")
    c = command("status", _status, "show per node: namespace, keeper and cmd processes, BGP peers "
                                   "(exit 3 if something is not running)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c = command("exec", _exec, "run a command inside a node (stdin, stdout and exit code pass through)")
    c.add_argument("node")
    c.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
