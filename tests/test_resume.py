"""Repeatable and resumable distill runs: same seed twice, kill -9 and SIGTERM mid-run, then resume.

A tiny timm student (test_resnet) on 28 px toy data, plain CE (--alpha 1, no teacher cache), KD from a
teacher cache, and DDP with two CPU ranks under torchrun (gloo). Interrupted runs are real
`python -m medal distill` processes; the reruns that resume them and the uninterrupted reference
run in-process (under torchrun: processes too). All single-threaded, so that bits do not depend
on how a reduction is split across threads.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import error_lines, make_npz, run_cli

import medal

EPOCHS = 6
CE = ("--alpha", "1")


def args(root: Path, out: Path, *extra: object, method: tuple = CE) -> list[str]:
    return ["distill", "--dataset", "bloodmnist", "--root", root, *method, "--student", "test_resnet",
            "--epochs", EPOCHS, "--batch-size", "16", "--image-size", "28", "--milestones", "2", "--device", "cpu",
            "--out", out, *extra]


def in_process(cli_args: list) -> None:
    """`medal ARGS` in this process, for module-wide fixtures (no capsys there)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["medal", *map(str, cli_args)])
        torch.set_num_threads(1)
        from medal.cli import main

        try:
            main()
        except SystemExit as exc:
            assert not exc.code, f"medal {cli_args[0]} failed with exit {exc.code}"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmnist")
    make_npz(root, "bloodmnist", n={"train": 48, "val": 16, "test": 16})
    return root


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory) -> Path:
    """An uninterrupted run with the default seed."""
    out = tmp_path_factory.mktemp("reference") / "run"
    in_process(args(root, out))
    return out


def history(run: Path) -> list[dict]:
    """history.csv without its seconds column, the one thing allowed to differ."""
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_identical(a: Path, b: Path) -> None:
    """Every output of two runs the same bit for bit, except seconds, paths and history.png."""
    assert history(a) == history(b)
    assert (a / "test_scores.npy").read_bytes() == (b / "test_scores.npy").read_bytes()
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    ca, cb = ma.pop("config"), mb.pop("config")
    assert ma == mb
    assert {k: v for k, v in ca.items() if k != "out"} == {k: v for k, v in cb.items() if k != "out"}
    ba, bb = torch.load(a / "best.pt"), torch.load(b / "best.pt")
    assert (ba["epoch"], ba["val"]) == (bb["epoch"], bb["val"])
    assert ba["model"].keys() == bb["model"].keys()
    assert all(torch.equal(ba["model"][k], bb["model"][k]) for k in ba["model"])


def start(cli_args: list, launcher: tuple[str, ...] = ("-m", "medal"), stderr=subprocess.PIPE) -> subprocess.Popen:
    """`python LAUNCHER ARGS` in a process group of its own (torchrun's ranks included)."""
    here = str(Path(medal.__file__).parents[1])  # the medal under test, installed or not
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, *launcher, *map(str, cli_args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)


def wait_for_epochs(proc: subprocess.Popen, partial: Path, n: int) -> None:
    """Until the partial folder's history.csv holds n epochs (written after the epoch's checkpoint)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if len((partial / "history.csv").read_text().strip().splitlines()) > n:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {n} epochs within 300 s")


def trained_epochs(err: str) -> list[int]:
    return [int(m) for m in re.findall(r"^epoch +(\d+) +loss", err, flags=re.M)]


def test_same_seed_twice_is_identical_and_another_seed_is_not(root, reference, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(args(root, tmp_path / "again"), capsys, monkeypatch)
    assert code == 0, err
    assert_identical(reference, tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["seed"] == 0 and config["deterministic"] is False

    code, _, err = run_cli(args(root, tmp_path / "seed1", "--seed", "1"), capsys, monkeypatch)
    assert code == 0, err
    first = torch.load(reference / "best.pt")["model"]
    other = torch.load(tmp_path / "seed1" / "best.pt")["model"]
    stem = next(iter(first))  # the first convolution's weights: drawn from --seed
    assert not torch.equal(first[stem], other[stem])
    assert history(reference) != history(tmp_path / "seed1")


def test_kill_9_then_resume_is_identical(root, reference, tmp_path, capsys, monkeypatch):
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = start(args(root, out))
    wait_for_epochs(proc, partial, 2)
    proc.kill()  # SIGKILL: no handler runs, the lock and the checkpoint stay as they were
    proc.communicate()
    done = torch.load(partial / "checkpoint.pt")["epoch"]
    assert 2 <= done < EPOCHS and not out.exists()

    code, _, err = run_cli(args(root, out), capsys, monkeypatch)
    assert code == 0, err
    assert f"resuming {out} from epoch {done + 1} of {EPOCHS} ({done} epochs done)" in err
    assert trained_epochs(err) == list(range(done + 1, EPOCHS + 1)), "only the remaining epochs are trained"
    assert [int(row["epoch"]) for row in history(out)] == list(range(1, EPOCHS + 1))
    assert_identical(reference, out)
    assert not partial.exists() and not (out / "checkpoint.pt").exists() and not (out / "lock").exists()


# `medal` whose making of epoch 3's checkpoint stops (argv[2]: where), a marker file (argv[1]) is created, then a
# long sleep, during which the test sends SIGKILL. "copy": the training thread's copy of the live state into the
# image in memory (the CPU's way); "write" and "memory": the writer's thread leaves the temporary file
# half-written (after the CPU's copy, or a GPU's copy into memory first, taken on the CPU here); "publish": the
# writer's fsync of the complete temporary file hangs.
SLOW_WRITE = """
import sys, time
from pathlib import Path
import torch
import medal.pipeline.distill as distill
import medal.runtime.io as io
from medal.runtime.file_image import FileImage
marker, where = Path(sys.argv.pop(1)), sys.argv.pop(1)
save, write_to, fsync = FileImage.save_torch, FileImage.write_to, io.fsync_path

def hang():
    marker.touch()
    time.sleep(300)

def slow_save(self, obj, *args, **kwargs):
    save(self, obj, *args, **kwargs)
    if obj["epoch"] == 3:
        hang()

def slow_write(self, path):
    write_to(self, path)
    if torch.load(path, weights_only=True)["epoch"] == 3:
        with open(path, "r+b") as f:
            f.truncate(self.size // 2)  # written over the file epoch 1's checkpoint was in: half of it new
        hang()

def slow_fsync(path):
    fsync(path)
    if ".checkpoint.pt.tmp-" in Path(path).name and torch.load(path, weights_only=True)["epoch"] == 3:
        hang()

if where == "copy":
    FileImage.save_torch = slow_save
elif where == "publish":
    io.fsync_path = slow_fsync
else:
    FileImage.write_to = slow_write
if where == "memory":
    distill.copies_live_state = lambda device: False
from medal.cli import main
sys.argv = ["medal", *sys.argv[1:]]
main()
"""


def wait_for(what, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, f"waited {seconds} s"
        time.sleep(0.02)


@pytest.mark.parametrize("where", ["write", "publish", "copy", "memory"])
def test_kill_9_while_a_checkpoint_is_written_then_resume_is_identical(root, reference, tmp_path, capsys, monkeypatch,
                                                                        where):
    """Epoch 3's checkpoint is being made when a SIGKILL comes; the rerun resumes after epoch 2 and ends
    bit-identical. On the writer's thread, half-written into the file (write), or waiting for its fsync (publish),
    or a GPU's way, copied into memory first (memory): training goes on meanwhile, epochs 4 and 5 skip their
    checkpoints, and the kill loses epochs 3 to 5. copy: the training thread's copy of the live state into memory
    (the CPU's way); training waits for it, the kill loses epoch 3, and no file was touched."""
    out, partial, marker = tmp_path / "run", tmp_path / ".run.partial", tmp_path / "writing"
    log, goes_on = tmp_path / "stderr.txt", where != "copy"
    with open(log, "w") as stderr:
        proc = start(args(root, out), ("-c", SLOW_WRITE, str(marker), where), stderr=stderr)
        try:
            wait_for(lambda: marker.exists() or proc.poll() is not None)
            if goes_on:  # training goes on while the write sleeps for 300 s: a loop that waited would not get here
                wait_for(lambda: 5 in trained_epochs(log.read_text()) or proc.poll() is not None, seconds=60)
        finally:
            proc.kill()
            proc.communicate()
    trained = trained_epochs(log.read_text())
    assert marker.exists() and (5 in trained if goes_on else trained == [1, 2]), log.read_text()[-2000:]
    writing = any(".checkpoint.pt.tmp-" in p.name for p in partial.iterdir())
    assert writing == goes_on, "killed while writing the file" if goes_on else "killed before any file was touched"
    assert torch.load(partial / "checkpoint.pt")["epoch"] == 2
    before = partial / "checkpoint.previous.pt"
    if goes_on:
        assert not before.exists(), "epoch 3's write goes over epoch 1's checkpoint"
    else:
        assert torch.load(before)["epoch"] == 1, "the checkpoint before is kept until a write replaces it"

    code, _, err = run_cli(args(root, out), capsys, monkeypatch)
    assert code == 0, err
    assert f"resuming {out} from epoch 3 of {EPOCHS} (2 epochs done)" in err
    assert trained_epochs(err) == list(range(3, EPOCHS + 1))
    assert_identical(reference, out)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name], "the killed write's temporary file is gone"


def test_an_unreadable_checkpoint_falls_back_to_the_one_before(root, reference, tmp_path, capsys, monkeypatch):
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = start(args(root, out))
    wait_for_epochs(proc, partial, 3)
    proc.send_signal(signal.SIGTERM)  # the run waits for the write under way
    proc.communicate(timeout=120)
    latest, before = (torch.load(partial / name)["epoch"] for name in ("checkpoint.pt", "checkpoint.previous.pt"))
    assert 3 <= latest < EPOCHS and before < latest
    (partial / "checkpoint.pt").write_bytes(b"")  # what a crash could leave of a file written without fsync

    code, _, err = run_cli(args(root, out), capsys, monkeypatch)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ") and "checkpoint" in line]
    assert len(warnings) == 1 and str(partial / "checkpoint.pt") in warnings[0], err
    assert f"resuming {out} from epoch {before + 1} of {EPOCHS}" in err
    assert trained_epochs(err) == list(range(before + 1, EPOCHS + 1))
    assert_identical(reference, out)


def test_no_readable_checkpoint_is_one_error_line(root, reference, tmp_path, capsys, monkeypatch):
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    partial.mkdir()
    (partial / "checkpoint.pt").write_bytes(b"")
    (partial / "checkpoint.previous.pt").write_bytes(b"PK\x03\x04 half a zip")
    code, _, err = run_cli(args(root, out), capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {partial / 'checkpoint.pt'} could not be read")
    assert lines[0].endswith("no earlier checkpoint can be read either: pass --force to start over."), lines

    code, _, err = run_cli(args(root, out, "--force"), capsys, monkeypatch)
    assert code == 0, err
    assert trained_epochs(err) == list(range(1, EPOCHS + 1)), "--force starts over"
    assert history(out) == history(reference)
    assert (out / "test_scores.npy").read_bytes() == (reference / "test_scores.npy").read_bytes()


def test_sigterm_says_how_to_resume_and_settings_must_match(root, reference, tmp_path, capsys, monkeypatch):
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = start(args(root, out))
    wait_for_epochs(proc, partial, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    last = error_lines(err)[-1]
    assert re.fullmatch(rf"interrupted at epoch (\d) of {EPOCHS}: run the same command again to resume from epoch "
                        rf"\1 \(progress kept in {re.escape(str(partial))}\)", last), last
    assert (partial / "checkpoint.pt").is_file() and not (partial / "lock").exists()
    kept, best = torch.load(partial / "checkpoint.pt")["kept"], torch.load(partial / "best.pt")
    assert best["epoch"] == kept["epoch"], "best.pt is not the interrupted run's best epoch"
    assert all(torch.equal(best["model"][k], v) for k, v in kept["model"].items()), "best.pt is not those weights"

    code, _, err = run_cli(args(root, out, "--lr", "0.01", "--seed", "3"), capsys, monkeypatch)
    assert code == 1
    assert error_lines(err) == [f"error: {partial} holds an interrupted run with other settings (lr 0.001 -> 0.01; "
                                "seed 0 -> 3): run its command again to resume it, or pass --force to start over."]
    assert (partial / "checkpoint.pt").is_file(), "a refused rerun leaves the interrupted run as it was"

    code, _, err = run_cli(args(root, out), capsys, monkeypatch)
    assert code == 0, err
    assert_identical(reference, out)


def test_one_process_at_a_time(root, tmp_path, capsys, monkeypatch):
    partial = tmp_path / ".run.partial"
    partial.mkdir()
    holder = subprocess.Popen(  # a process holding the run's lock, as a training `medal distill` does
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(partial / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1234 on elsewhere'); print('locked', flush=True)\n"
         "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(args(root, tmp_path / "run"), capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    assert error_lines(err) == [f"error: {partial} is being trained by pid 1234 on elsewhere; wait for it to finish "
                                "or stop it, then run the command again."]


@pytest.fixture(scope="module")
def cache(root, vits_weights, tmp_path_factory) -> Path:
    """A teacher cache of the toy data: a random ViT-S/14's features and its linear head's logits."""
    cache = tmp_path_factory.mktemp("cache")
    in_process(["cache-teacher", "--dataset", "bloodmnist", "--root", root, "--teacher", "dinov2_vits14", "--weights",
                vits_weights, "--image-size", "28", "--head-epochs", "3", "--batch-size", "16", "--device", "cpu",
                "--cache-dir", cache])
    return cache


def test_kd_from_cache_kill_9_then_resume_is_identical(root, cache, tmp_path, capsys, monkeypatch):
    kd = ("--alpha", "0.5", "--t", "2", "--cache-dir", cache)
    reference = tmp_path / "reference"
    code, _, err = run_cli(args(root, reference, method=kd), capsys, monkeypatch)
    assert code == 0, err

    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = start(args(root, out, method=kd))
    wait_for_epochs(proc, partial, 2)
    proc.kill()
    proc.communicate()
    done = torch.load(partial / "checkpoint.pt")["epoch"]
    assert 2 <= done < EPOCHS and not out.exists()

    code, _, err = run_cli(args(root, out, method=kd), capsys, monkeypatch)
    assert code == 0, err
    assert f"resuming {out} from epoch {done + 1} of {EPOCHS} ({done} epochs done)" in err
    assert trained_epochs(err) == list(range(done + 1, EPOCHS + 1)), "only the remaining epochs are trained"
    assert_identical(reference, out)
    config = json.loads((out / "config.json").read_text())
    assert config["alpha"] == 0.5 and config["cache_keys"] == [p.name.removesuffix(".zarr") for p in cache.glob("*.zarr")]


def torchrun() -> tuple[str, ...]:
    """`torchrun --nproc-per-node 2 -m medal` on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
            str(port), "-m", "medal")


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")
def test_ddp_two_ranks_sigterm_then_resume_is_identical(root, tmp_path):
    reference = tmp_path / "reference"
    proc = start(args(root, reference), torchrun())
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = start(args(root, out), torchrun())
    wait_for_epochs(proc, partial, 2)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both ranks
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted at epoch" in err, err[-3000:]
    done = torch.load(partial / "checkpoint.pt")["epoch"]
    assert 2 <= done < EPOCHS and not out.exists()

    proc = start(args(root, out), torchrun())
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming {out} from epoch {done + 1} of {EPOCHS} ({done} epochs done)" in err
    assert trained_epochs(err) == list(range(done + 1, EPOCHS + 1)), "only the remaining epochs are trained"
    assert_identical(reference, out)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
