"""`medal sweep --jobs N` trains its points in N worker processes that stay (#24), and they die with it (#25).

- --jobs 2 over 4 points starts 2 processes, and a point a worker trains after another one is bit for bit
  the point a fresh `medal distill` process trains;
- a failing point is reported with its log, the other points finish;
- a worker ends within seconds when its sweep is SIGKILLed, by the kernel's parent-death signal and, alone,
  by its stdin's end-of-file; the same sweep command then finishes the grid, resuming the interrupted
  points and leaving the finished ones alone.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_npz, run_cli
from tqdm import tqdm

import medal.study.sweep as sweep
import medal.study.sweep_worker as sweep_worker
from medal.pipeline.distill import DistillConfig
from medal.runtime.errors import MedalError

REPO = Path(__file__).resolve().parents[1]
CE_ARGS = ["--dataset", "bloodmnist", "--alpha", "1", "--student", "test_resnet", "--image-size", "28",
           "--batch-size", "16", "--milestones", "100", "--device", "cpu"]
NAME = "bloodmnist_test_resnet_ce_s{}"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers and the reference `distill` alike: one thread each on this tiny model."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def trained(err: str) -> list[str]:
    return re.findall(r"^sweep: training (\S+)", err, flags=re.M)


def running(pid: int) -> bool:
    """Whether `pid` runs: it exists and is not a zombie (an orphan's zombie may never be reaped here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def early_in_training(runs: Path, epochs: int) -> bool:
    """Whether a point in training under `runs` has finished at least one epoch and fewer than `epochs`."""
    for history in runs.glob(".*.partial/history.csv"):
        try:
            if len(rows(history)) < epochs:
                return True
        except FileNotFoundError:  # the point finished this instant
            pass
    return False


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def test_jobs_2_over_4_points_start_2_workers_that_train_as_fresh_processes(tmp_path, capsys, monkeypatch):
    root, runs = tmp_path / "data", tmp_path / "runs"
    make_npz(root, "bloodmnist")
    started = []
    popen = subprocess.Popen

    def counted(*args, **kwargs):
        started.append(args[0] if args else kwargs["args"])
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counted)
    code, out, err = run_cli(["sweep", *CE_ARGS, "--epochs", "2", "--seeds", "0:3", "--jobs", "2", "--root", root,
                              "--runs-dir", runs, "--json"], capsys, monkeypatch)
    monkeypatch.setattr(subprocess, "Popen", popen)
    assert code == 0, err
    assert sorted(Path(r["run"]).name for r in json.loads(out)) == [NAME.format(s) for s in range(4)]
    assert len(started) == 2, started  # one process per job, not one per point
    assert not list(runs.glob(".*")), "no claims, logs or partial folders are left behind"

    # s3 was trained by a worker that had trained another point before: a fresh `medal distill` agrees bit for bit
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "medal", "distill", *CE_ARGS, "--epochs", "2", "--seed", "3", "--root",
                    str(root), "--out", str(ref)], check=True, capture_output=True, cwd=REPO)
    run = runs / NAME.format(3)
    mine, theirs = torch.load(run / "best.pt"), torch.load(ref / "best.pt")
    assert mine["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in mine["model"])
    assert np.array_equal(np.load(run / "test_scores.npy"), np.load(ref / "test_scores.npy"))
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert (metrics["test"], metrics["val"]) == (ref_metrics["test"], ref_metrics["val"])
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in rows(d / "history.csv")] for d in (run, ref)]
    assert untimed[0] == untimed[1]


# A stand-in for a sweep worker: the real protocol; its points print a line, and the one named in argv[1] fails.
FAILING = """
import sys, json, time
from pathlib import Path
from medal.study.sweep_worker import serve

def point(args):
    out = Path(args[args.index("--out") + 1])
    print(f"training {out.name}", flush=True)
    if out.name == sys.argv[1]:
        print("error: the point failed", file=sys.stderr)
        return 1
    time.sleep(1.0)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({}))
    return 0

sys.exit(serve(point))
"""


def test_a_failed_point_is_reported_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_worker, "worker_command", lambda: [sys.executable, "-c", FAILING, "run0"])
    points = [sweep.Point(DistillConfig(dataset="bloodmnist", seed=s, out=tmp_path / f"run{s}"), tmp_path / f"run{s}")
              for s in range(4)]
    with tqdm(total=len(points), disable=True) as bar, pytest.raises(MedalError) as failed:
        sweep.run_parallel(points, 2, bar)
    assert str(failed.value) == (f"1 sweep run(s) failed, the finished ones are kept: run0 (exit 1, log "
                                 f"{tmp_path / '.run0.log'}).")
    assert (tmp_path / ".run0.log").read_text() == "training run0\nerror: the point failed\n"
    assert (tmp_path / "run1" / "metrics.json").is_file(), "the point beside the failed one finished"
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists(), "no point started after the failure"
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".run0.log"], "claims released, finished logs removed"


# A sweep worker whose point never ends, with one of its two ways of dying with its parent switched off;
# and a parent that starts it, gives it that point, says the worker's pid and waits to be killed.
ENDLESS = """
import sys, time
import medal.study.sweep_worker as sweep_worker
if sys.argv[1] == "stdin":
    sweep_worker.die_with_parent = lambda: None
else:
    sweep_worker.Inbox.closed = lambda self: None


def point(args):
    print("started", flush=True)
    time.sleep(600)
    return 0

sys.exit(sweep_worker.serve(point))
"""
PARENT = """
import sys, time
from pathlib import Path
import medal.study.sweep_worker as sweep_worker
sweep_worker.worker_command = lambda: [sys.executable, "-c", sys.argv[1], sys.argv[2]]
worker = sweep_worker.Worker()
worker.train([], Path(sys.argv[3]))
print(worker.proc.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("alone", ["prctl", "stdin"])
def test_a_worker_dies_with_its_sweep(tmp_path, alone):
    log = tmp_path / "log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, ENDLESS, alone, str(log)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    worker = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text() == "started\n"):  # its point is under way
            assert time.monotonic() < deadline and running(worker)
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(worker), f"the worker outlived its parent ({alone} alone)"
    finally:
        parent.kill()
        if running(worker):
            os.kill(worker, signal.SIGKILL)


def published(runs: Path) -> list[Path]:
    """The metrics.json of finished points: a `.NAME.partial` folder holds one too, between its evaluation and
    its rename into place."""
    return [p for p in runs.glob("*/metrics.json") if not p.parent.name.startswith(".")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sigkilled_sweep_leaves_no_worker_and_its_rerun_finishes_the_grid(tmp_path, capsys, monkeypatch):
    root, runs = tmp_path / "data", tmp_path / "runs"
    make_npz(root, "bloodmnist")
    command = ["sweep", *CE_ARGS, "--epochs", "20", "--seeds", "0:2", "--jobs", "2", "--root", str(root),
               "--runs-dir", str(runs)]
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "medal", *command], stdout=subprocess.DEVNULL, stderr=err,
                                 cwd=REPO)
    # kill it once one point is finished and another is part-trained, far from its end (10 of 20 epochs)
    deadline = time.monotonic() + 240
    while not (published(runs) and early_in_training(runs, 10)):
        assert first.poll() is None, (tmp_path / "first.err").read_text()
        assert time.monotonic() < deadline, "the sweep did not get going"
        time.sleep(0.05)
    workers = children(first.pid)
    first.kill()
    first.wait()
    try:
        assert len(workers) == 2, (workers, (tmp_path / "first.err").read_text())
        deadline = time.monotonic() + 5
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(running, workers)), "a worker outlived its sweep"
    finally:
        for pid in filter(running, workers):
            os.kill(pid, signal.SIGKILL)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in published(runs)}
    partial = {p.parent.name[1:].removesuffix(".partial"): rows(p) for p in runs.glob(".*.partial/history.csv")}
    assert finished and partial, (finished, partial, (tmp_path / "first.err").read_text())

    code, _, err = run_cli(command, capsys, monkeypatch)  # the same command again
    assert code == 0, err
    again = trained(err)
    assert sorted(again) == sorted(set(again)) and sorted([*again, *finished]) == [NAME.format(s) for s in range(3)]
    for name, stamp in finished.items():  # finished before the kill: left alone
        assert (runs / name / "metrics.json").stat().st_mtime_ns == stamp
    for name, before in partial.items():  # interrupted: resumed, its finished epochs (and their timings) kept
        assert name in again and re.search(f"took over {name} from .*: its process is gone", err), err
        assert rows(runs / name / "history.csv")[: len(before)] == before
    # nothing left behind, not even the claim and log of a point the killed sweep saw finish
    assert not list(runs.glob(".*")), list(runs.glob(".*"))
