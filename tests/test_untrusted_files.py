"""Untrusted files run no code: a crafted pickle wherever medal reads a checkpoint ends in one `error:` line.

The payload's `__reduce__` makes unpickling call `open(MARKER, "w")`: a plain `torch.load` (torch 2.4's
default, and timm's reader there) would create the marker file. Every case must refuse the file and
leave no marker: a run's best.pt (`evaluate`, `predict`, the run as a `--teacher`), `--weights` of a
DINOv2 and of a timm teacher, a `local-dir:` teacher's weights (timm's reader, weights_only from timm 1.0.26),
and a resume checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import error_lines, make_npz, run_cli

from medal.pipeline.distill import DistillConfig, run_distill


class Payload:
    """Unpickled, it creates `marker`: what a crafted checkpoint's author could make it do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def craft(path: Path, marker: Path) -> Path:
    torch.save({"model": Payload(marker), "state_dict": Payload(marker), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, a finished one-epoch run)."""
    base = tmp_path_factory.mktemp("untrusted")
    make_npz(base / "data", "bloodmnist", n={"train": 32, "val": 16, "test": 16})
    run = run_distill(DistillConfig(dataset="bloodmnist", root=base / "data", alpha=1, student="test_resnet", epochs=1,
                                    batch_size=16, image_size=28, milestones=(), device="cpu", out=base / "run"))
    return base / "data", run


def test_the_payload_runs_when_unpickled_freely(tmp_path):
    """The check that the cases below could fail: unpickled without weights_only, the payload writes its marker."""
    marker = tmp_path / "marker"
    torch.load(craft(tmp_path / "crafted.pt", marker), weights_only=False)
    assert marker.exists()


CASES = {
    "evaluate a run with a crafted best.pt": lambda run, data, crafted, tmp: ["evaluate", run, "--device", "cpu"],
    "predict with a crafted best.pt": lambda run, data, crafted, tmp: ["predict", run, data / "bloodmnist.npz",
                                                                       "--device", "cpu"],
    "the run as a teacher": lambda run, data, crafted, tmp: ["cache-teacher", "--dataset", "bloodmnist", "--root", data,
                                                             "--teacher", run, "--cache-dir", tmp / "cache",
                                                             "--device", "cpu"],
    "--weights of a DINOv2 teacher": lambda run, data, crafted, tmp: [
        "cache-teacher", "--dataset", "bloodmnist", "--root", data, "--teacher", "dinov2_vits14", "--weights", crafted,
        "--image-size", "28", "--cache-dir", tmp / "cache", "--device", "cpu"],
    "--weights of a timm teacher": lambda run, data, crafted, tmp: [
        "cache-teacher", "--dataset", "bloodmnist", "--root", data, "--teacher", "resnet18", "--weights", crafted,
        "--image-size", "28", "--cache-dir", tmp / "cache", "--device", "cpu"],
    "a local-dir: teacher's pytorch_model.bin": lambda run, data, crafted, tmp: [
        "cache-teacher", "--dataset", "bloodmnist", "--root", data, "--teacher", f"local-dir:{local_dir(tmp, crafted)}",
        "--image-size", "28", "--cache-dir", tmp / "cache", "--device", "cpu"],
}


def local_dir(tmp: Path, crafted: Path) -> Path:
    """A timm local-dir: model (config.json beside its weights) whose weights are the crafted pickle."""
    folder = tmp / "local_model"
    folder.mkdir()
    config = {"architecture": "resnet18", "num_classes": 1000,
              "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "interpolation": "bilinear", "crop_pct": 0.875}}
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(crafted, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_pickle_is_one_error_line_and_runs_nothing(case, finished, tmp_path, capsys, monkeypatch):
    data, trained = finished
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    craft(run / "best.pt", marker)
    crafted = craft(tmp_path / "crafted.pth", marker)
    code, _, err = run_cli(CASES[case](run, data, crafted, tmp_path), capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert not marker.exists(), f"{case}: the crafted file's code ran"


@pytest.mark.parametrize("both", [False, True])
def test_a_crafted_resume_checkpoint_runs_nothing(both, finished, tmp_path, capsys, monkeypatch):
    """A partial run folder holding a crafted checkpoint.pt (and, with `both`, a crafted previous one too)."""
    data, _ = finished
    marker, partial = tmp_path / "marker", tmp_path / ".run.partial"
    partial.mkdir()
    craft(partial / "checkpoint.pt", marker)
    if both:
        craft(partial / "checkpoint.previous.pt", marker)
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", data, "--alpha", "1", "--student",
                            "test_resnet", "--epochs", "1", "--batch-size", "16", "--image-size", "28", "--device",
                            "cpu", "--out", tmp_path / "run"], capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "--force" in lines[0], err
    assert not marker.exists()
