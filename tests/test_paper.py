"""Reproducing the paper end to end on tiny generated data: sweep, report, t-SNE and Grad-CAM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import error_lines, make_npz, run_cli
from matplotlib.image import imread

from medal.runtime.io import write_json
from medal.study.report import Run, ablation, method_of, run_report
from medal.study.sweep import parse_values

TEACHER_ARGS = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "3", "--batch-size", "32",
                "--device", "cpu"]
STUDENT_ARGS = ["--epochs", "1", "--batch-size", "16", "--image-size", "32", "--milestones", "1", "--device", "cpu"]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png(path: Path) -> np.ndarray:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= 150 and image.shape[1] >= 300, (path, image.shape)
    assert image[..., :3].std() > 0.01, f"{path} is blank"
    return image


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["test"]


def test_sweep_report_and_figures(vits_weights, tmp_path, capsys, monkeypatch):
    root, cache_dir, runs = tmp_path / "data", tmp_path / "cache", tmp_path / "runs"
    make_npz(root, "bloodmnist")
    code, _, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--root", root, "--weights", vits_weights,
                            "--cache-dir", cache_dir, *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0, err

    sweep = ["sweep", "--dataset", "bloodmnist", "--t", "1:2", "--alpha", "0.2", "--seeds", "0,1", "--runs-dir", runs,
             "--cache-dir", cache_dir, "--json", *STUDENT_ARGS]
    code, out, err = run_cli(sweep, capsys, monkeypatch)
    assert code == 0, err
    results = json.loads(out)
    names = sorted(Path(r["run"]).name for r in results)
    assert names == [f"bloodmnist_resnet50_dinov2_vits14_t{t}_a0.2_s{s}" for t in (1, 2) for s in (0, 1)]
    assert json.loads((runs / "sweep.json").read_text())["grid"] == {"t": [1.0, 2.0], "alpha": [0.2], "seed": [0, 1]}
    stamps = {name: (runs / name / "metrics.json").stat().st_mtime_ns for name in names}

    code, out, err = run_cli(sweep, capsys, monkeypatch)  # everything finished: nothing retrains
    assert code == 0, err
    assert "4 of 4 runs already finished" in err and len(json.loads(out)) == 4
    assert stamps == {name: (runs / name / "metrics.json").stat().st_mtime_ns for name in names}

    # the CE baseline, two seeds at once in child processes; alpha = 1 ignores t, so two t values are one point
    code, out, err = run_cli(["sweep", "--dataset", "bloodmnist", "--alpha", "1", "--t", "1,2", "--seeds", "0:1",
                              "--jobs", "2", "--root", root, "--runs-dir", runs, "--cache-dir", cache_dir, "--json", *STUDENT_ARGS],
                             capsys, monkeypatch)
    assert code == 0, err
    assert sorted(Path(r["run"]).name for r in json.loads(out)) == [f"bloodmnist_resnet50_ce_s{s}" for s in (0, 1)]
    assert not list(runs.glob(".*")), "no logs or partial folders are left behind"

    code, out, err = run_cli(["report", "--runs", runs, "--cache-dir", cache_dir], capsys, monkeypatch)
    assert code == 0, err
    assert "| bloodmnist | ResNet-50 (CE) |" in out and "Table 4" in out
    report = runs / "report"
    table2 = {row["method"]: row for row in _csv(report / "table2.csv")}
    assert set(table2) == {"ResNet-50 (CE)", "DINOv2-vits14 (linear probe)",
                           "MedAlmighty (dinov2_vits14, t=1, alpha=0.2)", "MedAlmighty (dinov2_vits14, t=2, alpha=0.2)"}
    for method, row in table2.items():
        for key in ("auc_mean", "acc_mean"):
            assert 0 <= float(row[key]) <= 1
    for t in (1, 2):
        row = table2[f"MedAlmighty (dinov2_vits14, t={t}, alpha=0.2)"]
        per_run = [_metrics(runs / f"bloodmnist_resnet50_dinov2_vits14_t{t}_a0.2_s{s}") for s in (0, 1)]
        assert row["n"] == "2" and row["paper_auc"] == ""  # the paper distilled from ViT-B, not ViT-S
        for m in ("auc", "acc"):
            values = [r[m] for r in per_run]
            assert float(row[f"{m}_mean"]) == pytest.approx(np.mean(values))
            assert float(row[f"{m}_std"]) == pytest.approx(np.std(values, ddof=1))
    ce = table2["ResNet-50 (CE)"]
    assert ce["paper_method"] == "ResNet-50" and float(ce["paper_auc"]) == 0.994  # the paper's BloodMNIST ResNet-50
    assert float(ce["auc_diff"]) == pytest.approx(float(ce["auc_mean"]) - 0.994, abs=1e-6)
    probe = table2["DINOv2-vits14 (linear probe)"]
    head = json.loads(run_cli(["cache", "ls", "--cache-dir", cache_dir, "--json"], capsys, monkeypatch)[1])[0]
    assert float(probe["auc_mean"]) == pytest.approx(head["head_metrics"]["test"]["auc"]) and probe["auc_std"] == "0.0"

    table4 = _csv(report / "table4.csv")
    figure4 = _csv(report / "figure4.csv")
    assert [(float(r["t"]), float(r["alpha"])) for r in table4] == [(1.0, 0.2), (2.0, 0.2)]
    assert [r["vary"] for r in figure4] == ["t", "t"]
    assert (report / "table4.md").read_text().count("| bloodmnist |") == 2
    plots = json.loads((report / "report.json").read_text())["plots"]
    assert [Path(p).name for p in plots] == ["figure4_bloodmnist_resnet50_dinov2_vits14_e1_32px_t.png"]
    _png(Path(plots[0]))

    distilled, baseline = runs / names[2], runs / "bloodmnist_resnet50_ce_s0"
    code, out, err = run_cli(["tsne", distilled, "--baseline", baseline, "--max-points", "20", "--cache-dir", cache_dir,
                              "--device", "cpu", "--out", tmp_path / "fig5.png"], capsys, monkeypatch)
    assert code == 0, err
    image = _png(tmp_path / "fig5.png")
    assert image.shape[1] > 2 * image.shape[0], "three panels side by side"
    with np.load(tmp_path / "fig5.npz") as npz:
        assert list(npz["titles"]) == ["student resnet50", "teacher dinov2_vits14 (CLS)", "baseline resnet50 (alpha=1)"]
        assert npz["xy0"].shape == npz["xy1"].shape == npz["xy2"].shape == (20, 2) and np.isfinite(npz["xy1"]).all()
        assert npz["labels"].shape == (20,) and set(npz["labels"]) <= set(range(8))

    code, out, err = run_cli(["cam", distilled, "--n", "6", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert out.strip() == str(distilled / "gradcam.png")
    _png(distilled / "gradcam.png")


def _fake_run(runs: Path, name: str, test: dict, **config) -> None:
    """A finished-looking run directory: what `report` reads, without training."""
    run = runs / name
    run.mkdir(parents=True)
    config = {"dataset": "bloodmnist", "student": "resnet50", "epochs": 100, "image_size": 224, "t": 2.0, **config}
    write_json(run / "config.json", config)
    write_json(run / "metrics.json", {"test": test, "val": test, "config": config})


def test_report_grid_heatmap_and_paper_columns(tmp_path, capsys, monkeypatch):
    """A full 2 x 2 (t, alpha) grid with the paper's teacher: paper numbers beside ours and a heatmap."""
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for t in (2.0, 5.0):
        for alpha in (0.2, 0.5):
            for seed in (0, 1, 2):
                test = {"auc": float(rng.uniform(0.9, 1)), "acc": float(rng.uniform(0.8, 1))}
                _fake_run(runs, f"kd_t{t}_a{alpha}_s{seed}", test, t=t, alpha=alpha, seed=seed,
                          teacher="dinov2_vitb14", teachers=["dinov2_vitb14"])
    _fake_run(runs, "camkd_s0", {"auc": 0.9, "acc": 0.8}, alpha=0.2, seed=0,
              teachers=["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14"])
    _fake_run(runs, "senet_s0", {"auc": 0.9, "acc": 0.8}, alpha=1.0, seed=0, student="seresnet50", teachers=[])
    (runs / ".half.partial").mkdir()  # an interrupted run is not counted
    report = run_report(runs, caches=tmp_path / "no-caches")

    methods = {row["method"]: row for row in report.table2}
    assert len(methods) == 6
    assert methods["MedAlmighty (dinov2_vitb14, t=2, alpha=0.2)"]["paper_auc"] == pytest.approx(0.995)
    assert methods["MedAlmighty (dinov2_vitb14, t=5, alpha=0.5)"]["paper_method"] is None  # Table 2 is t=2, alpha=0.2
    assert methods["seresnet50"]["paper_method"] == "SENet-50" and methods["seresnet50"]["n"] == 1
    camkd = [m for m in methods if m.startswith("CA-MKD")]
    assert len(camkd) == 1 and methods[camkd[0]]["paper_method"] == "CA-MKD"
    assert [r["paper_method"] for r in report.table2][:2] == ["SENet-50", "CA-MKD"]  # the paper's row order

    points = {(p["t"], p["alpha"]): p for p in report.table4}
    assert len(points) == 4 and all(p["n"] == 3 for p in points.values())
    assert points[(5.0, 0.5)]["paper_auc"] == pytest.approx(0.997) and points[(5.0, 0.2)]["paper_auc"] is None
    assert len(report.figure4) == 8  # vs t at two alphas, vs alpha at two temperatures, two points each
    assert sorted(p.name.rsplit("_", 1)[1] for p in report.plots) == ["alpha.png", "heatmap.png", "t.png"]
    for path in report.plots:
        _png(path)
    assert "## Table 4" in report.markdown()


def test_method_names():
    assert method_of({"student": "resnet50", "t": 2, "alpha": 1, "teachers": []}) == ("ResNet-50 (CE)", "ResNet-50")
    assert method_of({"student": "skresnet50", "t": 2, "alpha": 1}) == ("skresnet50", "SKNet-50")
    assert method_of({"student": "resnet18", "t": 4, "alpha": 0.3, "teacher": "dinov2_vits14"})[1] is None
    points, curves = ablation([Run(Path("x"), {"dataset": "pathmnist", "student": "resnet50", "epochs": 100,
                                               "image_size": 224, "t": 8, "alpha": 0.8, "teachers": ["dinov2_vitb14"]},
                                   {"auc": 0.9, "acc": 0.9})])
    assert points[0]["paper_acc"] == pytest.approx(0.913) and curves == []


def test_value_lists_and_ranges():
    assert parse_values("1:9", "--t") == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert parse_values("0.1:0.9:0.1", "--alpha") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_values("2, 1:3,2", "--t") == [2, 1, 3]
    assert parse_values("0:2", "--seeds", integer=True) == [0, 1, 2]


@pytest.mark.parametrize("args,expected", [
    (["--t", "0"], "temperature t must be > 0"),
    (["--t", "1,-2"], "temperature t must be > 0"),
    (["--t", "3:1"], "ends before it starts"),
    (["--t", "1:3:0"], "positive step"),
    (["--t", "1:2:3:4"], "START:END or START:END:STEP"),
    (["--alpha", "0.5:1.5:0.5"], "alpha must lie in [0, 1]"),
    (["--alpha", "high"], "takes numbers"),
    (["--seeds", "0.5"], "whole numbers"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_sweep_bad_input(args, expected, blood_root, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    code, out, err = run_cli(["sweep", "--dataset", "bloodmnist", "--root", blood_root, "--runs-dir", runs,
                              "--cache-dir", tmp_path / "cache", *args], capsys, monkeypatch)
    assert code == 1, (out, err)
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err and not runs.exists() and not (tmp_path / "cache").exists()


def test_report_without_runs(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["report", "--runs", tmp_path], capsys, monkeypatch)
    assert code == 1 and error_lines(err) == [f"error: no finished runs (config.json + metrics.json) under {tmp_path}; "
                                              "run `medal distill` or `medal sweep` first."]
    assert not (tmp_path / "report").exists()
