"""What a benchmark prints and keeps: rows of its table and its results file in bench/results."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(label: str, *values: float | str, digits: int = 2) -> str:
    """A table line: the label in 52 columns, then each value right-aligned in 10 (numbers with `digits`)."""
    return f"{label:<52}" + "".join(f" {v:>10}" if isinstance(v, str) else f" {v:>10.{digits}f}" for v in values)


def write(name: str, results: dict) -> Path:
    """bench/results/<name>.json."""
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(results, indent=2))
    return out
