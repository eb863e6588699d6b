"""`tortie-cni`: a CNI 1.1 plugin that wires pods as `tortie pod add` does.

The runtime calls it with CNI_COMMAND and friends in the environment and the network configuration
on stdin; results and errors go to stdout as the specification defines them. Whatever happens, the
answer is a result or a CNI error object (cniVersion, code, msg, details) with a non-zero exit, never a
traceback. The plugin does its own address management from the node's blocks (`ipam` is not delegated).

A container runtime starts the plugin for every pod, so it imports only what the command uses: VERSION
needs nothing beyond the standard library, the others pydantic for the node configuration; ADD and DEL
wire and inspect with hand-packed rtnetlink (bgpd/dataplane/netlink_links.py), no pyroute2.
"""
from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
LATEST = SUPPORTED[-1]
DEFAULT_CONFIG = "/etc/tortie/tortie.yaml"
MAX_STDIN = 1 << 20  # a network configuration is a few hundred bytes; GC's attachment list can be long
# error codes of the specification, then ours (100 and up)
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENV, IO_FAILURE, DECODE_FAILURE = 1, 2, 3, 4, 5, 6
INVALID_CONFIG, TRY_AGAIN, NOT_AVAILABLE = 7, 11, 50
UNEXPECTED = 100
# the specification's container ID: "alphanumeric, plus underscore, dot and hyphen"
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,1023}$")
IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")  # within what the kernel accepts as an interface name


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _env(name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise CniError(INVALID_ENV, f"{name} is not set")
    if pattern is not None and (not pattern.match(value) or value in (".", "..")):
        raise CniError(INVALID_ENV, f"{name} is not valid", f"{value[:80]!r} does not match {pattern.pattern}")
    return value


def _container() -> tuple[str, str]:
    return _env("CNI_CONTAINERID", CONTAINER_ID), _env("CNI_IFNAME", IFNAME)


def _cni_args() -> dict[str, str]:
    out = {}
    for item in filter(None, os.environ.get("CNI_ARGS", "").split(";")):
        k, sep, v = item.partition("=")
        if not sep:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {item[:80]!r} is not KEY=VALUE")
        out[k] = v
    return out


def _requested_version(conf: object) -> str:
    """The cniVersion the caller asked for if we speak it, else the latest (for answers about bad input)."""
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    return version if version in SUPPORTED else LATEST


def _network_config(raw: bytes) -> dict:
    from config.load import ConfigError, parse_json

    try:
        conf = parse_json(raw, "network configuration", max_bytes=MAX_STDIN)
    except ConfigError as e:
        raise CniError(DECODE_FAILURE, "network configuration is not valid JSON", "; ".join(e.errors)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, f"network configuration is a JSON {type(conf).__name__}, not an object")
    version = conf.get("cniVersion")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {str(version)[:20]!r} is not supported",
                       ", ".join(SUPPORTED))
    for field in ("name", "type"):
        if not isinstance(conf.get(field), str) or not conf[field]:
            raise CniError(INVALID_CONFIG, f"network configuration: {field} is missing or not a string")
    if not isinstance(conf.get("tortieConfig", DEFAULT_CONFIG), str):
        raise CniError(INVALID_CONFIG, "network configuration: tortieConfig is not a string (a file path)")
    if conf.get("ipam"):
        raise CniError(UNSUPPORTED_FIELD, "ipam: tortie-cni allocates addresses itself; remove the ipam section")
    return conf


def _node(conf: dict):
    from config.load import ConfigError, load_model
    from config.node import NodeConfig

    try:
        return load_model(conf.get("tortieConfig", DEFAULT_CONFIG), NodeConfig)
    except ConfigError as e:
        raise CniError(INVALID_CONFIG, "tortie node configuration is invalid", "; ".join(e.errors)) from None


@contextmanager
def _pods(node):
    """The node's pod store; a state file that does not parse or a refused kernel change is a clear I/O failure."""
    from bgpd.dataplane.pods import PodError, PodNotPoliced, PodStore

    try:
        yield PodStore(node)
    except PodNotPoliced as e:
        raise CniError(TRY_AGAIN, "the pod's network policy is not in force", str(e)) from None
    except PodError as e:
        raise CniError(IO_FAILURE, str(e)) from None
    except OSError as e:  # reading the pod's links back, or its state files
        raise CniError(IO_FAILURE, "a kernel or file operation failed", f"{type(e).__name__}: {e}") from None
    except (ValueError, TypeError, KeyError) as e:  # json.JSONDecodeError is a ValueError
        raise CniError(IO_FAILURE, f"the node's state under {node.state_dir} is unreadable",
                       f"{type(e).__name__}: {e}") from None


def _pod_key(container: str) -> str:
    from bgpd.dataplane.pods import PodError, parse_key

    args = _cni_args()
    ns, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if ns or name:
        key, source = f"{ns}/{name}", "CNI_ARGS K8S_POD_NAMESPACE/K8S_POD_NAME"
    else:  # not from Kubernetes: name the pod after its container
        key, source = "cni/" + re.sub(r"[^a-z0-9-]", "-", container[:40].lower()).strip("-"), "CNI_CONTAINERID"
    try:
        parse_key(key)
    except PodError as e:
        raise CniError(INVALID_ENV, f"{source} cannot name a pod", str(e)[:300]) from None
    return key


def _labels(conf: dict) -> dict[str, str]:
    """The pod's labels, as the CNI conventions pass them: args.cni.labels = [{key, value}, ...]."""
    args = conf.get("args", {})
    cni = args.get("cni", {}) if isinstance(args, dict) else None
    labels = cni.get("labels", []) if isinstance(cni, dict) else None
    if not isinstance(labels, list) or not all(
            isinstance(i, dict) and isinstance(i.get("key"), str) and isinstance(i.get("value"), str) for i in labels):
        raise CniError(INVALID_CONFIG, "args.cni.labels: expected a list of {key, value} strings")
    return {i["key"]: i["value"] for i in labels}


def _result(version: str, pod, node) -> dict:
    """The ADD result: an address of each IP version (IPv4 first), its gateway, and a default route per version."""
    from bgpd.dataplane.pods import DEFAULT_ROUTES, GATEWAYS, pod_links
    from bgpd.dns.client import pod_dns

    host_link, pod_link = pod_links(pod)
    ips, routes = [], []
    for ip in pod.addresses():
        gateway = str(GATEWAYS[ip.version])
        ips.append({"address": f"{ip}/{ip.max_prefixlen}", "gateway": gateway, "interface": 1,
                    **({"version": str(ip.version)} if version in ("0.3.0", "0.3.1") else {})})
        routes.append({"dst": str(DEFAULT_ROUTES[ip.version]), "gw": gateway})
    return {
        "cniVersion": version,
        "interfaces": [{"name": pod.host_interface, "mac": host_link.mac},
                       {"name": pod.ifname, "mac": pod_link.mac, "sandbox": pod.netns,
                        **({"mtu": pod_link.mtu} if version == "1.1.0" else {})}],  # the field came with CNI 1.1
        "ips": ips,
        "routes": routes,
        "dns": pod_dns(node, pod.namespace, pod.addresses()),  # the node's DNS server (docs/dns.md), if it runs one
    }


def cmd_add(conf: dict) -> dict:
    container, ifname = _container()
    netns = _env("CNI_NETNS")
    key, labels = _pod_key(container), _labels(conf)
    node = _node(conf)
    from bgpd.dataplane.pods import add_pod
    with _pods(node) as store:
        existing = store.by_container(container, ifname)
        if existing is not None:  # a retried ADD: the same answer again
            return _result(conf["cniVersion"], existing, node)
        pod = add_pod(node, key, existing_netns=netns, container_id=container, ifname=ifname, labels=labels)
    return _result(conf["cniVersion"], pod, node)


def cmd_del(conf: dict) -> None:
    container = _container()
    node = _node(conf)
    from bgpd.dataplane.pods import del_pod
    with _pods(node):
        del_pod(node, container=container)


def cmd_check(conf: dict) -> None:
    container = _container()
    node = _node(conf)
    with _pods(node) as store:
        pod = store.by_container(*container)
    if pod is None:
        raise CniError(UNKNOWN_CONTAINER, "no such attachment")
    from bgpd.dataplane.pods import PodError, check_pod
    try:
        check_pod(pod)
    except PodError as e:
        raise CniError(IO_FAILURE, str(e)) from None
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot inspect the pod: {e.strerror or e}") from None


def cmd_status(conf: dict) -> None:
    """Ready when the node daemon runs: without it no route to other nodes exists."""
    node = _node(conf)
    from bgpd.agent.control import DaemonNotRunning, query
    try:
        query(node.run_dir / "tortie.sock", "status", timeout=2)
    except DaemonNotRunning as e:
        raise CniError(NOT_AVAILABLE, "the tortie daemon is not running", str(e)) from None


def cmd_gc(conf: dict) -> None:
    """Removes every attachment of ours that the runtime no longer lists as valid."""
    attachments = conf.get("cni.dev/valid-attachments", [])
    if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments: expected a list of {containerID, ifname}")
    valid = {(a.get("containerID"), a.get("ifname")) for a in attachments}
    node = _node(conf)
    from bgpd.dataplane.pods import del_pod
    with _pods(node) as store:
        for pod in store.all():
            if pod.container_id and (pod.container_id, pod.ifname) not in valid:
                del_pod(node, container=(pod.container_id, pod.ifname))


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def run(command: str, stdin: bytes) -> dict | None:
    if command == "VERSION":  # stdin may hold {"cniVersion": ...}; nothing else matters here
        try:
            requested = json.loads(stdin) if len(stdin) < MAX_STDIN else None
        except (ValueError, RecursionError):
            requested = None
        return {"cniVersion": _requested_version(requested), "supportedVersions": SUPPORTED}
    if command not in HANDLERS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command[:20]!r} is not one of VERSION, {', '.join(HANDLERS)}")
    return HANDLERS[command](_network_config(stdin))


def _read_stdin() -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read(MAX_STDIN + 1)


def main() -> int:
    stdin = b""
    try:
        stdin = _read_stdin()
        out = run(os.environ.get("CNI_COMMAND", ""), stdin)
    except CniError as e:
        error = e
    except Exception as e:  # a bug or an unforeseen failure still gets a CNI answer, not a traceback
        error = CniError(UNEXPECTED, "tortie-cni failed unexpectedly", f"{type(e).__name__}: {str(e)[:500]}")
    else:
        if out is not None:
            json.dump(out, sys.stdout)
        return 0
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        conf = None
    json.dump({"cniVersion": _requested_version(conf), "code": error.code, "msg": error.msg,
               "details": error.details}, sys.stdout)
    return 1


if __name__ == "__main__":
    sys.exit(main())
