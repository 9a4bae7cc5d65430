"""MedMNIST's "(28)" ResNets as students, and the recipe options that reproduce MedMNIST's own runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from conftest import error_lines, make_npz, run_cli
from PIL import Image

import medal  # noqa: F401  registers resnet18_28 and resnet50_28 with timm
from medal.data.medmnist import BUNDLED_ROOT
from medal.data.preprocess import MEDMNIST_MEAN, MEDMNIST_STD, Preprocess

# MedMNIST v2's CIFAR-style ResNets at 3 input channels and 8 classes (MedMNIST2D/models.py)
PARAMS = {"resnet18_28": 11_172_936, "resnet50_28": 23_516_744}
RUN_ARGS = ["--alpha", "1", "--image-size", "28", "--batch-size", "8", "--milestones", "1", "--device", "cpu"]
SMALL = {"train": 8, "val": 8, "test": 8}  # one batch an epoch: these nets are slow on a CPU


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_students_build_through_timm(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=8).eval()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    with torch.inference_mode():
        assert model(torch.rand(2, 3, 28, 28)).shape == (2, 8)
        gray = timm.create_model(name, num_classes=8, in_chans=1).eval()
        assert gray.conv1.weight.shape[1] == 1 and gray(torch.rand(2, 1, 28, 28)).shape == (2, 8)
        # the stem keeps 28 px: the last stage still sees 4x4, not the ImageNet stem's 1x1
        assert model.forward_features(torch.rand(1, 3, 28, 28)).shape[-2:] == (4, 4)


def test_resnet50_28_trains_through_distill(tmp_path, capsys, monkeypatch):
    """One epoch through the real CLI at 28 px, with the paper's defaults (3 channels, best val AUC kept)."""
    root = tmp_path / "data"
    make_npz(root, "bloodmnist", n=SMALL)
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--out", tmp_path / "run",
                              "--student", "resnet50_28", "--epochs", "1", "--json", *RUN_ARGS], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert (result["config"]["student"], result["config"]["in_chans"], result["kept"]) == ("resnet50_28", 3, "best")
    state = torch.load(tmp_path / "run" / "best.pt", map_location="cpu")
    assert state["model"]["conv1.weight"].shape == (64, 3, 3, 3)


def test_resnet18_28_sweep_on_one_channel_keeping_the_last_epoch(tmp_path, capsys, monkeypatch):
    """`medal sweep` with MedMNIST's script options: --no-as-rgb on a grayscale file builds a 1-channel
    student, --keep last keeps (and evaluates) the last epoch, --interpolation is recorded."""
    root, runs = tmp_path / "data", tmp_path / "runs"
    make_npz(root, "bloodmnist", n=SMALL, channels=1)
    code, out, err = run_cli(["sweep", "--dataset", "bloodmnist", "--root", root, "--runs-dir", runs, "--json",
                              "--student", "resnet18_28", "--epochs", "2", "--no-as-rgb", "--keep", "last",
                              "--interpolation", "nearest", *RUN_ARGS], capsys, monkeypatch)
    assert code == 0, err
    run = runs / "bloodmnist_resnet18_28_ce_s0"
    assert [r["run"] for r in json.loads(out)] == [str(run)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["config"]["as_rgb"], metrics["config"]["in_chans"], metrics["config"]["interpolation"]) == (
        False, 1, "nearest")
    assert metrics["kept"] == "last" and metrics["kept_epoch"] == 2 == metrics["last_epoch"]["epoch"]
    assert metrics["test"] == metrics["last_epoch"]["test"]  # what was kept is what was evaluated
    state = torch.load(run / "best.pt", map_location="cpu")
    assert state["epoch"] == 2 and state["model"]["conv1.weight"].shape == (64, 1, 3, 3)
    code, out, err = run_cli(["evaluate", run, "--device", "cpu", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["test"] == metrics["test"]  # re-read with its own channels


def test_bad_interpolation(blood_root, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", blood_root, "--out", tmp_path / "bad",
                            "--interpolation", "bicubic", *RUN_ARGS], capsys, monkeypatch)
    assert code == 1 and error_lines(err) == ["error: --interpolation must be one of bilinear, nearest, got 'bicubic'."]
    assert not (tmp_path / "bad").exists()


def test_upsampling_against_pil():
    """nearest is PIL's NEAREST bit for bit (MedMNIST's (224) inputs); bilinear is within one grey level of
    PIL's BILINEAR, which rounds to uint8 where medal stays in float."""
    with np.load(BUNDLED_ROOT / "bloodmnist.npz") as npz:
        images = npz["test_images"][:16]
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    one_level = 1 / (255 * MEDMNIST_STD[0])  # a grey level after normalisation
    for interpolation, resample, tolerance in (("nearest", Image.NEAREST, 0.0), ("bilinear", Image.BILINEAR, one_level)):
        prep = Preprocess(224, MEDMNIST_MEAN, MEDMNIST_STD, torch.device("cpu"), interpolation=interpolation)
        pil = np.stack([np.asarray(Image.fromarray(im).resize((224, 224), resample)) for im in images])
        expected = (torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
        diff = (prep(batch) - expected).abs().max().item()
        assert diff <= tolerance + 1e-6, (interpolation, diff)
