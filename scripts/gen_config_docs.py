#!/usr/bin/env python3
"""Generates docs/configuration.md from the node configuration models in config/node.py.

    /opt/tortie-venv/bin/python scripts/gen_config_docs.py           # rewrite docs/configuration.md
    /opt/tortie-venv/bin/python scripts/gen_config_docs.py --check   # exit 1 if it is out of date
"""
from __future__ import annotations

import argparse
import ast
import inspect
import ipaddress
import sys
import textwrap
import types
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic.types import PathType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from config.node import FOREIGN_PROTOCOLS, RESTART, NodeConfig  # noqa: E402

OUTPUT = REPO / "docs" / "configuration.md"
TYPE_NAMES = {
    int: "integer", float: "number", bool: "boolean", str: "string", Path: "path",
    ipaddress.IPv4Address: "IPv4 address", ipaddress.IPv4Network: "IPv4 network (CIDR)", SecretStr: "string (secret)",
    ipaddress.IPv6Address: "IPv6 address",
}
PATH_KINDS = {"file": "path of an existing file", "dir": "path of an existing directory",
              "new": "path that does not exist yet"}
CONSTRAINTS = [(at.Ge, "ge", "≥ {}"), (at.Gt, "gt", "> {}"), (at.Le, "le", "≤ {}"), (at.Lt, "lt", "< {}"),
               (at.MinLen, "min_length", "length ≥ {}"), (at.MaxLen, "max_length", "length ≤ {}")]


def type_name(t) -> str:
    """A reader's name for a field's type annotation."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:  # e.g. pydantic's FilePath
        kind = next((m.path_type for m in t.__metadata__ if isinstance(m, PathType)), None)
        return PATH_KINDS.get(kind) or type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"mapping ({t.__name__})"
    if t in TYPE_NAMES:
        return TYPE_NAMES[t]
    if "IPvAnyAddress" in getattr(t, "__name__", ""):
        return "IP address (v4 or v6)"
    if "IPvAnyNetwork" in getattr(t, "__name__", ""):
        return "IP network (CIDR, v4 or v6)"
    raise ValueError(f"no documentation name for type {t!r}: add it to TYPE_NAMES")


def default(f: FieldInfo) -> str:
    if f.is_required():
        return "**required**"
    value = f.default_factory() if f.default_factory is not None else f.default
    if isinstance(value, BaseModel):
        return "see below" if type(value).model_fields else "`{}`"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def constraints(f: FieldInfo) -> str:
    out = []
    for meta in f.metadata:
        for cls, attr, fmt in CONSTRAINTS:
            if isinstance(meta, cls):
                out.append(fmt.format(getattr(meta, attr)))
        if getattr(meta, "pattern", None):
            out.append(f"matches `{meta.pattern}`")
    return "; ".join(out)


def nested_model(t) -> type[BaseModel] | None:
    """The model a field holds directly or as list elements, if any."""
    for candidate in (t, *typing.get_args(t)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def error_messages(func) -> list[str]:
    """The messages of the ValueErrors a validator raises, f-string fields shown as <expression>."""
    raises = sorted((node for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func))))
                     if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args),
                    key=lambda node: node.lineno)
    out = []
    for node in raises:
        arg = node.exc.args[0]
        parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
        out.append("".join(str(p.value) if isinstance(p, ast.Constant)
                           else f"<{ast.unparse(p.value).removeprefix('self.')}>" for p in parts))
    return out


def checks(model: type[BaseModel], path: str) -> list[str]:
    """The errors the model's validators report beyond each field's own type and constraints."""
    decorators = model.__pydantic_decorators__
    found = [(", ".join(f"`{path}.{f}`" if path else f"`{f}`" for f in v.info.fields), v.func)
             for v in decorators.field_validators.values()]
    found += [("across fields", v.func) for v in decorators.model_validators.values()]
    return [f"* {where}: {msg}" for where, func in found for msg in error_messages(func)]


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sections(model: type[BaseModel], path: str, title: str, restart: bool = False) -> list[str]:
    """One table for `model` at `path`, then one per nested model, depth first (`restart`: the parent field is
    restart-only, and so is everything in it)."""
    doc = (model.__doc__ or "").strip()
    if doc.startswith(f"{model.__name__}("):  # pydantic's generated signature, not a docstring
        doc = ""
    lines = [f"## {title}", ""] + ([doc, ""] if doc else [])
    lines += ["| key | type | default | description | constraints | on reload |", "|---|---|---|---|---|---|"]
    later: list[str] = []
    for name, f in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        field_restart = restart or f.json_schema_extra == RESTART
        lines.append(f"| `{key}` | {cell(type_name(f.annotation))} | {cell(default(f))} | "
                     f"{cell(f.description or '')} | {cell(constraints(f))} | "
                     f"{'**restart**' if field_restart else 'applied'} |")
        sub = nested_model(f.annotation)
        if sub is not None:
            sub_path = key + ("[]" if typing.get_origin(f.annotation) is list else "")
            later += sections(sub, sub_path, f"`{sub_path}` ({sub.__name__})", field_restart)
    errors = checks(model, path)
    if errors:
        lines += ["", "Also refused (the error `tortie config check` prints; `<...>` stands for a value):", ""] + errors
    return lines + [""] + later


def render() -> str:
    head = [
        "# Node configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_docs.py from config/node.py: edit the models, then run the script. -->",
        "",
        "One YAML file per host (default `/etc/tortie/tortie.yaml`), validated by the pydantic models in",
        "`config/node.py`. `tortie config check FILE...` prints every problem as `file: field.path: reason` and",
        "exits 2; `tortie run` refuses an invalid file and changes nothing. Unknown keys are errors. In key",
        "paths, `[]` stands for every element of a list. An example: `containers/labs/mesh3/node1/tortie.yaml`.",
        "",
        "A running daemon rereads the file on SIGHUP (`systemctl reload tortie`) and applies the change without",
        "disturbing the BGP sessions it does not touch. A field marked **restart** in the column *on reload* names",
        "the node, its sockets or the routes it owns: a reload that changes one is refused as a whole (the running",
        "configuration stays, the log says why) and the change needs a restart.",
        "",
        "Protocol numbers of other routing daemons, refused for `route_protocol` and `pod_route_protocol`: "
        + ", ".join(f"{n} ({name})" for n, name in FOREIGN_PROTOCOLS.items()) + ".",
        "",
    ]
    return "\n".join(head + sections(NodeConfig, "", "Top level (NodeConfig)")).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed file is up to date")
    text = render()
    if parser.parse_args().check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is out of date: run scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
