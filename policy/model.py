"""Policy and endpoint models, validated by pydantic: Kubernetes NetworkPolicy and Tortie's Calico-style kinds."""
from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, IPvAnyAddress, field_validator,
                      model_validator)

from policy import selector as sel

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNSLabel = Annotated[str, Field(pattern=f"^{_DNS_LABEL}$", max_length=63)]
DNSSubdomain = Annotated[str, Field(pattern=rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$", max_length=253)]
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def _port_name(v: str) -> str:
    """An IANA service name, as Kubernetes validates named ports."""
    if len(v) > 15 or not _PORT_NAME.match(v) or not re.search("[a-z]", v):
        raise ValueError(f"invalid port name {v!r}: up to 15 lowercase letters, digits and single inner dashes,"
                         " at least one letter")
    return v


PortName = Annotated[str, AfterValidator(_port_name)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
InterfaceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "udplite": 136}
PORT_PROTOCOLS = (6, 17, 132, 136)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, arbitrary_types_allowed=True)


def _labels(v: dict[str, str]) -> dict[str, str]:
    for k, val in v.items():
        if not sel._LABEL_KEY.match(k) or len(k) > 317:
            raise ValueError(f"invalid label key {k!r}")
        if not isinstance(val, str) or len(val) > 63 or not _LABEL_VALUE.match(val):
            raise ValueError(f"invalid value {val!r} for label {k!r}: up to 63 letters, digits, '-', '_', '.'")
    return v


Labels = Annotated[dict[str, str], BeforeValidator(lambda v: {} if v is None else v), AfterValidator(_labels),
                   Field(default_factory=dict)]


_SCOPED = "scoped IPv6 address{}: nft and iptables match no zone (%...), write the address without it"


def _network(v: Any) -> IPNetwork:
    if not isinstance(v, str):
        raise ValueError("expected a CIDR string such as 10.0.0.0/8")
    if "%" in v:
        raise ValueError(_SCOPED.format(f" in {v!r}"))
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError as e:
        raise ValueError(f"invalid CIDR {v!r}: {e}") from None


Network = Annotated[IPNetwork, BeforeValidator(_network)]


def _unscoped(v: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if getattr(v, "scope_id", None):
        raise ValueError(_SCOPED.format(f" {v}"))
    return v


Address = Annotated[IPvAnyAddress, AfterValidator(_unscoped)]
# Kernel rules one source rule may expand to (ORed ports and peers multiply): a bound on compile time and memory
MAX_RULE_EXPANSION = 1024
MAX_POLICY_EXPANSION = 16384
MAX_EXCEPT = 256  # an ipBlock's except list: each one splits the block into up to 128 pieces


def _selector(v: Any) -> sel.Selector:
    if isinstance(v, sel.Selector):
        return v
    if not isinstance(v, str):
        raise ValueError("expected a selector expression string")
    try:
        return sel.parse(v)
    except sel.SelectorError as e:
        shown = v if len(v) <= 80 else v[:60] + f"... ({len(v)} characters)"
        raise ValueError(f"selector {shown!r} does not parse: {e}") from None


SelectorExpr = Annotated[sel.Selector, BeforeValidator(_selector)]


class Metadata(Strict):
    name: DNSSubdomain
    namespace: DNSLabel = "default"
    labels: Labels
    annotations: dict[str, str] = Field(default_factory=dict)


class GlobalMetadata(Strict):
    name: DNSSubdomain
    labels: Labels
    annotations: dict[str, str] = Field(default_factory=dict)


# --- Kubernetes networking.k8s.io/v1 -------------------------------------------------------------------------


class LabelSelectorRequirement(Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        if not sel._LABEL_KEY.match(self.key):
            raise ValueError(f"invalid label key {self.key!r}")
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(Strict):
    matchLabels: Labels
    matchExpressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def to_selector(self) -> sel.Selector:
        terms: list[sel.Selector] = [sel.Compare(k, "==", v) for k, v in self.matchLabels.items()]
        for r in self.matchExpressions:
            if r.operator in ("In", "NotIn"):
                terms.append(sel.In(r.key, tuple(sorted(set(r.values))), r.operator == "NotIn"))
            else:
                terms.append(sel.Has(r.key) if r.operator == "Exists" else sel.Not(sel.Has(r.key)))
        return sel.conjunction(terms)


class IPBlock(Strict):
    cidr: Network
    except_: list[Network] = Field(default_factory=list, alias="except", max_length=MAX_EXCEPT)

    @model_validator(mode="after")
    def _inside(self) -> IPBlock:
        for e in self.except_:
            if e.version != self.cidr.version or not e.subnet_of(self.cidr):  # type: ignore[arg-type]
                raise ValueError(f"except {e} is not inside cidr {self.cidr}")
        return self


class NetworkPolicyPeer(Strict):
    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.ipBlock and (self.podSelector or self.namespaceSelector):
            raise ValueError("ipBlock cannot be combined with podSelector or namespaceSelector")
        if not (self.ipBlock or self.podSelector or self.namespaceSelector):
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class NetworkPolicyPort(Strict):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: PortNumber | PortName | None = None
    endPort: PortNumber | None = None

    @model_validator(mode="after")
    def _range(self) -> NetworkPolicyPort:
        if self.endPort is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort needs a numeric port")
            if self.endPort < self.port:
                raise ValueError(f"endPort {self.endPort} is below port {self.port}")
        return self


def _bounded(count: int, what: str) -> int:
    if count > MAX_RULE_EXPANSION:
        raise ValueError(f"{what} expand to {count} kernel rules, the limit is {MAX_RULE_EXPANSION}")
    return count


def _policy_bounded(rules: list[Any]) -> None:
    total = sum(r.expansion() for r in rules)
    if total > MAX_POLICY_EXPANSION:
        raise ValueError(f"the rules expand to {total} kernel rules, the limit is {MAX_POLICY_EXPANSION}")


class _PeersAndPorts(Strict):
    """A Kubernetes rule: every peer ORed with every port, one kernel rule each."""

    def peers(self) -> list[NetworkPolicyPeer]:
        raise NotImplementedError

    def expansion(self) -> int:
        return max(1, len(self.peers())) * max(1, len(self.ports))  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _expansion(self) -> _PeersAndPorts:
        _bounded(self.expansion(), f"{len(self.peers())} peers times {len(self.ports)} ports")  # type: ignore[attr-defined]
        return self


class NetworkPolicyIngressRule(_PeersAndPorts):
    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from")
    ports: list[NetworkPolicyPort] = Field(default_factory=list)

    def peers(self) -> list[NetworkPolicyPeer]:
        return self.from_


class NetworkPolicyEgressRule(_PeersAndPorts):
    to: list[NetworkPolicyPeer] = Field(default_factory=list)
    ports: list[NetworkPolicyPort] = Field(default_factory=list)

    def peers(self) -> list[NetworkPolicyPeer]:
        return self.to


class NetworkPolicySpec(Strict):
    podSelector: LabelSelector
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[NetworkPolicyIngressRule] = Field(default_factory=list)
    egress: list[NetworkPolicyEgressRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _expansion(self) -> NetworkPolicySpec:
        _policy_bounded([*self.ingress, *self.egress])
        return self

    def types(self) -> tuple[str, ...]:
        """The API server's defaulting: Ingress always, Egress when there are egress rules."""
        if self.policyTypes:
            return tuple(t for t in ("Ingress", "Egress") if t in self.policyTypes)
        return ("Ingress", "Egress") if self.egress else ("Ingress",)


class K8sNetworkPolicy(Strict):
    apiVersion: Literal["networking.k8s.io/v1"]
    kind: Literal["NetworkPolicy"]
    metadata: Metadata
    spec: NetworkPolicySpec


# --- Tortie tortie.io/v1 (Calico-style) ---------------------------------------------------------------------


def _protocol(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected a protocol name or number")
    if isinstance(v, int):
        if not 1 <= v <= 255:
            raise ValueError(f"protocol number {v} is outside 1..255")
        return v
    if isinstance(v, str) and v.lower() in PROTOCOLS:
        return PROTOCOLS[v.lower()]
    if isinstance(v, str) and v.isdigit():
        return _protocol(int(v))
    raise ValueError(f"unknown protocol {v!r}: use {', '.join(PROTOCOLS)} or a number 1..255")


Protocol = Annotated[int, BeforeValidator(_protocol)]


class PortRange(Strict):
    first: int
    last: int


def _port(v: Any) -> PortRange | str:
    """80, "80", "80:90" (a range) or a port name."""
    if isinstance(v, PortRange):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"invalid port {v!r}")
    text = str(v)
    m = re.fullmatch(r"(\d+)(?::(\d+))?", text)
    if m:
        first, last = int(m[1]), int(m[2] or m[1])
        if not (0 <= first <= last <= 65535):
            raise ValueError(f"port {text!r} is out of range 0..65535 or its range is reversed")
        return PortRange(first=first, last=last)
    return _port_name(text)


Port = Annotated[Union[PortRange, str], BeforeValidator(_port)]


class EntityRule(Strict):
    nets: list[Network] = Field(default_factory=list)
    notNets: list[Network] = Field(default_factory=list)
    selector: SelectorExpr | None = None
    notSelector: SelectorExpr | None = None
    namespaceSelector: SelectorExpr | None = None
    ports: list[Port] = Field(default_factory=list)
    notPorts: list[Port] = Field(default_factory=list)


class ICMPMatch(Strict):
    type: int = Field(ge=0, le=254)
    code: int | None = Field(None, ge=0, le=255)


class Rule(Strict):
    action: Literal["Allow", "Deny", "Log", "Pass"]
    protocol: Protocol | None = None
    notProtocol: Protocol | None = None
    icmp: ICMPMatch | None = None
    notICMP: ICMPMatch | None = None
    source: EntityRule = Field(default_factory=EntityRule)
    destination: EntityRule = Field(default_factory=EntityRule)

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        has_ports = any((self.source.ports, self.source.notPorts, self.destination.ports, self.destination.notPorts))
        if has_ports and self.protocol not in PORT_PROTOCOLS:
            raise ValueError("ports and notPorts need protocol tcp, udp, sctp or udplite")
        if (self.icmp or self.notICMP) and self.protocol not in (1, 58):
            raise ValueError("icmp and notICMP need protocol icmp or icmpv6")
        _bounded(self.expansion(), f"{len(self.source.ports)} source ports times {len(self.destination.ports)}"
                 " destination ports")
        return self

    def expansion(self) -> int:
        """An upper bound of the kernel rules per address family (a notICMP with a code takes two)."""
        icmp = 2 if self.notICMP is not None and self.notICMP.code is not None else 1
        return icmp * max(1, len(self.source.ports)) * max(1, len(self.destination.ports))


class TortiePolicySpec(Strict):
    order: float | None = None
    selector: SelectorExpr = Field(default_factory=sel.All)
    types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[Rule] = Field(default_factory=list)
    egress: list[Rule] = Field(default_factory=list)

    @field_validator("order")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("order must be a finite number")
        return v

    @model_validator(mode="after")
    def _expansion(self) -> TortiePolicySpec:
        _policy_bounded([*self.ingress, *self.egress])
        return self

    def policy_types(self) -> tuple[str, ...]:
        """Calico's defaulting: Egress alone if there are only egress rules, both if both, else Ingress."""
        if self.types:
            return tuple(t for t in ("Ingress", "Egress") if t in self.types)
        if self.egress:
            return ("Ingress", "Egress") if self.ingress else ("Egress",)
        return ("Ingress",)


class TortieNetworkPolicy(Strict):
    apiVersion: Literal["tortie.io/v1"]
    kind: Literal["NetworkPolicy"]
    metadata: Metadata
    spec: TortiePolicySpec


class GlobalNetworkPolicy(Strict):
    apiVersion: Literal["tortie.io/v1"]
    kind: Literal["GlobalNetworkPolicy"]
    metadata: GlobalMetadata
    spec: TortiePolicySpec


AnyPolicy = K8sNetworkPolicy | TortieNetworkPolicy | GlobalNetworkPolicy
K8S_ORDER = 1000.0  # Kubernetes NetworkPolicies sit at Calico's order 1000


def policy_id(p: AnyPolicy) -> str:
    """A unique, stable identity: kind, namespace and name."""
    if isinstance(p, GlobalNetworkPolicy):
        return f"GlobalNetworkPolicy/{p.metadata.name}"
    prefix = "k8s" if isinstance(p, K8sNetworkPolicy) else "tortie"
    return f"{prefix}.NetworkPolicy/{p.metadata.namespace}/{p.metadata.name}"


def policy_order(p: AnyPolicy) -> tuple[float, str]:
    """Evaluation order: `order` ascending (policies without one last), then identity."""
    if isinstance(p, K8sNetworkPolicy):
        return (K8S_ORDER, policy_id(p))
    return (math.inf if p.spec.order is None else p.spec.order, policy_id(p))


# --- Endpoints input ---------------------------------------------------------------------------------------


class Namespace(Strict):
    name: DNSLabel
    labels: Labels

    @model_validator(mode="after")
    def _name_label(self) -> Namespace:
        """Kubernetes labels every namespace with its name."""
        if "kubernetes.io/metadata.name" not in self.labels:
            object.__setattr__(self, "labels", {**self.labels, "kubernetes.io/metadata.name": self.name})
        return self


class NamedPort(Strict):
    name: PortName
    port: PortNumber
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Endpoint(Strict):
    """A pod's network interface, as the datastore will carry it."""

    namespace: DNSLabel
    name: DNSSubdomain
    labels: Labels
    ips: list[Address] = Field(min_length=1)
    interface: InterfaceName
    ports: list[NamedPort] = Field(default_factory=list)


class HostEndpoint(Strict):
    """One of the node's own interfaces; GlobalNetworkPolicies select it by its labels."""

    name: DNSSubdomain
    labels: Labels
    interface: InterfaceName
    ips: list[Address] = Field(default_factory=list)
    ports: list[NamedPort] = Field(default_factory=list)


def claims(e: Endpoint | HostEndpoint) -> list[str]:
    """What an endpoint holds exclusively on a node: its interface and each of its addresses."""
    return [f"interface {e.interface!r}", *(f"address {ip}" for ip in e.ips)]


class Endpoints(Strict):
    namespaces: list[Namespace] = Field(default_factory=list)
    endpoints: list[Endpoint] = Field(default_factory=list)
    hostEndpoints: list[HostEndpoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Endpoints:
        names = [n.name for n in self.namespaces]
        if len(set(names)) != len(names):
            raise ValueError("namespaces: a namespace is listed twice")
        known = set(names)
        for i, e in enumerate(self.endpoints):
            if e.namespace not in known:
                raise ValueError(f"endpoints[{i}]: namespace {e.namespace!r} is not in namespaces")
        seen: dict[str, str] = {}
        for kind, items in (("endpoints", self.endpoints), ("hostEndpoints", self.hostEndpoints)):
            for i, e in enumerate(items):
                for c in claims(e):
                    if c in seen:
                        raise ValueError(f"{kind}[{i}]: {c} is also used by {seen[c]}")
                    seen[c] = f"{kind}[{i}]"
        return self
