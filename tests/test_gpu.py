"""The pipeline on a CUDA device: the Triton loss in training, bf16, and a 1-GPU NCCL torchrun smoke run.

Skipped without CUDA (CI has none); run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_npz, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
STUDENT = ["--epochs", "2", "--batch-size", "16", "--image-size", "64", "--milestones", "1", "--device", "cuda"]


@pytest.fixture(scope="module")
def cuda_cache(vits_weights, tmp_path_factory) -> Path:
    """One teacher cache, built on the GPU, shared by the tests below (GPU time is scarce)."""
    from medal.pipeline.cache_teacher import CacheConfig, HeadRecipe, run_cache_teacher

    root = tmp_path_factory.mktemp("gpu")
    make_npz(root / "data", "bloodmnist")
    run_cache_teacher(CacheConfig(dataset="bloodmnist", teacher="dinov2_vits14", weights=vits_weights,
                                  root=root / "data", image_size=56, device="cuda", cache_dir=root / "cache",
                                  head=HeadRecipe(epochs=5)))
    return root / "cache"


def test_cuda_pipeline_uses_the_triton_loss(cuda_cache, tmp_path, capsys, monkeypatch):
    cache = cuda_cache
    import medal.losses.kd_triton as kernel

    calls = []
    original = kernel.kd_loss_triton
    monkeypatch.setattr(kernel, "kd_loss_triton", lambda *a, **k: calls.append(1) or original(*a, **k))
    code, out, err = run_cli(["distill", "--cache-dir", cache, "--out", tmp_path / "run", "--json", *STUDENT],
                             capsys, monkeypatch)
    assert code == 0, err
    assert calls, "CUDA tensors must go through the Triton kernel"
    metrics = json.loads(out)
    assert 0 <= metrics["test"]["auc"] <= 1


def test_torchrun_nccl_single_gpu(cuda_cache, tmp_path):
    cache = cuda_cache
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", str(port),
           "-m", "medal", "distill", "--cache-dir", str(cache), "--out", str(tmp_path / "run"), "--json", *STUDENT]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["config"]["world_size"] == 1
