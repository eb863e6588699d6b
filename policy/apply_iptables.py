"""Applies rulesets with iptables and ipset: one `iptables-restore --noflush` per table (IPv4, IPv6).

Only chains named TT-* and ipsets named tt-* are ever created, flushed or deleted; the built-in chains only get
one jump each to our dispatch chains. A restore is atomic per table; if the IPv6 table fails after IPv4
succeeded, IPv4 is restored to the previous ruleset before the error is reported.
"""
from __future__ import annotations

import ctypes
import errno
import re
import shutil
import socket
from collections import Counter, defaultdict
from typing import Collection

from policy import nft_inspect
from policy import render_iptables as R
from policy.counters import RuleCounter, counters_from_sums
from policy.diff import Delta
from policy.ir import Ruleset
from policy.kernel import ApplyError, run
from policy.names import IPSET_PREFIX, IPT_PREFIX

FAMILIES = (4, 6)
_GET_INFO = 64  # IPT_SO_GET_INFO / IP6T_SO_GET_INFO: struct ipt_getinfo, 84 bytes, the table name first
_INFO_SIZE = 84


def _table_info(family: int) -> bytes | int:
    """The legacy filter table's hook offsets, entry count and size (no counters): any rule added, removed or
    resized changes them. An errno when the kernel will not say (e.g. no table yet)."""
    af, level = (socket.AF_INET, socket.IPPROTO_IP) if family == 4 else (socket.AF_INET6, socket.IPPROTO_IPV6)
    libc = ctypes.CDLL(None, use_errno=True)
    with socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        buf = ctypes.create_string_buffer(b"filter", _INFO_SIZE)
        size = ctypes.c_uint32(_INFO_SIZE)
        if libc.getsockopt(s.fileno(), level, _GET_INFO, buf, ctypes.byref(size)) != 0:
            return ctypes.get_errno() or errno.EIO
        return buf.raw[32:_INFO_SIZE]


_JUMPS = {f"-A {b} -j {c}": f"jump {b} -> {c}" for c, (b, _) in R.DISPATCH.items()}
_RULE = re.compile(rf"^-A ({re.escape(IPT_PREFIX)}\S+) (.*)$", re.M)
_CHAIN = re.compile(rf"^:({re.escape(IPT_PREFIX)}\S+)", re.M)
_JUMP = re.compile(rf"^-A (?:{'|'.join(b for b, _ in R.DISPATCH.values())}) -j \S+$", re.M)


_PROTOCOL = re.compile(r"(?<!\S)-p (\S+)")
_PROTOCOL_NUMBERS = {"icmpv6": 58, "ipv6-icmp": 58, "all": 0}  # iptables' own names, besides /etc/protocols


def _protocol_number(m: re.Match) -> str:
    name = m[1]
    if name.isdigit():
        return m[0]
    try:
        return f"-p {_PROTOCOL_NUMBERS[name] if name in _PROTOCOL_NUMBERS else socket.getprotobyname(name)}"
    except OSError:
        return m[0]


def _census(family: int, text: str) -> dict[str, int]:
    """Rules per chain of ours (chains without rules included) and each one's fingerprint (a rule replaced by
    another of the same count shows), and our jumps from the built-in chains, in iptables-save (or -restore)
    text. iptables-save writes our rules as render_iptables does, except that it names protocols and quotes a
    comment only when it has a space: protocols are fingerprinted by number, quotes left out."""
    rules: dict[str, list[bytes]] = defaultdict(list)
    for chain, rule in _RULE.findall(text):
        rules[chain].append(_PROTOCOL.sub(_protocol_number, rule).replace('"', "").encode())
    out = {}
    for c in {*rules, *_CHAIN.findall(text)}:
        out[f"IPv{family} chain {c}"] = len(rules.get(c, ()))
        out[f"IPv{family} rules of chain {c}"] = nft_inspect.fingerprint(rules.get(c, []))
    jumps = Counter(f"IPv{family} {_JUMPS[line]}" for line in _JUMP.findall(text) if line in _JUMPS)
    return out | jumps


class IptablesApplier:
    """The `KernelBackend` for iptables and ipset (policy.backend)."""

    name = "iptables"
    counts_transactions = False  # no generation counter: a change of ours is the table as it is right after it
    transactions = 0

    def __init__(self, variant: str = "legacy", slot: str = "a"):
        self.variant = variant  # "legacy" or "nft": which iptables backend
        self.slot = slot  # the ipset slot in use; the state file remembers it

    def _tool(self, family: int, name: str) -> str:
        return f"{'ip6tables' if family == 6 else 'iptables'}-{self.variant}-{name}"

    def _saved(self, family: int, counters: bool = False) -> str:
        return run([self._tool(family, "save"), "-t", "filter", *(["-c"] if counters else [])])

    def _ours(self, family: int) -> tuple[list[str], list[str]]:
        """Our chains present in the table, and the built-in chains missing their jump to us."""
        text = self._saved(family)
        chains = re.findall(rf"^:({re.escape(IPT_PREFIX)}\S+)", text, re.M)
        missing = [b for c, (b, _) in R.DISPATCH.items() if f"-A {b} -j {c}\n" not in text + "\n"]
        return chains, missing

    def _restore(self, family: int, script: str) -> None:
        run([self._tool(family, "restore"), "--noflush"], script)

    def _ipsets(self) -> list[str]:
        return [n for n in run(["ipset", "list", "-n"]).split() if n.startswith(IPSET_PREFIX)]

    def _destroy(self, names: list[str]) -> None:
        if names:
            run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in names))

    def available(self) -> bool:
        return all(shutil.which(t) for t in (self._tool(4, "restore"), self._tool(6, "restore"), "ipset"))

    def exists(self) -> bool:
        return all(f":{IPT_PREFIX}FORWARD " in self._saved(f) for f in FAMILIES)

    def apply_full(self, rs: Ruleset, prev: Ruleset | None) -> None:
        new_slot = "b" if self.slot == "a" else "a"
        stale = [n for n in self._ipsets() if n.endswith(f"-{new_slot}")]
        self._destroy(stale)  # leftovers of an earlier failed apply; no rule refers to the new slot
        try:
            run(["ipset", "restore"], R.ipset_script(rs.sets.values(), new_slot))
            done: list[int] = []
            try:
                for fam in FAMILIES:
                    chains, missing = self._ours(fam)
                    wanted = set(R.all_chains(rs))
                    self._restore(fam, R.restore_script(rs, fam, new_slot, remove=[c for c in chains if c not in wanted],
                                                        jumps=missing))
                    done.append(fam)
            except ApplyError:
                for fam in done:
                    self._rollback(fam, prev)
                raise
        except ApplyError:
            self._destroy([n for n in self._ipsets() if n.endswith(f"-{new_slot}")])
            raise
        self._destroy([n for n in self._ipsets() if n.endswith(f"-{self.slot}")])
        self.slot = new_slot

    def _rollback(self, family: int, prev: Ruleset | None) -> None:
        chains, missing = self._ours(family)
        if prev is None:
            self._restore(family, self._remove_script(family, chains))
            return
        wanted = set(R.all_chains(prev))
        self._restore(family, R.restore_script(prev, family, self.slot, remove=[c for c in chains if c not in wanted],
                                               jumps=missing))

    def _element_lines(self, delta: Delta, rs: Ruleset, undo: bool = False) -> list[str]:
        lines = []
        for name, (add, remove) in delta.set_elements.items():
            s, ipset = rs.sets[name], R.ipset_name(name, self.slot)
            if undo:
                add, remove = remove, add
            lines += (f"add {ipset} {R.ipset_element(s, e)}" for e in sorted(add))
            lines += (f"del {ipset} {R.ipset_element(s, e)}" for e in sorted(remove))
        return lines

    def apply_delta(self, delta: Delta, rs: Ruleset, prev: Ruleset) -> None:
        """ipset changes, then one restore per table. ipset restore is not a transaction: if any step fails, the
        element changes are undone, new sets destroyed and an IPv4 table already changed is restored from `prev`,
        before the error is raised."""
        lines = [R.ipset_create(s, self.slot) for s in delta.added_sets]
        for s in delta.added_sets:
            lines += (f"add {R.ipset_name(s.name, self.slot)} {R.ipset_element(s, e)}" for e in sorted(s.elements))
        lines += self._element_lines(delta, rs)
        rewrite = [*delta.added_policy_chains, *delta.changed_policy_chains, *delta.added_endpoint_chains]
        removed = [R.chain_name(n) for n in (*delta.removed_endpoint_chains, *delta.removed_policy_chains)]
        done: list[int] = []
        try:
            if lines:
                run(["ipset", "-exist", "restore"], "\n".join(lines) + "\n")
            if rewrite or removed or delta.dispatch or any(delta.isolated):
                for fam in FAMILIES:
                    self._restore(fam, R.restore_script(rs, fam, self.slot, chains=rewrite, remove=removed))
                    done.append(fam)
        except ApplyError:
            for fam in done:
                self._rollback(fam, prev)
            undo = self._element_lines(delta, rs, undo=True)
            if undo:
                run(["ipset", "-exist", "restore"], "\n".join(undo) + "\n")
            self._destroy([R.ipset_name(s.name, self.slot) for s in delta.added_sets
                           if R.ipset_name(s.name, self.slot) in self._ipsets()])
            raise
        self._destroy([R.ipset_name(n, self.slot) for n in delta.removed_sets])

    def _remove_script(self, family: int, chains: list[str]) -> str:
        text = self._saved(family)
        lines = ["*filter", *(f":{c} - [0:0]" for c in chains)]
        lines += (f"-D {b} -j {c}" for c, (b, _) in R.DISPATCH.items() if f"-A {b} -j {c}\n" in text + "\n")
        lines += (f"-X {c}" for c in chains)
        return "\n".join([*lines, "COMMIT"]) + "\n"

    def flush(self) -> None:
        for fam in FAMILIES:
            chains, _ = self._ours(fam)
            self._restore(fam, self._remove_script(fam, chains))
        self._destroy(self._ipsets())

    def _ipset_sizes(self) -> dict[str, int]:
        """Our ipsets and their element counts, from the headers only (`ipset list -t`)."""
        sizes, name = {}, ""
        for line in run(["ipset", "list", "-t"]).splitlines():
            if line.startswith("Name: "):
                name = line[6:].strip()
            elif line.startswith("Number of entries: ") and name.startswith(IPSET_PREFIX):
                sizes[name] = int(line.split(":")[1])
        return sizes

    def generation(self) -> tuple:
        tables = nft_inspect.generation() if self.variant == "nft" else tuple(_table_info(f) for f in FAMILIES)
        return tables, tuple(sorted(self._ipset_sizes().items()))

    def expected(self, rs: Ruleset) -> dict[str, int]:
        out = {f"ipset {R.ipset_name(n, self.slot)}": len(s.elements) for n, s in rs.sets.items()}
        for fam in FAMILIES:
            out |= _census(fam, R.restore_script(rs, fam, self.slot) + "".join(
                f"-A {b} -j {c}\n" for c, (b, _) in R.DISPATCH.items()))
        return out

    def fingerprints(self, chains: Collection[str] | None) -> dict[str, int]:
        return {}  # expected() computes them: iptables-save lists our rules as we write them

    def census(self) -> dict[str, int]:
        """Rules per TT- chain and our jumps (iptables-save, both families), elements per ipset of our slot (the
        other slot's are leftovers of a failed apply, removed by the next full apply)."""
        out = {f"ipset {n}": k for n, k in self._ipset_sizes().items() if n.endswith(f"-{self.slot}")}
        for fam in FAMILIES:
            out |= _census(fam, self._saved(fam))
        return out

    def counters(self, rs: Ruleset) -> list[RuleCounter]:
        names = {R.chain_name(n): n for n in (*rs.policy_chains, *rs.endpoint_chains)}
        sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        pattern = re.compile(r'^\[(\d+):(\d+)\] -A (\S+) .*--comment (?:"([^"]*)"|(\S+))')
        for fam in FAMILIES:
            for line in self._saved(fam, counters=True).splitlines():
                m = pattern.match(line)
                if m and m[3] in names:
                    acc = sums[names[m[3]], m[4] or m[5]]
                    acc[0] += int(m[1])
                    acc[1] += int(m[2])
        return counters_from_sums(rs, sums)
