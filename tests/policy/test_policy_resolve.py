"""Per-entry conflict resolution and isolation (pure), the one backend interface, drift census comparison."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from policy import nft_elements, render_iptables, render_nft
from policy.apply_iptables import IptablesApplier
from policy.apply_nft import NftApplier
from policy.backend import KernelBackend, census_problems, open_backend
from policy.binding import Binding, compile_ruleset
from policy.compiler import compile_policies
from policy.diff import diff
from policy.metrics import RepairCollector
from policy.model import Endpoint, Endpoints, HostEndpoint, Namespace
from policy.resolve import resolve


def ep(name: str, ip: str, iface: str, ns: str = "x") -> Endpoint:
    return Endpoint(namespace=ns, name=name, ips=[ip], interface=iface, labels={"app": name})


def test_two_entries_with_one_address_no_longer_refuse_the_whole_set() -> None:
    """Before, Endpoints' cross-entry check raised for the whole set: every apply, every CNI ADD failed."""
    entries = {"n1/x/a": ep("a", "10.0.0.1", "tv1"), "n2/x/b": ep("b", "10.0.0.1", "tv2"),
               "n1/x/c": ep("c", "10.0.0.3", "tv3")}
    with pytest.raises(ValidationError, match="address 10.0.0.1 is also used by endpoints"):
        Endpoints(namespaces=[Namespace(name="x")], endpoints=list(entries.values()))
    live = {"n2"}
    res = resolve(entries, prefer=lambda key, e: key.split("/")[0] in live, local_interfaces=["tv1", "tv3"])
    assert [e.name for e in res.endpoints.endpoints] == ["b", "c"]
    assert res.rejected == {"n1/x/a": "address 10.0.0.1 is already used by n2/x/b, which is preferred"}
    assert res.isolated == {"tv1"}
    assert [n.name for n in res.endpoints.namespaces] == ["x"]  # a namespace nobody described still exists


def test_interfaces_conflict_too_and_host_endpoints_come_first() -> None:
    host = HostEndpoint(name="uplink", interface="eth0", ips=["192.0.2.1"])
    entries = {"a": ep("a", "10.0.0.1", "eth0"), "b": ep("b", "192.0.2.1", "tv2"), "c": ep("c", "10.0.0.3", "tv3")}
    res = resolve(entries, host_endpoints=[host], local_interfaces=["eth0", "tv2", "tv3", "tv9"])
    assert res.rejected == {"a": "interface 'eth0' is already used by hostEndpoints/uplink, which is preferred",
                            "b": "address 192.0.2.1 is already used by hostEndpoints/uplink, which is preferred"}
    assert res.isolated == {"eth0", "tv2", "tv9"}  # tv9: a local pod without any valid entry
    assert [h.name for h in res.endpoints.hostEndpoints] == ["uplink"]


_ADDRS = [f"10.0.0.{i}" for i in range(1, 5)]
_IFACES = [f"tv{i}" for i in range(1, 5)]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(_ADDRS), st.sampled_from(_IFACES), st.integers(0, 2)), max_size=8),
       st.lists(st.sampled_from(_IFACES), max_size=4), st.randoms(use_true_random=False))
def test_resolution_never_fails_and_the_preferred_entry_wins(specs: list, local: list, rnd) -> None:
    entries = {f"k{i}": ep(f"p{i}", a, f) for i, (a, f, _) in enumerate(specs)}
    rank = {f"k{i}": r for i, (_, _, r) in enumerate(specs)}
    shuffled = list(entries.items())
    rnd.shuffle(shuffled)
    res = resolve(dict(shuffled), prefer=lambda k, e: rank[k], local_interfaces=local)
    assert res == resolve(entries, prefer=lambda k, e: rank[k], local_interfaces=local)  # order-independent
    accepted = {f"k{e.name[1:]}": e for e in res.endpoints.endpoints}
    assert set(accepted) | set(res.rejected) == set(entries) and not set(accepted) & set(res.rejected)
    for key in res.rejected:  # every loser collides with a winner that is preferred (or equal and sorts first)
        lost = entries[key]
        assert any((w.ips == lost.ips or w.interface == lost.interface) and (rank[k], key) > (rank[key], k)
                   for k, w in accepted.items()), (key, res.rejected[key])
    assert res.isolated == set(local) - {e.interface for e in accepted.values()}
    compile_ruleset([], res.endpoints, res.isolated)  # the accepted set is a valid one


def _ruleset(isolated: tuple[str, ...] = ()):
    eps = Endpoints(namespaces=[Namespace(name="x")], endpoints=[ep("a", "10.0.0.1", "tv1")])
    return compile_ruleset([], eps, isolated)


def test_isolation_is_rendered_first_in_both_directions_on_both_backends() -> None:
    rs = _ruleset(("tv7", "tv8"))
    text = render_nft.render(rs)
    assert 'set isolated {\n\t\ttype ifname\n\t\telements = { "tv7", "tv8" }' in text
    rules = render_nft.chain_rules(rs)
    assert rules["prerouting_egress"][0] == "iifname @isolated counter drop"  # before forward and input
    assert rules["postrouting_ingress"][0] == "oifname @isolated counter drop"  # after forward and output
    for fam in (4, 6):
        script = render_iptables.restore_script(rs, fam, "a")
        fwd = [line for line in script.splitlines() if line.startswith("-A TT-FORWARD")]
        assert fwd[:4] == ["-A TT-FORWARD -i tv7 -j DROP", "-A TT-FORWARD -i tv8 -j DROP",
                           "-A TT-FORWARD -o tv7 -j DROP", "-A TT-FORWARD -o tv8 -j DROP"]
        assert "-A TT-INPUT -i tv7 -j DROP" in script and "-A TT-OUTPUT -o tv8 -j DROP" in script


def test_isolating_and_releasing_is_an_element_change() -> None:
    plain, cut = _ruleset(), _ruleset(("tv1",))
    delta = diff(plain, cut)
    assert delta is not None and delta.elements_only() and not delta.empty() and delta.isolated == ({"tv1"}, set())
    assert render_nft.render_delta(delta, cut).splitlines()[0] == 'add element inet tortie isolated { "tv1" }'
    back = diff(cut, plain)
    assert back is not None and back.isolated == (set(), {"tv1"})
    assert [b.seq for b in nft_elements.batches_for(delta, cut)] == [3]  # begin, the element, end: one batch
    assert diff(cut, _ruleset(("tv1",))).empty()


def test_binding_isolate_keeps_the_rest() -> None:
    eps = Endpoints(namespaces=[Namespace(name="x")], endpoints=[ep("a", "10.0.0.1", "tv1")])
    b = Binding(compile_policies([], False), eps)
    rs = b.isolate({"tv5"})
    assert rs.isolated == {"tv5"} and rs.dispatch == b.change([ep("c", "10.0.0.3", "tv3")]).dispatch
    assert b.ruleset.isolated == {"tv5"}


def test_one_backend_interface_picked_by_name() -> None:
    """Both backends have the interface's methods with the same parameters; the applier picks one by name."""
    for name, _ in inspect.getmembers(KernelBackend, inspect.isfunction):
        if name.startswith("_"):
            continue
        sigs = {cls.__name__: list(inspect.signature(getattr(cls, name)).parameters)
                for cls in (NftApplier, IptablesApplier)}
        assert sigs["NftApplier"] == sigs["IptablesApplier"] == list(
            inspect.signature(getattr(KernelBackend, name)).parameters), (name, sigs)
    assert isinstance(open_backend("nft"), NftApplier) and open_backend("iptables", "b").slot == "b"
    with pytest.raises(ValueError, match="unknown policy backend 'pf'"):
        open_backend("pf")
    applier = (Path(__file__).parents[2] / "policy" / "applier.py").read_text()
    assert "isinstance" not in applier and "Applier(" not in applier


def test_census_problems() -> None:
    assert census_problems({"chain c": 2, "set s": 1}, {"chain c": 2, "set s": 1}) == []
    assert census_problems({"chain c": 2, "chain d": 0, "set s": 1}, {"chain c": 1, "chain x": 3}) == [
        "chain c has 1, expected 2", "chain d is missing", "chain x is not ours", "set s is missing"]


def test_repairs_are_exported() -> None:
    registry = CollectorRegistry()
    registry.register(RepairCollector(lambda: 2))
    assert "tortie_policy_repairs_total 2.0" in generate_latest(registry).decode()
