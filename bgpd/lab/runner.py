"""Bringing a lab up, down, and reporting on it."""
from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from pyroute2 import IPRoute, netns

from bgpd.agent.views import PeerStatus
from bgpd.lab import container_nodes, in_node, mountpoints, processes
from bgpd.lab.bgp_wait import STATUS_COMMAND, StatusError, parse_status, peer_problems, wait_until_up
from bgpd.lab.state import LabState, NodeState
from bgpd.lab.topology import Lab, Node

# Private to each node, as a container's own filesystem: sockets, pods' `ip netns` files (and their
# /etc/netns/<pod>/resolv.conf), state.
NODE_TMPFS = ("/run", "/tmp", "/var/lib/tortie", "/etc/netns")
KEEPER_START_TIMEOUT = 10.0
STATUS_TIMEOUT = 30.0  # `tortie status` took 17 s in a 20-host lab on 2 loaded cores (load 22)
PARALLEL = 8  # nodes whose exec commands or status run at once: a 100-node lab is not 100 x one node's time
# IPv6 on in every node (an engine may turn it off in a container without an IPv6 network) and no duplicate
# address detection on the lab's links: an address, and each link's fe80:: address, is usable the moment it is
# added, so a daemon binds its IPv6 underlay address and neighbours resolve without waiting out DAD (~1 s each).
IPV6_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")


class LabError(Exception):
    """A lab could not be brought up or reached; the message says which node and why."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _each(nodes: list[Node], work, what: str) -> None:
    """`work(node)` for every node, PARALLEL at a time; progress on stderr for large labs. The first
    exception is raised once every started call has ended."""
    done, step = 0, max(1, len(nodes) // 10)
    with ThreadPoolExecutor(PARALLEL) as pool:
        for _ in pool.map(work, nodes):
            done += 1
            if len(nodes) > PARALLEL and (done % step == 0 or done == len(nodes)):
                _say(f"  {what}: {done}/{len(nodes)} nodes")


def log_tail(state: LabState, node: str, lines: int = 20) -> str:
    """The end of the node's log: its exec output, and for a container node its cmd's output first."""
    try:
        with open(state.log_path(node), errors="replace") as f:
            tail = "".join(deque(f, lines))
    except OSError:
        tail = ""
    if state.engine in container_nodes.ENGINES:
        tail = container_nodes.logs(state.engine, state.nodes[node].netns, lines) + tail
    return tail


def _netns_present(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def _under(path: PurePosixPath, dirs: tuple[str, ...]) -> bool:
    return any(path.is_relative_to(d) for d in dirs)


def _mount_targets(lab: Lab) -> dict[PurePosixPath, bool]:
    """What the nodes mount over on the host's filesystem: path -> is a directory."""
    targets = {PurePosixPath(d): True for d in NODE_TMPFS}
    targets.update({b.container: b.host.is_dir() for n in lab.nodes.values() for b in n.binds
                    if not _under(b.container, NODE_TMPFS)})
    return targets


def _software_binds() -> list[tuple[str, str, bool]]:
    """Tortie's own code and virtualenv, where a node's private tmpfs would hide them (a checkout in /tmp).

    The host's filesystem stands in for the node image: what runs in a node must still see them.
    """
    paths = {Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2]}
    hidden = [p for p in paths if any(p.is_relative_to(d) for d in NODE_TMPFS)]
    return [(str(p), str(p), True) for p in sorted(hidden)]


def _start_keeper(lab: Lab, node: Node, state: LabState) -> None:
    ns = state.nodes[node.name]
    spec = {"netns": f"/run/netns/{ns.netns}", "tmpfs": list(NODE_TMPFS),
            "binds": _software_binds() + [(str(b.host), str(b.container), b.read_only) for b in node.binds]}
    with open(state.log_path(node.name), "ab") as log:
        keeper = subprocess.Popen([sys.executable, "-m", "bgpd.lab.keeper", json.dumps(spec)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                  start_new_session=True, cwd="/", text=True)
    ns.keeper_pid = keeper.pid
    state.save()
    ready, _, _ = select.select([keeper.stdout], [], [], KEEPER_START_TIMEOUT)
    line = keeper.stdout.readline().strip() if ready else "no answer"
    keeper.stdout.close()
    if line != "ready":
        raise LabError(f"node {node.name}: cannot set up its namespaces: {line or 'keeper exited'}")
    ns.keeper_mnt = processes.ns_id(keeper.pid, "mnt")
    state.save()


def _add_link(a: tuple[str, str], b: tuple[str, str], lab: Lab) -> None:
    """A veth pair made inside node a's namespace with its peer placed straight into node b's."""
    with IPRoute(netns=lab.netns(a[0])) as ipr:
        ipr.link("add", ifname=a[1], kind="veth", peer={"ifname": b[1], "net_ns_fd": lab.netns(b[0])})
        ipr.link("set", index=ipr.link_lookup(ifname=a[1])[0], state="up")
    with IPRoute(netns=lab.netns(b[0])) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=b[1])[0], state="up")


def _loopback_up(name: str) -> None:
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _start_cmd(lab: Lab, node: Node, state: LabState) -> None:
    ns = state.nodes[node.name]
    with open(state.log_path(node.name), "ab") as log:
        proc = subprocess.Popen(in_node.shell(ns.keeper_pid, node.cmd), env=in_node.node_env(lab.name, node),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/")
    ns.cmd_pid = proc.pid
    state.save()


def _run(lab: Lab, state: LabState, node: Node, command: list[str], timeout: float | None,
         **kw) -> subprocess.CompletedProcess:
    """Runs `command` in the node and waits: nsenter into a namespace node, `ENGINE exec` into a container."""
    ns = state.nodes[node.name]
    if state.engine in container_nodes.ENGINES:
        argv = container_nodes.exec_argv(state.engine, ns.netns, command, stdin="stdin" not in kw)
        return subprocess.run(argv, cwd="/", text=True, timeout=timeout, **kw)
    return in_node.run(ns.keeper_pid, in_node.node_env(lab.name, node), command, timeout, **kw)


def _ipv6_ready(lab: Lab, node: Node, state: LabState, timeout: float) -> None:
    """IPV6_SYSCTLS in the node, before its links exist (they take the `default` values)."""
    r = _run(lab, state, node, ["sysctl", "-qw", *IPV6_SYSCTLS], timeout, stdin=subprocess.DEVNULL,
             capture_output=True)
    if r.returncode != 0:
        raise LabError(f"node {node.name}: cannot turn IPv6 on: {(r.stderr or r.stdout).strip()}")


def _run_exec(lab: Lab, node: Node, state: LabState, timeout: float) -> None:
    """The node's exec entries in order: with `sh -c` in a namespace node, split into words (as
    containerlab does) in a container."""
    for command in node.exec_:
        argv = shlex.split(command) if state.engine in container_nodes.ENGINES else ["sh", "-c", command]
        try:
            r = _run(lab, state, node, argv, timeout, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            raise LabError(f"node {node.name}: exec {command!r} did not finish within {timeout:g} s") from None
        with open(state.log_path(node.name), "a") as log:
            log.write(f"--- exec {command!r}: exit {r.returncode}\n{r.stdout}")
        if r.returncode != 0:
            raise LabError(f"node {node.name}: exec {command!r} exited {r.returncode}:\n{r.stdout.rstrip()}")


def _cmd_alive(ns: NodeState) -> bool:
    return processes.alive_in(ns.cmd_pid, ns.keeper_mnt)


def bgp_peers(lab: Lab, node: Node, state: LabState) -> list[PeerStatus]:
    """The node's BGP peers as `tortie status --json [--config FILE of its cmd]` reports them;
    StatusError if it cannot."""
    try:
        r = _run(lab, state, node, STATUS_COMMAND + node.tortie_config_args(), STATUS_TIMEOUT,
                 stdin=subprocess.DEVNULL, capture_output=True)
    except subprocess.TimeoutExpired:
        raise StatusError(f"`{' '.join(STATUS_COMMAND)}` did not answer within {STATUS_TIMEOUT:g} s") from None
    return parse_status(r.returncode, r.stdout, r.stderr)


def _wait_bgp(lab: Lab, state: LabState, timeout: float) -> int:
    """Waits until every peer of every tortie node is up; returns how many sessions that is."""
    nodes = [n for n in lab.nodes.values() if n.runs_tortie()]
    sessions, reported = 0, -1

    def check() -> dict[str, list[str]]:
        nonlocal sessions, reported
        problems, sessions = {}, 0
        for node in lab.nodes.values():
            if node.cmd and not _cmd_alive(state.nodes[node.name]):
                raise LabError(f"node {node.name}: its cmd {node.cmd!r} exited\n"
                               f"last lines of {state.log_path(node.name)}:\n{log_tail(state, node.name)}")

        def one(node: Node) -> tuple[list[str], int]:
            try:
                peers = bgp_peers(lab, node, state)
                return peer_problems(peers), len(peers)
            except StatusError as e:
                return [str(e)], 0

        with ThreadPoolExecutor(PARALLEL) as pool:
            for node, (probs, n) in zip(nodes, pool.map(one, nodes)):
                problems[node.name] = probs
                sessions += n
        ready = sum(not p for p in problems.values())
        if len(nodes) > PARALLEL and ready != reported:
            reported = ready
            _say(f"  BGP: {ready}/{len(nodes)} nodes with every session up")
        return problems

    if nodes:
        _say(f"lab {lab.name}: waiting up to {timeout:g} s for the BGP sessions of {', '.join(n.name for n in nodes)}")
    problems = wait_until_up(check, timeout)
    if problems:
        lines = [f"lab {lab.name}: BGP sessions not up after {timeout:g} s:"]
        for node, probs in problems.items():
            lines += [f"  node {node}: {p}" for p in probs]
        for node in problems:
            lines += [f"last lines of {state.log_path(node)}:", log_tail(state, node).rstrip()]
        lines.append(f"the lab is left up for debugging; `tortie lab down {lab.path} --name {lab.name}` removes it")
        raise LabError("\n".join(lines))
    return sessions


def _start_netns_nodes(lab: Lab, state: LabState) -> None:
    with mountpoints.registry() as created:  # no `lab down` removes a mountpoint until the keepers use it
        mountpoints.make(_mount_targets(lab), created)
        for node in lab.nodes.values():
            state.nodes[node.name] = NodeState(netns=lab.netns(node.name))
            state.save()
            netns.create(lab.netns(node.name))
            _loopback_up(lab.netns(node.name))
            _start_keeper(lab, node, state)


def _start_containers(lab: Lab, state: LabState) -> None:
    """Each node a container (its cmd already running); its network namespace attached under /run/netns."""
    for node in lab.nodes.values():
        ns = state.nodes[node.name] = NodeState(netns=lab.netns(node.name))
        state.save()
        try:
            pid = container_nodes.start(state.engine, lab, node)
        except container_nodes.EngineError as e:
            raise LabError(f"node {node.name}: {e}") from None
        netns.attach(ns.netns, pid)
        ns.keeper_pid, ns.keeper_mnt = pid, processes.ns_id(pid, "mnt")
        ns.cmd_pid = pid if node.cmd else None
        state.save()
        _loopback_up(ns.netns)


def up(lab: Lab, timeout: float, engine: str = "netns") -> None:
    """Realizes the lab with namespaces and processes, or with containers of `engine` (docker, podman);
    raises LabError (leaving what was made, for `down`) when a step fails."""
    if LabState.load(lab.name) or any(_netns_present(lab.netns(n)) for n in lab.nodes):
        raise LabError(f"lab {lab.name} exists already: `tortie lab down {lab.path} --name {lab.name}` first")
    for node in lab.nodes.values():
        for b in node.binds:
            if not b.host.is_dir() and not b.host.is_file():
                raise LabError(f"{lab.path}: topology.nodes.{node.name}.binds: {b.host} does not exist")
        if engine != "netns" and not node.image:
            raise LabError(f"{lab.path}: topology.nodes.{node.name}.image: a container node needs an image")
    if engine != "netns":
        if why := container_nodes.available(engine):
            raise LabError(f"engine {engine} cannot run the nodes: {why}")
        for image in sorted({n.image for n in lab.nodes.values()}):
            if why := container_nodes.missing_image(engine, image):
                raise LabError(f"{lab.path}: {why}")
    state = LabState(name=lab.name, topology=str(lab.path), engine=engine)
    state.save()
    if engine == "netns":
        _start_netns_nodes(lab, state)
    else:
        _start_containers(lab, state)
    _each(list(lab.nodes.values()), lambda node: _ipv6_ready(lab, node, state, timeout), "IPv6")
    for a, b in lab.links:
        _add_link(a, b, lab)
    for node in lab.nodes.values():
        if node.cmd and engine == "netns":
            _start_cmd(lab, node, state)
    _each(list(lab.nodes.values()), lambda node: _run_exec(lab, node, state, timeout), "exec")
    sessions = _wait_bgp(lab, state, timeout)
    _say(f"lab {lab.name} is up: {len(lab.nodes)} nodes, {len(lab.links)} links"
         + (f", {sessions} BGP peerings up" if sessions else ""))


def _pod_netns_ids(keeper_pid: int) -> set[str]:
    """Network namespaces a node made for its pods with `ip netns add` (in the node's private /run)."""
    root = Path(f"/proc/{keeper_pid}/root/run/netns")
    try:
        return {i for f in root.iterdir() if (i := processes.netns_file_id(f))}
    except OSError:
        return set()


def down(name: str, lab: Lab | None, engine: str | None = None) -> list[str]:
    """Stops every process (or container) of the lab, removes its namespaces, state and mountpoint dirs.

    Works from the state file, the topology, or both; `engine` is what ran it when no state says so.
    Returns problems (empty when all went)."""
    state = LabState.load(name)
    namespaces = {ns.netns for ns in state.nodes.values()} if state else set()
    if lab:
        namespaces |= {lab.netns(n) for n in lab.nodes}
    engine = state.engine if state else engine or "netns"
    if engine in container_nodes.ENGINES:
        return _remove_namespaces(name, namespaces, container_nodes.remove(engine, name, namespaces))
    keepers = {ns.keeper_pid: ns.keeper_mnt for ns in (state.nodes.values() if state else [])
               if processes.alive_in(ns.keeper_pid, ns.keeper_mnt)}
    net_ids = {i for n in namespaces if (i := processes.netns_file_id(f"/run/netns/{n}"))}
    for pid in keepers:
        net_ids |= _pod_netns_ids(pid)
    survivors: set[int] = set()
    for _ in range(3):  # a dying process may start another
        pids = processes.find(set(keepers.values()), net_ids, f"TORTIE_LAB_NAME={name}") - set(keepers)
        if not pids:
            break
        survivors = processes.stop(pids)
    survivors |= processes.stop(set(keepers))
    return _remove_namespaces(name, namespaces, [f"process {pid} survived SIGKILL" for pid in sorted(survivors)])


def _remove_namespaces(name: str, namespaces: set[str], problems: list[str]) -> list[str]:
    """The nodes' namespaces (the veths go with them), unused mountpoints, and the state if all went."""
    for n in sorted(namespaces):
        if _netns_present(n):
            try:
                netns.remove(n)
            except OSError as e:
                problems.append(f"cannot remove network namespace {n}: {e}")
    with mountpoints.registry() as created:
        mountpoints.remove_unused(created)
    if not problems:
        shutil.rmtree(LabState.dir(name), ignore_errors=True)
    return problems


def status(lab: Lab) -> dict:
    """Per node: namespace present, keeper alive, cmd alive, and for tortie nodes the BGP peers."""
    state = LabState.load(lab.name)
    out: dict = {"name": lab.name, "state_dir": str(LabState.dir(lab.name)), "nodes": {}}
    for node in lab.nodes.values():
        ns = state.nodes.get(node.name) if state else None
        keeper = bool(ns and processes.alive_in(ns.keeper_pid, ns.keeper_mnt))
        entry: dict = {"netns": lab.netns(node.name), "netns_present": _netns_present(lab.netns(node.name)),
                       "keeper_alive": keeper, "cmd": node.cmd,
                       "cmd_alive": bool(ns and node.cmd and _cmd_alive(ns)) if node.cmd else None}
        if node.runs_tortie() and keeper:
            try:
                entry["peers"] = [asdict(p) for p in bgp_peers(lab, node, state)]
            except StatusError as e:
                entry["bgp_error"] = str(e)
        out["nodes"][node.name] = entry
    return out


def exec_in(lab: Lab, node: str, command: list[str]) -> int:
    """Runs `command` in the node with stdin, stdout and stderr passed through; returns its exit code."""
    if node not in lab.nodes:
        raise LabError(f"lab {lab.name} has no node {node!r} (nodes: {', '.join(lab.nodes)})")
    state = LabState.load(lab.name)
    ns = state.nodes.get(node) if state else None
    if not ns or not processes.alive_in(ns.keeper_pid, ns.keeper_mnt):
        raise LabError(f"node {node} of lab {lab.name} is not running")
    return _run(lab, state, lab.nodes[node], command, None).returncode
