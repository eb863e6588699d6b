"""Prometheus export of per-rule counters (read from the kernel at scrape time) and of drift repairs."""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from policy.counters import RuleCounter

LABELS = ["policy", "direction", "rule", "action"]


class RuleCounterCollector(Collector):
    """Register with a prometheus_client registry; `read` returns the current counters."""

    def __init__(self, read: Callable[[], list[RuleCounter]]):
        self.read = read

    def collect(self) -> Iterable[CounterMetricFamily]:
        packets = CounterMetricFamily("tortie_policy_rule_packets", "Packets matched by a policy rule", labels=LABELS)
        octets = CounterMetricFamily("tortie_policy_rule_bytes", "Bytes matched by a policy rule", labels=LABELS)
        for c in self.read():
            labels = [c.policy, c.direction, c.rule, c.action]
            packets.add_metric(labels, c.packets)
            octets.add_metric(labels, c.bytes)
        yield packets
        yield octets


class RepairCollector(Collector):
    """Exports `tortie_policy_repairs_total`: full re-applies after Tortie's ruleset was found removed or altered
    in the kernel (`PolicyApplier.repairs`, read at scrape time)."""

    def __init__(self, read: Callable[[], int]):
        self.read = read

    def collect(self) -> Iterable[CounterMetricFamily]:
        repairs = CounterMetricFamily("tortie_policy_repairs", "Full re-applies of the policy ruleset after it was "
                                      "found removed or altered in the kernel")
        repairs.add_metric([], self.read())
        yield repairs
