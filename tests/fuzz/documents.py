"""Structure-aware input for the entry-point fuzz tests: valid documents with parts replaced by wrong types,
huge or deeply nested values, then written as YAML or JSON with textual damage (duplicate keys, alias bombs,
invalid UTF-8, binary junk, truncation). Strategies stay cheap: small trees, bounded sizes."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import signal
from typing import Any, Iterator

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# deterministic and database-less: the same examples on every run and every machine
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXAMPLE_TIMEOUT = 20.0  # seconds; a clean error takes milliseconds, this only catches hangs

NODE = {"name": "n1", "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1",
        "pools": [{"cidr": "10.244.0.0/16"}], "blocks": ["10.244.1.0/26"],
        "peers": [{"address": "10.0.0.2", "asn": 65000, "password": "s3cret", "hold_time": 9}],
        "mesh": {"enabled": True, "nodes": [{"name": "n2", "address": "10.0.0.3"}]},
        "metrics": {"address": "127.0.0.1", "port": 9473}, "route_protocol": 201}
POLICIES = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}},
                                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                           "ports": [{"protocol": "TCP", "port": 80}]}]}},
    {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "deny-log"},
     "spec": {"order": 10, "selector": "app == 'web'",
              "ingress": [{"action": "Deny", "protocol": "TCP", "source": {"nets": ["192.0.2.0/24"]},
                           "destination": {"ports": [22, "8000:8080"]}},
                          {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}]}},
]
ENDPOINTS = {"namespaces": [{"name": "x", "labels": {"team": "a"}}],
             "endpoints": [{"namespace": "x", "name": "a", "labels": {"app": "web"}, "ips": ["192.168.1.11"],
                            "interface": "tt0123456789a", "ports": [{"name": "http", "port": 80}]}],
             "hostEndpoints": [{"name": "eth0", "labels": {"role": "uplink"}, "interface": "eth0",
                                "ips": ["192.0.2.10"]}]}

ODD_STRINGS = ["", " ", "10.0.0.300", "fe80::1%eth0", "fe80::/10", "0.0.0.0/0", "Allow", "Deny", "TCP", "1e999",
               "-1", "9" * 30, "a" * 300, "x\u200by", "caf\u00e9", "\t", "a == 'b'", "(((", "has(", "*", "&a",
               "!!binary"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(), st.sampled_from(ODD_STRINGS),
    st.text(max_size=12), st.just("x" * 100_000), st.just(-(10 ** 200)))
keys = st.one_of(st.sampled_from(["name", "action", "spec", "ips", "cidr", "port", "labels", "selector"]),
                 st.text(max_size=8), st.integers(-3, 3), st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=6)


def nested(depth: int, leaf: Any = 1) -> Any:
    out = leaf
    for i in range(depth):
        out = [out] if i % 2 else {"k": out}
    return out


replacements = st.one_of(values, st.builds(nested, st.sampled_from([10, 63, 64, 65, 200])),
                         st.lists(st.just("10.0.0.1"), min_size=1000, max_size=1000))


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one to three parts replaced (or added) at random places."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(doc, (dict, list)) or not doc or draw(st.integers(0, 9)) == 0:
            doc = draw(replacements)  # the whole document: a list, a scalar, ...
            continue
        node = doc
        while True:
            key = draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            child = node[key]
            if not isinstance(child, (dict, list)) or not child or draw(st.booleans()):
                break
            node = child
        if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
            key = draw(keys)  # a new key: unknown fields
        node[key] = draw(replacements)
    return doc


# "billion laughs": nine levels of nine aliases each, 9^9 strings once expanded
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def dump_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


@st.composite
def damaged_text(draw: st.DrawFn, text: str) -> bytes:
    """The text of a document, possibly damaged the ways hostile or broken files are."""
    lines = text.splitlines(keepends=True) or ["\n"]
    how = draw(st.sampled_from(["none", "none", "duplicate-line", "bomb", "recursive-alias", "bad-utf8", "junk",
                                "truncate", "tabs", "anchors", "deep"]))
    if how == "duplicate-line":  # a key given twice, at whatever level the line is
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    elif how == "bomb":
        lines = [BOMB] + lines
    elif how == "recursive-alias":
        lines = ["loop: &loop [*loop]\n"] + lines
    elif how == "anchors":
        lines = ["shared: &s {k: v}\n", "again: *s\n", "<<: *s\n"] + lines
    elif how == "deep":  # past what a recursive reader survives
        lines.append("deep: " + "[" * 5000 + "]" * 5000 + "\n")
    elif how == "tabs":
        lines = [line.replace("  ", "\t", 1) for line in lines]
    data = "".join(lines).encode("utf-8", "surrogatepass")
    if how == "bad-utf8":
        i = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        data = data[:i] + bad + data[i:]
    elif how == "junk":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    elif how == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    return data


def yaml_input(base: Any) -> st.SearchStrategy[bytes]:
    return mutated(base).flatmap(lambda doc: damaged_text(dump_yaml(doc)))


def json_input(base: Any) -> st.SearchStrategy[bytes]:
    def dump(doc: Any) -> st.SearchStrategy[bytes]:
        try:
            text = json.dumps(doc, allow_nan=True)
        except (TypeError, ValueError):  # non-string keys that JSON has no form for
            text = json.dumps(str(doc)[:1000])
        return damaged_text(text)
    return mutated(base).flatmap(dump)


class ExampleTimeout(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: float = EXAMPLE_TIMEOUT) -> Iterator[None]:
    """Fails the example if it runs longer than `seconds` (a hang), via SIGALRM."""
    def expire(signum: int, frame: Any) -> None:
        raise ExampleTimeout(f"an example ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err
