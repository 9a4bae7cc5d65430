"""The paper's tables from finished runs: Table 2 (methods x datasets) and Table 4 / Figure 4 (t, alpha).

Every run directory under --runs with config.json and metrics.json is one seed of one method;
runs of the same method, dataset, epochs and image size are averaged (mean and sample std over
seeds). The DINOv2 linear-probe rows come from the teacher caches' head metrics (one value each).
The paper's published numbers (medal/assets/paper) stand beside ours with the difference, so a
reproduction shows at a glance where it agrees; so do MedMNIST v2's own ResNet-18/50 numbers beside
our CE runs of the same models (medal/study/medmnist_benchmark.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medal.cache.store import cache_dir, list_caches
from medal.data.medmnist import DATASETS
from medal.models.teacher_spec import teacher_label
from medal.runtime.errors import MedalError
from medal.runtime.io import atomic, write_csv, write_json
from medal.runtime.plots import plt, save
from medal.study.medmnist_benchmark import medmnist_markdown, medmnist_rows
from medal.study.runs import METRICS, Run, collect_runs, opt, pm, read_paper, stats

PAPER_TEACHER, PAPER_T, PAPER_ALPHA = "dinov2_vitb14", 2.0, 0.2  # MedAlmighty as the paper ran it
PAPER_STUDENTS = {"resnet50": "ResNet-50", "seresnet50": "SENet-50", "skresnet50": "SKNet-50"}
METHOD_ORDER = ["ResNet-50", "SENet-50", "SKNet-50", "DINOv2-vits14", "DINOv2-vitb14", "DINOv2-vitl14", "CA-MKD",
                "MedAlmighty"]


def teachers_of(config: dict) -> list[str]:
    """A run's teachers by their short names (a run teacher by its directory's name; medal.models.teacher_spec.teacher_label)."""
    names = list(config.get("teachers") or ([config["teacher"]] if config.get("teacher") else []))
    return [teacher_label(name) for name in names]


def method_of(config: dict) -> tuple[str, str | None]:
    """(our label, the paper's method name or None) for one run's config."""
    student, t, alpha = config["student"], float(config["t"]), float(config["alpha"])
    teachers = teachers_of(config)
    if alpha == 1:
        return ("ResNet-50 (CE)" if student == "resnet50" else student), PAPER_STUDENTS.get(student)
    if len(teachers) > 1:
        short = "+".join(name.removeprefix("dinov2_") for name in teachers)
        if config.get("teacher_weighting", "ca-mkd") == "mean":
            return f"mean of teachers ({student}, {short}, t={t:g}, alpha={alpha:g})", None
        return f"CA-MKD ({student}, {short}, t={t:g}, alpha={alpha:g})", "CA-MKD"
    teacher = teachers[0] if teachers else None
    if student != "resnet50":
        return f"KD {student} ({teacher}, t={t:g}, alpha={alpha:g})", None
    paper = "MedAlmighty" if (teacher, t, alpha) == (PAPER_TEACHER, PAPER_T, PAPER_ALPHA) else None
    return f"MedAlmighty ({teacher}, t={t:g}, alpha={alpha:g})", paper


def with_paper(row: dict, paper: dict | None, suffix: str) -> dict:
    """Add the paper's numbers and ours minus theirs (None where the paper has no such row)."""
    for metric in METRICS:
        theirs = float(paper[f"{metric}{suffix}"]) if paper else None
        row[f"paper_{metric}"] = theirs
        row[f"{metric}_diff"] = None if theirs is None else round(row[f"{metric}_mean"] - theirs, 6)
    if suffix == "_mean":
        for metric in METRICS:
            row[f"paper_{metric}_std"] = float(paper[f"{metric}_std"]) if paper else None
    return row


def _order(row: dict) -> tuple:
    dataset = DATASETS.index(row["dataset"]) if row["dataset"] in DATASETS else len(DATASETS)
    method = METHOD_ORDER.index(row["paper_method"]) if row["paper_method"] in METHOD_ORDER else len(METHOD_ORDER)
    return dataset, row["dataset"], method, row["method"], row["epochs"] or 0, row["image_size"]


def table2(runs: list[Run], caches_root: Path) -> list[dict]:
    """One row per (dataset, method, epochs, image size), plus one per cached teacher's linear probe."""
    paper = {(r["method"], r["dataset"]): r for r in read_paper("table2_main_results.csv")}
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        c = run.config
        groups.setdefault((c["dataset"], method_of(c), c["epochs"], c["image_size"]), []).append(run)
    rows = []
    for (dataset, (label, paper_method), epochs, image_size), members in groups.items():
        c = members[0].config
        teachers = teachers_of(c) if float(c["alpha"]) < 1 else []
        row = {"dataset": dataset, "method": label, "paper_method": paper_method, "student": c["student"],
               "teacher": "+".join(teachers) or None, "t": c["t"] if teachers else None,
               "alpha": c["alpha"], "epochs": epochs, "image_size": image_size, **stats(members)}
        rows.append(with_paper(row, paper.get((paper_method, dataset)), "_mean"))
    for cache in list_caches(caches_root) if caches_root.is_dir() else []:
        a = cache.attrs
        kind, label = a.get("teacher_kind", "dinov2"), teacher_label(a["teacher"])
        name = f"DINOv2-{a['teacher'].removeprefix('dinov2_')}" if kind == "dinov2" else None
        method = f"{name} (linear probe)" if name else (f"teacher run {label}" if kind == "run" else f"{label} (linear probe)")
        test = a["head_metrics"]["test"]
        epochs = a["head"]["epochs"] if "head" in a else (a.get("teacher_run") or {}).get("epochs")
        row = {"dataset": a["dataset"], "method": method, "paper_method": name, "student": None,
               "teacher": label, "t": None, "alpha": None, "epochs": epochs,
               "image_size": a["image_size"], "n": 1, "seeds": "", "auc_mean": test["auc"], "auc_std": 0.0,
               "acc_mean": test["acc"], "acc_std": 0.0}
        rows.append(with_paper(row, paper.get((name, a["dataset"])), "_mean"))
    return sorted(rows, key=_order)


def ablation(runs: list[Run]) -> tuple[list[dict], list[dict]]:
    """Table 4 (every (t, alpha) point of single-teacher distilled runs) and Figure 4's curves through it."""
    paper = {(r["dataset"], float(r["t"]), float(r["alpha"])): r for r in read_paper("table4_ablation_t_alpha.csv")}
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        c = run.config
        if float(c["alpha"]) < 1 and len(teachers_of(c)) == 1:
            key = (c["dataset"], c["student"], teachers_of(c)[0], c["epochs"], c["image_size"], float(c["t"]), float(c["alpha"]))
            groups.setdefault(key, []).append(run)
    points = []
    for (dataset, student, teacher, epochs, image_size, t, alpha), members in sorted(groups.items()):
        row = {"dataset": dataset, "student": student, "teacher": teacher, "epochs": epochs, "image_size": image_size,
               "t": t, "alpha": alpha, **stats(members)}
        match = paper.get((dataset, t, alpha)) if (student, teacher) == ("resnet50", PAPER_TEACHER) else None
        points.append(with_paper(row, match, ""))
    curves = []
    for series in _series(points):
        for vary, fixed in (("t", "alpha"), ("alpha", "t")):
            for value in sorted({p[fixed] for p in series}):
                line = [p for p in series if p[fixed] == value]
                if len(line) >= 2:
                    curves += [{"vary": vary, **p} for p in sorted(line, key=lambda p: p[vary])]
    return points, curves


def _series(points: list[dict]) -> list[list[dict]]:
    """Points grouped by everything but (t, alpha): one set of plots each."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["dataset"], p["student"], p["teacher"], p["epochs"], p["image_size"]), []).append(p)
    return list(groups.values())


def figures(points: list[dict], curves: list[dict], out: Path) -> list[Path]:
    """Figure 4's line plots (vs t, vs alpha) and, for a full 2-D grid, a heatmap, per series."""
    written = []
    for series in _series(points):
        p0 = series[0]
        stem = f"figure4_{p0['dataset']}_{p0['student']}_{p0['teacher']}_e{p0['epochs']}_{p0['image_size']}px"
        title = f"{p0['dataset']}: {p0['student']} <- {p0['teacher']}"
        mine = [c for c in curves if (c["dataset"], c["student"], c["teacher"], c["epochs"], c["image_size"])
                == (p0["dataset"], p0["student"], p0["teacher"], p0["epochs"], p0["image_size"])]
        for vary, fixed in (("t", "alpha"), ("alpha", "t")):
            line = [c for c in mine if c["vary"] == vary]
            if line:
                written.append(plot_ablation(line, vary, fixed, f"{title}, vs {vary}", out / f"{stem}_{vary}.png"))
        ts, alphas = sorted({p["t"] for p in series}), sorted({p["alpha"] for p in series})
        if len(ts) >= 2 and len(alphas) >= 2 and len(series) == len(ts) * len(alphas):
            written.append(plot_heatmap(series, ts, alphas, title, out / f"{stem}_heatmap.png"))
    return written


def plot_ablation(curves: list[dict], vary: str, fixed: str, title: str, path: Path) -> Path:
    """AUC and ACC (mean ± std over seeds) against `vary`, one line per value of `fixed`; x marks the paper."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, metric in zip(axes, METRICS):
        for value in sorted({c[fixed] for c in curves}):
            line = [c for c in curves if c[fixed] == value]
            ax.errorbar([c[vary] for c in line], [c[f"{metric}_mean"] for c in line],
                        yerr=[c[f"{metric}_std"] for c in line], marker="o", capsize=3, label=f"{fixed}={value:g}")
            paper = [c for c in line if c[f"paper_{metric}"] is not None]
            if paper:
                ax.scatter([c[vary] for c in paper], [c[f"paper_{metric}"] for c in paper], marker="x", color="k",
                           zorder=3, label="paper" if value == min(c[fixed] for c in curves) else None)
        ax.set(xlabel=vary, ylabel=f"test {metric.upper()}", title=metric.upper())
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, path)


def plot_heatmap(points: list[dict], ts: list[float], alphas: list[float], title: str, path: Path) -> Path:
    """Mean test AUC and ACC over the full (t, alpha) grid."""
    fig, axes = plt.subplots(1, 2, figsize=(1.2 * len(ts) + 5, 0.5 * len(alphas) + 2.5), layout="constrained")
    for ax, metric in zip(axes, METRICS):
        grid = np.full((len(alphas), len(ts)), np.nan)
        for p in points:
            grid[alphas.index(p["alpha"]), ts.index(p["t"])] = p[f"{metric}_mean"]
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        for (i, j), value in np.ndenumerate(grid):
            bright = image.norm(value) > 0.6  # dark text on viridis' yellow end
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="k" if bright else "w")
        ax.set(xlabel="t", ylabel="alpha", title=f"test {metric.upper()}")
        fig.colorbar(image, ax=ax)
    fig.suptitle(title)
    return save(fig, path)


def table2_markdown(rows: list[dict]) -> str:
    lines = ["| dataset | method | teacher | epochs | px | n | AUC | paper AUC | ΔAUC | ACC | paper ACC | ΔACC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = {m: "" if r[f"paper_{m}"] is None else pm(r[f"paper_{m}"], r[f"paper_{m}_std"]) for m in METRICS}
        lines.append(f"| {r['dataset']} | {r['method']} | {r['teacher'] or ''} | {r['epochs']} | {r['image_size']} | {r['n']} "
                     f"| {pm(r['auc_mean'], r['auc_std'])} | {paper['auc']} | {opt(r['auc_diff'], True)} "
                     f"| {pm(r['acc_mean'], r['acc_std'])} | {paper['acc']} | {opt(r['acc_diff'], True)} |")
    return "\n".join(lines)


def table4_markdown(points: list[dict]) -> str:
    lines = ["| dataset | student | teacher | t | alpha | n | AUC | paper AUC | ΔAUC | ACC | paper ACC | ΔACC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['dataset']} | {p['student']} | {p['teacher']} | {p['t']:g} | {p['alpha']:g} | {p['n']} "
                     f"| {pm(p['auc_mean'], p['auc_std'])} | {opt(p['paper_auc'])} | {opt(p['auc_diff'], True)} "
                     f"| {pm(p['acc_mean'], p['acc_std'])} | {opt(p['paper_acc'])} | {opt(p['acc_diff'], True)} |")
    return "\n".join(lines)


def figure4_markdown(curves: list[dict]) -> str:
    lines = ["| dataset | teacher | varies | t | alpha | n | AUC | ACC |", "|---|---|---|---|---|---|---|---|"]
    for c in curves:
        lines.append(f"| {c['dataset']} | {c['teacher']} | {c['vary']} | {c['t']:g} | {c['alpha']:g} | {c['n']} "
                     f"| {pm(c['auc_mean'], c['auc_std'])} | {pm(c['acc_mean'], c['acc_std'])} |")
    return "\n".join(lines)


def write_text(path: Path, text: str) -> Path:
    return atomic(path, lambda tmp: tmp.write_text(text + "\n"))


@dataclass
class Report:
    out: Path
    table2: list[dict]
    table4: list[dict]
    figure4: list[dict]
    plots: list[Path]
    medmnist: list[dict] = field(default_factory=list)  # MedMNIST v2's official benchmark beside our CE runs

    def markdown(self) -> str:
        from medal.study.medmnist_benchmark import medmnist_markdown

        parts = ["## Table 2: test AUC / ACC, mean ± std over seeds", table2_markdown(self.table2)]
        if self.table4:
            parts += ["## Table 4: distillation at each (t, alpha)", table4_markdown(self.table4)]
        if self.medmnist:
            parts += ["## MedMNIST v2 official benchmark: our CE runs beside the published ResNet-18/50",
                      medmnist_markdown(self.medmnist)]
        return "\n\n".join(parts)


def run_report(runs: Path, out: Path | None = None, caches: Path | None = None) -> Report:
    """Collect, average and write report/{table2,table4,figure4,medmnist}.{csv,md}, the PNGs and report.json."""
    runs = Path(runs)
    found = collect_runs(runs) if runs.is_dir() else []
    if not found:
        raise MedalError(f"no finished runs (config.json + metrics.json) under {runs}; run `medal distill` or `medal sweep` first.")
    out = Path(out) if out else runs / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = table2(found, cache_dir(caches))
    points, curves = ablation(found)
    write_csv(out / "table2.csv", rows)
    write_text(out / "table2.md", table2_markdown(rows))
    if points:
        write_csv(out / "table4.csv", points)
        write_text(out / "table4.md", table4_markdown(points))
    if curves:
        write_csv(out / "figure4.csv", curves)
        write_text(out / "figure4.md", figure4_markdown(curves))
    official = medmnist_rows(found)
    if official:
        write_csv(out / "medmnist.csv", official)
        write_text(out / "medmnist.md", medmnist_markdown(official))
    plots = figures(points, curves, out)
    report = Report(out, rows, points, curves, plots, official)
    write_json(out / "report.json", {"runs": [str(r.path) for r in found], "table2": rows, "table4": points,
                                     "figure4": curves, "medmnist": official, "plots": [str(p) for p in plots]})
    return report
