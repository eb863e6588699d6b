"""Loading YAML and JSON input with errors that name the file, the field and the reason.

Every reader refuses hostile or broken input with a ConfigError instead of a traceback, a hang or a silent
choice: files over MAX_BYTES or MAX_NODES, other than regular files, invalid UTF-8, nesting deeper than
MAX_DEPTH, duplicate mapping keys (YAML and JSON), aliases that would expand to more than MAX_ALIAS_NODES
nodes ("billion laughs") or into themselves, values the constructors cannot represent (a 5,000-digit
integer, 2001-13-45), and (JSON) lone surrogates.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml._yaml import CParser  # libyaml, bundled with the PyYAML wheels
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

M = TypeVar("M", bound=BaseModel)

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIAS_NODES = 100_000
MAX_NODES = 250_000  # per file, about 10,000 policies; each node costs memory and time before validation
_PART = 60  # longest key or message fragment quoted in an error
_PARTS = 12  # most path parts named in an error


class ConfigError(Exception):
    """Invalid configuration: `errors` holds one 'file: field: reason' line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def shorten(text: str, limit: int = _PART) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc[:_PARTS]:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if not part.isprintable() or len(part) > _PART:
            part = shorten(repr(part))
        out += f".{part}" if out else part
    if len(loc) > _PARTS:
        out += f"...({len(loc)} levels)"
    return out or "(top level)"


def validation_errors(source: str, exc: ValidationError) -> list[str]:
    return [f"{source}: {field_path(e['loc'])}: {shorten(e['msg'], 300)}" for e in exc.errors()]


def read_text(path: str | Path, max_bytes: int = MAX_BYTES) -> str:
    """The file's text: at most `max_bytes`, strict UTF-8; ConfigError otherwise."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer would wait forever; a regular file ignores it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError([f"{path}: cannot read: not a regular file"])
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    return decode(data, str(path), max_bytes)


def decode(data: bytes, source: str, max_bytes: int = MAX_BYTES) -> str:
    if len(data) > max_bytes:
        raise ConfigError([f"{source}: (top level): larger than the limit of {max_bytes} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError([f"{source}: line {line}: (top level): invalid UTF-8 at byte {e.start}"]) from None


class _Refused(yaml.MarkedYAMLError):
    """A document this loader refuses; `path` is the field path where it was found."""

    def __init__(self, path: str, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)
        self.path = path


class StrictLoader(Composer, CParser, SafeConstructor, Resolver):
    """A safe loader that bounds size, depth and alias expansion and refuses duplicate keys while composing.

    libyaml (CParser) scans and parses, ten times faster than PyYAML's Python scanner; nodes are composed
    here, in Python, where every node can be counted and checked before anything is built from it.
    """

    def __init__(self, stream: str):
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._nodes = 0  # composed in this file
        self._where: list[str | int] = []
        self._depth = 0
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes when expanded, height)
        self._expanded = 0
        self._root: Node = ScalarNode("tag:yaml.org,2002:null", "")

    def _refuse(self, problem: str, mark) -> _Refused:
        return _Refused(field_path(tuple(self._where)), problem, mark)

    def compose_document(self) -> Node:
        self._size.clear()
        self._expanded = 0
        self._root = super().compose_document()
        return self._root

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._size.get(id(node))
            if size is None:
                raise self._refuse(f"alias *{event.anchor} refers to a node that contains it", event.start_mark)
            self._expanded += size[0]
            if self._expanded > MAX_ALIAS_NODES:
                raise self._refuse(f"aliases expand to more than {MAX_ALIAS_NODES} nodes", event.start_mark)
            if self._depth + size[1] > MAX_DEPTH:
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return node
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise self._refuse(f"more than {MAX_NODES} nodes", self.peek_event().start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, ScalarNode):
            self._size[id(node)] = (1, 1)
        else:
            items = node.value if isinstance(node, SequenceNode) else [n for kv in node.value for n in kv]
            sizes = [self._size[id(n)] for n in items]
            self._size[id(node)] = (1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes), default=0))
        return node

    def compose_sequence_node(self, anchor: str | None) -> Node:
        start = self.get_event()
        node = SequenceNode(self._tag(SequenceNode, start), [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        while not self.check_event(yaml.SequenceEndEvent):
            self._where.append(len(node.value))
            node.value.append(self.compose_node(node, len(node.value)))
            self._where.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: str | None) -> Node:
        start = self.get_event()
        node = MappingNode(self._tag(MappingNode, start), [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        first: dict[Any, int] = {}
        while not self.check_event(yaml.MappingEndEvent):
            key = self.compose_node(node, None)
            name: Any = None
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                name = self.construct_object(key)
                if name in first:
                    self._where.append(name)
                    raise self._refuse(f"duplicate key {shorten(repr(name))} (first at line {first[name]})",
                                       key.start_mark)
                first[name] = key.start_mark.line + 1
            self._where.append(name if name is not None else "?")
            node.value.append((key, self.compose_node(node, key)))
            self._where.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def _tag(self, kind: type[Node], event: Any) -> str:
        tag = event.tag
        return self.resolve(kind, None, event.implicit) if tag is None or tag == "!" else tag

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as e:
            raise _Refused(field_path(self._path_to(node)), f"cannot read this value: {shorten(str(e), 200)}",
                           node.start_mark) from None

    def _path_to(self, target: Node) -> tuple:
        """Where `target` is in the current document (only looked up for an error)."""
        stack: list[tuple[Node, tuple]] = [(self._root, ())]
        seen: set[int] = set()
        while stack:
            node, loc = stack.pop()
            if node is target:
                return loc
            if id(node) in seen or isinstance(node, ScalarNode):
                continue
            seen.add(id(node))
            if isinstance(node, SequenceNode):
                stack.extend((n, loc + (i,)) for i, n in enumerate(node.value))
            else:
                for k, v in node.value:
                    name = k.value if isinstance(k, ScalarNode) else "?"
                    stack.extend([(k, loc), (v, loc + (name,))])
        return ()


def _yaml_error(source: str, e: yaml.YAMLError, text: str) -> str:
    if isinstance(e, yaml.reader.ReaderError):  # no mark, a position in the text
        line = text.count("\n", 0, e.position) + 1
        column = e.position - text.rfind("\n", 0, e.position)
        return (f"{source}: line {line}, column {column}: invalid YAML: unacceptable character "
                f"#x{e.character:04x}: {e.reason}")
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    if isinstance(e, _Refused):
        return f"{source}: {where}{e.path}: {e.problem}"
    problem = ", ".join(filter(None, [getattr(e, "context", None), getattr(e, "problem", None)])) or str(e)
    return f"{source}: {where}invalid YAML: {shorten(problem, 200)}"


def yaml_documents(path: str | Path, max_bytes: int = MAX_BYTES) -> Iterator[tuple[int, int, Any]]:
    """Yields (document number from 1, first line, data) for each non-empty document of a YAML file."""
    text = read_text(path, max_bytes)
    current = 1  # the document being read, for errors
    try:
        loader = StrictLoader(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(f"{path}: document {current}", e, text)]) from None
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is not None:
                yield current, node.start_mark.line + 1, data
            current += 1
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(f"{path}: document {current}", e, text)]) from None
    except RecursionError:
        raise ConfigError([f"{path}: document {current}: (top level): nested too deeply"]) from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, max_bytes: int = MAX_BYTES) -> Any:
    """The one YAML document of a file (None if empty); ConfigError if invalid or if there are several."""
    text = read_text(path, max_bytes)
    try:
        loader = StrictLoader(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(str(path), e, text)]) from None
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(str(path), e, text)]) from None
    except RecursionError:
        raise ConfigError([f"{path}: (top level): nested too deeply"]) from None
    finally:
        loader.dispose()


class _JSONRefused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise _JSONRefused(f"duplicate key {shorten(repr(dup))}")
    return out


def _constant(name: str) -> Any:
    raise _JSONRefused(f"{name} is not a JSON number")


def parse_json(data: bytes | str, source: str, max_bytes: int = MAX_BYTES) -> Any:
    """A JSON document, with the same limits as the YAML readers; ConfigError naming `source` otherwise."""
    if isinstance(data, bytes):
        text = decode(data, source, max_bytes)
    elif len(data) > max_bytes:
        raise ConfigError([f"{source}: (top level): larger than the limit of {max_bytes} bytes"])
    else:
        text = data
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise ConfigError([f"{source}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"]) from None
    except _JSONRefused as e:
        raise ConfigError([f"{source}: (somewhere): {e}"]) from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise ConfigError([f"{source}: (somewhere): {shorten(str(e), 200)}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: (top level): nested deeper than {MAX_DEPTH} levels"]) from None
    _check_tree(value, source)
    return value


def _check_tree(value: Any, source: str) -> None:
    """Depth and lone surrogates, without recursion (json.loads accepts "\\ud800" and 900 levels)."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 1)]
    while stack:
        v, loc, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError([f"{source}: {field_path(loc)}: nested deeper than {MAX_DEPTH} levels"])
        if isinstance(v, dict):
            for k, item in v.items():
                stack.append((k, loc, depth))
                stack.append((item, loc + (k,), depth + 1))
        elif isinstance(v, list):
            stack.extend((item, loc + (i,), depth + 1) for i, item in enumerate(v))
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError([f"{source}: {field_path(loc)}: a lone surrogate escape is not a character"]) \
                    from None


def load_model(path: str | Path, model: type[M]) -> M:
    """Reads one YAML document from `path` into `model`, or raises ConfigError."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: (top level): expected a mapping, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_errors(str(path), e)) from None
