"""What a checkpoint costs: the write with and without fsync, and the training thread's share before and after
checkpoints moved to a background writer (#24, #25).

A student (default resnet50_28, 8 classes) with Adam after one step, so that the optimizer holds its two
moments; the state is medal's own (`medal.pipeline.distill.epoch_state`), written by medal's own
`Checkpoint.save` (checkpoint.pt, history.csv, best.pt) into a temporary folder under --dir (the disk
that is measured: runs/ lives there by default). Rows, each the median of --repeats:

- the write of checkpoint.pt alone, without and with fsync (file before its rename, folder after), as
  medal writes it (no zip CRC-32s, which torch.load never checks), and with them, as before;
- the training thread per checkpoint before: the whole write on it (checkpoint.pt, then best.pt on an
  epoch that improved), as medal did it, without fsync;
- the training thread per checkpoint now: the copy to CPU memory only (`epoch_state`), on an epoch that
  did not improve and on one that did (the best weights copied too, shared with the checkpoint); the
  copy goes into the previous checkpoint's memory (`StateCopy`), and the last row copies into new memory.

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
from medal.pipeline.distill import epoch_state  # noqa: E402
from medal.runtime import io  # noqa: E402


@contextmanager
def without_fsync() -> Iterator[None]:
    real = io.fsync_path
    io.fsync_path = lambda path: None
    try:
        yield
    finally:
        io.fsync_path = real


def interleaved(work: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns (one call of each per round, after an untimed round),
    so that the disk's background writeback and the machine's load weigh on every row alike."""
    times: dict[str, list[float]] = {name: [] for name in work}
    for round_ in range(repeats + 1):
        for name, fn in work.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
        checkpoint = ckpt.Checkpoint(folder, {"seed": 0})
        copies = ckpt.StateCopy()  # as in distill: every checkpoint's copy in the same memory

        def state(improved: bool) -> dict:
            kept = {"model": ckpt.snapshot(student.state_dict()), "epoch": 2, "val": val} if improved else earlier
            write = epoch_state(checkpoint, student, optimizer, schedule, generator, device, kept, False, fields,
                                copies)
            return write.args[0]  # partial(checkpoint.save, state)

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

        timings = interleaved({
            "no_fsync": no_fsync(lambda: io.write_torch(folder / ckpt.CHECKPOINT, settings, crc=False)),
            "fsync": lambda: io.write_torch(folder / ckpt.CHECKPOINT, settings, crc=False),
            "crc": lambda: io.write_torch(folder / ckpt.CHECKPOINT, settings),
            "writer_now": lambda: checkpoint.save(state(True)),  # what the writer's thread does now
            "before_plain": no_fsync(lambda: old_save(False)),
            "before_improved": no_fsync(lambda: old_save(True)),
            "after_plain": lambda: state(False),
            "after_improved": lambda: state(True),
            "copy_kept": lambda: ckpt.snapshot(student.state_dict()),
            "copy_fresh": lambda: ckpt.snapshot({"model": student.state_dict(), "optimizer": optimizer.state_dict()}),
        }, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    t = timings
    rows = [
        ["checkpoint.pt write, no fsync", f"{t['no_fsync']:.3f} s"],
        ["checkpoint.pt write, fsync (file + folder)", f"{t['fsync']:.3f} s"],
        ["fsync's share of the write", f"{t['fsync'] - t['no_fsync']:+.3f} s"],
        ["checkpoint.pt write, fsync, with the zip's CRC-32s (as before)", f"{t['crc']:.3f} s"],
        ["writer thread now: checkpoint + history.csv + best.pt, fsync", f"{t['writer_now']:.3f} s"],
        ["training thread before, epoch not improved (write, no fsync)", f"{t['before_plain']:.3f} s"],
        ["training thread before, epoch improved (+ best.pt)", f"{t['before_improved']:.3f} s"],
        ["training thread now, epoch not improved (copy to CPU)", f"{t['after_plain']:.3f} s"],
        ["training thread now, epoch improved (copy, best weights shared)", f"{t['after_improved']:.3f} s"],
        ["  of which the best weights' copy (made even when skipped)", f"{t['copy_kept']:.3f} s"],
        ["model + optimizer copied into new memory (as before StateCopy)", f"{t['copy_fresh']:.3f} s"],
    ]
    body = table(["per checkpoint", "median"], rows) + (
        f"\n\n{args.student} + Adam: checkpoint.pt {size:.1f} MiB; median of {args.repeats} on {device.type}, "
        f"written under {args.dir.resolve()}")
    report("Checkpoint cost: fsync, and the training thread's share", body, args, device)


if __name__ == "__main__":
    main()
