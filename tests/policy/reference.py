"""A reference evaluator of policy semantics, written straight from the model, independent of the compiler.

Tests compare the kernel's verdicts with it. It decides one packet at a time: the sending endpoint's egress
policies, then the receiving endpoint's ingress policies (an endpoint no policy selects accepts everything).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from policy.model import (PROTOCOLS, AnyPolicy, Endpoint, Endpoints, EntityRule, GlobalNetworkPolicy, HostEndpoint,
                          K8sNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PortRange, Rule, policy_order)
from policy.selector import All, Selector

AnyEndpoint = Endpoint | HostEndpoint


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: int
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


class Reference:
    def __init__(self, policies: list[AnyPolicy], endpoints: Endpoints):
        self.policies = sorted(policies, key=policy_order)
        self.eps = endpoints
        self.ns_labels = {n.name: n.labels for n in endpoints.namespaces}
        self.by_ip: dict[str, AnyEndpoint] = {}
        for e in [*endpoints.endpoints, *endpoints.hostEndpoints]:
            for ip in e.ips:
                self.by_ip[str(ip)] = e

    # --- which endpoints a selector means --------------------------------------------------------------------

    def _in_scope(self, ep: AnyEndpoint | None, sel: Selector, namespace: str | None, ns_sel: Selector | None,
                  hosts: bool) -> bool:
        if ep is None:
            return False
        if isinstance(ep, HostEndpoint):
            return hosts and ns_sel is None and namespace is None and sel.matches(ep.labels)
        if ns_sel is not None:
            if not ns_sel.matches(self.ns_labels[ep.namespace]):
                return False
        elif namespace is not None and ep.namespace != namespace:
            return False
        return sel.matches(ep.labels)

    def selects(self, p: AnyPolicy, ep: AnyEndpoint) -> bool:
        if isinstance(p, K8sNetworkPolicy):
            return isinstance(ep, Endpoint) and ep.namespace == p.metadata.namespace and \
                p.spec.podSelector.to_selector().matches(ep.labels)
        if isinstance(p, GlobalNetworkPolicy):
            return p.spec.selector.matches(ep.labels)
        return isinstance(ep, Endpoint) and ep.namespace == p.metadata.namespace and p.spec.selector.matches(ep.labels)

    # --- rules ---------------------------------------------------------------------------------------------

    def _named_port(self, ip: str, name: str, protocol: int, port: int | None) -> bool:
        ep = self.by_ip.get(ip)
        return ep is not None and any(p.name == name and PROTOCOLS[p.protocol.lower()] == protocol and p.port == port
                                      for p in ep.ports)

    def _port_in(self, ports: list[PortRange | str], ip: str, protocol: int, port: int | None) -> bool:
        for p in ports:
            if isinstance(p, PortRange):
                if port is not None and p.first <= port <= p.last:
                    return True
            elif self._named_port(ip, p, protocol, port):
                return True
        return False

    def _entity(self, e: EntityRule, ip: str, port: int | None, pkt: Packet, namespace: str | None) -> bool:
        addr = ipaddress.ip_address(ip)
        if e.nets and not any(addr in n for n in e.nets):
            return False
        if any(addr in n for n in e.notNets):
            return False
        ep = self.by_ip.get(ip)
        scope = (None, e.namespaceSelector, False) if e.namespaceSelector else (namespace, None, namespace is None)
        if (e.selector is not None or e.namespaceSelector is not None) and \
                not self._in_scope(ep, e.selector or All(), *scope):
            return False
        if e.notSelector is not None and self._in_scope(ep, e.notSelector, *scope):
            return False
        if e.ports and not self._port_in(e.ports, ip, pkt.protocol, port):
            return False
        if e.notPorts and self._port_in(e.notPorts, ip, pkt.protocol, port):
            return False
        return True

    def _tortie_rule(self, r: Rule, pkt: Packet, namespace: str | None) -> bool:
        if r.protocol is not None and pkt.protocol != r.protocol:
            return False
        if r.notProtocol is not None and pkt.protocol == r.notProtocol:
            return False
        if r.icmp and (pkt.icmp_type != r.icmp.type or (r.icmp.code is not None and pkt.icmp_code != r.icmp.code)):
            return False
        if r.notICMP and pkt.icmp_type == r.notICMP.type and (r.notICMP.code is None or pkt.icmp_code == r.notICMP.code):
            return False
        return self._entity(r.source, pkt.src, pkt.src_port, pkt, namespace) and \
            self._entity(r.destination, pkt.dst, pkt.dst_port, pkt, namespace)

    def _k8s_peer(self, peer: NetworkPolicyPeer, ip: str, namespace: str) -> bool:
        if peer.ipBlock:
            addr = ipaddress.ip_address(ip)
            return addr in peer.ipBlock.cidr and not any(addr in e for e in peer.ipBlock.except_)
        ep = self.by_ip.get(ip)
        if not isinstance(ep, Endpoint):
            return False
        if peer.namespaceSelector is not None:
            if not peer.namespaceSelector.to_selector().matches(self.ns_labels[ep.namespace]):
                return False
        elif ep.namespace != namespace:
            return False
        return peer.podSelector is None or peer.podSelector.to_selector().matches(ep.labels)

    def _k8s_port(self, port: NetworkPolicyPort, pkt: Packet) -> bool:
        if pkt.protocol != PROTOCOLS[port.protocol.lower()]:
            return False
        if port.port is None:
            return True
        if isinstance(port.port, str):
            return self._named_port(pkt.dst, port.port, pkt.protocol, pkt.dst_port)
        return pkt.dst_port is not None and port.port <= pkt.dst_port <= (port.endPort or port.port)

    # --- verdicts ------------------------------------------------------------------------------------------

    def _k8s_allows(self, p: K8sNetworkPolicy, direction: str, pkt: Packet) -> bool:
        ns = p.metadata.namespace
        rules = [(r.from_, r.ports) for r in p.spec.ingress] if direction == "ingress" else \
            [(r.to, r.ports) for r in p.spec.egress]
        peer_ip = pkt.src if direction == "ingress" else pkt.dst
        return any((not peers or any(self._k8s_peer(x, peer_ip, ns) for x in peers)) and
                   (not ports or any(self._k8s_port(x, pkt) for x in ports)) for peers, ports in rules)

    def endpoint_allows(self, ep: AnyEndpoint, direction: str, pkt: Packet) -> bool:
        applicable = False
        for p in self.policies:
            if not self.selects(p, ep):
                continue
            if isinstance(p, K8sNetworkPolicy):
                if direction.capitalize() not in p.spec.types():
                    continue
                applicable = True
                if self._k8s_allows(p, direction, pkt):
                    return True
                continue
            if direction.capitalize() not in p.spec.policy_types():
                continue
            applicable = True
            ns = None if isinstance(p, GlobalNetworkPolicy) else p.metadata.namespace
            for r in (p.spec.ingress if direction == "ingress" else p.spec.egress):
                if self._tortie_rule(r, pkt, ns):
                    if r.action in ("Allow", "Pass"):
                        return True
                    if r.action == "Deny":
                        return False
        return not applicable

    def allows(self, pkt: Packet, sender: AnyEndpoint | None, receiver: AnyEndpoint | None) -> bool:
        """The verdict for a packet leaving `sender` and arriving at `receiver` (either may be None: not ours)."""
        if sender is not None and not self.endpoint_allows(sender, "egress", pkt):
            return False
        return receiver is None or self.endpoint_allows(receiver, "ingress", pkt)
