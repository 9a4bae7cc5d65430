"""The per-epoch checkpoint's cost, variants taking turns in one process: a 5% question on a machine whose
epochs vary by 15% from one minute to the next needs many short rounds, not two long runs.

Variants (any of them, in the order given, each round):
- `bare`: epoch_overhead's bare PyTorch loop (train steps, then the validation forward);
- `medal`: `medal distill` as it is: on the CPU the training thread makes the checkpoint file's bytes in memory
  from the live state (`Checkpoint.prepare`), the writer's thread writes them with O_DIRECT, fsyncs and renames;
- `page-cache`: `medal`, the bytes written through the page cache (as where O_DIRECT is refused);
- `in-file`: medal at 71e369c: the training thread torch.saves the live state into the file (through the page
  cache, over the file the write discards), the writer's thread fsyncs and renames it;
- `in-memory`: medal copying the state to memory first, the writer's thread making the bytes and writing them,
  as it does on a GPU (`medal.pipeline.distill.copies_live_state`);
- `fresh-files`: `in-memory`, writing each checkpoint.pt into a new file, as before `atomic` recycled the file
  the write replaces;
- `fresh-crc`: `fresh-files`, with the checkpoint's state also copied into new memory each epoch and checkpoint.pt
  written with the zip's CRC-32s, as before `StateCopy` and `write_torch(crc=False)`;
- `best-each`: `in-memory`, writing best.pt after every better epoch too, as before it waited for the end of
  training (epoch_overhead's `--writes best-each`);
- `last`: medal with no checkpoint before the last epoch (epoch_overhead's `--writes last`).

`--allocator glibc` leaves glibc's malloc thresholds as they are, in medal too (as before
`medal.runtime.allocator`); by default the whole process has medal's, the bare loop included.

Prints one JSON line: torch's threads, the allocator, and each variant's median epoch seconds (the first epoch of each run
dropped), its ratio to `bare` and the number of epochs; every epoch goes to stderr as it comes.

    python benchmarks/checkpoint_ab.py --rounds 4 --epochs 6 --variants bare,medal,in-file,in-memory,last
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import epoch_overhead as eo
import torch

import medal.pipeline.checkpoint as checkpoint
import medal.pipeline.distill as distill
import medal.runtime.file_image as file_image
import medal.runtime.io as io
from medal.runtime.allocator import keep_freed_memory

VARIANTS = ("bare", "medal", "page-cache", "in-file", "in-memory", "fresh-files", "fresh-crc", "best-each", "last")


@contextlib.contextmanager
def page_cache() -> Iterator[None]:
    """`medal`, every image written without O_DIRECT."""
    init = file_image.FileImage.__init__

    def without_o_direct(self: file_image.FileImage) -> None:
        init(self)
        self.direct = False

    file_image.FileImage.__init__ = without_o_direct
    try:
        yield
    finally:
        file_image.FileImage.__init__ = init


@contextlib.contextmanager
def into_file() -> Iterator[None]:
    """`Checkpoint.prepare` as at 71e369c: torch.save of the live state straight into the file the write discards,
    on the training thread; the fsync and renames (`atomic`'s second half) on the writer's thread."""
    prepare = checkpoint.Checkpoint.prepare

    def staged(self: checkpoint.Checkpoint, state: dict) -> Callable[[], None]:
        path, keep = self.path, self.folder / checkpoint.PREVIOUS
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if keep.exists() and path.exists():
            os.replace(keep, tmp)
        with io.zip_crc(False), open(tmp, "r+b" if tmp.exists() else "wb") as f:
            torch.save({"settings": self.settings, **state}, f)
            f.truncate()

        def publish() -> None:
            io.fsync_path(tmp)
            if path.exists():
                os.replace(path, keep)
            os.replace(tmp, path)
            io.fsync_path(path.parent)
            self.on_disk(state)
            if state["stopped"] or state["epoch"] == self.settings["epochs"]:
                self.write_best()

        return publish

    checkpoint.Checkpoint.prepare = staged
    try:
        yield
    finally:
        checkpoint.Checkpoint.prepare = prepare


@contextlib.contextmanager
def fresh_files() -> Iterator[None]:
    """`in-memory` (epoch_overhead's `copied("memory")`), with the checkpoint written as before `atomic` recycled the
    replaced file: into a new temporary file (the replaced one still kept as `keep`)."""
    recycling = checkpoint.atomic

    def atomic(path: Path, write: Callable[[Path], None], keep: Path | None = None) -> Path:
        if keep is not None:
            keep.unlink(missing_ok=True)  # nothing to recycle
        return recycling(path, write, keep)

    checkpoint.atomic = atomic
    try:
        with eo.copied("memory"):
            yield
    finally:
        checkpoint.atomic = recycling


@contextlib.contextmanager
def fresh_copies_with_crc() -> Iterator[None]:
    """The checkpoint as medal made it before: every copy in new memory, every zip record with its CRC-32."""
    copy, crc = checkpoint.StateCopy.__call__, file_image.zip_crc
    checkpoint.StateCopy.__call__ = lambda self, part, obj: checkpoint.snapshot(obj)
    file_image.zip_crc = lambda on: contextlib.nullcontext()
    try:
        with fresh_files():
            yield
    finally:
        checkpoint.StateCopy.__call__, file_image.zip_crc = copy, crc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="resnet50_28")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--train", type=int, default=128)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4, help="a run's epochs, the first a warm-up")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, help="torch threads (default torch's: every core)")
    ap.add_argument("--allocator", choices=("medal", "glibc"), default="medal",
                    help="medal: glibc's thresholds fixed as `medal distill` fixes them, for the bare loop too, from "
                         "the start; glibc: left to glibc, for medal too (as before medal.runtime.allocator)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "bare" not in variants:
        sys.exit(f"error: --variants takes {', '.join(VARIANTS)}, bare among them (got {args.variants})")
    if args.allocator == "medal":
        keep_freed_memory()
    else:
        distill.keep_freed_memory = lambda: False
    if args.threads:
        torch.set_num_threads(args.threads)  # fewer than the cores leaves the checkpoint writer a core of its own
    epochs: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = eo.write_data(Path(tmp), args.train, args.val)
        for round_ in range(args.rounds):
            for variant in variants:
                if variant == "bare":
                    times = eo.bare_epochs(root, args.student, args.image_size, args.epochs, args.batch_size, 0)
                else:
                    in_memory = partial(eo.copied, "memory")
                    how = {"fresh-crc": fresh_copies_with_crc, "fresh-files": fresh_files, "in-memory": in_memory,
                           "best-each": in_memory, "page-cache": page_cache,
                           "in-file": into_file}.get(variant, contextlib.nullcontext)()
                    writes = variant if variant in ("best-each", "last") else "every"
                    with how, eo.fewer_writes(writes, args.epochs):
                        times = eo.medal_epochs(root, args.student, args.image_size, args.epochs, args.batch_size,
                                                0, Path(tmp) / f"run{round_}-{variant}")[0]
                epochs[variant] += times[1:]
                print(round_, variant, [round(t, 2) for t in times[1:]], file=sys.stderr, flush=True)
    bare = statistics.median(epochs["bare"])
    medians = {v: {"median_s": round(statistics.median(t), 3), "ratio": round(statistics.median(t) / bare, 3),
                   "epochs": len(t)} for v, t in epochs.items()}
    print(json.dumps({"threads": torch.get_num_threads(), "allocator": args.allocator, **medians}))


if __name__ == "__main__":
    main()
