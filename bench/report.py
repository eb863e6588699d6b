"""What a benchmark prints and keeps: rows of its table and its results file in bench/results."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(label: str, *values: float | str, digits: int = 2) -> str:
    """A table line: the label in 52 columns, then each value right-aligned in 10 (numbers with `digits`)."""
    return f"{label:<52}" + "".join(f" {v:>10}" if isinstance(v, str) else f" {v:>10.{digits}f}" for v in values)


def write(output: Path, results: dict) -> None:
    """The results file (bench/results/<bench>.json unless the bench was told another)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
