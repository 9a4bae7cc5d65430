"""Teacher caches survive kill -9 and report damage; a malformed data file is refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import error_lines, make_npz, run_cli

from medal.cache.store import ARRAYS, CacheWriter

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "2", "--batch-size", "8",
        "--chunk-rows", "8", "--device", "cpu"]  # 48/24/24 images in chunks of 8: 6 + 3 + 3 feature chunks

# `python -m medal` whose 4th feature chunk never starts: it drains the first three, says so, and waits
# there (holding the cache's lock) for the test's kill -9.
PAUSED_MEDAL = """
import runpy, sys, time
from pathlib import Path
from medal.cache.store import CacheWriter

write, features, paused = CacheWriter.write, [], Path(sys.argv[1])

def write_until_paused(self, name, start, block):
    if name.endswith("/features"):
        features.append(start)
        if len(features) == 4:
            self._drain()
            paused.touch()
            time.sleep(600)
    write(self, name, start, block)

CacheWriter.write = write_until_paused
sys.argv = ["medal", *sys.argv[2:]]
runpy.run_module("medal", run_name="__main__")
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmnist")
    make_npz(root, "bloodmnist")
    return root


@pytest.fixture(scope="module")
def whole_cache(data_root, vits_weights, tmp_path_factory) -> Path:
    """The cache an uninterrupted `medal cache-teacher ... ARGS` writes."""
    from medal.pipeline.cache_teacher import CacheConfig, HeadRecipe, run_cache_teacher

    cfg = CacheConfig(dataset="bloodmnist", teacher="dinov2_vits14", weights=vits_weights, root=data_root, image_size=28,
                      batch_size=8, device="cpu", cache_dir=tmp_path_factory.mktemp("whole"), chunk_rows=8,
                      head=HeadRecipe(epochs=2))
    return run_cache_teacher(cfg).cache.path


def feature_chunk_files(partial: Path) -> list[Path]:
    return sorted(p for p in partial.glob("*/features/c/*/*") if p.is_file())


def test_kill_9_then_resume_computes_only_missing_chunks_and_equals_uninterrupted(
        data_root, vits_weights, whole_cache, tmp_path, capsys, monkeypatch):
    caches, paused = tmp_path / "caches", tmp_path / "paused"
    args = ["cache-teacher", "--dataset", "bloodmnist", "--root", data_root, "--weights", vits_weights,
            "--cache-dir", caches, *ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", PAUSED_MEDAL, str(paused), *map(str, args)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not paused.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused.exists(), child.stderr.read() if child.poll() is not None else "never paused"

        # A second builder of the same key, while the first holds it: one line, and nothing touched.
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1 and len(error_lines(err)) == 1, err
        assert "being built right now by pid" in err and str(child.pid) in err

        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    (partial,) = caches.glob(".*.zarr.partial")
    key = partial.name[1:].removesuffix(".zarr.partial")
    assert len(feature_chunk_files(partial)) == 3, "the three finished chunks were kept"
    assert not (caches / f"{key}.zarr").exists()
    # A chunk write that kill -9 cut short: junk where chunk 3 goes, and Zarr's temporary file.
    (partial / "train/features/c/3").mkdir(exist_ok=True)
    (partial / "train/features/c/3/0").write_bytes(b"\x00" * 20)
    (partial / "train/features/c/3/0.1234.partial").write_bytes(b"\x00" * 7)

    computed: list[tuple[str, int]] = []
    write = CacheWriter.write

    def counting_write(self, name, start, block):
        if name.endswith("/features"):
            computed.append((name, start))
        write(self, name, start, block)

    monkeypatch.setattr(CacheWriter, "write", counting_write)
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert f"resuming cache {key}: 3 of 12 feature chunks already computed" in err
    assert len(computed) == 9 and not {("train/features", 0), ("train/features", 8), ("train/features", 16)} & set(computed)
    assert sorted(p.name for p in caches.iterdir()) == [f"{key}.zarr"], "no partial folder or lock left"

    resumed, whole = zarr.open_group(caches / f"{key}.zarr", mode="r"), zarr.open_group(whole_cache, mode="r")
    for name in ARRAYS:
        a, b = resumed[name][...], whole[name][...]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    attrs_a, attrs_b = dict(resumed.attrs), dict(whole.attrs)
    assert attrs_a.pop("created") and attrs_b.pop("created")
    assert attrs_a == attrs_b


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_chunk_ends_in_one_line_and_verify_finds_it(whole_cache, tmp_path, capsys, monkeypatch):
    caches = tmp_path / "caches"
    shutil.copytree(whole_cache, caches / whole_cache.name)
    key = whole_cache.name.removesuffix(".zarr")

    code, out, err = run_cli(["cache", "verify", "--cache-dir", caches], capsys, monkeypatch)
    assert code == 0 and out.startswith(f"ok       {key}: 20 chunks read"), (out, err)

    flip_byte(caches / whole_cache.name / "train/logits/c/0/0")
    runs = tmp_path / "runs"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--cache-dir", caches, "--out", runs / "run",
                              "--epochs", "1", "--batch-size", "16", "--image-size", "28", "--device", "cpu"],
                             capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err + out, err
    assert lines[0].startswith(f"error: teacher cache {key}: array train/logits is damaged (chunk 0: crc32c checksum")
    assert "medal cache-teacher --dataset bloodmnist" in lines[0] and lines[0].endswith("--force`.")
    assert not runs.exists() or not any(runs.iterdir()), "no run directory, no partial one"

    (caches / whole_cache.name / "head/bias/c/0").unlink()
    code, out, err = run_cli(["cache", "verify", key[:10], "--cache-dir", caches, "--json"], capsys, monkeypatch)
    assert code == 1 and len(error_lines(err)) == 1 and f"cache {key} is damaged (2 damaged chunks)" in err
    (report,) = json.loads(out)
    assert report["chunks"] == 20 and [(d["array"], d["chunk"]) for d in report["damaged"]] == [
        ("train/logits", 0), ("head/bias", 0)]
    assert report["damaged"][1]["error"] == "chunk file missing"


def bad_file(root: Path, flag: str, change) -> Path:
    """A toy MedMNIST file of `flag`, with one thing wrong."""
    multi = 14 if flag == "chestmnist" else 0
    path = make_npz(root, flag, classes=2, channels=1, multi_label=multi)
    arrays = dict(np.load(path))
    change(arrays)
    np.savez(path, **arrays)
    return path


def _set(key: str, rows, value):
    def change(arrays):
        arrays[key] = arrays[key].astype(np.int64)
        arrays[key][rows] = value
    return change


BAD_FILES = {
    "label 7 in a binary set": ("breastmnist", _set("train_labels", [1, 5, 9], 7),
                                "train_labels hold 7 (in 3 samples), outside breastmnist's classes 0..1."),
    "negative label": ("breastmnist", _set("test_labels", [0], -1), "test_labels hold -1 (in 1 samples)"),
    "multi-label 2": ("chestmnist", _set("val_labels", (2, 3), 2), "val_labels hold 2 (in 1 samples); chestmnist's labels are 0 or 1."),
    "multi-label width": ("chestmnist", lambda a: a.update(train_labels=a["train_labels"][:, :13]),
                          "train_labels have 13 columns, but chestmnist has 14 labels."),
    "fractional label": ("breastmnist", lambda a: a.update(val_labels=a["val_labels"] + 0.5),
                         "val_labels are float64 and hold values that are not whole numbers"),
    "float images": ("breastmnist", lambda a: a.update(test_images=a["test_images"].astype(np.float32)),
                     "test_images are float32, not uint8"),
    "counts differ": ("breastmnist", lambda a: a.update(val_images=a["val_images"][:-2]), "val holds 22 images but 24 labels."),
    "sizes differ": ("breastmnist", lambda a: a.update(test_images=np.zeros((24, 32, 32), np.uint8)),
                     "test_images are 32x32x1 but train_images are 28x28x1"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_malformed_file_is_refused_before_any_work(name, tmp_path, capsys, monkeypatch):
    flag, change, expected = BAD_FILES[name]
    path = bad_file(tmp_path / "medmnist", flag, change)
    caches, runs = tmp_path / "caches", tmp_path / "runs"
    for args in (["cache-teacher", "--dataset", flag, "--cache-dir", caches],
                 ["distill", "--alpha", "1", "--dataset", flag, "--out", runs / "run"]):
        code, out, err = run_cli([*args, "--root", path.parent, "--device", "cpu"], capsys, monkeypatch)
        lines = error_lines(err)
        assert code == 1 and len(lines) == 1 and "Traceback" not in err + out, err
        assert lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines[0]
    assert not caches.exists() and not runs.exists(), "nothing written"
