"""Chains and rules sent over netlink (policy.nft_rules, policy.nft_elements): the kernel holds exactly what nft
makes of render_nft's text, for random policies; pods and policies changing reach the kernel without nft; our own
transactions are recognised without a census."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tests.policy.strategies import policy_docs

ROOT = Path(__file__).resolve().parents[2]

COMMON = """
import json, sys
from pathlib import Path
from policy import nft_elements, nft_inspect
from policy.applier import PolicyApplier
from policy.binding import compile_ruleset
from policy.diff import diff
from policy.load import KINDS
from policy.model import Endpoint, Endpoints, Namespace
from policy.names import TABLE
from policy.nft_rules import Unsupported, endpoint_rules, policy_rules, string

PODS = [("a", "x", "10.0.0.1", "fd00::1", "tnc1", {"app": "web", "tier": "front"}),
        ("b", "x", "10.0.0.2", "fd00::2", "tnc2", {"app": "db"}),
        ("c", "y", "10.0.0.3", "fd00::3", "tnc3", {"app": "client", "tier": "back"})]


def endpoints(n=3):
    return Endpoints(namespaces=[Namespace(name="x", labels={"team": "blue"}), Namespace(name="y", labels={"team": "green"})],
                     endpoints=[Endpoint(namespace=ns, name=n_, ips=[ip, ip6], interface=i, labels=lbl,
                                         ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}])
                                for n_, ns, ip, ip6, i, lbl in PODS[:n]])


def policies(docs):
    return [KINDS[d["apiVersion"], d["kind"]].model_validate(d) for d in docs]


def rules_in_kernel():
    def each(data, start, end):
        a = nft_inspect._attrs(data, start, end)
        return nft_inspect._name(a.get(2)), a.get(4, b"").hex()
    with nft_inspect._Socket() as s:
        out = {}
        for chain, exprs in s.request(nft_inspect.MSG_GETRULE, nft_inspect.NLM_F_DUMP, string(1, TABLE), each=each):
            out.setdefault(chain, []).append(exprs)
        return out
"""

ENCODE = COMMON + """
applier = PolicyApplier("nft", Path(sys.argv[1]), persist=False)
for line in sys.stdin:
    rs = compile_ruleset(policies(json.loads(line)), endpoints())
    applier.apply(rs, full=True)
    want = rules_in_kernel()
    batch = nft_elements._Batch()
    batch.control(nft_elements.NFNL_MSG_BATCH_BEGIN)
    for name, chain in sorted(rs.policy_chains.items()):
        try:
            rules = policy_rules(chain)
        except Unsupported:  # a shape nft merges: such changes go to nft
            continue
        batch.flush_chain(name)
        batch.add_rules(name, rules)
    for name, chain in sorted(rs.endpoint_chains.items()):
        batch.flush_chain(name)
        batch.add_rules(name, endpoint_rules(chain))
    batch.control(nft_elements.NFNL_MSG_BATCH_END)
    nft_elements.send(batch)
    got = rules_in_kernel()
    print(json.dumps({"differ": sorted(c for c in want.keys() | got.keys() if want.get(c) != got.get(c)),
                      "chains": len(want)}), flush=True)
"""

CHANGES = COMMON + """
def policy(name, app, port):
    return {"apiVersion": "tortie.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "x"},
            "spec": {"selector": f"app == '{app}'", "ingress": [{"action": "Allow", "protocol": "TCP",
                     "destination": {"ports": [port]}}]}}


applier = PolicyApplier("nft", Path(sys.argv[1]), persist=False)
one = compile_ruleset(policies([policy("p1", "web", 80), policy("p3", "db", 5432)]), endpoints(1))
applier.apply(one, full=True)
out = {"first_check": applier.check()}
steps = {"pod with new chain": compile_ruleset(policies([policy("p1", "web", 80), policy("p3", "db", 5432)]), endpoints(2)),
         "policy changed": compile_ruleset(policies([policy("p1", "web", 8080), policy("p3", "db", 5432)]), endpoints(2)),
         "pod gone": compile_ruleset(policies([policy("p1", "web", 8080), policy("p3", "db", 5432)]), endpoints(1))}
prev = one
for step, rs in steps.items():
    delta = diff(prev, rs)
    kernel = applier._kernel("nft")
    out[step] = {"netlink": nft_elements.can_send(delta), "how": applier.apply(rs),
                 "verified": applier._verified is not None, "check": applier.check()}
    got = rules_in_kernel()
    applier.apply(rs, full=True)
    out[step]["same as nft"] = got == rules_in_kernel()
    applier.apply(prev, full=True)
    applier.apply(rs)
    prev = rs
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    name = f"tpnc{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def encoder(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    """One process in the namespace answers one line per list of policy documents."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", textwrap.dedent(ENCODE),
                             str(tmp_path_factory.mktemp("state"))], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(docs=policy_docs())
def test_rules_sent_over_netlink_are_what_nft_makes_of_the_text(encoder: subprocess.Popen, docs: list[dict]) -> None:
    encoder.stdin.write(json.dumps(docs) + "\n")  # type: ignore[union-attr]
    encoder.stdin.flush()  # type: ignore[union-attr]
    line = encoder.stdout.readline()  # type: ignore[union-attr]
    assert line, "the encoder process died"
    out = json.loads(line)
    assert out["differ"] == [] and out["chains"] > 0


def test_pods_and_policies_change_over_netlink(netns: str, tmp_path: Path) -> None:
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", textwrap.dedent(CHANGES),
                           str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out.pop("first_check") == []
    for step, got in out.items():
        assert got == {"netlink": True, "how": "incremental", "verified": True, "check": [], "same as nft": True}, step
