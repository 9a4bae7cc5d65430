"""Stage 1 and the cache's read side: what the teacher pass costs once, and what reading it costs per run.

On a generated BloodMNIST-shaped dataset (random 28x28x3 uint8, 8 classes, split 70/10/20) in a
temporary directory, with a random-weight DINOv2 teacher (timing does not depend on the weights):

  teacher pass   medal.pipeline.cache_teacher.teacher_features over all three splits, as
                 `medal cache-teacher` runs it: chunked upload, fused resize + normalise, ViT
                 forward (bf16 autocast on CUDA), fp16 CLS features written to Zarr by the
                 background writer; img/s over every image, and the features' bytes on disk
  whole stage 1  run_cache_teacher end to end (the same pass, then the linear head, for
                 --head-epochs instead of the paper's 100, and the logits), and the finished
                 cache's bytes on disk per image, by array
  cache read     medal.pipeline.distill.teacher_logits (the train split's logits from Zarr onto
                 the device, as `distill` does once per run), and gathering one batch of
                 logits by index on the device (what every cached-KD step adds)

Random-weight features may compress differently from trained ones; the logits and labels are
small either way. FLOPs per image are counted once with torch.utils.flop_counter.

    python benchmarks/teacher_cache.py [--quick] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    NUM_CLASSES,
    Defaults,
    add_common_args,
    count_flops,
    dir_bytes,
    index_batches,
    median_seconds,
    peak_tflops,
    random_images,
    report,
    resolve_defaults,
    roofline,
    seconds_per_call,
    sync,
    table,
)

from medal.cache.store import CacheWriter, TeacherCache
from medal.data.base import SPLITS
from medal.data.medmnist import MedMNISTData, load_dataset
from medal.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, to_device
from medal.models.teachers import feature_dim, load_teacher, save_random_teacher
from medal.pipeline.cache_teacher import CacheConfig, run_cache_teacher, teacher_features
from medal.pipeline.distill import teacher_logits
from medal.pipeline.linear_head import HeadRecipe
from medal.runtime.device import autocast
from medal.runtime.distributed import World

DEFAULTS: Defaults = {  # (cuda, cuda --quick, cpu, cpu --quick)
    "batch_size": (256, 256, 32, 8),  # the teacher's batch; `medal cache-teacher` uses 256
    "images": (8192, 1024, 256, 32),
    "gather_batch": (128, 128, 8, 4),
    "reads": (1000, 100, 200, 20),
    "head_epochs": (2, 1, 2, 1),
}
SPLIT_SHARE = {"train": 0.7, "val": 0.1, "test": 0.2}  # BloodMNIST's proportions


def make_dataset(root: Path, n: int, seed: int) -> MedMNISTData:
    """A BloodMNIST-shaped .npz of n random images, loaded through medal.data.medmnist (it warns: not the official file)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, share in SPLIT_SHARE.items():
        count = max(NUM_CLASSES, round(n * share))  # every class in every split: the head's val AUC is defined
        arrays[f"{split}_images"] = random_images(count, seed + len(arrays))
        arrays[f"{split}_labels"] = rng.permutation(np.arange(count) % NUM_CLASSES).astype(np.uint8)[:, None]
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "bloodmnist.npz", **arrays)
    return load_dataset("bloodmnist", root, 28, allow_download=False)


def teacher_pass(cfg: CacheConfig, data: MedMNISTData, device: torch.device) -> tuple[float, int, int]:
    """(seconds, features' bytes on disk, FLOPs per image) of the stage 1 teacher pass over every split."""
    teacher = load_teacher(cfg.teacher, cfg.weights, cfg.image_size).to(device)
    prep = Preprocess(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD, device)
    batch = to_device(data.splits["train"].images[: cfg.batch_size], device)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast(device):
            return teacher(prep(batch))

    flops_per_image = count_flops(forward) // len(batch)
    forward()  # warm-up: kernels chosen, workspaces allocated
    with CacheWriter(Path(cfg.cache_dir), "benchmark") as writer:
        for split in SPLITS:
            writer.create(f"{split}/features", (len(data.splits[split].images), feature_dim(teacher)), "float16",
                          chunk_rows=cfg.chunk_rows)
        sync(device)
        start = time.perf_counter()
        for split in SPLITS:
            teacher_features(teacher, data, split, cfg, device, writer, World(), done=set())
        writer.sync()
        sync(device)
        seconds = time.perf_counter() - start
        return seconds, dir_bytes(writer.tmp), flops_per_image


def array_bytes(cache: TeacherCache, name: str) -> int:
    """On-disk bytes of one kind of array (features, logits, labels) summed over the splits."""
    return sum(dir_bytes(cache.path / split / name) for split in SPLITS)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--images", type=int, help="images over all splits (default 8192 on CUDA, 256 on CPU)")
    ap.add_argument("--gather-batch", type=int, help="batch of cached logits gathered per step (default 128 / 8)")
    ap.add_argument("--reads", type=int, help="timed gathers (default 1000 on CUDA, 200 on CPU)")
    ap.add_argument("--head-epochs", type=int, help="linear head epochs in the whole-stage run (default 2)")
    args = ap.parse_args(argv)
    device = resolve_defaults(args, DEFAULTS)

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "medmnist", args.images, args.seed)
        n = sum(len(data.splits[s].labels) for s in SPLITS)
        weights = save_random_teacher(args.teacher, Path(tmp) / f"{args.teacher}.pth")
        cfg = CacheConfig(dataset="bloodmnist", teacher=args.teacher, weights=weights, root=Path(tmp) / "medmnist",
                          image_size=args.image_size, batch_size=args.batch_size, device=str(device),
                          cache_dir=Path(tmp) / "cache", head=HeadRecipe(epochs=args.head_epochs))
        pass_s, feature_bytes, flops_per_image = teacher_pass(cfg, data, device)

        start = time.perf_counter()
        cache = run_cache_teacher(cfg).cache
        sync(device)
        stage_s = time.perf_counter() - start
        sizes = {name: array_bytes(cache, name) for name in ("features", "logits", "labels")}
        total_bytes = dir_bytes(cache.path)

        n_train = len(data.splits["train"].labels)
        load_s = median_seconds(lambda: teacher_logits([cache], n_train, NUM_CLASSES, device), 5, device)
        logits = teacher_logits([cache], n_train, NUM_CLASSES, device)
        idx = index_batches(n_train, args.gather_batch, 10 + args.reads, device, args.seed)
        gather_s = seconds_per_call(lambda i: logits[idx[i]], args.reads, 10, device)

    logical_mb = n_train * NUM_CLASSES * 4 / 1e6
    by_array = ", ".join(f"{name} {b / n:,.0f}" for name, b in sizes.items())
    rows = [
        ["teacher pass: teacher_features over 3 splits (resize+normalise, forward, fp16 Zarr write)", f"{n:,}",
         f"{pass_s:.3f} s", f"{n / pass_s:,.0f} img/s", f"{feature_bytes / n:,.0f} B (features)"],
        [f"whole stage 1: run_cache_teacher (pass + linear head, {args.head_epochs} epoch(s), + logits)", f"{n:,}",
         f"{stage_s:.3f} s", f"{n / stage_s:,.0f} img/s", f"{total_bytes / n:,.0f} B ({by_array})"],
        ["cache read: train logits from Zarr to the device (distill.teacher_logits)", f"{n_train:,}",
         f"{1e3 * load_s:.2f} ms", f"{logical_mb / load_s:,.3f} MB/s", ""],
        [f"cache read: gather {args.gather_batch} logits by index on the device", f"{args.gather_batch}",
         f"{1e6 * gather_s:.1f} us", f"{1 / gather_s:,.0f} batches/s", ""],
    ]
    teacher_gflop = flops_per_image / 1e9
    body = "\n".join([
        f"{args.teacher} teacher (random weights), {args.image_size} px, teacher batch {args.batch_size}, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; {n:,} random 28x28x3 uint8 images "
        f"(train {n_train:,}), {NUM_CLASSES} classes. Raw per image: uint8 image {28 * 28 * 3:,} B, "
        f"fp32 logits {NUM_CLASSES * 4} B.",
        "",
        table(["measurement", "images", "time", "throughput", "on disk per image"], rows, [False, True, True, True, False]),
        "",
        f"- teacher forward: {teacher_gflop:,.2f} GFLOP per image; "
        f"{roofline(flops_per_image * n / pass_s, peak_tflops(args, device))}, for the teacher pass",
    ])
    report("Teacher cache: stage 1 cost and cache reads", body, args, device)


if __name__ == "__main__":
    main()
