"""`medal sweep --gpus`: one worker process per GPU, each pinned by CUDA_VISIBLE_DEVICES, never two on one GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

import medal.study.sweep as sweep
import medal.study.sweep_worker as sweep_worker
from medal.pipeline.distill import DistillConfig

# A stand-in for a sweep worker: the real protocol (medal.study.sweep_worker.serve), and for each point
# instead of `medal distill` a stand-in that records its GPU and the GPUs busy beside it, then finishes the run.
WORKER = """
import os, sys, time, json
from pathlib import Path
from medal.study.sweep_worker import serve
busy = Path(sys.argv[1])

def point(args):
    out, device = Path(args[args.index("--out") + 1]), args[args.index("--device") + 1]
    gpu = os.environ["CUDA_VISIBLE_DEVICES"]
    mine = busy / f"{gpu}.{os.getpid()}"
    mine.touch()
    time.sleep(0.6)
    others = sorted(p.name.split(".")[0] for p in busy.iterdir() if p != mine)
    mine.unlink()
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"gpu": gpu, "beside": others, "device": device}))
    return 0

sys.exit(serve(point))
"""


def test_one_process_per_gpu(tmp_path, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setattr(sweep_worker, "worker_command", lambda: [sys.executable, "-c", WORKER, str(busy)])
    points = [sweep.Point(DistillConfig(dataset="bloodmnist", t=t, out=tmp_path / f"run{t}"), tmp_path / f"run{t}")
              for t in range(1, 6)]
    with tqdm(total=len(points), disable=True) as bar:
        sweep.run_parallel(points, 2, bar, gpus=("3", "5"))
    seen = [json.loads((p.out / "metrics.json").read_text()) for p in points]
    assert {s["gpu"] for s in seen} <= {"3", "5"} and all(s["device"] == "cuda" for s in seen)
    for s in seen:  # whatever ran beside a run was on the other GPU
        assert s["gpu"] not in s["beside"], s
    assert not list(Path(tmp_path).glob(".run*.log")), "logs of finished runs are removed"
