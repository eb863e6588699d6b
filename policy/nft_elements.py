"""Changes of elements and chains sent straight to nf_tables over netlink, one transaction each batch.

`nft` first reads every set and chain of the table into its cache: 25-120 ms with 10,000 policies, more than the
change itself. A pod joining or leaving changes set and map elements, and adds or removes an endpoint chain when
its list of policies is new or unused; a policy changing refills its chains. This path builds the netlink batch
itself (element messages encoded by pyroute2, chains here, rules by policy.nft_rules) and waits for the kernel's
answer to each message: any error aborts the whole batch and is raised, leaving the ruleset as it was.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, nft_set_elem_list_msg

from policy.diff import Delta
from policy.ir import NamedSet, Ruleset
from policy.kernel import ApplyError
from policy.names import TABLE
from policy.nft_inspect import connection
from policy.nft_rules import endpoint_rules, nest, policy_rules, string
from policy.render_nft import ISOLATED

NFPROTO_INET = 1
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLMSG_ERROR = 2
IFNAMSIZ = 16
NLM_F_APPEND = 0x800
NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 3, 5, 6, 8


def _key(s: NamedSet, element: str) -> bytes:
    """The kernel's key layout: addresses in network order; concatenated fields each padded to 4 bytes."""
    if s.kind != "nport":
        return ipaddress.ip_address(element).packed
    ip, proto, port = element.split(",")
    return ipaddress.ip_address(ip).packed + struct.pack("B3x", int(proto)) + struct.pack("!H2x", int(port))


def _ifname(name: str) -> bytes:
    return name.encode().ljust(IFNAMSIZ, b"\0")


class _Batch:
    def __init__(self) -> None:
        self.data = b""
        self.seq = 0

    def _msg(self, msg: nfgen_msg, msg_type: int, flags: int) -> None:
        self.seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.data += msg.data

    def control(self, msg_type: int) -> None:
        msg = nfgen_msg()
        msg["res_id"] = NFNL_SUBSYS_NFTABLES
        self._msg(msg, msg_type, NLM_F_REQUEST)

    def raw(self, op: int, flags: int, attrs: bytes) -> None:
        """A message packed here: nfgenmsg (inet, version 0, resource id 0) and its attributes."""
        self.seq += 1
        body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + attrs
        self.data += struct.pack("=LHHLL", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | op,
                                 NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0) + body

    def add_chain(self, name: str) -> None:
        self.raw(NFT_MSG_NEWCHAIN, NLM_F_CREATE, string(1, TABLE) + string(3, name))

    def flush_chain(self, name: str) -> None:
        self.raw(NFT_MSG_DELRULE, 0, string(1, TABLE) + string(2, name))

    def add_rules(self, chain: str, rules: list[bytes]) -> None:
        for exprs in rules:
            self.raw(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, string(1, TABLE) + string(2, chain) + nest(4, exprs))

    def delete_chain(self, name: str) -> None:
        """Its rules go with it; nothing may jump to it any more (removed after what went to it)."""
        self.raw(NFT_MSG_DELCHAIN, 0, string(1, TABLE) + string(3, name))

    def elements(self, add: bool, set_name: str, elements: list[list]) -> None:
        msg = nft_set_elem_list_msg()
        msg["nfgen_family"] = NFPROTO_INET
        msg["attrs"] = [("NFTA_SET_ELEM_LIST_TABLE", TABLE), ("NFTA_SET_ELEM_LIST_SET", set_name),
                        ("NFTA_SET_ELEM_LIST_ELEMENTS", [{"attrs": e} for e in elements])]
        op = NFT_MSG_NEWSETELEM if add else NFT_MSG_DELSETELEM
        self._msg(msg, (NFNL_SUBSYS_NFTABLES << 8) | op, NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if add else 0))


def _key_attr(value: bytes) -> list:
    return [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", value)]})]


def _verdicts(add: dict[str, str]) -> list[list]:
    return [_key_attr(_ifname(i)) + [("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VERDICT", {"attrs": [
        ("NFTA_VERDICT_CODE", -4), ("NFTA_VERDICT_CHAIN", chain)]})]})]  # -4: NFT_GOTO
        for i, chain in sorted(add.items())]


def can_send(delta: Delta) -> bool:
    """No set is created or removed (those go to nft); `batches_for` may still raise Unsupported."""
    return not (delta.added_sets or delta.removed_sets)


def batches_for(delta: Delta, rs: Ruleset) -> list[_Batch]:
    """Two transactions: additions and chain changes (new chains before what jumps to them: policy chains, endpoint
    chains, map entries), then removals (with interfaces that move to another chain; then the chains nothing goes
    to any more: endpoint chains, then policy chains). `can_send(delta)` holds; raises nft_rules.Unsupported for a
    rule it cannot encode.

    The kernel answers an element addition at once but waits for an RCU grace period (10-15 ms here) after a
    removal. Adding first makes an endpoint that joins a selector count within a millisecond; until the second
    transaction commits, an endpoint that also leaves a selector still counts in the old one too.
    """
    adds, removes = _Batch(), _Batch()
    for b in (adds, removes):
        b.control(NFNL_MSG_BATCH_BEGIN)
    isolate, release = delta.isolated
    if isolate:
        adds.elements(True, ISOLATED, [_key_attr(_ifname(i)) for i in sorted(isolate)])
    if release:
        removes.elements(False, ISOLATED, [_key_attr(_ifname(i)) for i in sorted(release)])
    for name in sorted(delta.added_policy_chains):
        adds.add_chain(name)
    for name in sorted(delta.changed_policy_chains):
        adds.flush_chain(name)
    for name in sorted((*delta.added_policy_chains, *delta.changed_policy_chains)):
        adds.add_rules(name, policy_rules(rs.policy_chains[name]))
    for name in sorted(delta.added_endpoint_chains):
        adds.add_chain(name)
        adds.add_rules(name, endpoint_rules(rs.endpoint_chains[name]))
    for name, (add, remove) in sorted(delta.set_elements.items()):
        if add:
            adds.elements(True, name, [_key_attr(_key(rs.sets[name], e)) for e in sorted(add)])
        if remove:
            removes.elements(False, name, [_key_attr(_key(rs.sets[name], e)) for e in sorted(remove)])
    for vmap, (add, remove) in sorted(delta.dispatch.items()):
        new = {i: c for i, c in add.items() if i not in remove}
        if new:
            adds.elements(True, vmap, _verdicts(new))
        if remove:
            removes.elements(False, vmap, [_key_attr(_ifname(i)) for i in sorted(remove)])
        moved = {i: c for i, c in add.items() if i in remove}
        if moved:
            removes.elements(True, vmap, _verdicts(moved))
    for name in (*sorted(delta.removed_endpoint_chains), *sorted(delta.removed_policy_chains)):
        removes.delete_chain(name)
    out = []
    for b in (adds, removes):
        if b.seq > 1:
            b.control(NFNL_MSG_BATCH_END)
            out.append(b)
    return out


def send(b: _Batch) -> None:
    """Sends the batch on this thread's netfilter socket (kept open: nft_inspect.connection) and waits for an
    acknowledgement of every message in it; raises ApplyError on error."""
    expected = {seq for seq in range(2, b.seq)}  # all but BEGIN (1) and END (b.seq)
    with connection() as conn:
        s = conn.s
        s.sendto(b.data, (0, 0))
        try:
            while expected:
                data = s.recv(65536)
                offset = 0
                while offset + 16 <= len(data):
                    length, msg_type, _flags, seq, _pid = struct.unpack_from("=LHHLL", data, offset)
                    if msg_type == NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", data, offset + 16)
                        if error:
                            raise ApplyError(f"nf_tables rejected change #{seq - 1}: {os.strerror(-error)}")
                        expected.discard(seq)
                    offset += (length + 3) & ~3
        except socket.timeout:
            raise ApplyError("nf_tables did not answer a change") from None
