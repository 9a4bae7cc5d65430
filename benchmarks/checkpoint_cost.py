"""What a checkpoint costs: the write with and without fsync, and the training thread's share before and after
checkpoints moved to a background writer (#24, #25).

A student (default resnet50_28, 8 classes) with Adam after one step, so that the optimizer holds its two
moments; the state is medal's own (`medal.pipeline.distill.epoch_state`), written by medal's own
`Checkpoint` (checkpoint.pt, history.csv, best.pt) into a temporary folder under --dir (the disk
that is measured: runs/ lives there by default). Rows, each the median of --repeats:

- the write of checkpoint.pt alone by `write_torch` (torch.save into the file), without and with fsync (file
  before its rename, folder after), without the zip CRC-32s, which torch.load never checks, and with them, as
  before;
- the write as medal makes it now: the file's bytes, made in memory (`medal.runtime.file_image`), written with
  O_DIRECT and through the page cache, fsync'd;
- the writer thread's whole share on a GPU: the bytes from the state's copy, the write, history.csv, best.pt;
- the training thread per checkpoint before: the whole write on it (checkpoint.pt, then best.pt on an
  epoch that improved), as medal did it, without fsync;
- the training thread per checkpoint now (`epoch_state`: on the CPU the file's bytes from the live state, on a
  GPU the copy into the previous checkpoint's memory, `StateCopy`), on an epoch that did not improve and on one
  that did; the best weights' copy; and the state copied into new memory, as before `StateCopy`.

    python benchmarks/checkpoint_cost.py [--student resnet50_28] [--repeats 5] [--dir .] [--quick] [--append FILE]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from common import add_common_args, report, resolve_defaults, table  # also puts medal on the path

from medal.models.students import build_student  # noqa: E402
from medal.pipeline import checkpoint as ckpt  # noqa: E402
from medal.pipeline import distill  # noqa: E402
from medal.pipeline.distill import epoch_state  # noqa: E402
from medal.runtime import io  # noqa: E402
from medal.runtime.file_image import FileImage  # noqa: E402


@contextmanager
def without_fsync() -> Iterator[None]:
    real = io.fsync_path
    io.fsync_path = lambda path: None
    try:
        yield
    finally:
        io.fsync_path = real


def interleaved(work: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds of each function, and median CPU seconds of this thread in it, timed in turns (one call of
    each per round, after an untimed round), so that the disk's background writeback and the machine's load weigh
    on every row alike."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in work}
    for round_ in range(repeats + 1):
        for name, fn in work.items():
            start, cpu = time.perf_counter(), time.thread_time()
            fn()
            if round_:
                times[name].append((time.perf_counter() - start, time.thread_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--student", help="default resnet50_28 (test_resnet with --quick)")
    ap.add_argument("--repeats", type=int, help="timed repeats per row (default 5, 2 with --quick)")
    ap.add_argument("--dir", type=Path, default=Path("."), help="where the temporary run folder is written")
    args = ap.parse_args()
    device = resolve_defaults(args, {"student": ("resnet50_28", "test_resnet", "resnet50_28", "test_resnet"),
                                     "repeats": (5, 2, 5, 2)})
    student = build_student(args.student, 8).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[50, 75], gamma=0.1)
    student(torch.randn(2, 3, 28, 28, device=device)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(0)
    val = {"auc": 0.9, "acc": 0.8}
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 1.0, "val_auc": 0.9, "val_acc": 0.8, "seconds": 1.0}
               for e in range(1, 101)]
    fields = {"epoch": 2, "val": val, "best_auc": 0.9, "since_best": 1, "stopped": False, "history": history}
    earlier = {"model": ckpt.snapshot(student.state_dict()), "epoch": 1, "val": val}  # best.pt: an earlier epoch's

    folder = Path(tempfile.mkdtemp(prefix=".checkpoint_cost-", dir=args.dir))
    try:
        checkpoint = ckpt.Checkpoint(folder, {"seed": 0, "epochs": 2})  # epoch 2 the last: best.pt written too
        copies = ckpt.StateCopy()  # as in distill: every checkpoint's copy in the same memory

        def kept(improved: bool) -> dict:
            return {"model": ckpt.snapshot(student.state_dict()), "epoch": 2, "val": val} if improved else earlier

        def now(improved: bool) -> object:
            """The training thread's share now, the way this device takes."""
            return epoch_state(checkpoint, student, optimizer, schedule, generator, device, kept(improved), False,
                               fields, copies)

        def state(improved: bool) -> dict:
            """The state copied the GPU's way (what its writer's thread saves), on any device."""
            live = distill.copies_live_state
            distill.copies_live_state = lambda device: False
            try:
                return now(improved).args[0]  # partial(checkpoint.save, state)
            finally:
                distill.copies_live_state = live

        plain = {k: v for k, v in state(False).items() if k != "kept"}  # checkpoint.pt as medal wrote it before
        settings = {"settings": checkpoint.settings, **plain}
        io.write_torch(folder / "size.pt", settings)
        size = (folder / "size.pt").stat().st_size / 2**20

        def no_fsync(work: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                with without_fsync():
                    return work()
            return run

        def old_save(improved: bool) -> None:  # the training thread's whole share before: every write on it
            io.write_torch(folder / ckpt.CHECKPOINT, settings)
            io.write_csv(folder / "history.csv", history)
            if improved:
                io.write_torch(folder / "best.pt", {"model": plain["model"], "epoch": 2, "val": val})

        direct, cached = FileImage(), FileImage()
        cached.direct = False
        for image in (direct, cached):
            image.save_torch(settings, crc=False)

        def image_write(image: FileImage) -> Callable[[], object]:
            return lambda: io.atomic(folder / ckpt.CHECKPOINT, image.write_to, keep=folder / ckpt.PREVIOUS)

        timings = interleaved({
            "no_fsync": no_fsync(lambda: io.write_torch(folder / ckpt.CHECKPOINT, settings, crc=False)),
            "fsync": lambda: io.write_torch(folder / ckpt.CHECKPOINT, settings, crc=False),
            "crc": lambda: io.write_torch(folder / ckpt.CHECKPOINT, settings),
            "o_direct": image_write(direct),
            "page_cache": image_write(cached),
            "writer_gpu": lambda: checkpoint.save(state(True)),  # what the writer's thread does on a GPU
            "before_plain": no_fsync(lambda: old_save(False)),
            "before_improved": no_fsync(lambda: old_save(True)),
            "after_plain": lambda: now(False),
            "after_improved": lambda: now(True),
            "copy_kept": lambda: ckpt.snapshot(student.state_dict()),
            "copy_fresh": lambda: ckpt.snapshot({"model": student.state_dict(), "optimizer": optimizer.state_dict()}),
        }, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    t = timings
    labels = [
        ("no_fsync", "checkpoint.pt write, no fsync"),
        ("fsync", "checkpoint.pt write, fsync (file + folder)"),
        ("crc", "checkpoint.pt write, fsync, with the zip's CRC-32s (as before)"),
        ("o_direct", "checkpoint.pt now: its bytes from memory, O_DIRECT, fsync"),
        ("page_cache", "checkpoint.pt now, through the page cache (O_DIRECT refused), fsync"),
        ("writer_gpu", "writer thread on a GPU: bytes + checkpoint + history.csv + best.pt"),
        ("before_plain", "training thread before, epoch not improved (write, no fsync)"),
        ("before_improved", "training thread before, epoch improved (+ best.pt)"),
        ("after_plain", "training thread now, epoch not improved (copy to CPU memory)"),
        ("after_improved", "training thread now, epoch improved (+ the best weights' copy)"),
        ("copy_kept", "  of which the best weights' copy (made even when skipped)"),
        ("copy_fresh", "model + optimizer copied into new memory (as before StateCopy)"),
    ]
    rows = [[label, f"{t[key][0]:.3f} s", f"{t[key][1]:.3f} s"] for key, label in labels]
    rows.insert(2, ["fsync's share of the write", f"{t['fsync'][0] - t['no_fsync'][0]:+.3f} s",
                    f"{t['fsync'][1] - t['no_fsync'][1]:+.3f} s"])
    body = table(["per checkpoint", "median", "its CPU (the thread's)"], rows) + (
        f"\n\n{args.student} + Adam: checkpoint.pt {size:.1f} MiB; median of {args.repeats} on {device.type}, "
        f"written under {args.dir.resolve()}")
    report("Checkpoint cost: fsync, and the training thread's share", body, args, device)


if __name__ == "__main__":
    main()
