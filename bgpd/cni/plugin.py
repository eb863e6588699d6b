"""`tortie-cni`: a CNI 1.1 plugin that wires pods as `tortie pod add` does.

The runtime calls it with CNI_COMMAND and friends in the environment and the network configuration
on stdin; results and errors go to stdout as the specification defines them. The plugin does its own
address management from the node's blocks (`ipam` is not delegated).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute, NetNS

from bgpd.dataplane.pods import GATEWAY, Pod, PodError, PodNotPoliced, PodStore, add_pod, del_pod
from config.load import ConfigError, load_model
from config.node import NodeConfig

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_CONFIG = "/etc/tortie/tortie.yaml"
# error codes of the specification
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENV, IO_FAILURE, DECODE_FAILURE = 1, 2, 3, 4, 5, 6
INVALID_CONFIG, TRY_AGAIN, NOT_AVAILABLE = 7, 11, 50


@dataclass
class CniError(Exception):
    code: int
    msg: str
    details: str = ""


def _env(name: str, required: bool = True) -> str:
    value = os.environ.get(name, "")
    if required and not value:
        raise CniError(INVALID_ENV, f"{name} is not set")
    return value


def _cni_args() -> dict[str, str]:
    out = {}
    for item in filter(None, os.environ.get("CNI_ARGS", "").split(";")):
        k, sep, v = item.partition("=")
        if not sep:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        out[k] = v
    return out


def _network_config(raw: str) -> dict[str, Any]:
    try:
        conf = json.loads(raw)
    except ValueError as e:
        raise CniError(DECODE_FAILURE, "network configuration is not JSON", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration is not a JSON object")
    version = conf.get("cniVersion")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported", ", ".join(SUPPORTED))
    for field in ("name", "type"):
        if not isinstance(conf.get(field), str) or not conf[field]:
            raise CniError(INVALID_CONFIG, f"network configuration: {field} is missing")
    if "ipam" in conf and conf["ipam"]:
        raise CniError(UNSUPPORTED_FIELD, "ipam: tortie-cni allocates addresses itself; remove the ipam section")
    return conf


def _node(conf: dict[str, Any]) -> NodeConfig:
    try:
        return load_model(conf.get("tortieConfig", DEFAULT_CONFIG), NodeConfig)
    except ConfigError as e:
        raise CniError(INVALID_CONFIG, "tortie node configuration is invalid", "; ".join(e.errors)) from None


def _pod_key() -> str:
    args = _cni_args()
    ns, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if not ns or not name:
        # not from Kubernetes: name the pod after its container
        return f"cni/{_env('CNI_CONTAINERID')[:40].lower()}"
    return f"{ns}/{name}"


def _result(version: str, pod: Pod) -> dict[str, Any]:
    with IPRoute() as host:
        host_mac = host.get_links(host.link_lookup(ifname=pod.host_interface)[0])[0].get("address")
    with NetNS(pod.netns) as ns:
        pod_mac = ns.get_links(ns.link_lookup(ifname=pod.ifname)[0])[0].get("address")
    ip = {"address": f"{pod.ip}/32", "gateway": GATEWAY, "interface": 1}
    if version in ("0.3.0", "0.3.1"):
        ip["version"] = "4"
    return {
        "cniVersion": version,
        "interfaces": [{"name": pod.host_interface, "mac": host_mac},
                       {"name": pod.ifname, "mac": pod_mac, "sandbox": pod.netns}],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        "dns": {},
    }


def cmd_add(conf: dict[str, Any]) -> dict[str, Any]:
    node = _node(conf)
    container, ifname, netns = _env("CNI_CONTAINERID"), _env("CNI_IFNAME"), _env("CNI_NETNS")
    existing = PodStore(node).by_container(container, ifname)
    if existing is not None:  # a retried ADD: the same answer again
        return _result(conf["cniVersion"], existing)
    try:
        pod = add_pod(node, _pod_key(), existing_netns=netns, container_id=container, ifname=ifname,
                      labels=_labels(conf))
    except PodNotPoliced as e:
        raise CniError(TRY_AGAIN, "the pod's network policy is not in force", str(e)) from None
    except PodError as e:
        raise CniError(IO_FAILURE, str(e)) from None
    return _result(conf["cniVersion"], pod)


def _labels(conf: dict[str, Any]) -> dict[str, str]:
    """The pod's labels, as the CNI conventions pass them: args.cni.labels = [{key, value}, ...]."""
    labels = conf.get("args", {}).get("cni", {}).get("labels", [])
    try:
        return {str(item["key"]): str(item["value"]) for item in labels}
    except (TypeError, KeyError):
        raise CniError(INVALID_CONFIG, "args.cni.labels: expected a list of {key, value}") from None


def cmd_del(conf: dict[str, Any]) -> None:
    del_pod(_node(conf), container=(_env("CNI_CONTAINERID"), _env("CNI_IFNAME")))


def cmd_check(conf: dict[str, Any]) -> None:
    node = _node(conf)
    pod = PodStore(node).by_container(_env("CNI_CONTAINERID"), _env("CNI_IFNAME"))
    if pod is None:
        raise CniError(UNKNOWN_CONTAINER, "no such attachment")
    try:
        with NetNS(pod.netns) as ns:
            idx = ns.link_lookup(ifname=pod.ifname)
            addrs = {a.get("address") for a in ns.get_addr(index=idx[0])} if idx else set()
        with IPRoute() as host:
            veth = host.link_lookup(ifname=pod.host_interface)
            oif = host.route("get", dst=pod.ip)[0].get("oif")
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot inspect the pod: {e}") from None
    if pod.ip not in addrs:
        raise CniError(IO_FAILURE, f"{pod.ifname} in {pod.netns} lacks {pod.ip}")
    if not veth or oif != veth[0]:
        raise CniError(IO_FAILURE, f"the host has no route to {pod.ip} via {pod.host_interface}")


def cmd_status(conf: dict[str, Any]) -> None:
    """Ready when the node daemon runs: without it no route to other nodes exists."""
    from bgpd.agent.control import DaemonNotRunning, query
    node = _node(conf)
    try:
        query(node.run_dir / "tortie.sock", "status", timeout=2)
    except DaemonNotRunning as e:
        raise CniError(NOT_AVAILABLE, "the tortie daemon is not running", str(e)) from None


def cmd_gc(conf: dict[str, Any]) -> None:
    """Removes every attachment of ours that the runtime no longer lists as valid."""
    node = _node(conf)
    valid = {(a.get("containerID"), a.get("ifname")) for a in conf.get("cni.dev/valid-attachments", [])}
    for pod in PodStore(node).all():
        if pod.container_id and (pod.container_id, pod.ifname) not in valid:
            del_pod(node, container=(pod.container_id, pod.ifname))


def run(command: str, stdin: str) -> dict[str, Any] | None:
    if command == "VERSION":
        version = "1.1.0"
        if stdin.strip():
            try:
                version = json.loads(stdin).get("cniVersion", version)
            except ValueError:
                pass
        return {"cniVersion": version, "supportedVersions": SUPPORTED}
    conf = _network_config(stdin)
    handlers = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}
    if command not in handlers:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of VERSION, {', '.join(handlers)}")
    return handlers[command](conf)


def main() -> int:
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    try:
        out = run(os.environ.get("CNI_COMMAND", ""), stdin)
    except CniError as e:
        version = "1.1.0"
        try:
            version = json.loads(stdin).get("cniVersion", version)
        except (ValueError, AttributeError):
            pass
        json.dump({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}, sys.stdout)
        return 1
    if out is not None:
        json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
