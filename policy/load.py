"""Reading policy files (multi-document YAML) and the endpoints file, with errors naming file, document and field."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from config.load import ConfigError, load_model, shorten, validation_errors, yaml_documents
from policy.model import (AnyPolicy, Endpoints, GlobalNetworkPolicy, K8sNetworkPolicy, TortieNetworkPolicy,
                          policy_id)

KINDS: dict[tuple[str, str], type[BaseModel]] = {
    ("networking.k8s.io/v1", "NetworkPolicy"): K8sNetworkPolicy,
    ("tortie.io/v1", "NetworkPolicy"): TortieNetworkPolicy,
    ("tortie.io/v1", "GlobalNetworkPolicy"): GlobalNetworkPolicy,
}


def parse_document(data: Any) -> AnyPolicy:
    """One policy document (already parsed YAML or JSON) -> its model; ValueError or ValidationError if bad."""
    if not isinstance(data, dict):
        raise ValueError(f"(top level): expected a mapping, got {type(data).__name__}")
    key = (data.get("apiVersion"), data.get("kind"))
    model = KINDS.get(key) if all(isinstance(k, str) for k in key) else None  # type: ignore[arg-type]
    if model is None:
        known = ", ".join(f"{a} {k}" for a, k in KINDS)
        raise ValueError(f"apiVersion/kind: unknown {shorten(repr(key[0]))} {shorten(repr(key[1]))}; known: {known}")
    return model.model_validate(data)  # type: ignore[return-value]


def load_policies(paths: Iterable[str | Path]) -> list[AnyPolicy]:
    """Loads every policy document of every file; raises ConfigError listing every problem found."""
    policies: list[AnyPolicy] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path in map(Path, paths):
        try:
            for number, line, data in yaml_documents(path):
                where = f"{path}: document {number} (line {line})"
                try:
                    p = parse_document(data)
                except ValidationError as e:
                    errors.extend(validation_errors(where, e))
                    continue
                except ValueError as e:
                    errors.append(f"{where}: {e}")
                    continue
                pid = policy_id(p)
                if pid in seen:
                    errors.append(f"{where}: metadata.name: {pid} is already defined at {seen[pid]}")
                seen[pid] = where
                policies.append(p)
        except ConfigError as e:
            errors.extend(e.errors)
    if errors:
        raise ConfigError(errors)
    return policies


def load_endpoints(path: str | Path) -> Endpoints:
    return load_model(path, Endpoints)
