"""`medal report` sets MedMNIST v2's official ResNet-18/50 numbers beside our CE runs of the same model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from medal.runtime.io import write_json

# distill's config.json for a CE run with the published recipe (MedMNIST v2's maintainers' word)
RECIPE = {"alpha": 1.0, "t": 2.0, "teacher": None, "teachers": [], "epochs": 100, "batch_size": 128, "lr": 1e-3,
          "milestones": [50, 75], "patience": 0, "pretrained": False, "size": 28, "keep": "best", "as_rgb": True,
          "in_chans": 3, "interpolation": "nearest"}


def _run(runs: Path, name: str, test: dict, **config) -> None:
    """A finished run directory as distill leaves it (config.json, metrics.json), without training."""
    run = runs / name
    run.mkdir(parents=True)
    config = {**RECIPE, **config, "seed": config.get("seed", 0)}
    write_json(run / "config.json", config)
    write_json(run / "metrics.json", {"test": test, "val": test, "kept": config["keep"], "kept_epoch": 90,
                                      "last_epoch": {"epoch": 100, "test": test, "val": test}, "config": config})


def test_official_columns(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    blood18 = []
    for seed in (0, 1, 2):
        test = {"auc": float(rng.uniform(0.95, 1)), "acc": float(rng.uniform(0.9, 1))}
        blood18.append(test)
        _run(runs, f"blood18_s{seed}", test, dataset="bloodmnist", student="resnet18_28", image_size=28, seed=seed)
    _run(runs, "blood18_last", {"auc": 0.99, "acc": 0.9}, dataset="bloodmnist", student="resnet18_28", image_size=28,
         keep="last")
    _run(runs, "breast50_gray", {"auc": 0.85, "acc": 0.80}, dataset="breastmnist", student="resnet50_28",
         image_size=28, as_rgb=False, in_chans=1)
    _run(runs, "blood50_224", {"auc": 0.99, "acc": 0.96}, dataset="bloodmnist", student="resnet50", image_size=224)
    _run(runs, "blood50_224_bilinear", {"auc": 0.98, "acc": 0.94}, dataset="bloodmnist", student="resnet50",
         image_size=224, interpolation="bilinear")
    _run(runs, "organa18_224", {"auc": 0.99, "acc": 0.95}, dataset="organamnist", student="resnet18", image_size=224)
    _run(runs, "blood18_32", {"auc": 0.9, "acc": 0.8}, dataset="bloodmnist", student="resnet18", image_size=32)
    # not CE, or not a published model: only Table 2 shows these
    _run(runs, "kd", {"auc": 0.9, "acc": 0.8}, dataset="bloodmnist", student="resnet18_28", image_size=28, alpha=0.2,
         teacher="dinov2_vitb14", teachers=["dinov2_vitb14"])
    _run(runs, "senet", {"auc": 0.9, "acc": 0.8}, dataset="bloodmnist", student="seresnet50", image_size=224)

    code, out, err = run_cli(["report", "--runs", runs, "--cache-dir", tmp_path / "none", "--json"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    rows = {(r["dataset"], r["student"], r["image_size"], r["recipe_differs"]): r for r in result["medmnist"]}
    assert len(rows) == 7

    def check(row: dict, model: str | None, auc: float | None, acc: float | None, n: int = 1) -> None:
        assert (row["official_model"], row["official_auc"], row["official_acc"], row["n"]) == (model, auc, acc, n)
        for metric, theirs in (("auc", auc), ("acc", acc)):
            expected = None if theirs is None else pytest.approx(row[f"{metric}_mean"] - theirs, abs=1e-6)
            assert row[f"{metric}_diff"] == expected

    # the published recipe: the published row, with the difference
    same = rows[("bloodmnist", "resnet18_28", 28, "")]
    check(same, "ResNet-18 (28)", 0.998, 0.958, n=3)
    assert same["auc_mean"] == pytest.approx(np.mean([t["auc"] for t in blood18]))
    assert same["acc_std"] == pytest.approx(np.std([t["acc"] for t in blood18], ddof=1))
    assert same["compared"].endswith("vs MedMNIST v2 ResNet-18 (28): the published recipe")
    check(rows[("bloodmnist", "resnet50", 224, "")], "ResNet-50 (224)", 0.997, 0.950)
    check(rows[("organamnist", "resnet18", 224, "")], "ResNet-18 (224)", 0.998, 0.951)
    # another recipe: its own row, compared with the published one and saying how it differs
    check(rows[("bloodmnist", "resnet18_28", 28, "the last epoch's weights (published: best val AUC)")], "ResNet-18 (28)", 0.998, 0.958)
    gray = rows[("breastmnist", "resnet50_28", 28, "1 input channel(s) (published: 3)")]
    check(gray, "ResNet-50 (28)", 0.857, 0.812)
    assert "1 channel(s)" in gray["compared"] and "recipe differs" in gray["compared"]
    check(rows[("bloodmnist", "resnet50", 224, "bilinear upsampling (published: PIL nearest)")], "ResNet-50 (224)",
          0.997, 0.950)
    # a size MedMNIST v2 did not train that model at: no published numbers
    other = rows[("bloodmnist", "resnet18", 32, "32 px (published: 224 px)")]
    check(other, None, None, None)
    assert other["compared"].endswith("no published row (MedMNIST v2 reports resnet18 at 224 px only)")

    report = runs / "report"
    with open(report / "medmnist.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # MedMNIST's dataset order, then its model order; a recipe that is the published one first
    assert [(r["dataset"], r["official_model"], r["recipe_differs"][:4]) for r in table] == [
        ("breastmnist", "ResNet-50 (28)", "1 in"), ("bloodmnist", "ResNet-18 (28)", ""),
        ("bloodmnist", "ResNet-18 (28)", "the "), ("bloodmnist", "ResNet-50 (224)", ""),
        ("bloodmnist", "ResNet-50 (224)", "bili"), ("bloodmnist", "", "32 p"), ("organamnist", "ResNet-18 (224)", "")]
    markdown = (report / "medmnist.md").read_text()
    assert markdown.count("\n- ") == 7 and "| bloodmnist | ResNet-18 (28) | resnet18_28 | 28 | no | 3 |" in markdown
    assert json.loads((report / "report.json").read_text())["medmnist"] == result["medmnist"]
    assert {r["method"] for r in result["table2"]} >= {"resnet18_28", "seresnet50"}  # Table 2 is as before

    code, out, err = run_cli(["report", "--runs", runs, "--cache-dir", tmp_path / "none"], capsys, monkeypatch)
    assert code == 0 and "## MedMNIST v2 official benchmark" in out and "Compared:" in out
