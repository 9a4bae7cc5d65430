"""What a `medal distill` epoch costs beyond its compute, for one student, in this process.

The compute is a bare PyTorch loop written here: the same timm model built from the same seed,
Adam at lr 1e-3, the same batches of the same uint8 images, the same preprocessing (float, scale
and shift by MedMNIST's mean/std, bilinear resize when the size differs), cross-entropy, then a
forward pass over the validation split in eval mode. medal's epoch is everything `medal distill`
does between two epoch lines: those steps plus validation AUC/ACC, the checkpoint, history.csv and
best.pt. Both run the same number of epochs, alternately, twice; the first epoch of each run is a
warm-up and not counted. The training thread's checkpoint seconds are medal's own count
(`checkpoint_stats`), or, for a medal from before #24 (which wrote them on that thread), the time in
its `Checkpoint.save` and `write_outputs`: run with another checkout first on PYTHONPATH, the script
measures that one (benchmarks/run_overhead.py does, before and after).

    python benchmarks/epoch_overhead.py resnet50_28 --image-size 28     # one JSON line
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import medal.pipeline.distill as distill
from medal.data.preprocess import MEDMNIST_MEAN, MEDMNIST_STD
from medal.models.students import build_student

CLASSES = 8  # BloodMNIST's


def write_data(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A BloodMNIST-shaped .npz of random 28x28 RGB images (medal warns it is not the official file)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.permutation(np.arange(n) % CLASSES)[:, None]  # every class in every split
    np.savez(root / "bloodmnist.npz", **arrays)
    return root


def bare_epochs(root: Path, student: str, image_size: int, epochs: int, batch_size: int, seed: int) -> list[float]:
    """Seconds per epoch of the bare loop: train steps, then the validation forward."""
    data = np.load(root / "bloodmnist.npz")
    train = torch.from_numpy(data["train_images"]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(data["train_labels"][:, 0]).long()
    val = torch.from_numpy(data["val_images"]).permute(0, 3, 1, 2).contiguous()
    mean, std = torch.tensor(MEDMNIST_MEAN).view(1, 3, 1, 1), torch.tensor(MEDMNIST_STD).view(1, 3, 1, 1)

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255 - mean) / std
        return x if x.shape[-1] == image_size else F.interpolate(x, size=(image_size, image_size), mode="bilinear")

    torch.manual_seed(seed)
    model = build_student(student, CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(train), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(prep(train[idx])), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            torch.cat([model(prep(b)).softmax(1) for b in val.split(512)])
        times.append(time.perf_counter() - start)
    return times


def medal_epochs(root: Path, student: str, image_size: int, epochs: int, batch_size: int, seed: int,
                 out: Path) -> tuple[list[float], float, float]:
    """Seconds between `medal distill`'s epoch lines (the first: from the start of training), the seconds the
    training thread spent on checkpoints during the epochs, and those at the end (the wait for the last write,
    paid once a run; 0 for a medal that waited for every write).

    Either medal: one that writes checkpoints on a thread reports that time (`checkpoint_stats`); for an older
    one, which wrote them on the training thread, its `Checkpoint.save` and `write_outputs` calls are timed.
    """
    marks: list[float] = []
    train_student, log = distill.train_student, distill.log

    def timed_train(*args, **kwargs):
        marks.append(time.perf_counter())
        return train_student(*args, **kwargs)

    def timed_log(line: str) -> None:
        if line.startswith("epoch "):
            marks.append(time.perf_counter())
        log(line)

    distill.train_student, distill.log = timed_train, timed_log
    try:
        with checkpoint_seconds() as seconds:
            cfg = distill.DistillConfig(dataset="bloodmnist", root=root, student=student, image_size=image_size,
                                        epochs=epochs, batch_size=batch_size, alpha=1.0, seed=seed, device="cpu",
                                        out=str(out), force=True)
            distill.run_distill(cfg)
    finally:
        distill.train_student, distill.log = train_student, log
    return [b - a for a, b in zip(marks, marks[1:])], seconds[0], seconds[1]


@contextlib.contextmanager
def checkpoint_seconds() -> Iterator[list[float]]:
    """A list [during the epochs, at the end] that holds, after the block, the seconds the training thread spent on
    checkpoints."""
    seconds = [0.0, 0.0]
    try:
        from medal.pipeline.checkpoint import checkpoint_stats
    except ImportError:  # before #24: Checkpoint.save, then write_outputs (history.csv, best.pt), on the thread
        patched = [(distill.Checkpoint, "save"), (distill, "write_outputs")]
        originals = [getattr(owner, name) for owner, name in patched]

        def timed(fn):
            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    seconds[0] += time.perf_counter() - start
            return call

        for (owner, name), fn in zip(patched, originals):
            setattr(owner, name, timed(fn))
        try:
            yield seconds
        finally:
            for (owner, name), fn in zip(patched, originals):
                setattr(owner, name, fn)
        return
    yield seconds
    stats = checkpoint_stats()
    seconds[:] = [stats.seconds - stats.finish_seconds, stats.finish_seconds]


WRITES = ("every", "best-each", "last")  # a diagnosis of where the epoch's overhead goes, not a medal setting


@contextlib.contextmanager
def fewer_writes(writes: str, epochs: int) -> Iterator[None]:
    """medal (after #24) writing other than it does: `best-each` also writes best.pt after every checkpoint whose
    kept epoch is new (as before best.pt waited for the end of training), `last` writes no checkpoint before the
    last epoch (on the CPU not even the copy of the live state). `every` changes nothing."""
    if writes == "every":
        yield
        return
    from medal.pipeline.checkpoint import Checkpoint

    original = Checkpoint.prepare

    def prepare(self, state: dict):
        if writes == "best-each":
            write = original(self, state)
            return lambda: (write(), self.write_best())
        if state["epoch"] == epochs:
            return original(self, state)
        return lambda: setattr(self, "epoch", state["epoch"])

    Checkpoint.prepare = prepare
    try:
        yield
    finally:
        Checkpoint.prepare = original


@contextlib.contextmanager
def copied(copy: str) -> Iterator[None]:
    """`auto`: medal as it is; `memory`: medal copying the checkpoint's state to memory first and making the
    file's bytes on the writer's thread, as it does on a GPU, where on the CPU the training thread makes them
    from the live state."""
    name = next((n for n in ("copies_live_state", "stages_in_file") if hasattr(distill, n)), None)  # 2nd: 71e369c
    if copy == "auto" or name is None:  # a medal from before them: always in memory
        yield
        return
    live = getattr(distill, name)
    setattr(distill, name, lambda device: False)
    try:
        yield
    finally:
        setattr(distill, name, live)


def measure(student: str, image_size: int, n_train: int, n_val: int, batch_size: int, epochs: int,
            seed: int = 0, rounds: int = 2, writes: str = "every", copy: str = "auto") -> dict:
    """Median bare and medal epoch seconds (warm-up epochs dropped), over alternating rounds, and the
    training thread's checkpoint seconds per epoch (each run's total during its epochs / its epochs) and at the
    end of a run (the last write's wait), medians over rounds."""
    try:  # the bare loop gets the malloc thresholds medal distill sets, from the start, as medal does
        from medal.runtime.allocator import keep_freed_memory
        keep_freed_memory()
    except ImportError:  # a medal from before them
        pass
    with tempfile.TemporaryDirectory() as tmp:
        root = write_data(Path(tmp), n_train, n_val, seed)
        bare, ours, saving, last = [], [], [], []
        for round_ in range(rounds):
            bare += bare_epochs(root, student, image_size, epochs, batch_size, seed)[1:]
            with fewer_writes(writes, epochs), copied(copy):
                epoch_s, save_s, last_s = medal_epochs(root, student, image_size, epochs, batch_size, seed,
                                                       Path(tmp) / f"run{round_}")
            ours += epoch_s[1:]
            saving.append(save_s / epochs)
            last.append(last_s)
    return {"student": student, "image_size": image_size, "train": n_train, "val": n_val, "batch_size": batch_size,
            "epochs": epochs, "threads": torch.get_num_threads(), "writes": writes, "copy": copy, "bare_s": statistics.median(bare),
            "medal_s": statistics.median(ours), "checkpoint_s": statistics.median(saving),
            "last_write_s": statistics.median(last),
            "ratio": statistics.median(ours) / statistics.median(bare),
            "bare_all": bare, "medal_all": ours, "checkpoint_all": saving}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="bare and medal runs, alternately (default 2 each)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--writes", choices=WRITES, default="every",
                        help="diagnosis: medal as it is (every), best.pt after every better epoch too "
                             "(best-each), or no checkpoint before the last epoch (last)")
    parser.add_argument("--copy", choices=("auto", "memory"), default="auto",
                        help="medal as it is (auto), or copying the checkpoint to memory as on a GPU (memory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.student, args.image_size, args.train, args.val, args.batch_size, args.epochs,
                             rounds=args.rounds, writes=args.writes, copy=args.copy)))


if __name__ == "__main__":
    main()
