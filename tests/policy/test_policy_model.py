"""Loading and validating policy and endpoint files: errors name the file, the document, the field, the reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.load import ConfigError
from policy.load import load_endpoints, load_policies
from policy.model import K8sNetworkPolicy, TortieNetworkPolicy

GNP = "apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: ok}\nspec: {}\n"


def errors_for(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(GNP + "---\n" + text)
    with pytest.raises(ConfigError) as e:
        load_policies([path])
    assert all(line.startswith(f"{path}: document 2") for line in e.value.errors), e.value.errors
    return e.value.errors


@pytest.mark.parametrize("text, field, reason", [
    ("kind: [x", "invalid YAML", "expected"),
    ("apiVersion: v1\nkind: Pod\n", "apiVersion/kind", "unknown 'v1' 'Pod'"),
    ("- just a list", "(top level)", "expected a mapping"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec: {odrer: 1}\n",
     "spec.odrer", "Extra inputs are not permitted"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {}\n",
     "metadata.name", "String should match pattern"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {ingress: [{action: Allow, source: {nets: [10.0.0.0/33]}}]}\n",
     "spec.ingress[0].source.nets[0]", "invalid CIDR"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {ingress: [{action: Allow, protocol: TCP, destination: {ports: ['90:80']}}]}\n",
     "spec.ingress[0].destination.ports[0]", "out of range 0..65535 or its range is reversed"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {ingress: [{action: Allow, destination: {ports: [80]}}]}\n",
     "spec.ingress[0]", "ports and notPorts need protocol"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {ingress: [{action: Accept}]}\n", "spec.ingress[0].action", "Input should be 'Allow'"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {ingress: [{action: Allow, protocol: tcp, icmp: {type: 8}}]}\n", "spec.ingress[0]", "icmp and notICMP"),
    ("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {ingress: [{action: Allow, protocol: gre}]}\n", "spec.ingress[0].protocol", "unknown protocol 'gre'"),
    ("apiVersion: tortie.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {selector: \"a == 'b' ||\"}\n",
     "spec.selector", "does not parse: expected a label key"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n", "spec.ingress[0].ports[0].port", ""),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}\n", "spec.ingress[0].ports[0]",
     "endPort needs a numeric port"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}\n", "spec.ingress[0].ports[0]",
     "endPort 80 is below port 90"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}\n",
     "spec.ingress[0].from[0].ipBlock", "except 11.0.0.0/16 is not inside cidr 10.0.0.0/8"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}\n",
     "spec.podSelector.matchExpressions[0]", "operator In needs at least one value"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}\n",
     "spec.ingress[0].from[0]", "ipBlock cannot be combined"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {matchLabels: {app: 'a b'}}}\n", "spec.podSelector.matchLabels", "invalid value 'a b'"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n",
     "spec.podSelector", "Field required"),
])
def test_bad_policy(tmp_path: Path, text: str, field: str, reason: str) -> None:
    errors = errors_for(tmp_path, text)
    assert any(field in e and reason in e for e in errors), errors


def test_every_error_is_reported_and_duplicates_are_caught(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(GNP + "---\n" + GNP.replace("{}", "{odrer: 1}"))
    b.write_text(GNP)
    with pytest.raises(ConfigError) as e:
        load_policies([a, b, tmp_path / "missing.yaml"])
    text = "\n".join(e.value.errors)
    assert f"{a}: document 2 (line 6): spec.odrer" in text
    assert f"{b}: document 1 (line 1): metadata.name: GlobalNetworkPolicy/ok is already defined at {a}: document 1" in text
    assert f"{tmp_path / 'missing.yaml'}: cannot read" in text


def test_defaulting(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k}
spec: {podSelector: {}, egress: [{}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k2, namespace: x}
spec: {podSelector: {}}
---
apiVersion: tortie.io/v1
kind: NetworkPolicy
metadata: {name: t}
spec: {egress: [{action: Allow}]}
---
apiVersion: tortie.io/v1
kind: NetworkPolicy
metadata: {name: t2}
spec: {ingress: [{action: Allow, protocol: 6, notProtocol: UDP}], egress: [{action: Deny}]}
""")
    k, k2, t, t2 = load_policies([path])
    assert isinstance(k, K8sNetworkPolicy) and k.spec.types() == ("Ingress", "Egress")
    assert k.metadata.namespace == "default"
    assert isinstance(k2, K8sNetworkPolicy) and k2.spec.types() == ("Ingress",)
    assert isinstance(t, TortieNetworkPolicy) and t.spec.policy_types() == ("Egress",)
    assert isinstance(t2, TortieNetworkPolicy) and t2.spec.policy_types() == ("Ingress", "Egress")
    assert t2.spec.ingress[0].protocol == 6 and t2.spec.ingress[0].notProtocol == 17
    assert str(t2.spec.selector) == "all()"


@pytest.mark.parametrize("doc, reason", [
    ("endpoints: [{namespace: nope, name: a, ips: [10.0.0.1], interface: v1}]", "namespace 'nope' is not in"),
    ("namespaces: [{name: x}]\nendpoints: [{namespace: x, name: a, ips: [10.0.0.300], interface: v1}]",
     "endpoints[0].ips[0]"),
    ("namespaces: [{name: x}]\nendpoints: [{namespace: x, name: a, ips: [10.0.0.1], interface: 'v1\"; drop'}]",
     "endpoints[0].interface"),
    ("namespaces: [{name: x}]\nendpoints: [{namespace: x, name: a, ips: [10.0.0.1], interface: v1},"
     " {namespace: x, name: b, ips: [10.0.0.1], interface: v2}]", "address 10.0.0.1 is also used"),
    ("namespaces: [{name: x}]\nendpoints: [{namespace: x, name: a, ips: [10.0.0.1], interface: v1,"
     " labels: {'a\"b': c}}]", "invalid label key"),
    ("namespaces: [{name: x}]\nendpoints: [{namespace: x, name: a, ips: [10.0.0.1], interface: v1,"
     " ports: [{name: http, port: 70000}]}]", "endpoints[0].ports[0].port"),
    ("namespaces: [{name: x}]\nendpoints: [{namespace: x, name: a, ips: [10.0.0.1], interface: v1, extra: 1}]",
     "endpoints[0].extra: Extra inputs are not permitted"),
])
def test_bad_endpoints(tmp_path: Path, doc: str, reason: str) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as e:
        load_endpoints(path)
    assert any(str(path) in line and reason in line for line in e.value.errors), e.value.errors


def test_namespaces_get_their_name_label(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("namespaces: [{name: x, labels: {team: a}}]\n")
    assert load_endpoints(path).namespaces[0].labels == {"team": "a", "kubernetes.io/metadata.name": "x"}
