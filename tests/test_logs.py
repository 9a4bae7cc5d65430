"""Logs that fit where they go: plain lines when stderr is a file, TensorBoard scalars when asked for."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medal.data.medmnist import load_dataset
from medal.runtime.errors import MedalError

ROOT = Path(__file__).resolve().parents[1]
TAGS = {"train/loss", "val/auc", "val/acc", "lr", "throughput/img_per_s"}
STUDENT_ARGS = ["--student", "resnet10n_28", "--epochs", "3", "--batch-size", "16", "--image-size", "28",
                "--milestones", "2", "--device", "cpu"]


def medal_to_file(args: list, log: Path) -> str:
    """`python -m medal ARGS` with stderr written to a file, as under Slurm, CI or nohup; returns that file."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("MEDAL_TENSORBOARD", None)
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "medal", *map(str, args)], stdout=subprocess.PIPE, stderr=err,
                              env=env, text=True, timeout=1800)
    text = log.read_text()
    assert proc.returncode == 0, text
    return text


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_log_file_has_one_plain_line_per_split_and_epoch(blood_root, vits_weights, tmp_path):
    cache_dir = tmp_path / "cache"
    err = medal_to_file(["cache-teacher", "--dataset", "bloodmnist", "--root", blood_root, "--weights", vits_weights,
                         "--cache-dir", cache_dir, "--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "3",
                         "--batch-size", "16", "--device", "cpu"], tmp_path / "cache.log")
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    for split, n in (("train", 48), ("val", 24), ("test", 24)):
        assert len([x for x in lines if x.startswith(f"teacher {split}: {n} img in ")]) == 1, err
    assert len([x for x in lines if x.startswith("linear head: 3 epoch in ")]) == 1, err

    tb = tmp_path / "tb"
    err = medal_to_file(["distill", "--t", "2", "--alpha", "0.2", "--cache-dir", cache_dir, "--out", tmp_path / "run",
                         "--log-dir", tb, *STUDENT_ARGS], tmp_path / "distill.log")
    assert "\r" not in err and "\x1b" not in err
    epochs = [x for x in err.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in epochs] == ["1", "2", "3"], err
    assert all(" val auc " in x for x in epochs)

    # --log-dir: the event file lies in DIR itself and holds every epoch's scalars, as history.csv has them.
    assert list(tb.glob("events.out.tfevents.*"))
    got = scalars(tb)
    assert set(got) == TAGS
    with open(tmp_path / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    for tag, column in (("train/loss", "train_loss"), ("val/auc", "val_auc"), ("val/acc", "val_acc"), ("lr", "lr")):
        assert [s for s, _ in got[tag]] == [1, 2, 3]
        assert [v for _, v in got[tag]] == pytest.approx([float(r[column]) for r in rows], rel=1e-5)
    assert got["lr"][-1][1] == pytest.approx(1e-4)  # x0.1 after the milestone
    assert all(v > 0 for _, v in got["throughput/img_per_s"])


def test_medal_tensorboard_env_picks_a_default_dir(blood_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDAL_TENSORBOARD", "1")
    runs = tmp_path / "runs"
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", blood_root, "--alpha", "1", "--out", runs / "ce",
                            *STUDENT_ARGS[:3], "1", *STUDENT_ARGS[4:]], capsys, monkeypatch)
    assert code == 0, err
    got = scalars(runs / "tensorboard" / "ce")
    assert set(got) == TAGS and [s for s, _ in got["val/auc"]] == [1]

    monkeypatch.delenv("MEDAL_TENSORBOARD")
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", blood_root, "--alpha", "1", "--out", runs / "ce2",
                            *STUDENT_ARGS[:3], "1", *STUDENT_ARGS[4:]], capsys, monkeypatch)
    assert code == 0, err
    assert not (runs / "tensorboard" / "ce2").exists(), "off unless asked for"


def test_download_bar_leaves_no_frames_in_a_log(tmp_path, capsys, monkeypatch):
    """torchvision draws its own tqdm bar while it downloads MedMNIST: off a terminal, one line instead."""
    payload = b"not the official file" * 4096

    class Response(io.BytesIO):
        def __init__(self, request: urllib.request.Request):
            super().__init__(payload)
            self.url, self.length = request.full_url, len(payload)

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, *a, **k: Response(request))
    with pytest.raises(MedalError, match="could not be downloaded"):  # the MD5 differs
        load_dataset("bloodmnist", tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err and err.startswith("downloading https://"), err
    assert not list(tmp_path.iterdir()), "nothing half-written"
