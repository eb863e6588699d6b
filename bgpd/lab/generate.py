"""`tortie lab gen`: a containerlab topology of N Tortie hosts on one switch, and the files it binds.

Pure rendering (`render` returns path -> text) apart from `write`. The hosts sit on one L2 underlay
(a Linux bridge node `sw`); they peer in a static iBGP full mesh, or, with reflectors, only with K route
reflectors, BIRD 2 or FRR (every host a client of every reflector); with a broker, a mosquitto node holds the
datastore: the hosts claim their blocks there (and, without reflectors, learn the mesh from it).
The same file runs under `tortie lab up` and `containerlab deploy` (image tortie:dev).
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
UNDERLAY = IPv4Network("10.100.0.0/16")
POOL = IPv4Network("10.244.0.0/16")
BLOCK = 26
ASN = 64512
MAX_HOSTS = 1000  # the pool's /26 blocks (1,024) and the underlay's host numbers both fit
MAX_REFLECTORS = 8
MAX_PODS = 60  # a /26 block holds 64 addresses
HOLD_TIME = 9
# Seconds a block claim waits for competing ones (claim_settle): every host claims at once through one broker on
# a shared machine; at load 40-54, 1 s let three hosts of five claim the same block (each saw no rival in time).
CLAIM_SETTLE = 5.0
REFLECTOR_IMPLS = ("bird", "frr")


class GenError(ValueError):
    """Arguments the generator refuses, with the reason."""


@dataclass(frozen=True)
class Spec:
    hosts: int
    reflectors: int = 0
    broker: bool = False
    pods: int = 1
    name: str = ""
    reflector_impl: str = "bird"

    def check(self) -> None:
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise GenError(f"--hosts: {self.hosts}: from 1 to {MAX_HOSTS}")
        if not 0 <= self.reflectors <= MAX_REFLECTORS:
            raise GenError(f"--reflectors: {self.reflectors}: from 0 to {MAX_REFLECTORS}")
        if self.reflector_impl not in REFLECTOR_IMPLS:
            raise GenError(f"--reflector-impl: {self.reflector_impl}: one of {', '.join(REFLECTOR_IMPLS)}")
        if not 0 <= self.pods <= MAX_PODS:
            raise GenError(f"--pods: {self.pods}: from 0 to {MAX_PODS} (one /{BLOCK} block per host)")


def host_name(i: int) -> str:
    return f"h{i}"


def host_address(i: int) -> IPv4Address:
    """Host i (from 1) at 10.100.0.0 + i; 10.100.255.0/24 is left to reflectors and the broker."""
    return UNDERLAY.network_address + i


def reflector_address(k: int) -> IPv4Address:
    return UNDERLAY.network_address + (255 << 8) + k


BROKER_ADDRESS = UNDERLAY.network_address + (255 << 8) + 250


def host_block(i: int) -> IPv4Network:
    return IPv4Network((int(POOL.network_address) + (i - 1) * (1 << (32 - BLOCK)), BLOCK))


def pod_name(i: int, j: int) -> str:
    """A namespace/name is unique in the cluster: each host's pods carry its name."""
    return f"default/{host_name(i)}-pod{j}"


def _password(node: str) -> str:
    return f"{node}-secret"


def _host_config(spec: Spec, i: int) -> dict:
    addr = str(host_address(i))
    conf: dict = {
        "name": host_name(i), "router_id": addr, "asn": ASN, "listen_address": addr,
        "pools": [{"cidr": str(POOL), "block_size": BLOCK}],
        "metrics": {"address": "0.0.0.0", "port": 9473}, "pod_netns_prefix": "pod-",
        "initial_sync_timeout": 30,
    }
    if spec.reflectors:
        conf["peers"] = [{"address": str(reflector_address(k)), "asn": ASN, "hold_time": HOLD_TIME, "name": f"rr{k}"}
                         for k in range(1, spec.reflectors + 1)]
        conf["mesh"] = {"enabled": False}
    elif spec.broker:
        conf["mesh"] = {"enabled": True, "hold_time": HOLD_TIME}
    else:
        conf["mesh"] = {"enabled": True, "hold_time": HOLD_TIME,
                        "nodes": [{"name": host_name(j), "address": str(host_address(j))}
                                  for j in range(1, spec.hosts + 1)]}
    if spec.broker:
        conf["blocks"] = []
        conf["datastore"] = {"type": "mqtt", "mqtt": {"host": str(BROKER_ADDRESS), "port": 1883,
                                                       "password": _password(host_name(i))}}
        conf["node_grace"] = 10
        conf["claim_settle"] = CLAIM_SETTLE
    else:
        conf["blocks"] = [str(host_block(i))]
    return conf


def _bird_reflector_conf(spec: Spec, k: int) -> str:
    addr = reflector_address(k)
    clients = "".join(f"protocol bgp {host_name(i)} from host {{ neighbor {host_address(i)} as {ASN}; }}\n"
                      for i in range(1, spec.hosts + 1))
    return f"""# BIRD 2 route reflector rr{k} of a generated lab: every host is a client; next hops stay the hosts'.
log stderr {{ warning, error, fatal }};
router id {addr};

protocol device {{ scan time 10; }}

template bgp host {{
    local {addr} as {ASN};
    rr client;
    rr cluster id {reflector_address(1)};  # one cluster: the reflectors need not peer with each other
    hold time {HOLD_TIME};
    connect retry time 2;
    direct;
    ipv4 {{ import all; export all; }};
}}

{clients}"""


def _frr_reflector_conf(spec: Spec, k: int) -> str:
    addr = reflector_address(k)
    clients = "".join(f" neighbor {host_address(i)} peer-group hosts\n" for i in range(1, spec.hosts + 1))
    return f"""! FRR route reflector rr{k} of a generated lab: every host is a client; next hops stay the hosts'.
! zebra and bgpd read this file; each ignores the other's lines.
frr defaults datacenter
hostname rr{k}
log stdout warnings
router bgp {ASN}
 bgp router-id {addr}
 ! one cluster: the reflectors need not peer with each other
 bgp cluster-id {reflector_address(1)}
 neighbor hosts peer-group
 neighbor hosts remote-as {ASN}
 neighbor hosts update-source {addr}
 neighbor hosts timers {HOLD_TIME // 3} {HOLD_TIME}
 neighbor hosts timers connect 2
{clients} address-family ipv4 unicast
  neighbor hosts activate
  neighbor hosts route-reflector-client
 exit-address-family
!
"""


# A reflector node's main process and its configuration file (in the directory bound at /etc/<impl>).
REFLECTOR_CMD = {
    "bird": "sh -c \"mkdir -p /run/bird && exec bird -f -c /etc/bird/bird.conf -s /run/bird/bird.ctl\"",
    # /run is the node's own: FRR's sockets (zserv.api, vty) go there; bgpd in the foreground is the node's cmd
    "frr": "sh -c \"mkdir -p /run/frr && chown frr:frr /run/frr && /usr/lib/frr/zebra -d -f /etc/frr/frr.conf "
           "&& exec /usr/lib/frr/bgpd -f /etc/frr/frr.conf\"",
}
REFLECTOR_CONF = {"bird": ("bird.conf", _bird_reflector_conf), "frr": ("frr.conf", _frr_reflector_conf)}


BROKER_CONF = """# The generated lab's broker: plain MQTT on the underlay (a lab has no PKI), the shipped ACL.
user root
per_listener_settings false
allow_anonymous false
password_file /run/mosquitto/passwd
acl_file /etc/mosquitto/tortie/acl
persistence false
listener 1883 0.0.0.0
max_queued_messages 1000000
log_dest stderr
log_type error
log_type warning
"""


def render(spec: Spec) -> dict[str, str]:
    """The topology file (`<name>.clab.yml`) and the files it binds, by path relative to the output directory."""
    spec.check()
    impl = spec.reflector_impl
    name = spec.name or (f"gen{spec.hosts}" + (f"-rr{spec.reflectors}" if spec.reflectors else "-mesh")
                         + (f"-{impl}" if spec.reflectors and impl != "bird" else "")
                         + ("-mqtt" if spec.broker else ""))
    files: dict[str, str] = {}
    nodes: dict[str, dict] = {}
    links: list[dict] = []
    attached: list[str] = []  # nodes on the switch, in port order

    def attach(node: str) -> None:
        attached.append(node)
        links.append({"endpoints": [f"{node}:eth1", f"sw:eth{len(attached)}"]})

    prefix = f"{UNDERLAY.prefixlen}"
    if spec.broker:
        users = " ".join(f"{host_name(i)}:{_password(host_name(i))}" for i in range(1, spec.hosts + 1))
        nodes["broker"] = {
            "cmd": "sh -c \"mkdir -p /run/mosquitto && /etc/mosquitto/tortie/make-passwords.sh "
                   f"/run/mosquitto/passwd admin:admin-secret {users} >/dev/null && "
                   "exec mosquitto -c /etc/mosquitto/lab/mosquitto.conf\"",
            "binds": [f"{ROOT / 'containers' / 'mosquitto'}:/etc/mosquitto/tortie", "broker:/etc/mosquitto/lab"],
            "exec": [f"ip addr add {BROKER_ADDRESS}/{prefix} dev eth1"]}
        files["broker/mosquitto.conf"] = BROKER_CONF
        attach("broker")
    for k in range(1, spec.reflectors + 1):
        conf_name, conf = REFLECTOR_CONF[impl]
        nodes[f"rr{k}"] = {"cmd": REFLECTOR_CMD[impl], "binds": [f"rr{k}:/etc/{impl}"],
                           "exec": [f"ip addr add {reflector_address(k)}/{prefix} dev eth1"]}
        files[f"rr{k}/{conf_name}"] = conf(spec, k)
        attach(f"rr{k}")
    for i in range(1, spec.hosts + 1):
        h = host_name(i)
        nodes[h] = {
            "cmd": "tortie run --config /etc/tortie/tortie.yaml",
            "binds": [f"{h}:/etc/tortie"],
            "exec": [f"ip addr add {host_address(i)}/{prefix} dev eth1"]
                    + [f"tortie pod add --config /etc/tortie/tortie.yaml {pod_name(i, j)}"
                       for j in range(1, spec.pods + 1)]}
        files[f"{h}/tortie.yaml"] = yaml.safe_dump(_host_config(spec, i), sort_keys=False)
        attach(h)
    nodes = {"sw": {"cmd": "sleep infinity", "exec": ["ip link add br0 type bridge"]
                    + [f"ip link set eth{p} master br0" for p in range(1, len(attached) + 1)]
                    + ["ip link set br0 up"]}, **nodes}
    topology = {"name": name, "topology": {"kinds": {"linux": {"image": "tortie:dev"}}, "nodes": nodes,
                                           "links": links}}
    head = (f"# Generated by `tortie lab gen`: {spec.hosts} hosts, "
            + (f"{spec.reflectors} {'FRR' if impl == 'frr' else 'BIRD'} route reflector(s)" if spec.reflectors
               else "iBGP full mesh")
            + (", MQTT broker" if spec.broker else "") + f", {spec.pods} pod(s) per host.\n"
            f"#   tortie lab up {name}.clab.yml    |    containerlab deploy -t {name}.clab.yml\n")
    files[f"{name}.clab.yml"] = head + yaml.safe_dump(topology, sort_keys=False, width=1 << 16)
    return files


def neighbour_entries(spec: Spec) -> int:
    """About how many ARP entries the lab needs, all its namespaces together: each host's BGP peers and broker,
    the reflectors' and the broker's hosts, two per pod (the host's for the pod, the pod's for its gateway)."""
    per_host = (spec.reflectors or spec.hosts - 1) + spec.broker + 2 * spec.pods
    return spec.hosts * per_host + spec.hosts * (spec.reflectors + spec.broker)


NEIGH_LIMIT = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")


def neighbour_problem(spec: Spec) -> str | None:
    """Why the kernel would not hold the lab's ARP entries, or None. Its neighbour table is one for every network
    namespace, capped by the root namespace's gc_thresh3 (1024 by default): past it, new entries fail
    ("neighbor table overflow!") and sessions to unresolved peers never come up (a 50-host mesh: 2,450)."""
    try:
        limit = int(NEIGH_LIMIT.read_text())
    except (OSError, ValueError):
        return None
    need = neighbour_entries(spec)
    if need <= limit:
        return None
    return (f"the lab needs about {need} ARP entries, and the kernel holds at most {limit} for all network "
            f"namespaces together ({NEIGH_LIMIT}); peers beyond it cannot be reached: raise it first, e.g. "
            f"sysctl -w net.ipv4.neigh.default.gc_thresh3={1 << (need * 2 - 1).bit_length()}")


def write(spec: Spec, out: Path) -> Path:
    """Writes the files into `out` (created if missing); returns the topology file's path."""
    files = render(spec)
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return out / next(rel for rel in files if rel.endswith(".clab.yml"))
