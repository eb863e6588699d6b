"""HostEndpoints applied with `tortie apply` (hostendpoints/<name>) join the daemon's policy sync on their node only
(pure: SyncState over entries written by the CLI's own loader)."""
from __future__ import annotations

from policy.binding import compile_ruleset
from policy.sync_state import SyncState
from bgpd.cli.resources import load_entries

HEP = """
apiVersion: tortie.io/v1
kind: HostEndpoint
metadata: {name: uplink, labels: {role: uplink}}
spec: {node: node1, interface: eth9, ips: [192.0.2.1]}
---
apiVersion: tortie.io/v1
kind: GlobalNetworkPolicy
metadata: {name: uplink-ssh}
spec:
  selector: role == 'uplink'
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [22]}}]
"""


def entries(tmp_path, text: str) -> dict[str, dict]:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    return load_entries([f])


def reference(state: SyncState):
    return compile_ruleset(state._policies(), state.resolution.endpoints, state.resolution.isolated)


def test_a_host_endpoint_of_this_node_is_bound_another_nodes_is_not(tmp_path):
    written = entries(tmp_path, HEP)
    mine, theirs = SyncState("node1"), SyncState("node2")
    ruleset = mine.update(written).ruleset
    assert set(ruleset.dispatch["host_ingress"]) == {"eth9"}
    assert ruleset == reference(mine)
    assert mine.update({}).policies == 1  # the policy only: the host endpoint is no policy
    assert theirs.update(written).ruleset.dispatch["host_ingress"] == {}


def test_a_host_endpoint_moved_or_deleted_leaves_the_ruleset(tmp_path):
    written = entries(tmp_path, HEP)
    state = SyncState("node1")
    state.update(written)
    moved = {**written["hostendpoints/uplink"], "node": "node2"}
    assert state.update({"hostendpoints/uplink": moved}).ruleset.dispatch["host_ingress"] == {}
    back = state.update({"hostendpoints/uplink": written["hostendpoints/uplink"]}).ruleset
    assert set(back.dispatch["host_ingress"]) == {"eth9"}
    gone = state.update({"hostendpoints/uplink": None}).ruleset
    assert gone.dispatch["host_ingress"] == {} and gone == reference(state)


def test_a_pod_on_the_host_endpoints_interface_loses_to_it(tmp_path):
    state = SyncState("node1")
    out = state.update({**entries(tmp_path, HEP), "endpoints/node1/default/web": {
        "labels": {"app": "web"}, "ips": ["10.244.0.5"], "interface": "eth9"}})
    assert "already used by hostEndpoints/uplink" in out.ignored["endpoints/node1/default/web"]


def test_a_pod_that_later_takes_the_host_endpoints_interface_loses_too(tmp_path):
    """The one-endpoint shortcut (no resolve()) must see the host endpoint's claims as taken."""
    state = SyncState("node1")
    state.update({**entries(tmp_path, HEP), "endpoints/node1/default/web": {
        "labels": {"app": "web"}, "ips": ["10.244.0.5"], "interface": "tt1"}})
    out = state.update({"endpoints/node1/default/db": {"labels": {"app": "db"}, "ips": ["192.0.2.1"],
                                                       "interface": "tt2"}})
    assert "already used by hostEndpoints/uplink" in out.ignored["endpoints/node1/default/db"]
    assert out.ruleset == reference(state)
