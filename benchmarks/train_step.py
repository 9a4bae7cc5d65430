"""Student training throughput: plain CE vs distillation from the cache vs online distillation.

Three ways to train the same ResNet50 student on the same batches, in one run, each through
medal's own `StudentStep` (the step `medal distill` runs: resident uint8 images gathered by
index, fused resize + normalise on the device, bf16 autocast on CUDA, fused Adam, no host sync):

  (a) ce      plain CE, alpha = 1: no teacher at all
  (b) cache   KD from the cache: the teacher's logits resident on the device, gathered by index
  (c) online  KD without a cache: the frozen DINOv2 teacher + linear head run on every batch
              (inside the timed step), then the same loss and update as (b)
  (d) stream  (b) with the images streamed: each batch's rows read from a converted store
              (medal.data.stream, as `distill` does for a split beyond --max-memory) by the background
              prefetching thread, then copied to the device

(b)/(a) is what distillation costs once the teacher is cached (target <= 1.05); (c)/(b) is what
the cache saves per training step; (d)/(b) is what streaming the images costs. Teacher weights are random (timing does not depend on them),
written by medal.models.teachers.save_random_teacher and read back by load_teacher. FLOPs per step are
counted once, eagerly, with torch.utils.flop_counter before timing, for the roofline columns.

    python benchmarks/train_step.py [--quick] [--compile] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import (
    NUM_CLASSES,
    Defaults,
    add_common_args,
    count_flops,
    index_batches,
    peak_tflops,
    random_images,
    random_teacher,
    report,
    resolve_defaults,
    roofline,
    seconds_per_call,
    table,
)
from torch import nn

from medal.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, MEDMNIST_MEAN, MEDMNIST_STD, Preprocess, to_device
from medal.data.stream.source import StreamedImages
from medal.data.stream.store import StoredImages, convert_npz
from medal.models.students import build_student
from medal.models.teachers import feature_dim
from medal.pipeline.student_step import StudentStep
from medal.runtime.device import autocast

MODES = {
    "ce": "(a) plain CE, no teacher",
    "cache": "(b) KD from the cache",
    "online": "(c) online KD, teacher every batch",
    "stream": "(d) KD from the cache, images streamed",
}
STREAM_BUFFER = 2**30  # what the streamed source may hold: enough for its full prefetch depth
T, ALPHA = 2.0, 0.2  # the paper's default point; speed does not depend on it
ROUNDS = 3  # the modes take turns, --steps / ROUNDS steps at a time
DEFAULTS: Defaults = {  # (cuda, cuda --quick, cpu, cpu --quick)
    "steps": (90, 6, 21, 3),
    "warmup": (10, 2, 3, 1),
    "images": (4096, 1024, 256, 32),
    "data_size": (224, 224, 28, 28),
}


class OnlineStep(StudentStep):
    """medal's student step, its soft targets computed on the batch by the frozen teacher and head."""

    def __init__(self, *args, teacher: nn.Module, head: nn.Module, teacher_prep: Preprocess, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_forward = torch.compile(teacher) if kwargs.get("compile") else teacher
        self.head, self.teacher_prep = head, teacher_prep

    def soft_targets(self, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            return self.head(self.teacher_forward(self.teacher_prep(self.images[idx]))).float()


@dataclass
class StepResult:
    seconds: float  # per step
    steps: int  # timed
    batch: int
    flops: int  # per step, forward + backward (+ teacher forward for online)
    peak_bytes: int | None  # CUDA only

    @property
    def img_per_s(self) -> float:
        return self.batch / self.seconds


def streamed_images(images: np.ndarray, folder: Path, device: torch.device) -> StreamedImages:
    """The same images as a converted store's train split, read back through medal's streamed source."""
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = images if split == "train" else images[:1]
        arrays[f"{split}_labels"] = np.zeros((len(arrays[f"{split}_images"]), 1), np.uint8)
    np.savez(folder / "bloodmnist.npz", **arrays)
    store = convert_npz(folder / "bloodmnist.npz", folder / "bench.zarr", "bloodmnist", images.shape[1], "benchmark")
    return StreamedImages(StoredImages(store / "train" / "images", STREAM_BUFFER), device)


def build_steps(args: argparse.Namespace, device: torch.device, modes: tuple[str, ...],
                host_images: np.ndarray) -> Callable[[bool], dict[str, StudentStep]]:
    """make(compile) -> one StudentStep per mode, built as `distill` builds it.

    Every step shares one student, optimizer, resident image split and target tensor; `make`
    can be called twice (an eager twin for counting FLOPs, a compiled one for timing).
    """
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    student = build_student("resnet50", NUM_CLASSES).to(device, memory_format=fmt)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3, fused=device.type == "cuda")
    images = to_device(host_images, device)
    targets = torch.randint(0, NUM_CLASSES, (len(images),), device=device)
    prep = Preprocess(args.image_size, MEDMNIST_MEAN, MEDMNIST_STD, device)
    cached = torch.randn(len(images), NUM_CLASSES, device=device)  # what distill keeps resident: (N, C) fp32
    if "online" in modes:
        teacher = random_teacher(args.teacher, args.image_size, device)
        head = nn.Linear(feature_dim(teacher), NUM_CLASSES).to(device).requires_grad_(False)
        teacher_prep = Preprocess(args.image_size, IMAGENET_MEAN, IMAGENET_STD, device)
    shared = (student, optimizer, prep, images, targets)

    def make(compile_: bool) -> dict[str, StudentStep]:
        opts = dict(t=T, multi_label=False, device=device, compile=compile_)
        builders = {
            "ce": lambda: StudentStep(*shared, None, alpha=1.0, **opts),
            "cache": lambda: StudentStep(*shared, cached, alpha=ALPHA, **opts),
            "online": lambda: OnlineStep(*shared, None, alpha=ALPHA, teacher=teacher, head=head,
                                         teacher_prep=teacher_prep, **opts),
            "stream": lambda: StudentStep(*shared, cached, alpha=ALPHA, **opts),  # called with the streamed batch
        }
        return {mode: builders[mode]() for mode in modes}

    return make


def measure(args: argparse.Namespace, device: torch.device, modes: tuple[str, ...]) -> dict[str, StepResult]:
    """Seconds per step of each mode, plus FLOPs counted on an eager twin of each step.

    The modes take turns in ROUNDS rounds of steps / ROUNDS steps each, so that a drift in clocks
    or temperature during the run does not favour the mode that ran first; every round runs the
    same batches.
    """
    host_images = random_images(args.images, args.seed, size=args.data_size)
    make = build_steps(args, device, modes, host_images)
    eager = make(False)
    timed = make(True) if args.compile else eager
    per_round = -(-args.steps // ROUNDS)
    batches = index_batches(args.images, args.batch_size, args.warmup + per_round, device, args.seed)
    flops = {mode: count_flops(lambda: eager[mode](batches[0])) for mode in modes}  # (d) computes what (b) does
    seconds = dict.fromkeys(modes, 0.0)
    peak: dict[str, int | None] = dict.fromkeys(modes)
    with tempfile.TemporaryDirectory(prefix="medal-bench-") as tmp:
        stream = streamed_images(host_images, Path(tmp), device) if "stream" in modes else None
        for r in range(ROUNDS):
            for mode in modes:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                step = timed[mode]
                warmup = args.warmup if r == 0 else 0
                if mode == "stream":  # the prefetching thread reads this round's batches in order
                    reads = stream.batches([b.cpu() for b in batches[: warmup + per_round]])
                    call = lambda i: step(batches[i], next(reads))  # noqa: E731
                else:
                    call = lambda i: step(batches[i])  # noqa: E731
                seconds[mode] += seconds_per_call(call, per_round, warmup, device) / ROUNDS
                if device.type == "cuda":
                    peak[mode] = max(peak[mode] or 0, torch.cuda.max_memory_allocated(device))
    return {mode: StepResult(seconds[mode], ROUNDS * per_round, args.batch_size, flops[mode], peak[mode]) for mode in modes}


def add_args(ap: argparse.ArgumentParser) -> None:
    add_common_args(ap)
    ap.add_argument("--steps", type=int, help="timed steps per mode (default 90 on CUDA, 21 on CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 10 on CUDA, 3 on CPU)")
    ap.add_argument("--images", type=int, help="resident random uint8 images (default 4096 CUDA, 256 CPU)")
    ap.add_argument("--data-size", type=int, help="their native side, as a MedMNIST file's (default 224 CUDA, 28 CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the student (and the online teacher)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    args = ap.parse_args(argv)
    device = resolve_defaults(args, DEFAULTS)
    results = measure(args, device, tuple(MODES))
    peak = peak_tflops(args, device)
    rows = []
    for mode, r in results.items():
        achieved = r.flops / r.seconds
        mem = f"{r.peak_bytes / 2**30:.2f}" if r.peak_bytes is not None else "n/a"
        rows.append([MODES[mode], f"{1e3 * r.seconds:.2f}", f"{r.img_per_s:,.0f}", f"{r.flops / 1e9:,.1f}",
                     f"{achieved / 1e12:.3g}", f"{100 * achieved / 1e12 / peak[0]:.1f}", mem])
    a, b, c, d = (results[m].seconds for m in MODES)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    body = "\n".join([
        f"ResNet50 student, {args.teacher} teacher (random weights) + linear head, {args.image_size} px, "
        f"batch {args.batch_size}, {precision}, compile={args.compile}; {args.images} random uint8 "
        f"{args.data_size}x{args.data_size}x3 images (resident, or streamed for (d)), {NUM_CLASSES} classes, t={T:g}, alpha={ALPHA:g}; mean of {results['cache'].steps} steps "
        f"per mode, in {ROUNDS} interleaved rounds after {args.warmup} warm-up step(s), the same batches for every mode.",
        "",
        table(["mode", "ms/step", "img/s", "GFLOP/step", "TFLOP/s", "% of peak", "peak mem GiB"], rows),
        "",
        f"- (b)/(a) step time: {b / a:.3f} (target <= 1.05)",
        f"- (c)/(b) step time: {c / b:.2f} (what the cache saves per step; ~2.5-3 expected at 224 px with ViT-B/14)",
        f"- (d)/(b) step time: {d / b:.3f} (what streaming the images from a store costs; 1 when the reads keep up)",
        f"- {roofline(results['cache'].flops / b, peak)}, for (b)",
    ])
    report("Student training step: CE vs cached KD vs online KD vs streamed images", body, args, device)


if __name__ == "__main__":
    main()
