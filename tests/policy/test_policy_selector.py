"""Selector expressions: parsing, evaluation, canonical text, errors."""
from __future__ import annotations

import re

import pytest

from policy.model import LabelSelector
from policy.selector import SelectorError, parse

LABELS = {"app": "web", "tier": "front", "env": "prod-eu"}


@pytest.mark.parametrize("text, want", [
    ("all()", True),
    ("app == 'web'", True),
    ('app == "db"', False),
    ("app != 'db'", True),
    ("missing != 'x'", True),
    ("has(tier)", True),
    ("!has(tier)", False),
    ("app in {'web', 'db'}", True),
    ("app not in {'web'}", False),
    ("missing not in {'a'}", True),
    ("missing in {'a'}", False),
    ("env contains 'eu'", True),
    ("env starts with 'prod'", True),
    ("env ends with 'us'", False),
    ("app == 'web' && tier == 'back' || env == 'prod-eu'", True),
    ("app == 'web' && (tier == 'back' || env == 'x')", False),
    ("!(app == 'db') && has(env)", True),
    ("example.com/team-a == 'web'", False),
])
def test_evaluation(text: str, want: bool) -> None:
    assert parse(text).matches(LABELS) is want


@pytest.mark.parametrize("text, error", [
    ("", "empty selector"),
    ("app == web", "expected a quoted string"),
    ("app = 'web'", "unexpected character"),
    ("has(app", "expected ')'"),
    ("app in {'a' 'b'}", "expected '}'"),
    ("app == 'web' &&", "expected a label key"),
    ("(app == 'web'", "expected ')'"),
    ("app == 'web' tier == 'x'", "expected '&&', '||' or the end"),
    ("app starts 'x'", "expected 'with'"),
    ("-app == 'x'", "expected a label key"),
])
def test_errors(text: str, error: str) -> None:
    with pytest.raises(SelectorError, match=re.escape(error)):
        parse(text)


def test_canonical_text_is_stable_and_round_trips() -> None:
    a = parse("tier in {'b','a'} && app == 'web'")
    assert str(a) == "tier in {'a', 'b'} && app == 'web'"
    assert str(parse(str(a))) == str(a)


def test_kubernetes_label_selector_equals_calico_expression() -> None:
    k = LabelSelector.model_validate({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["front", "back"]},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "app", "operator": "Exists"},
        {"key": "canary", "operator": "DoesNotExist"}]}).to_selector()
    assert k.matches(LABELS)
    assert not k.matches({**LABELS, "canary": "1"})
    assert str(k) == str(LabelSelector.model_validate({"matchExpressions": [
        {"key": "canary", "operator": "DoesNotExist"}, {"key": "app", "operator": "Exists"},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "tier", "operator": "In", "values": ["back", "front"]}],
        "matchLabels": {"app": "web"}}).to_selector()), "equal selectors print the same (and share one set)"
    assert str(LabelSelector().to_selector()) == "all()"
