"""Fixtures for policy tests: a pod network in network namespaces, the CLI run inside its host namespace."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.policy.lab import Lab
from policy.load import load_endpoints, load_policies
from tests.policy.reference import Packet, Reference

TORTIE = str(Path(sys.executable).with_name("tortie"))
TCP_PORTS = [80, 81, 8080]
UDP_PORTS = [53, 5353]
PROTO = {"tcp": 6, "udp": 17, "icmp": 1}

# pod name -> (namespace, index, labels, named ports)
PODS = {
    "a": ("x", 1, {"app": "web", "tier": "front"}, [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
    "b": ("x", 2, {"app": "db"}, [{"name": "http", "port": 8080}]),
    "c": ("y", 3, {"app": "web"}, [{"name": "http", "port": 81}]),
    "d": ("y", 4, {"app": "client", "tier": "back"}, []),
}
NAMESPACES = {"x": {"team": "blue"}, "y": {"team": "green"}}
PEERS = {"peer1": 1, "peer2": 2}  # external hosts on host interfaces te1, te2


def endpoints_doc(lab: Lab, labels: dict[str, dict[str, str]] | None = None,
                  host_labels: dict[str, str] | None = None, ipv6: bool = False) -> dict:
    """The endpoints file for the lab; `labels` overrides pod labels (relabelling); `ipv6` adds the pods'
    IPv6 addresses."""
    labels = labels or {}
    doc: dict = {
        "namespaces": [{"name": n, "labels": lab_labels} for n, lab_labels in NAMESPACES.items()],
        "endpoints": [{"namespace": ns, "name": name, "labels": labels.get(name, lbl),
                       "ips": [lab.pods[name].ip, *([lab.pods[name].ip6] if ipv6 else [])],
                       "interface": lab.pods[name].interface, "ports": ports}
                      for name, (ns, _i, lbl, ports) in PODS.items()],
    }
    if host_labels is not None:
        doc["hostEndpoints"] = [{"name": f"host-{p}", "labels": host_labels, "interface": lab.peers[p].interface,
                                 "ips": [lab.peers[p].ip.rsplit(".", 1)[0] + ".1"]} for p in PEERS]
    return doc


@dataclass
class PolicyLab:
    lab: Lab
    dir: Path

    def write(self, name: str, content: str | dict | list) -> Path:
        path = self.dir / name
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, list):
            path.write_text(yaml.safe_dump_all(content))
        else:
            path.write_text(yaml.safe_dump(content))
        return path

    def tortie(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "TORTIE_POLICY_STATE_DIR": str(self.dir / "state")}
        p = subprocess.run(["ip", "netns", "exec", self.lab.host, TORTIE, "policy", *args], capture_output=True,
                           text=True, env=env, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"tortie policy {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def apply(self, backend: str, policies: list[dict] | str, labels: dict | None = None,
              host_labels: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        eps = self.write("endpoints.yaml", endpoints_doc(self.lab, labels, host_labels))
        pol = self.write("policies.yaml", policies if isinstance(policies, str) else list(policies))
        # established flows are not re-checked after a change (as in Calico): forget earlier probes' flows,
        # whose 5-tuples a new probe could reuse
        self.lab.run(self.lab.host, "conntrack", "-F", check=False)
        return self.tortie("apply", "--backend", backend, "--endpoints", str(eps), str(pol), check=check)

    def reference(self) -> Reference:
        return Reference(load_policies([self.dir / "policies.yaml"]), load_endpoints(self.dir / "endpoints.yaml"))

    def matrix(self, extra: list[tuple] = ()) -> dict[tuple, bool]:
        """Probes every (source pod, destination pod, protocol, port): {(src, dst, proto, port): answered}."""
        def one(src: str) -> dict[tuple, bool]:
            targets = [(self.lab.pods[d].ip, proto, port) for d in PODS if d != src
                       for proto, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS)) for port in ports]
            targets += [t[1:] for t in extra if t[0] == src]
            res = self.lab.probe(self.lab.pods[src].ns, targets)
            by_ip = {p.ip: n for n, p in self.lab.pods.items()}
            return {(src, by_ip[t[0]], t[1], t[2]): ok for t, ok in res.items()}
        with ThreadPoolExecutor(len(PODS)) as ex:
            out: dict[tuple, bool] = {}
            for part in ex.map(one, PODS):
                out.update(part)
        return out

    def expected(self, keys: list[tuple]) -> dict[tuple, bool]:
        ref = self.reference()
        eps = {e.name: e for e in ref.eps.endpoints}
        out = {}
        for src, dst, proto, port in keys:
            pkt = Packet(self.lab.pods[src].ip, self.lab.pods[dst].ip, PROTO[proto], None,
                         None if proto == "icmp" else port, 8 if proto == "icmp" else None, 0 if proto == "icmp" else None)
            out[(src, dst, proto, port)] = ref.allows(pkt, eps[src], eps[dst])
        return out

    def assert_matrix(self, expect: dict[tuple, bool] | None = None) -> dict[tuple, bool]:
        """The kernel's verdicts equal the reference evaluator's (and `expect`, where given)."""
        got = self.matrix()
        ref = self.expected(list(got))
        diff = {k: (got[k], ref[k]) for k in got if got[k] != ref[k]}
        assert not diff, f"kernel vs reference (got, expected): {diff}"
        for k, v in (expect or {}).items():
            assert got[k] == v, f"{k}: got {got[k]}, want {v}"
        return got


def offline_lab() -> Lab:
    """The lab's pods and peers as planned, without creating anything: for tests that only compile."""
    lab = Lab(prefix="offline")
    lab.pods = {name: lab.plan_pod(name, index) for name, (_ns, index, _l, _p) in PODS.items()}
    lab.peers = {name: lab.plan_peer(name, index) for name, index in PEERS.items()}
    return lab


def _lab() -> Lab:
    lab = Lab().start()
    try:
        for name, (_ns, index, _l, _p) in PODS.items():
            pod = lab.add_pod(name, index)
            lab.serve(pod.ns, TCP_PORTS, UDP_PORTS)
        for name, index in PEERS.items():
            lab.add_peer(name, index)
        lab.serve(lab.host, [179], [])
        return lab
    except BaseException:
        lab.close()
        raise


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = _lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def plab(lab: Lab) -> Iterator[PolicyLab]:
    d = Path(tempfile.mkdtemp(prefix="tortie-policy-"))
    pl = PolicyLab(lab, d)
    try:
        yield pl
    finally:
        pl.tortie("flush", check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def check_ns() -> Iterator[str]:
    """A scratch network namespace for `nft -c` (checking needs netlink but must not touch the caller's)."""
    lab = Lab().start()
    try:
        yield lab.host
    finally:
        lab.close()


def nft_check(ns: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=script, capture_output=True,
                          text=True, timeout=120)
