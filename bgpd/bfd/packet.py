"""BFD control packets (RFC 5880 section 4.1): encode, decode and the reception checks of section 6.8.6.

Pure code. `decode` raises only `InvalidPacket`; the checks that need session state (which session, whether
authentication is in use) are the session's and the transport's.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
HEADER = struct.Struct("!BBBBIIIII")
MIN_LENGTH = HEADER.size  # 24
MIN_LENGTH_AUTH = MIN_LENGTH + 2  # auth type and auth len at least
MAX_U32 = 0xFFFFFFFF


class State(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(enum.IntEnum):
    NONE = 0
    DETECTION_TIME_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


class InvalidPacket(ValueError):
    """A datagram that RFC 5880 6.8.6 says to discard."""


@dataclass(frozen=True, slots=True)
class ControlPacket:
    state: State
    detect_mult: int
    my_discr: int
    your_discr: int = 0
    desired_min_tx: int = 1_000_000  # microseconds
    required_min_rx: int = 1_000_000
    required_min_echo_rx: int = 0
    diag: int = Diag.NONE  # 5 bits; values above 8 are reserved but carried
    poll: bool = False
    final: bool = False
    cpi: bool = False  # control plane independent
    demand: bool = False
    auth: bytes | None = None  # the raw authentication section when the A bit is set

    def encode(self) -> bytes:
        auth = self.auth or b""
        flags = ((self.poll << 5) | (self.final << 4) | (self.cpi << 3) | ((self.auth is not None) << 2)
                 | (self.demand << 1))
        return HEADER.pack((VERSION << 5) | (self.diag & 0x1F), (int(self.state) << 6) | flags, self.detect_mult,
                           MIN_LENGTH + len(auth), self.my_discr, self.your_discr, self.desired_min_tx,
                           self.required_min_rx, self.required_min_echo_rx) + auth


def decode(data: bytes) -> ControlPacket:
    """Parses one datagram; raises InvalidPacket for anything 6.8.6 discards before session lookup."""
    if len(data) < MIN_LENGTH:
        raise InvalidPacket(f"{len(data)} bytes, shorter than a control packet")
    vd, sf, mult, length, my_discr, your_discr, min_tx, min_rx, min_echo = HEADER.unpack_from(data)
    if vd >> 5 != VERSION:
        raise InvalidPacket(f"version {vd >> 5}")
    has_auth = bool(sf & 0x04)
    if length < (MIN_LENGTH_AUTH if has_auth else MIN_LENGTH):
        raise InvalidPacket(f"length field {length} too small")
    if length > len(data):
        raise InvalidPacket(f"length field {length} beyond the {len(data)}-byte datagram")
    if mult == 0:
        raise InvalidPacket("detect mult is zero")
    if sf & 0x01:
        raise InvalidPacket("multipoint bit set")
    if my_discr == 0:
        raise InvalidPacket("my discriminator is zero")
    state = State(sf >> 6)
    if your_discr == 0 and state not in (State.DOWN, State.ADMIN_DOWN):
        raise InvalidPacket(f"your discriminator is zero in state {state.name}")
    auth = None
    if has_auth:
        auth = bytes(data[MIN_LENGTH:length])
        if auth[1] != len(auth):
            raise InvalidPacket(f"auth len {auth[1]} does not match the {len(auth)}-byte auth section")
    return ControlPacket(state=state, detect_mult=mult, my_discr=my_discr, your_discr=your_discr,
                         desired_min_tx=min_tx, required_min_rx=min_rx, required_min_echo_rx=min_echo,
                         diag=vd & 0x1F, poll=bool(sf & 0x20), final=bool(sf & 0x10), cpi=bool(sf & 0x08),
                         demand=bool(sf & 0x02), auth=auth)
