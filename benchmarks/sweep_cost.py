"""What an N-point (t, alpha) grid costs with the teacher cache and without it.

Measured in this run, with medal's own code:
  - the stage 1 teacher pass (teacher_cache.teacher_pass: teacher_features over every split of a
    generated dataset, Zarr writes included), as seconds per image;
  - one student step (b) distilling from the cache and (c) running the teacher online
    (train_step.measure: medal's StudentStep, the same batches).

Extrapolated from those, for a dataset of --train-size training images (--dataset-size over all
splits; BloodMNIST by default), --epochs epochs and N grid points:

  cache  = one teacher pass over the dataset + N x epochs x steps/epoch x step (b)
  online = N x epochs x steps/epoch x step (c)      (the teacher paid again on every step)

The teacher is counted once with the cache, N x epochs times online. Per-epoch validation is
left out: it is the student alone, the same in both.

    python benchmarks/sweep_cost.py [--quick] [--points 1,5,21] [--epochs 10] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
import train_step
from common import Defaults, report, resolve_defaults, table
from teacher_cache import make_dataset, teacher_pass

from medal.data.base import SPLITS
from medal.models.teachers import save_random_teacher
from medal.pipeline.cache_teacher import CacheConfig

DEFAULTS: Defaults = {  # (cuda, cuda --quick, cpu, cpu --quick)
    **train_step.DEFAULTS,
    "teacher_batch": (256, 256, 32, 8),  # `medal cache-teacher` uses 256
}
BLOODMNIST = {"train": 11_959, "all": 17_092}


def seconds_per_image_of_teacher_pass(args: argparse.Namespace, device: torch.device) -> tuple[float, int]:
    """(seconds per image, images measured) of the real stage 1 teacher pass on --images generated images."""
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "medmnist", args.images, args.seed)
        weights = save_random_teacher(args.teacher, Path(tmp) / f"{args.teacher}.pth")
        cfg = CacheConfig(dataset="bloodmnist", teacher=args.teacher, weights=weights, image_size=args.image_size,
                          batch_size=args.teacher_batch, device=str(device), cache_dir=Path(tmp) / "cache")
        seconds, _, _ = teacher_pass(cfg, data, device)
    n = sum(len(data.splits[s].labels) for s in SPLITS)
    return seconds / n, n


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    train_step.add_args(ap)
    ap.add_argument("--teacher-batch", type=int, help="the teacher pass's batch (default 256 on CUDA, 32 on CPU)")
    ap.add_argument("--points", default="1,5,21", help="grid sizes N to cost (comma-separated)")
    ap.add_argument("--epochs", type=int, default=10, help="student epochs per grid point (the paper: 100)")
    ap.add_argument("--train-size", type=int, default=BLOODMNIST["train"], help="training images per epoch")
    ap.add_argument("--dataset-size", type=int, default=BLOODMNIST["all"], help="images the teacher pass covers")
    args = ap.parse_args(argv)
    device = resolve_defaults(args, DEFAULTS)

    teacher_s_per_img, measured_imgs = seconds_per_image_of_teacher_pass(args, device)
    steps = train_step.measure(args, device, ("cache", "online"))
    b, c = steps["cache"].seconds, steps["online"].seconds
    steps_per_epoch = math.ceil(args.train_size / args.batch_size)
    teacher_once = teacher_s_per_img * args.dataset_size
    run_steps = args.epochs * steps_per_epoch  # student steps per grid point

    rows = []
    for n in (int(p) for p in args.points.split(",")):
        cache_total = teacher_once + n * run_steps * b
        online_total = n * run_steps * c
        rows.append([n, duration(teacher_once), duration(n * run_steps * b), duration(cache_total),
                     duration(n * run_steps * (c - b)), duration(online_total),
                     f"1 x {args.dataset_size:,}", f"{n * args.epochs} x {args.train_size:,}",
                     f"{online_total / cache_total:.2f}"])
    body = "\n".join([
        f"Measured in this run: teacher pass {1 / teacher_s_per_img:,.0f} img/s ({args.teacher}, {args.image_size} px, "
        f"over {measured_imgs:,} images, Zarr writes included); ResNet50 step (b) cached KD {1e3 * b:.2f} ms, "
        f"(c) online KD {1e3 * c:.2f} ms (batch {args.batch_size}, mean of {steps['cache'].steps} steps). "
        f"Costed for {args.train_size:,} train / {args.dataset_size:,} total images, {args.epochs} epochs, "
        f"{steps_per_epoch} steps per epoch: measured per-step, extrapolated to N points.",
        "",
        table(["grid points N", "cache: teacher pass (once)", "cache: N x student training", "cache total",
               "online: teacher share", "online total", "teacher passes, cache", "teacher passes, online",
               "online / cache"], rows),
    ])
    report("Sweep cost: N-point (t, alpha) grid, cache vs online", body, args, device)


if __name__ == "__main__":
    main()
