"""Lab nodes as containers of a container engine (docker or podman), started as containerlab starts them.

Each node is a container `clab-NAME-NODE` of the node's `image`: no network (`--network none`), the
node's `binds` as volumes, its `env`, its `cmd` split into words as the container's command, its
`exec` entries run split into words with `ENGINE exec`. The container's network namespace is
attached as /run/netns/clab-NAME-NODE, as containerlab does, so links and status work the same as
for namespace nodes. Containers get the capabilities a node needs (NET_ADMIN, NET_RAW, SYS_ADMIN)
rather than `--privileged`, which hosts that withhold a capability refuse; with SYS_ADMIN the runner
then makes the node's /proc/sys/net writable (a rw bind of it over itself), which pods need
(proxy_arp, ip_forward) and which stays the container's own network namespace's.
"""
from __future__ import annotations

import json
import shlex
import subprocess

from bgpd.lab.topology import Lab, Node

ENGINES = ("docker", "podman")
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "SYS_ADMIN")
LABEL = "tortie.lab"
WRITABLE_SYS_NET = "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net"
# `run` and `rm` copy or delete a whole filesystem with the vfs storage driver: minutes on a loaded host.
ENGINE_TIMEOUT = 600.0


class EngineError(Exception):
    """The container engine refused or failed; the message has its own words."""


def _engine(engine: str, *args: str, timeout: float = ENGINE_TIMEOUT) -> str:
    try:
        r = subprocess.run([engine, *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise EngineError(f"{engine} is not installed (scripts/build-image.sh installs docker.io)") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"`{engine} {args[0]}` did not answer within {timeout:g} s") from None
    if r.returncode != 0:
        raise EngineError(f"`{engine} {' '.join(args[:2])} ...`: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def available(engine: str) -> str | None:
    """None when `engine` answers, else why not."""
    try:
        _engine(engine, "info", "--format", "{{.ID}}", timeout=120)
    except EngineError as e:
        return str(e)
    return None


def missing_image(engine: str, image: str) -> str | None:
    """None when the engine has `image`, else why not (never pulls: `lab up` must not wait on a registry)."""
    r = subprocess.run([engine, "image", "inspect", image], capture_output=True, text=True, timeout=ENGINE_TIMEOUT,
                       stdin=subprocess.DEVNULL)
    if r.returncode == 0:
        return None
    hint = " (scripts/build-image.sh builds it)" if image.startswith("tortie:") else ""
    return f"{engine} has no image {image}{hint}"


def run_args(lab: Lab, node: Node) -> list[str]:
    """`ENGINE run` arguments for a node, as containerlab creates its container (pure)."""
    if not node.image:
        raise ValueError(f"{lab.path}: topology.nodes.{node.name}.image: a container node needs an image")
    args = ["run", "--detach", "--name", lab.netns(node.name), "--hostname", node.name, "--network", "none",
            "--label", f"{LABEL}={lab.name}", "--label", f"tortie.lab.node={node.name}"]
    for cap in CAPABILITIES:
        args += ["--cap-add", cap]
    for b in node.binds:
        args += ["--volume", f"{b.host}:{b.container}" + (":ro" if b.read_only else "")]
    for k, v in {**node.env, "TORTIE_LAB": "1", "TORTIE_LAB_NAME": lab.name}.items():
        args += ["--env", f"{k}={v}"]
    return args + [node.image, *shlex.split(node.cmd or "")]


def exec_argv(engine: str, container: str, command: list[str], stdin: bool = False) -> list[str]:
    return [engine, "exec", *(["--interactive"] if stdin else []), container, *command]


def start(engine: str, lab: Lab, node: Node) -> int:
    """Starts the node's container with a writable /proc/sys/net; returns its init PID."""
    name = lab.netns(node.name)
    _engine(engine, *run_args(lab, node))
    _engine(engine, "exec", name, "sh", "-c", WRITABLE_SYS_NET)
    return pid(engine, name)


def pid(engine: str, container: str) -> int:
    info = json.loads(_engine(engine, "inspect", "--format", "{{json .State}}", container))
    if not info.get("Running"):
        raise EngineError(f"container {container} is not running (exit {info.get('ExitCode')})")
    return int(info["Pid"])


def logs(engine: str, container: str, lines: int) -> str:
    r = subprocess.run([engine, "logs", "--tail", str(lines), container], capture_output=True, text=True,
                       timeout=ENGINE_TIMEOUT, stdin=subprocess.DEVNULL)
    return r.stdout + r.stderr


def remove(engine: str, lab_name: str, containers: set[str]) -> list[str]:
    """Removes the lab's containers (those named and those labelled with it); returns problems."""
    try:
        labelled = _engine(engine, "ps", "--all", "--format", "{{.Names}}", "--filter", f"label={LABEL}={lab_name}")
    except EngineError as e:
        return [str(e)]
    present = {c for c in containers if subprocess.run(
        [engine, "container", "inspect", c], capture_output=True, timeout=ENGINE_TIMEOUT).returncode == 0}
    if not (targets := sorted(set(labelled.split()) | present)):
        return []
    try:
        _engine(engine, "rm", "--force", *targets)
    except EngineError as e:
        return [str(e)]
    return []
