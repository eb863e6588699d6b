"""Hostile values: a huge or deeply nested entry is dropped (counted, logged) and everything else flows."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import given, settings, strategies as st

from config.datastore import Change, DatastoreError
from config.datastore.base import MAX_DEPTH, MAX_VALUE_BYTES, decode, encode
from tests.datastore.conftest import collect, publish_raw

pytestmark = pytest.mark.timeout(60)

NESTED = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # json.loads raises RecursionError on this
DEEP = b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)  # parses, but too deep
HUGE = b'{"a":"' + b"x" * MAX_VALUE_BYTES + b'"}'
BAD = {"nested": NESTED, "deep": DEEP, "huge": HUGE, "nan": b'{"a":NaN}', "inf": b'{"a":[-1e400]}', "list": b"[1]", "utf8": b'{"a":"\xff"}',
       "digits": b'{"a":' + b"1" * 5000 + b"}"}


@pytest.mark.parametrize("name", sorted(BAD))
def test_decode_refuses_with_a_reason(name):
    with pytest.raises(ValueError):
        decode(BAD[name])


def test_decode_accepts_the_limits():
    at_depth = b'{"a":' * (MAX_DEPTH - 1) + b"[1]" + b"}" * (MAX_DEPTH - 1)
    assert decode(at_depth)
    assert decode(b'{"a":"' + b"x" * (MAX_VALUE_BYTES - 8) + b'"}')


async def test_writes_beyond_the_limits_are_refused(tmp_path, clients):
    ds = await clients.files(tmp_path, "node1")
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    for value in (deep, {"a": "x" * MAX_VALUE_BYTES}):
        with pytest.raises(DatastoreError, match="endpoints/node1/default/x"):
            await ds.put("endpoints/node1/default/x", value)
    assert ds.get("endpoints/node1/default/x") is None and not (tmp_path / "endpoints").exists()


async def test_files_hostile_entries_dropped(tmp_path, clients, caplog):
    (tmp_path / "policies/default").mkdir(parents=True)
    for name, payload in BAD.items():
        (tmp_path / f"policies/default/{name}.json").write_bytes(payload)
    (tmp_path / "policies/default/good.json").write_text('{"ok": 1}')
    with caplog.at_level(logging.WARNING):
        ds = await clients.files(tmp_path, "node1")
    assert ds.items("policies") == {"policies/default/good": {"ok": 1}}
    assert ds.rejected == len(BAD)
    assert "policies/default/nested" in caplog.text
    feed = ds.changes()
    (tmp_path / "policies/default/good.json").write_bytes(NESTED)  # a good entry turned hostile: last value kept
    (tmp_path / "policies/default/later.json").write_text('{"ok": 2}')
    await collect(feed, lambda c: c.key == "policies/default/later")
    assert ds.get("policies/default/good") == {"ok": 1} and ds.rejected == len(BAD) + 1


async def test_mqtt_hostile_retained_entries_do_not_break_sync(broker, clients):
    await publish_raw(broker, "admin", [(f"tortie/v1/policies/default/{name}", payload) for name, payload in BAD.items()]
                      + [("tortie/v1/policies/default/good", b'{"ok":1}')])
    one = await clients.mqtt(broker, "node1")  # before the fix: RecursionError, the session restarts for ever
    assert one.items("policies") == {"policies/default/good": {"ok": 1}}
    assert one.rejected == len(BAD) and one.resyncs == 0
    two = await clients.mqtt(broker, "node2")
    feed = two.changes()
    await publish_raw(broker, "admin", [("tortie/v1/policies/default/good", NESTED)])  # turned hostile while they run
    await one.put("nodes/node1", {"address": "10.99.0.1"})
    await collect(feed, lambda c: c == Change("nodes/node1", {"address": "10.99.0.1"}))
    assert two.get("policies/default/good") == {"ok": 1} and two.rejected == len(BAD) + 1
    await asyncio.sleep(0)
    assert one.connected and two.connected and one.resyncs == two.resyncs == 0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=60)


@settings(max_examples=200, deadline=None)
@given(json_values, st.integers(0, 60))
def test_any_value_is_written_or_refused_cleanly(value, wrap):
    """Random shapes (NaN, deep nesting, non-objects): a write either round-trips or raises DatastoreError."""
    for _ in range(wrap):
        value = {"a": value}
    try:
        data = encode("nodes/node1", value)
    except DatastoreError:
        return
    assert decode(data) == json.loads(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda n, s: s * n, st.integers(0, 3000), st.sampled_from([b"[", b'{"a":'])))
def test_any_payload_is_read_or_refused_cleanly(payload):
    try:
        assert isinstance(decode(payload), dict)
    except ValueError:
        pass
