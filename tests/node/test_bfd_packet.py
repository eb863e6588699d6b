"""BFD control packet codec: round-trips and the RFC 5880 6.8.6 discard checks."""
import struct

import pytest
from hypothesis import given, strategies as st

from bgpd.bfd.packet import ControlPacket, Diag, InvalidPacket, State, decode

u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def auth_sections(draw):
    body = draw(st.binary(max_size=40))
    return bytes([draw(st.integers(1, 5)), len(body) + 2]) + body


@st.composite
def packets(draw):
    state = draw(st.sampled_from(State))
    your = draw(u32) if state in (State.DOWN, State.ADMIN_DOWN) else draw(st.integers(1, 0xFFFFFFFF))
    return ControlPacket(state=state, detect_mult=draw(st.integers(1, 255)), my_discr=draw(st.integers(1, 0xFFFFFFFF)),
                         your_discr=your, desired_min_tx=draw(u32), required_min_rx=draw(u32),
                         required_min_echo_rx=draw(u32), diag=draw(st.integers(0, 31)), poll=draw(st.booleans()),
                         final=draw(st.booleans()), cpi=draw(st.booleans()), demand=draw(st.booleans()),
                         auth=draw(st.none() | auth_sections()))


@given(packets())
def test_round_trip(packet):
    data = packet.encode()
    assert len(data) == 24 + len(packet.auth or b"")
    assert decode(data) == packet


@given(packets(), st.binary(max_size=16))
def test_trailing_bytes_beyond_length_are_ignored(packet, tail):
    assert decode(packet.encode() + tail) == packet


@given(st.binary(max_size=80))
def test_any_datagram_decodes_or_raises_invalid_packet(data):
    try:
        packet = decode(data)
    except InvalidPacket:
        return
    assert packet.detect_mult > 0 and packet.my_discr != 0


@given(packets(), st.data())
def test_any_mutation_decodes_or_raises_invalid_packet(packet, data):
    raw = bytearray(packet.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw))
    except InvalidPacket:
        pass


def raw(vers=1, diag=0, state=1, flags=0, mult=3, length=24, my=1, your=0, tail=b""):
    return struct.pack("!BBBBIIIII", (vers << 5) | diag, (state << 6) | flags, mult, length, my, your,
                       300_000, 300_000, 0) + tail


def test_valid_minimal():
    p = decode(raw())
    assert p.state is State.DOWN and p.diag == Diag.NONE and p.desired_min_tx == 300_000 and p.auth is None


@pytest.mark.parametrize("data, reason", [
    (raw()[:23], "shorter"),
    (raw(vers=0), "version 0"),
    (raw(vers=2), "version 2"),
    (raw(length=23), "too small"),
    (raw(length=25), "beyond"),
    (raw(mult=0), "detect mult"),
    (raw(flags=0x01), "multipoint"),
    (raw(my=0), "my discriminator"),
    (raw(state=3, your=0), "your discriminator is zero in state UP"),
    (raw(state=2, your=0), "your discriminator is zero in state INIT"),
    (raw(flags=0x04, length=24), "too small"),  # A set: at least 26
    (raw(flags=0x04, length=26, tail=b"\x01\x05"), "auth len"),
    (raw(flags=0x04, length=28, tail=b"\x01\x03ab"), "auth len"),
])
def test_discarded(data, reason):
    with pytest.raises(InvalidPacket, match=reason):
        decode(data)


def test_auth_section_kept():
    p = decode(raw(flags=0x04, length=29, tail=b"\x01\x05\x01pw"))
    assert p.auth == b"\x01\x05\x01pw"
    assert p.encode() == raw(flags=0x04, length=29, tail=b"\x01\x05\x01pw")
