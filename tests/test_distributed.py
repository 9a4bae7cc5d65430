"""torchrun with 2 CPU processes (gloo): the cache is the same bit for bit, and distill trains as DDP:
each rank trains on its own half of every batch, and both end with the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from conftest import run_cli

ARGS = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "3", "--batch-size", "8",
        "--chunk-rows", "16", "--device", "cpu"]


# `medal` under torchrun, each rank recording the samples of its every step and its weights before and after
# training (rank<N>.pt in the working directory).
RECORDING = """
import os, sys
import torch
from medal.pipeline import distill
from medal.pipeline.student_step import StudentStep

steps, call, train = [], StudentStep.__call__, distill.train_student

def recording_call(self, idx, images=None):
    steps.append(idx.tolist())
    return call(self, idx, images)

def recording_train(cfg, student, *args, **kwargs):
    start = {name: p.detach().clone() for name, p in student.named_parameters()}
    history = train(cfg, student, *args, **kwargs)
    end = {name: p.detach().clone() for name, p in student.named_parameters()}
    torch.save({"steps": steps, "start": start, "end": end}, f"rank{os.environ['RANK']}.pt")
    return history

StudentStep.__call__, distill.train_student = recording_call, recording_train
from medal.cli import main
sys.argv = ["medal", *sys.argv[1:]]
main()
"""


def torchrun(args: list[str], tmp_path, program: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           *(program or ["-m", "medal"]), *map(str, args)]
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
    (tmp_path / "recording.py").write_text(RECORDING)
    done = torchrun(["distill", "--dataset", "bloodmnist", "--cache-dir", two, "--out", run, "--epochs", "2",
                     "--batch-size", "8", "--image-size", "32", "--milestones", "1", "--device", "cpu", "--json"], tmp_path,
                    program=[str(tmp_path / "recording.py")])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # rank 0 alone printed
    assert result["config"]["world_size"] == 2 and 0 <= result["test"]["auc"] <= 1
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) == 3, "rank 0 alone wrote one row per epoch"
    assert sorted(p.name for p in tmp_path.iterdir() if "run" in p.name) == ["run"]

    # Each rank trained on its own half of every batch: 48 samples, --batch-size 8 a rank, 3 steps an epoch.
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    generator = torch.Generator().manual_seed(0)  # --seed 0: the global order of each epoch
    for epoch in range(2):
        order = torch.randperm(48, generator=generator).tolist()
        for i in range(3):
            step = 3 * epoch + i
            mine, theirs = ranks[0]["steps"][step], ranks[1]["steps"][step]
            assert len(mine) == len(theirs) == 8 and not set(mine) & set(theirs), f"step {step}: the ranks share samples"
            # together they are the batch one process would take at --batch-size 16
            assert sorted(mine + theirs) == sorted(order[16 * i : 16 * (i + 1)]), f"step {step}"
    assert all(len(r["steps"]) == 6 for r in ranks)
    # ... and ended with the same weights (DDP averaged their gradients), which training changed.
    for name, end in ranks[0]["end"].items():
        assert torch.equal(end, ranks[1]["end"][name]), f"the ranks ended with different {name}"
    assert torch.equal(ranks[0]["start"]["fc.weight"], ranks[1]["start"]["fc.weight"])
    assert not torch.equal(ranks[0]["start"]["fc.weight"], ranks[0]["end"]["fc.weight"]), "the student did not train"
