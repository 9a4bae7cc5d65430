"""Finished runs and published tables, as the study reads them: one run's config and test metrics,
their mean ± std over seeds, and the paper's CSVs shipped in medal/assets/paper."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medal.runtime.io import read_json

PAPER_DIR = Path(__file__).resolve().parents[1] / "assets" / "paper"
METRICS = ("auc", "acc")


@dataclass
class Run:
    path: Path
    config: dict
    test: dict  # {"auc": ..., "acc": ...}


def collect_runs(runs: Path) -> list[Run]:
    """Every finished run below `runs`; hidden (partial) folders are skipped."""
    found = []
    for metrics_file in sorted(Path(runs).rglob("metrics.json")):
        run = metrics_file.parent
        if any(part.startswith(".") for part in run.relative_to(runs).parts) or not (run / "config.json").is_file():
            continue
        found.append(Run(run, read_json(run / "config.json"), read_json(metrics_file)["test"]))
    return found


def summarise(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def stats(runs: list[Run]) -> dict:
    out: dict = {"n": len(runs), "seeds": " ".join(str(r.config.get("seed")) for r in runs)}
    for metric in METRICS:
        out[f"{metric}_mean"], out[f"{metric}_std"] = summarise([r.test[metric] for r in runs])
    return out


def read_paper(name: str) -> list[dict]:
    with open(PAPER_DIR / name, newline="") as f:
        return list(csv.DictReader(f))


def pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def opt(value: float | None, signed: bool = False) -> str:
    return "" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")
