"""The hardened YAML/JSON readers: every hostile or broken input is a ConfigError naming file, line and field."""
from __future__ import annotations

import time

import pytest

from config.load import (MAX_ALIAS_NODES, MAX_BYTES, MAX_DEPTH, MAX_NODES, ConfigError, load_yaml, parse_json,
                         yaml_documents)
from tests.fuzz.documents import BOMB


def refused(tmp_path, content: str | bytes) -> str:
    f = tmp_path / "in.yaml"
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError) as e:
        load_yaml(f)
    assert len(e.value.errors) == 1
    assert e.value.errors[0].startswith(f"{f}: ")
    return e.value.errors[0].removeprefix(f"{f}: ")


def test_duplicate_key_names_line_field_and_first_line(tmp_path):
    assert refused(tmp_path, "spec:\n  action: Deny\n  action: Allow\n") == \
        "line 3, column 3: spec.action: duplicate key 'action' (first at line 2)"


def test_duplicate_key_in_a_later_document(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("a: 1\n---\nb: [{x: 1, x: 2}]\n")
    docs = yaml_documents(f)
    assert next(docs) == (1, 1, {"a": 1})
    with pytest.raises(ConfigError, match=r"document 2: line 3, column 12: b\[0\]\.x: duplicate key 'x'"):
        next(docs)


def test_merge_keys_may_be_overridden(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("base: &b {x: 1, y: 1}\nc:\n  <<: *b\n  x: 2\n")
    assert load_yaml(f) == {"base": {"x": 1, "y": 1}, "c": {"x": 2, "y": 1}}


def test_billion_laughs_fails_fast(tmp_path):
    start = time.perf_counter()
    assert f"aliases expand to more than {MAX_ALIAS_NODES} nodes" in refused(tmp_path, BOMB)
    assert time.perf_counter() - start < 5  # generous: it takes milliseconds; without the bound it never ends


def test_recursive_alias(tmp_path):
    assert refused(tmp_path, "a: &x [1, *x]\n") == "line 1, column 11: a[1]: alias *x refers to a node that contains it"


def test_aliases_that_stay_small_are_fine(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("a: &a {k: v}\nb: [*a, *a]\n")
    assert load_yaml(f) == {"a": {"k": "v"}, "b": [{"k": "v"}, {"k": "v"}]}


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)),
                                  "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30])
def test_deep_nesting(tmp_path, text):
    reason = refused(tmp_path, text)
    # libyaml stops flow collections past 1,000 levels itself
    assert f"nested deeper than {MAX_DEPTH} levels" in reason or "exceeded maximum nesting depth" in reason


def test_invalid_utf8_names_line(tmp_path):
    assert refused(tmp_path, b"a: 1\nb: caf\xe9\n") == "line 2: (top level): invalid UTF-8 at byte 11"


def test_binary_junk(tmp_path):
    assert refused(tmp_path, "a: 1\nb: \x00\x01\x02\n") == \
        "line 2, column 4: invalid YAML: unacceptable character #x0000: control characters are not allowed"


@pytest.mark.parametrize("text", ["[" + "a," * MAX_NODES + "a]\n", "".join(f"k{i}: v\n" for i in range(MAX_NODES))])
def test_too_many_nodes(tmp_path, text):
    """4 MiB of `[a,a,...]` took two minutes and 1.6 GB before this bound, and failed only then."""
    assert f"more than {MAX_NODES} nodes" in refused(tmp_path, text)


def test_too_large(tmp_path):
    assert refused(tmp_path, "#" * (MAX_BYTES + 1)) == f"(top level): larger than the limit of {MAX_BYTES} bytes"


@pytest.mark.parametrize("text, reason", [
    ("a:\n  when: 2001-13-45\n", "line 2, column 9: a.when: cannot read this value: month must be in 1..12"),
    ("a: " + "9" * 5000 + "\n", "line 1, column 4: a: cannot read this value: Exceeds the limit (4300 digits)"),
    ('a: "\\ud800"\n', "line 1, column 7: invalid YAML: while parsing a quoted scalar, found invalid Unicode"),
    ("a: !!python/object:os.system x\n", "line 1, column 4: invalid YAML: could not determine a constructor"),
    ("a: 1\n---\nb: 2\n", "line 2, column 1: invalid YAML: expected a single document in the stream, but found"),
])
def test_values_the_constructors_refuse(tmp_path, text, reason):
    assert refused(tmp_path, text).startswith(reason)


def test_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, reason", [
    ('{"action": "Deny", "action": "Allow"}', "stdin: (somewhere): duplicate key 'action'"),
    ("[" * 100_000 + "]" * 100_000, f"stdin: (top level): nested deeper than {MAX_DEPTH} levels"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "stdin: [0][0][0][0][0][0][0][0][0][0][0][0]...("),
    ("NaN", "stdin: (somewhere): NaN is not a JSON number"),
    ('{"a": ["\\ud800"]}', "stdin: a[0]: a lone surrogate escape is not a character"),
    ("1" * 5000, "stdin: (somewhere): Exceeds the limit"),
    (b"\xff", "stdin: line 1: (top level): invalid UTF-8 at byte 0"),
    ("{", "stdin: line 1, column 2: invalid JSON: Expecting property name"),
    ("x" * 101, "stdin: (top level): larger than the limit of 100 bytes"),
])
def test_json_refusals(text, reason):
    with pytest.raises(ConfigError) as e:
        parse_json(text, "stdin", max_bytes=100 if text == "x" * 101 else MAX_BYTES)
    assert e.value.errors[0].startswith(reason)


def test_json_accepts_plain_documents():
    assert parse_json(b'{"a": [1, {"b": null}], "c": 1.5}', "x") == {"a": [1, {"b": None}], "c": 1.5}


def test_policy_with_duplicate_action_is_refused_not_last_wins(tmp_path):
    from policy.load import load_policies
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: tortie.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n"
                 "    - action: Deny\n      action: Allow\n")
    with pytest.raises(ConfigError) as e:
        load_policies([f])
    assert e.value.errors == [f"{f}: document 1: line 7, column 7: spec.ingress[0].action: duplicate key 'action' "
                              "(first at line 6)"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_only_regular_files_are_read(tmp_path, kind):
    """A FIFO without a writer used to block the reader forever."""
    import os
    path = {"directory": tmp_path, "device": "/dev/zero", "fifo": tmp_path / "fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConfigError, match=r"cannot read: (not a regular file|Is a directory)"):
        load_yaml(path)
