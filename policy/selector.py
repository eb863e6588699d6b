"""Label selectors: Calico's selector expressions and Kubernetes LabelSelectors, as one expression tree.

Every selector has a canonical text form (`str(sel)`): equal selectors share one named set in the kernel.
The grammar is small enough that a recursive-descent parser is clearer than a parser-generator dependency.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

Labels = Mapping[str, str]


class SelectorError(ValueError):
    """A selector that does not parse; the message says where and why."""


def _quote(v: str) -> str:
    return "'" + v + "'" if "'" not in v else '"' + v + '"'


class Selector:
    def matches(self, labels: Labels) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class All(Selector):
    def matches(self, labels: Labels) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has(Selector):
    key: str

    def matches(self, labels: Labels) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class Compare(Selector):
    """`key op value` where op is ==, !=, contains, starts with, ends with (a missing key only matches `!=`)."""

    key: str
    op: str
    value: str

    def matches(self, labels: Labels) -> bool:
        v = labels.get(self.key)
        if self.op == "!=":
            return v != self.value
        if v is None:
            return False
        return {"==": v == self.value, "contains": self.value in v,
                "starts with": v.startswith(self.value), "ends with": v.endswith(self.value)}[self.op]

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"


@dataclass(frozen=True)
class In(Selector):
    """`key in {...}`; with negate, `key not in {...}` (true when the key is missing)."""

    key: str
    values: tuple[str, ...]
    negate: bool = False

    def matches(self, labels: Labels) -> bool:
        return (labels.get(self.key) in self.values) != self.negate

    def __str__(self) -> str:
        vals = ", ".join(_quote(v) for v in self.values)
        return f"{self.key} {'not in' if self.negate else 'in'} {{{vals}}}"


@dataclass(frozen=True)
class Not(Selector):
    inner: Selector

    def matches(self, labels: Labels) -> bool:
        return not self.inner.matches(labels)

    def __str__(self) -> str:
        return f"!{self.inner}" if isinstance(self.inner, (Has, All)) else f"!({self.inner})"


@dataclass(frozen=True)
class BoolOp(Selector):
    op: str  # "&&" or "||"
    terms: tuple[Selector, ...]

    def matches(self, labels: Labels) -> bool:
        if self.op == "&&":
            return all(t.matches(labels) for t in self.terms)
        return any(t.matches(labels) for t in self.terms)

    def __str__(self) -> str:
        return f" {self.op} ".join(f"({t})" if isinstance(t, BoolOp) else str(t) for t in self.terms)


def conjunction(terms: list[Selector]) -> Selector:
    """AND of terms, deduplicated and sorted so that equivalent selectors print the same."""
    flat: set[Selector] = set()
    for t in terms:
        flat.update(t.terms if isinstance(t, BoolOp) and t.op == "&&" else (t,))
    flat.discard(All())
    if not flat:
        return All()
    if len(flat) == 1:
        return flat.pop()
    return BoolOp("&&", tuple(sorted(flat, key=str)))


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'[^']*'|"[^"]*")
    | (?P<op>==|!=|&&|\|\||[!(){},])
    | (?P<word>[A-Za-z0-9_./-]+)
    )""", re.VERBOSE)
_LABEL_KEY = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


_SPACE = re.compile(r"\s*")
MAX_LENGTH = 16384  # characters; a selector is a line of text, not a document
MAX_DEPTH = 64  # nested parentheses and negations: the parser and every tree walk recurse this deep


class _Parser:
    def __init__(self, text: str):
        if len(text) > MAX_LENGTH:
            raise SelectorError(f"selector is {len(text)} characters long, the limit is {MAX_LENGTH}")
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = _SPACE.match(text).end()  # type: ignore[union-attr]
        while pos < len(text):  # linear: every step consumes a token and the whitespace after it
            m = _TOKEN.match(text, pos)
            if not m:
                raise SelectorError(f"unexpected character {text[pos]!r} at offset {pos}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = _SPACE.match(text, m.end()).end()  # type: ignore[union-attr]
        self.i = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> tuple[str, str, int] | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def fail(self, want: str) -> SelectorError:
        tok = self.peek()
        got = f"{tok[1]!r} at offset {tok[2]}" if tok else "end of selector"
        return SelectorError(f"expected {want}, got {got}")

    def take(self, value: str) -> bool:
        tok = self.peek()
        if tok and tok[0] in ("op", "word") and tok[1] == value:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.take(value):
            raise self.fail(repr(value))

    def parse(self) -> Selector:
        if not self.tokens:
            raise SelectorError("empty selector (use all() to select everything)")
        sel = self.or_expr()
        if self.peek():
            raise self.fail("'&&', '||' or the end")
        return sel

    def or_expr(self) -> Selector:
        terms = [self.and_expr()]
        while self.take("||"):
            terms.append(self.and_expr())
        return terms[0] if len(terms) == 1 else BoolOp("||", tuple(terms))

    def and_expr(self) -> Selector:
        terms = [self.unary()]
        while self.take("&&"):
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else BoolOp("&&", tuple(terms))

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SelectorError(f"selector nests parentheses and negations deeper than {MAX_DEPTH} levels")

    def unary(self) -> Selector:
        if self.take("!"):
            self.nested()
            inner = self.unary()
            self.depth -= 1
            return Not(inner)
        if self.take("("):
            self.nested()
            inner = self.or_expr()
            self.expect(")")
            self.depth -= 1
            return inner
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1] in ("all", "has") and (nxt := self.peek(1)) and nxt[1] == "(":
            self.i += 2
            if tok[1] == "all":
                self.expect(")")
                return All()
            key = self.key()
            self.expect(")")
            return Has(key)
        key = self.key()
        for op in ("==", "!=", "contains"):
            if self.take(op):
                return Compare(key, op, self.string())
        for first in ("starts", "ends"):
            if self.take(first):
                self.expect("with")
                return Compare(key, f"{first} with", self.string())
        negate = self.take("not")
        if self.take("in"):
            return In(key, self.string_set(), negate)
        raise self.fail("'==', '!=', 'in', 'not in', 'contains', 'starts with' or 'ends with'")

    def key(self) -> str:
        tok = self.peek()
        if not tok or tok[0] != "word" or not _LABEL_KEY.match(tok[1]):
            raise self.fail("a label key")
        self.i += 1
        return tok[1]

    def string(self) -> str:
        tok = self.peek()
        if not tok or tok[0] != "str":
            raise self.fail("a quoted string")
        self.i += 1
        return tok[1][1:-1]

    def string_set(self) -> tuple[str, ...]:
        self.expect("{")
        values: list[str] = []
        if not self.take("}"):
            values.append(self.string())
            while self.take(","):
                values.append(self.string())
            self.expect("}")
        return tuple(sorted(set(values)))


def parse(text: str) -> Selector:
    """Parses a Calico-style selector expression, e.g. `app == 'web' && tier in {'a', 'b'} && !has(canary)`."""
    return _Parser(text).parse()
