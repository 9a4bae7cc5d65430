"""Writes that survive a crash, and checkpoints written off the training thread.

- `atomic` flushes the new file before its rename and the folder after it (a crash leaves the old file
  or the new one, never an empty one), and can keep the file it replaces; the next write then goes over
  the kept file it discards. `publish_dir` flushes every file of a folder before renaming it into place.
  Checked by recording the system calls in order.
- `BackgroundWriter` skips a write offered while the previous one runs, without even preparing it,
  writes the last skipped one at the end, and hands a failed write's error to the loop's thread.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from medal.runtime import io
from medal.runtime.background import BackgroundWriter

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads fsync's file from /proc/self/fd")


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """("fsync", path), ("replace", src, dst) and ("rename", src, dst), in the order they happen."""
    events: list[tuple] = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording(name, call):
        def run(src, dst, *args, **kwargs):
            events.append((name, str(src), str(dst)))
            call(src, dst, *args, **kwargs)
        return run

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording("replace", replace))
    monkeypatch.setattr(os, "rename", recording("rename", rename))
    return events


@linux
def test_atomic_flushes_the_file_before_its_rename_and_the_folder_after(tmp_path, calls):
    path, keep = tmp_path / "state.json", tmp_path / "state.previous.json"
    path.write_text("old")
    io.atomic(path, lambda tmp: tmp.write_text("new"), keep=keep)
    tmp = next(e[1] for e in calls if e[0] == "fsync")
    assert Path(tmp).name.startswith(".state.json.tmp-")
    assert calls == [("fsync", tmp), ("replace", str(path), str(keep)), ("replace", tmp, str(path)),
                     ("fsync", str(tmp_path))]
    assert (path.read_text(), keep.read_text()) == ("new", "old")


@linux
def test_publish_dir_flushes_every_file_before_the_rename(tmp_path, calls):
    tmp, final = tmp_path / ".store.partial", tmp_path / "store"
    files = [tmp / "zarr.json", tmp / "train" / "images" / "c" / "0", tmp / "train" / "labels.json"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    io.publish_dir(tmp, final)
    rename = calls.index(("rename", str(tmp), str(final)))
    flushed = {e[1] for e in calls[:rename]}
    assert {str(f) for f in files} | {str(f.parent) for f in files} <= flushed
    assert calls[rename + 1:] == [("fsync", str(tmp_path))]


def offering(writer: BackgroundWriter, release: threading.Event, prepared: list, written: list):
    """offer(n): a write that records n, the first one held until `release` is set."""
    def offer(n: int) -> bool:
        def write() -> None:
            if n == 1:
                release.wait(30)
            written.append(n)

        def prepare():
            prepared.append(n)
            return write

        return writer.offer(prepare)
    return offer


def test_a_write_offered_while_one_runs_is_skipped_and_the_last_written_at_the_end():
    release, prepared, written = threading.Event(), [], []
    with BackgroundWriter() as writer:
        offer = offering(writer, release, prepared, written)
        assert offer(1)
        assert not offer(2) and not offer(3), "skipped, not waited for"
        assert prepared == [1] and written == [], "a skipped write is not even prepared"
        release.set()
    assert written == [1, 3] and prepared == [1, 3], "the last skipped write is written at the end"
    assert (writer.stats.written, writer.stats.skipped) == (2, 1)


def test_leaving_by_an_exception_waits_for_the_write_under_way_only():
    release, prepared, written = threading.Event(), [], []
    with pytest.raises(KeyboardInterrupt), BackgroundWriter() as writer:
        offer = offering(writer, release, prepared, written)
        offer(1)
        offer(2)
        threading.Timer(0.2, release.set).start()
        raise KeyboardInterrupt
    assert written == [1], "the write under way finished; the skipped one held a state the loop had left"


def test_a_failed_write_raises_on_the_loops_thread():
    def failing():
        raise OSError(28, "No space left on device")

    writer = BackgroundWriter()
    writer.offer(lambda: failing)
    with pytest.raises(OSError, match="No space left"):
        writer.finish()


def test_a_checkpoint_written_without_zip_crcs_reads_back_and_other_saves_keep_theirs(tmp_path):
    import zipfile

    import torch

    state = {"w": torch.randn(1000), "step": torch.tensor(3.0)}
    io.write_torch(tmp_path / "checkpoint.pt", state, crc=False)
    back = io.read_torch(tmp_path / "checkpoint.pt")
    assert all(torch.equal(back[key], state[key]) for key in state)
    try:
        from torch.utils.serialization import config  # noqa: F401  (a torch with the option leaves the CRCs out)
        crcs = {info.CRC for info in zipfile.ZipFile(tmp_path / "checkpoint.pt").infolist()}
        assert crcs == {0}, "the CRC-32 pass (a third of the write's CPU time) was still made"
    except ImportError:
        pass
    torch.save(state, tmp_path / "other.pt")  # after it: a plain torch.save, and medal's best.pt, keep their CRCs
    io.write_torch(tmp_path / "best.pt", state)
    for name in ("other.pt", "best.pt"):
        assert zipfile.ZipFile(tmp_path / name).testzip() is None
        assert {info.CRC for info in zipfile.ZipFile(tmp_path / name).infolist()} != {0}


def test_a_kept_write_is_written_over_the_file_it_discards_and_reads_back_exactly(tmp_path):
    import torch

    path, keep = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.previous.pt"
    big = {"w": torch.randn(20_000)}
    io.write_torch(path, big, keep=keep)
    io.write_torch(path, {"w": big["w"] + 1}, keep=keep)
    discarded = keep.stat().st_ino
    small = {"w": torch.arange(10.0)}  # shorter than the file it is written over
    io.write_torch(path, small, keep=keep)
    assert path.stat().st_ino == discarded, "the new checkpoint went into a new file, not the discarded one"
    assert torch.equal(io.read_torch(path)["w"], small["w"]), "the old bytes left after it were read instead"
    (tmp_path / "fresh").mkdir()
    fresh = io.write_torch(tmp_path / "fresh" / "checkpoint.pt", small)  # the same write, into a new file
    assert path.stat().st_size == fresh.stat().st_size, "the old file's tail was left in it"
    assert torch.equal(io.read_torch(keep)["w"], big["w"] + 1), "the checkpoint before is kept"
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "checkpoint.previous.pt", "fresh"}


def test_a_state_copy_reuses_the_last_copys_memory_and_holds_the_new_values():
    import torch

    from medal.pipeline.checkpoint import StateCopy

    shared = torch.randn(4, 3)
    state = {"a": shared, "b": [shared, torch.zeros(5)], "n": 1}
    copies = StateCopy()
    first = copies("model", state)
    pointer = first["a"].data_ptr()
    shared.add_(1)
    second = copies("model", state)
    assert second["a"].data_ptr() == pointer, "the last copy's memory was not reused"
    assert torch.equal(second["a"], shared) and second["b"][0] is second["a"], "new values, sharing kept"
    shared.add_(1)
    assert not torch.equal(second["a"], shared), "a copy, not a view of the training state"
    state["b"][1] = torch.zeros(6)  # a tensor that changed shape gets new memory
    assert copies("model", state)["b"][1].shape == (6,)
    other = copies("optimizer", {"a": torch.ones(4, 3)})
    assert other["a"].data_ptr() != pointer, "each part has memory of its own"


def test_best_pt_after_a_signal_comes_from_the_checkpoint_on_the_disk(tmp_path):
    """--keep last: the kept weights are the checkpoint's copy buffer, which the next epoch's copy overwrites; a
    signal that catches that copy half done must not put its values into best.pt."""
    import torch

    from medal.pipeline.checkpoint import Checkpoint

    checkpoint = Checkpoint(tmp_path, {"epochs": 5})
    buffer = {"w": torch.zeros(4)}
    state = {"epoch": 2, "stopped": False, "history": [{"epoch": 1}, {"epoch": 2}],
             "kept": {"model": buffer, "epoch": 2, "val": {"auc": 0.5}}}
    checkpoint.save(state)
    assert not (tmp_path / "best.pt").exists(), "best.pt is written when training ends, not every epoch"
    buffer["w"][:2] = 7.0  # epoch 3's copy, half done when the signal came
    checkpoint.write_best_after_signal()
    best = torch.load(tmp_path / "best.pt")
    assert best["epoch"] == 2 and torch.equal(best["model"]["w"], torch.zeros(4))
