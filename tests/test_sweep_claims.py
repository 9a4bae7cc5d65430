"""Several `medal sweep` processes on one grid: each point claimed once, dead claims taken over, live ones waited for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_npz, run_cli
from tqdm import tqdm

import medal.study.sweep as sweep
import medal.study.sweep_worker as sweep_worker
from medal.study import claims
from medal.pipeline.distill import DistillConfig

REPO = Path(__file__).resolve().parents[1]
CE_ARGS = ["--dataset", "bloodmnist", "--alpha", "1", "--student", "resnet18_28", "--image-size", "28", "--epochs", "1",
           "--batch-size", "16", "--milestones", "1", "--device", "cpu"]
NAME = "bloodmnist_resnet18_28_ce_s{}"


def write_claim(path: Path, host: str, host_id: str, pid: int, age: float) -> None:
    """A claim as another process leaves it, its last heartbeat `age` seconds ago."""
    path.write_text(json.dumps({"host": host, "host_id": host_id, "pids": [pid], "token": f"{host}-{pid}",
                                "started": "2026-01-01T00:00:00+00:00"}))
    os.utime(path, (time.time() - age,) * 2)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def trained(err: str) -> list[str]:
    return re.findall(r"^sweep: training (\S+)", err, flags=re.M)


def test_two_sweeps_share_one_grid(tmp_path):
    root, runs = tmp_path / "data", tmp_path / "runs"
    make_npz(root, "bloodmnist")
    command = [sys.executable, "-m", "medal", "sweep", *CE_ARGS, "--seeds", "0:3", "--root", str(root),
               "--runs-dir", str(runs), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert sorted(Path(r["run"]).name for r in json.loads(out)) == [NAME.format(s) for s in range(4)]
    both = trained(outputs[0][1]) + trained(outputs[1][1])
    assert sorted(both) == [NAME.format(s) for s in range(4)], both  # each point once, by one of the two
    assert all((runs / NAME.format(s) / "metrics.json").is_file() for s in range(4))
    assert not list(runs.glob(".*")), "no claims, logs or partial folders are left behind"


def test_dead_claims_are_taken_over(tmp_path, capsys, monkeypatch):
    root, runs = tmp_path / "data", tmp_path / "runs"
    make_npz(root, "bloodmnist")
    runs.mkdir()
    # s0: a process on this host that died holding its claim; s1: a host whose heartbeat stopped an hour ago
    write_claim(runs / f".{NAME.format(0)}.claim", claims.HOST, claims.HOST_ID, dead_pid(), age=1)
    write_claim(runs / f".{NAME.format(1)}.claim", "elsewhere", "elsewhere/boot", 4242, age=3600)
    code, out, err = run_cli(["sweep", *CE_ARGS, "--seeds", "0:1", "--root", root, "--runs-dir", runs],
                             capsys, monkeypatch)
    assert code == 0, err
    assert f"took over {NAME.format(0)} from {claims.HOST} pid" in err and "its process is gone" in err
    assert re.search(f"took over {NAME.format(1)} from elsewhere pid 4242: no heartbeat for \\d+s \\(--claim-timeout 600\\)", err), err
    assert trained(err) == [NAME.format(0), NAME.format(1)]
    assert not list(runs.glob(".*"))


def test_live_claim_is_waited_for(tmp_path, capsys, monkeypatch):
    root, runs = tmp_path / "data", tmp_path / "runs"
    make_npz(root, "bloodmnist")
    runs.mkdir()
    claim, out = runs / f".{NAME.format(0)}.claim", runs / NAME.format(0)
    write_claim(claim, "elsewhere", "elsewhere/boot", 4242, age=0)
    seen_training, waits = [], []
    wait = sweep.Grid.wait

    def counted_wait(grid: sweep.Grid) -> None:
        waits.append(1)
        wait(grid)

    monkeypatch.setattr(sweep.Grid, "wait", counted_wait)

    def heartbeat() -> None:  # the other host, alive until the sweep has waited for it three times, then gone
        deadline = time.monotonic() + 600
        while len(waits) < 3 and time.monotonic() < deadline:
            os.utime(claim)
            seen_training.append(out.exists() or out.with_name(f".{out.name}.partial").exists())
            time.sleep(0.2)

    beating = threading.Thread(target=heartbeat)
    beating.start()
    code, _, err = run_cli(["sweep", *CE_ARGS, "--seeds", "0", "--root", root, "--runs-dir", runs,
                            "--claim-timeout", "3"], capsys, monkeypatch)
    beating.join()
    assert code == 0, err
    assert not any(seen_training), "nothing trained the point while its claim had a heartbeat"
    assert f"{NAME.format(0)} is claimed by elsewhere pid 4242, moving on" in err
    assert "waiting for 1 point(s) claimed by other processes" in err
    assert f"took over {NAME.format(0)} from elsewhere pid 4242: no heartbeat for" in err
    assert (out / "metrics.json").is_file() and not claim.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_zombie_holds_no_claim():
    """A process that ended but was never reaped (a SIGKILLed sweep's worker, left to an init that does not
    reap) is dead: its claims are taken over at once, not after --claim-timeout."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 60
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # ended, not yet waited for
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        assert not claims.pid_alive(proc.pid)
        assert claims.pid_alive(os.getpid())
    finally:
        proc.wait()


def test_a_stale_claim_is_taken_over_once(tmp_path):
    path = tmp_path / ".point.claim"
    write_claim(path, "elsewhere", "elsewhere/boot", 4242, age=3600)
    stale = claims.read_holder(path)
    first = claims.acquire(path, timeout=600)
    assert first is not None and first.took_over.startswith("elsewhere pid 4242: no heartbeat")
    # a second process that judged the same claim stale a moment earlier: it must not remove the fresh one
    assert not claims.remove_stale(path, stale)
    assert first.mine() and claims.acquire(path, timeout=600) is None
    first.release()
    assert list(tmp_path.iterdir()) == []


# A stand-in for a sweep worker: the real protocol, and for each point a stand-in for `medal distill`
# that notes that it ran, then finishes the run.
WORKER = """
import sys, json, time
from pathlib import Path
from medal.study.sweep_worker import serve
ran = Path(sys.argv[1])

def point(args):
    out = Path(args[args.index("--out") + 1])
    with open(ran, "a") as f:
        f.write(out.name + "\\n")
    time.sleep(0.3)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({}))
    return 0

sys.exit(serve(point))
"""


def test_parallel_sweeps_share_one_grid(tmp_path, monkeypatch):
    """Two sweeps with --jobs 2 each (threads here, workers as in `--jobs`): every point runs once."""
    ran = tmp_path / "ran.txt"
    monkeypatch.setattr(sweep_worker, "worker_command", lambda: [sys.executable, "-c", WORKER, str(ran)])
    points = [sweep.Point(DistillConfig(dataset="bloodmnist", seed=s, out=tmp_path / f"run{s}"), tmp_path / f"run{s}")
              for s in range(6)]
    errors = []

    def one_sweep() -> None:
        try:
            with tqdm(total=len(points), disable=True) as bar:
                sweep.run_parallel(points, 2, bar, claim_timeout=5)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=one_sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(ran.read_text().split()) == [f"run{s}" for s in range(6)]
    assert not list(tmp_path.glob(".*"))


def test_a_rerun_clears_what_a_killed_sweep_left_beside_finished_points(tmp_path, monkeypatch):
    """Killed after a point's run was published, before its claim and log were removed: the rerun removes them
    (their holder is dead) and does not train the point again; a live holder's are left to it."""
    ran = tmp_path / "ran.txt"
    monkeypatch.setattr(sweep_worker, "worker_command", lambda: [sys.executable, "-c", WORKER, str(ran)])
    points = [sweep.Point(DistillConfig(dataset="bloodmnist", seed=s, out=tmp_path / f"run{s}"), tmp_path / f"run{s}")
              for s in range(3)]
    for point in points[:2]:  # run0, run1 finished, each with its claim and log still there
        point.out.mkdir()
        (point.out / "metrics.json").write_text("{}")
        point.log.write_text("epoch 1\n")
    other_sweep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        write_claim(points[0].claim, claims.HOST, claims.HOST_ID, dead_pid(), age=1)
        write_claim(points[1].claim, claims.HOST, claims.HOST_ID, other_sweep.pid, age=0)
        with tqdm(total=len(points), disable=True) as bar:
            sweep.run_parallel(points, 2, bar)
        assert other_sweep.poll() is None, "the live holder was alive throughout"
    finally:
        other_sweep.kill()
        other_sweep.wait()
    assert ran.read_text().split() == ["run2"], "the finished points were not trained again"
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".run1.claim", ".run1.log"], "the live holder's are kept"
