"""KD against the CE baseline from finished runs: choose (t, alpha) on val, then compare on test paired by seed.

    python benchmarks/kd_vs_ce.py choose RUNS                 # prints "t alpha": the best seed-0 val AUC of the grid
    python benchmarks/kd_vs_ce.py compare RUNS --t T --alpha A  # markdown: per-seed KD - CE, mean ± std, the grid

Reads only config.json and metrics.json, so it works on any medal runs folder (`medal sweep --runs-dir`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def runs(folder: Path) -> list[tuple[dict, dict]]:
    """(config, metrics) of every finished run directly under `folder`."""
    found = []
    for metrics in sorted(Path(folder).glob("*/metrics.json")):
        found.append((json.loads((metrics.parent / "config.json").read_text()), json.loads(metrics.read_text())))
    return found


def choose(folder: Path) -> tuple[float, float]:
    """The (t, alpha) whose seed-0 run has the best validation AUC (ties: the first in name order)."""
    grid = [(m["val"]["auc"], c["t"], c["alpha"]) for c, m in runs(folder) if c["alpha"] < 1 and c["seed"] == 0]
    if not grid:
        raise SystemExit(f"error: no distilled seed-0 runs under {folder}")
    _, t, alpha = max(grid, key=lambda g: g[0])
    return t, alpha


def pm(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def compare(folder: Path, t: float, alpha: float) -> str:
    all_runs = runs(folder)
    ce = {c["seed"]: m for c, m in all_runs if c["alpha"] == 1}
    kd = {c["seed"]: m for c, m in all_runs if c["alpha"] == alpha and c["t"] == t}
    seeds = sorted(set(ce) & set(kd))
    lines = [f"KD at t={t:g}, alpha={alpha:g} against the CE baseline, paired by seed ({len(seeds)} seeds)", "",
             "| seed | CE test AUC | KD test AUC | KD - CE AUC | CE test ACC | KD test ACC | KD - CE ACC |",
             "|---|---|---|---|---|---|---|"]
    diffs: dict[str, list[float]] = {"auc": [], "acc": []}
    for s in seeds:
        for k in diffs:
            diffs[k].append(kd[s]["test"][k] - ce[s]["test"][k])
        lines.append(f"| {s} | {ce[s]['test']['auc']:.4f} | {kd[s]['test']['auc']:.4f} | {diffs['auc'][-1]:+.4f} "
                     f"| {ce[s]['test']['acc']:.4f} | {kd[s]['test']['acc']:.4f} | {diffs['acc'][-1]:+.4f} |")
    if seeds:
        lines.append(f"| mean ± std | {pm([ce[s]['test']['auc'] for s in seeds])} | {pm([kd[s]['test']['auc'] for s in seeds])} "
                     f"| {pm(diffs['auc'])} | {pm([ce[s]['test']['acc'] for s in seeds])} "
                     f"| {pm([kd[s]['test']['acc'] for s in seeds])} | {pm(diffs['acc'])} |")
    lines += ["", "The (t, alpha) grid at seed 0 (val chooses; test shown for the record)", "",
              "| t | alpha | val AUC | val ACC | test AUC | test ACC |", "|---|---|---|---|---|---|"]
    for c, m in sorted(all_runs, key=lambda r: (r[0]["t"], r[0]["alpha"])):
        if c["alpha"] < 1 and c["seed"] == 0:
            lines.append(f"| {c['t']:g} | {c['alpha']:g} | {m['val']['auc']:.4f} | {m['val']['acc']:.4f} "
                         f"| {m['test']['auc']:.4f} | {m['test']['acc']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("choose", "compare"))
    parser.add_argument("runs", type=Path)
    parser.add_argument("--t", type=float)
    parser.add_argument("--alpha", type=float)
    args = parser.parse_args()
    if args.what == "choose":
        print(*choose(args.runs))
    else:
        print(compare(args.runs, args.t, args.alpha))


if __name__ == "__main__":
    main()
