"""torchrun with 2 CPU processes (gloo): the cache is the same bit for bit, and distill trains as DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import run_cli

ARGS = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "3", "--batch-size", "8",
        "--chunk-rows", "16", "--device", "cpu"]


def torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "medal", *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_ranks_cache_and_distill(blood_root, vits_weights, tmp_path, capsys, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    code, out, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--root", blood_root, "--weights", vits_weights,
                              "--cache-dir", one, "--json", *ARGS], capsys, monkeypatch)
    assert code == 0, err
    key = json.loads(out)["key"]

    done = torchrun(["cache-teacher", "--dataset", "bloodmnist", "--root", blood_root, "--weights", vits_weights,
                     "--cache-dir", two, *ARGS], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = zarr.open_group(one / f"{key}.zarr", mode="r"), zarr.open_group(two / f"{key}.zarr", mode="r")
    for split in ("train", "val", "test"):  # 48/24/24 rows in chunks of 16: both ranks wrote chunks
        for array in ("features", "logits", "labels"):
            assert np.array_equal(a[f"{split}/{array}"][...], b[f"{split}/{array}"][...]), f"{split}/{array}"
    assert a.attrs["data_fingerprint"] == b.attrs["data_fingerprint"]
    assert not [p for p in two.iterdir() if p.name.startswith(".")], "no temporary folder left"

    run = tmp_path / "run"
    done = torchrun(["distill", "--dataset", "bloodmnist", "--cache-dir", two, "--out", run, "--epochs", "2",
                     "--batch-size", "8", "--image-size", "32", "--milestones", "1", "--device", "cpu", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # rank 0 alone printed
    assert result["config"]["world_size"] == 2 and 0 <= result["test"]["auc"] <= 1
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) == 3, "rank 0 alone wrote one row per epoch"
    assert sorted(p.name for p in tmp_path.iterdir() if "run" in p.name) == ["run"]
