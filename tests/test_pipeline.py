"""The three stages end to end through the real CLI, on small generated data and a random DINOv2 file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr
from conftest import error_lines, make_npz, run_cli
from medmnist.evaluator import getACC, getAUC

TEACHER_ARGS = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "4", "--batch-size", "32",
                "--device", "cpu"]
STUDENT_ARGS = ["--epochs", "2", "--batch-size", "16", "--image-size", "32", "--milestones", "1", "--device", "cpu"]


def test_three_stages_end_to_end(blood_root, vits_weights, tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    code, out, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--root", blood_root, "--weights", vits_weights,
                              "--cache-dir", cache_dir, "--json", *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0, err
    info = json.loads(out)
    assert info["created"] and info["dataset"] == "bloodmnist" and info["teacher"] == "dinov2_vits14"
    assert info["n_samples"] == {"train": 48, "val": 24, "test": 24}
    for split in ("val", "test"):
        assert 0 <= info["head_metrics"][split]["auc"] <= 1 and 0 <= info["head_metrics"][split]["acc"] <= 1

    group = zarr.open_group(info["path"], mode="r")
    assert group["train/features"].shape == (48, 384) and group["train/features"].dtype == np.float16
    assert group["test/logits"].shape == (24, 8) and group["test/logits"].dtype == np.float32
    assert np.isfinite(group["test/logits"][...]).all()
    assert (group["val/labels"][...][:, 0] == np.arange(24) % 8).all()
    assert not list(cache_dir.glob(".*partial*")), "the temporary cache folder must be renamed away"

    # The head's logits in the cache are the head applied to the cached features: nothing tempered.
    w, b = group["head/weight"][...], group["head/bias"][...]
    expect = group["test/features"][...].astype(np.float32) @ w.T + b
    np.testing.assert_allclose(group["test/logits"][...], expect, rtol=1e-4, atol=1e-4)

    code, out, _ = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--root", blood_root, "--weights", vits_weights,
                            "--cache-dir", cache_dir, *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0 and "already cached" in out

    code, out, _ = run_cli(["cache", "ls", "--cache-dir", cache_dir], capsys, monkeypatch)
    assert code == 0 and info["key"] in out
    code, out, _ = run_cli(["cache", "info", info["key"][:20], "--cache-dir", cache_dir], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["data_fingerprint"] == info["data_fingerprint"]

    run = tmp_path / "run"  # --dataset omitted: exactly one dataset is cached
    code, out, err = run_cli(["distill", "--t", "2", "--alpha", "0.2", "--cache-dir", cache_dir, "--out", run, "--json",
                              *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    for name in ("config.json", "history.csv", "history.png", "best.pt", "metrics.json", "test_scores.npy"):
        assert (run / name).is_file(), name
    assert info["weights_sha256"] in (run / "MODEL_CARD.md").read_text(), "the card names the teacher's weights"
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(np.isfinite(float(r["train_loss"])) for r in rows)

    scores = np.load(run / "test_scores.npy")
    labels = np.load(blood_root / "bloodmnist.npz")["test_labels"]
    assert scores.shape == (24, 8) and np.allclose(scores.sum(1), 1, atol=1e-5)
    assert result["test"]["auc"] == pytest.approx(getAUC(labels, scores, "multi-class"))
    assert result["test"]["acc"] == pytest.approx(getACC(labels, scores, "multi-class"))
    assert result["config"]["t"] == 2 and result["config"]["alpha"] == 0.2 and result["config"]["cache_key"] == info["key"]

    code, out, err = run_cli(["evaluate", run, "--json", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    again = json.loads(out)
    assert again["test"]["auc"] == pytest.approx(result["test"]["auc"], abs=1e-6)


def test_stale_cache_is_refused(blood_root, vits_weights, tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    code, _, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--root", blood_root, "--weights", vits_weights,
                            "--cache-dir", cache_dir, *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0, err
    make_npz(blood_root, "bloodmnist", seed=1)  # same file name and shapes, other images
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--cache-dir", cache_dir, "--out", tmp_path / "run",
                              *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 1
    assert "computed from other data" in err and "Traceback" not in err and len(error_lines(err)) == 1
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.parametrize("flag,kw", [
    ("chestmnist", dict(channels=1, multi_label=14)),
    ("pneumoniamnist", dict(channels=1, classes=2)),
    ("retinamnist", dict(channels=3, classes=5)),
])
def test_every_task_kind(flag, kw, vits_weights, tmp_path, capsys, monkeypatch):
    """Multi-label, binary (grayscale) and ordinal data run through both stages."""
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    make_npz(root, flag, n={"train": 32, "val": 16, "test": 16}, **kw)
    code, _, err = run_cli(["cache-teacher", "--dataset", flag, "--root", root, "--weights", vits_weights,
                            "--cache-dir", cache_dir, *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli(["distill", "--dataset", flag, "--cache-dir", cache_dir, "--out", tmp_path / "run", "--json",
                              *STUDENT_ARGS[:1], "1", *STUDENT_ARGS[2:]], capsys, monkeypatch)
    assert code == 0, err
    metrics = json.loads(out)
    assert 0 <= metrics["test"]["auc"] <= 1 and 0 <= metrics["test"]["acc"] <= 1
    scores = np.load(tmp_path / "run" / "test_scores.npy")
    outputs = 14 if flag == "chestmnist" else kw["classes"]
    assert scores.shape == (16, outputs) and ((scores >= 0) & (scores <= 1)).all()


def test_ce_baseline_needs_no_cache(blood_root, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", blood_root, "--alpha", "1",
                              "--cache-dir", tmp_path / "empty", "--out", tmp_path / "ce", "--json",
                              *STUDENT_ARGS[:1], "1", *STUDENT_ARGS[2:]], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["config"]["cache_key"] is None
