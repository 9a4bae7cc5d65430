"""Every bad input ends in one sentence on stderr, exit code 1, no traceback, and nothing written."""

from __future__ import annotations

import urllib.error

import pytest
import torchvision.datasets.utils
from conftest import error_lines, make_npz, run_cli


def _offline(*args, **kwargs):
    raise urllib.error.URLError("Name or service not known")


CASES = {
    "unknown dataset": (["cache-teacher", "--dataset", "foomnist"], "unknown dataset"),
    "3D dataset": (["cache-teacher", "--dataset", "organmnist3d"], "unknown dataset"),
    "missing npz": (["cache-teacher", "--dataset", "breastmnist", "--root", "{empty}"], "could not be downloaded"),
    "missing weights": (["cache-teacher", "--dataset", "bloodmnist", "--root", "{data}", "--weights", "{tmp}/none.pth"],
                        "does not exist"),
    "wrong weights": (["cache-teacher", "--dataset", "bloodmnist", "--root", "{data}", "--weights", "{weights}",
                       "--teacher", "dinov2_vitb14", "--image-size", "28"], "do not fit dinov2_vitb14"),
    "junk weights": (["cache-teacher", "--dataset", "bloodmnist", "--root", "{data}", "--weights", "{junk}",
                      "--teacher", "dinov2_vits14", "--image-size", "28"], "could not be read"),
    "unknown teacher": (["cache-teacher", "--dataset", "bloodmnist", "--teacher", "dinov3"], "unknown teacher"),
    "image size": (["cache-teacher", "--dataset", "bloodmnist", "--image-size", "30"], "multiple of"),
    "t = 0": (["distill", "--dataset", "bloodmnist", "--t", "0"], "t must be > 0"),
    "t < 0": (["distill", "--dataset", "bloodmnist", "--t", "-1"], "t must be > 0"),
    "alpha > 1": (["distill", "--dataset", "bloodmnist", "--alpha", "1.5"], "alpha must lie in [0, 1]"),
    "alpha < 0": (["distill", "--dataset", "bloodmnist", "--alpha", "-0.1"], "alpha must lie in [0, 1]"),
    "unknown student": (["distill", "--dataset", "bloodmnist", "--student", "resnet5000"], "unknown student"),
    "val without a class": (["distill", "--dataset", "bloodmnist", "--root", "{few}", "--alpha", "1"],
                            "val split has no images of class 4, 5, 6, 7"),
    "no cache": (["distill", "--dataset", "bloodmnist", "--root", "{data}"], "no teacher cache"),
    "no dataset": (["distill"], "pass --dataset"),
    "not a run": (["evaluate", "{tmp}"], "not a finished medal run"),
    "unknown cache": (["cache", "info", "nothing"], "no cache"),
    "sweep on absent GPUs": (["sweep", "--dataset", "bloodmnist", "--gpus", "7"], "--gpus must name visible CUDA devices"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, blood_root, vits_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)
    cache_dir, runs = tmp_path / "cache", tmp_path / "runs"
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    make_npz(tmp_path / "few", "bloodmnist", {"train": 16, "val": 4, "test": 8})  # val holds classes 0-3 only
    places = {"few": tmp_path / "few", "empty": tmp_path / "empty", "data": blood_root, "weights": vits_weights, "tmp": tmp_path,
              "junk": tmp_path / "junk.pth"}
    args, expected = CASES[name]
    args = [a.format(**places) for a in args]
    extra = [] if args[0] == "evaluate" else ["--cache-dir", cache_dir]
    extra += ["--out", runs / "run"] if args[0] == "distill" else []
    code, out, err = run_cli(args + extra, capsys, monkeypatch)
    assert code == 1, (out, err)
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err + out
    assert not cache_dir.exists() or not any(cache_dir.iterdir()), "a failed command must not leave a cache behind"
    assert not runs.exists()
    assert not list((tmp_path / "empty").iterdir())


def test_full_disk_leaves_nothing(blood_root, vits_weights, tmp_path, capsys, monkeypatch):
    """ENOSPC while writing the cache, then while writing a run: one line each, nothing kept."""
    import errno

    from medal.cache.store import CacheWriter

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache_dir = tmp_path / "cache"
    teacher = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "1", "--device", "cpu",
               "--root", blood_root, "--weights", vits_weights, "--cache-dir", cache_dir]
    with monkeypatch.context() as m:
        m.setattr(CacheWriter, "_setitem", no_space)
        code, _, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", *teacher], capsys, monkeypatch)
    assert code == 1 and "full" in error_lines(err)[0] and len(error_lines(err)) == 1
    assert not any(cache_dir.iterdir())

    code, _, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", *teacher], capsys, monkeypatch)
    assert code == 0, err
    monkeypatch.setattr("medal.runtime.file_image.FileImage.write_to", no_space)  # the checkpoint's first write
    runs = tmp_path / "runs"
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--cache-dir", cache_dir, "--out", runs / "run",
                            "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--device", "cpu"],
                           capsys, monkeypatch)
    lines = [line for line in error_lines(err) if not line.startswith("epoch ")]  # on a GPU the write follows the epoch line
    assert code == 1 and "disk is full" in lines[0] and len(lines) == 1, err
    # Nothing that looks finished: only the hidden partial folder, which a rerun resumes from.
    assert not (runs / "run").exists() and all(p.name == ".run.partial" for p in runs.iterdir())
