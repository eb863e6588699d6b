#!/usr/bin/env python3
"""Policy benchmark: compile and apply time, incremental update latency, packet path cost; nft against iptables.

Prints a table and writes JSON to bench/results/policy-<time>.json. Everything runs inside network namespaces
named tp<random>-..., removed at the end. `--quick` runs a smaller version (for a smoke test).

Workload: 1,000 endpoints in 10 namespaces; endpoint j has labels app=app<j>, role=r<j % 50>, tier=t<j % 5>.
Policy i (a third each: Tortie NetworkPolicy, Kubernetes NetworkPolicy, Tortie GlobalNetworkPolicy) selects one
endpoint (app=app<i % 1000>) and has 3-4 rules: Allow TCP from a role (50 distinct selectors per namespace),
Deny UDP from a /24, Allow to a named port, Log ICMP; so at 10,000 policies each endpoint has 10 policies.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policy.model import Endpoints  # noqa: E402
from policy.load import KINDS  # noqa: E402

NAMESPACES = 10


def endpoints_doc(n: int, real: dict[int, tuple[str, str]] | None = None) -> dict:
    """n endpoints; `real` maps endpoint index -> (ip, interface) of lab pods that carry real traffic."""
    real = real or {}
    eps = []
    for j in range(n):
        ip, iface = real.get(j, (f"10.{100 + j // 62500}.{j // 250 % 250}.{j % 250 + 1}", f"bv{j}"))
        eps.append({"namespace": f"ns{j % NAMESPACES}", "name": f"ep{j}", "interface": iface, "ips": [ip],
                    "labels": {"app": f"app{j}", "role": f"r{j % 50}", "tier": f"t{j % 5}"},
                    "ports": [{"name": "http", "port": 8080 + j % 3}]})
    return {"namespaces": [{"name": f"ns{k}", "labels": {"team": f"team{k % 3}"}} for k in range(NAMESPACES)],
            "endpoints": eps}


def policy_doc(i: int, n_endpoints: int, version: int = 0) -> dict:
    target = i % n_endpoints
    ns = f"ns{target % NAMESPACES}"
    kind = i % 3
    if kind == 1:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": f"k{i}", "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": f"app{target}"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": f"r{i % 50}"}}},
                                               {"ipBlock": {"cidr": f"172.{16 + i % 16}.{i % 250}.0/24"}}],
                                      "ports": [{"port": 80 + version}, {"port": "http"}]}],
                         "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": f"team{i % 3}"}}}]}]}}
    spec = {"order": 100 + i % 500, "selector": f"app == 'app{target}'",
            "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": f"role == 'r{i % 50}'"},
                         "destination": {"ports": [8000 + i % 100 + version]}},
                        {"action": "Deny", "protocol": "UDP", "source": {"nets": [f"10.{200 + i % 50}.{i % 250}.0/24"]}},
                        {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}},
                        {"action": "Log", "protocol": "ICMP"}]}
    if kind == 0:
        return {"apiVersion": "tortie.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"t{i}", "namespace": ns},
                "spec": spec}
    return {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": f"g{i}"}, "spec": spec}


def build_policies(n: int, n_endpoints: int, extra: list[dict] = ()) -> list:
    docs = [policy_doc(i, n_endpoints) for i in range(n)] + list(extra)
    return [KINDS[d["apiVersion"], d["kind"]].model_validate(d) for d in docs]
