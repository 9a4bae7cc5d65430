"""Fixed costs around the compute (#24), before and after, side by side in one run.

For each checkout (`--before`: e.g. main before the #24 work, `git worktree add ../before cbe3bc8`; `--after`, default this
one), each measured in processes of its own with that checkout first on the import path:

  - start-up: `benchmarks/startup.py`'s commands (`import torch`, `medal --help`, `medal cache ls`, ...);
  - per epoch, for resnet18_28 and resnet50_28 at 28 px and resnet50 at 224 px on small generated data:
    the bare PyTorch epoch, medal's epoch, the seconds per epoch the training thread spent on checkpoints,
    and the ratio (`benchmarks/epoch_overhead.py`, one round per process); for the ResNet-50s also the after
    checkout copying the checkpoint to memory as on a GPU (`--copy memory`), which the GPU estimate uses;
  - a sweep of 8 short points with `--jobs 2` (`benchmarks/sweep_overhead.py`): its wall time against
    8 x one point's compute (the seconds in that point's history.csv) and 8 x one point run alone;
  - a resume (`benchmarks/resume_cost.py`): an 8-epoch run stopped after 4 and run again, against the whole run.

Before and after take turns (before first for one case, after first for the next), so that a machine's
changing load weighs on both alike. Last, an estimate of the same fixed costs on an H200 (`gpu_estimate`).

    python benchmarks/run_overhead.py --before DIR [--after DIR] [--epochs 3] [--json FILE] [--append FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common import count_flops, report, table
from resume_cost import resume_cost
from startup import checkout_env, startup_times
from sweep_overhead import sweep_overhead

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    student: str
    image_size: int
    train: int
    val: int
    batch_size: int


CASES = (Case("resnet18_28", 28, 128, 32, 64), Case("resnet50_28", 28, 128, 32, 64),
         Case("resnet50", 224, 32, 16, 16))  # 224 px on fewer images: a CPU step there is ~20x a 28 px one

# The H200's measured throughput (benchmarks/RESULTS.md): ResNet50, 224 px, batch 128, bf16, CE: 30.17 ms/step.
H200_IMAGES_PER_S_224 = 128 / 0.03017
DATASETS = {"BreastMNIST": (546, 78), "BloodMNIST": (11_959, 1_712)}  # train, val images
GPU_EPOCHS = 100


def epoch_figures(python: str, root: Path, case: Case, epochs: int, threads: int | None, copy: str = "auto") -> dict:
    """benchmarks/epoch_overhead.py's figures for `case`, measured with `root`'s medal in a process of its own."""
    argv = [python, str(HERE / "epoch_overhead.py"), case.student, "--image-size", str(case.image_size),
            "--train", str(case.train), "--val", str(case.val), "--batch-size", str(case.batch_size),
            "--epochs", str(epochs), "--rounds", "1", "--copy", copy, *(["--threads", str(threads)] if threads else [])]
    proc = subprocess.run(argv, cwd=root, env=checkout_env(root), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[1:3])} with {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sweep_figures(python: str, root: Path) -> dict:
    """sweep_overhead's figures with `root`'s medal, and one point's compute: the seconds its history.csv holds."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = checkout_env(root)["PYTHONPATH"]  # sweep_overhead's commands take this environment
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = sweep_overhead(python, Path(tmp))
            with open(Path(tmp) / "alone" / "history.csv", newline="") as f:
                result["point_compute_s"] = sum(float(row["seconds"]) for row in csv.DictReader(f))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    if Path(result["medal"]).resolve().parents[1] != root.resolve():
        raise SystemExit(f"error: the sweep imported {result['medal']}, not {root}'s medal.")
    return result


def flops_ratio(student: str, image_size: int) -> float:
    """Forward FLOPs of `student` at `image_size` as a fraction of ResNet-50's at 224 px (torch's flop counter)."""
    from medal.models.students import build_student

    def forward(name: str, size: int) -> int:
        model = build_student(name, 8).eval()
        with torch.no_grad():
            return count_flops(lambda: model(torch.zeros(1, 3, size, size)))

    return forward(student, image_size) / forward("resnet50", 224)


def gpu_estimate(startup_s: dict[str, float], checkpoint: dict[tuple[str, int], dict[str, dict]]) -> tuple[list[list], str]:
    """Fixed costs' share of a 100-epoch run on an H200, before and after, as table rows, and how it was made.

    `startup_s`: {"before", "after"} seconds of one short point alone (process, imports, data, model, two
    tiny epochs, evaluation: an upper bound of a run's start-up). `checkpoint[(student, size)][which]`:
    epoch_overhead's figures, whose checkpoint seconds per epoch (the training thread's) are used as measured.
    """
    rows = []
    for (student, size), figures in checkpoint.items():
        if student == "resnet18_28":
            continue  # the H200 figure is ResNet-50's
        rate = H200_IMAGES_PER_S_224 / flops_ratio(student, size)
        write_s = figures["before"]["checkpoint_s"]  # before: the whole write, on the training thread, every epoch
        for dataset, (train, val) in DATASETS.items():
            epoch_s = (train + val / 3) / rate  # a validation image: a forward pass, a third of a training step
            compute = GPU_EPOCHS * epoch_s
            before = startup_s["before"] + GPU_EPOCHS * write_s
            # After: the training thread copies the state each epoch; a write still running skips the next one
            # instead of being waited for, and the last one is waited for once, at the end.
            after_figures = figures.get("after, as on a GPU", figures["after"])
            after = startup_s["after"] + GPU_EPOCHS * after_figures["checkpoint_s"] + after_figures["last_write_s"]
            rows.append([dataset, f"{student} {size} px", f"{epoch_s:.3f}", f"{compute:.1f}",
                         f"{before:.1f}", f"{100 * before / (before + compute):.0f}%",
                         f"{after:.1f}", f"{100 * after / (after + compute):.0f}%"])
    how = (f"How: the H200's measured ResNet-50 training rate at 224 px, batch 128, bf16, CE "
           f"({H200_IMAGES_PER_S_224:,.0f} img/s, benchmarks/RESULTS.md), divided by the student's forward FLOPs at "
           f"its size as a fraction of ResNet-50's at 224 px (torch.utils.flop_counter). Not by pixels: resnet50_28 "
           f"has no downsampling stem, so its 28 px costs about a quarter of a 224 px image, not 1/64. An epoch is "
           f"the train images plus the val images at a third of the cost (forward only). It ignores that small "
           f"batches and small images use an H200 far less well (an underestimate of the compute there), and "
           f"CUDA's own start-up. Fixed costs, measured on this CPU: start-up = one short `medal distill` point "
           f"alone (sweep_overhead), and the checkpoint: the training thread's seconds per epoch from the epoch "
           f"measurement (before: the whole write, checkpoint.pt plus best.pt when kept, to this disk with its "
           f"fsync; after: the training thread's part each epoch, plus the wait for the last write, once a run, "
           f"measured with the state copied to memory first and the file's bytes made on the writer's thread, "
           f"as medal does on a GPU (the 'after, as on a GPU' rows; on the CPU the training thread makes the bytes "
           f"from the live state instead); on a GPU that copy is a device-to-host one).")
    return rows, how


def row(which: str, case: Case, f: dict) -> list:
    return [case.student, case.image_size, f"{f['train']}/{f['val']}", f["batch_size"], which,
            f"{f['bare_s']:.2f}", f"{f['medal_s']:.2f}", f"{f['checkpoint_s']:.3f}", f"{f.get('last_write_s', 0):.3f}",
            f"{f['ratio']:.2f}x"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True,
                    help="the checkout to compare with, e.g. `git worktree add ../before cbe3bc8` (main before #24)")
    ap.add_argument("--after", type=Path, default=HERE.parent, help="the checkout after (default: this one)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter both run with (default: this one)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run, the first a warm-up (default 3)")
    ap.add_argument("--threads", type=int, help="torch threads in the epoch runs (default: torch's)")
    ap.add_argument("--startup-repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--append", type=Path, help="append the tables, with a header, to this markdown file")
    args = ap.parse_args()
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    turns = [("before", "after"), ("after", "before")]
    load = os.getloadavg()[0]

    results: dict = {"roots": {k: str(v) for k, v in roots.items()}, "startup": {}, "epochs": [], "sweep": {}, "resume": {}}
    for which in turns[0]:
        results["startup"][which] = startup_times(args.python, args.startup_repeats, root=roots[which])
    epochs: dict[tuple[str, int], dict[str, dict]] = {}
    for i, case in enumerate(CASES):
        for which in turns[i % 2]:
            print(f"measuring {case.student} {case.image_size} px, {which} ...", file=sys.stderr, flush=True)
            epochs.setdefault((case.student, case.image_size), {})[which] = epoch_figures(
                args.python, roots[which], case, args.epochs, args.threads)
        if case.student != "resnet18_28":  # for the GPU estimate, which is ResNet-50's
            print(f"measuring {case.student} {case.image_size} px, after, as on a GPU ...", file=sys.stderr, flush=True)
            epochs[(case.student, case.image_size)]["after, as on a GPU"] = epoch_figures(
                args.python, roots["after"], case, args.epochs, args.threads, copy="memory")
        results["epochs"].append({"case": asdict(case), **epochs[(case.student, case.image_size)]})
    for which in turns[1]:
        print(f"measuring the sweep, {which} ...", file=sys.stderr, flush=True)
        results["sweep"][which] = sweep_figures(args.python, roots[which])
    for which in turns[0]:
        print(f"measuring a resume, {which} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            results["resume"][which] = resume_cost(args.python, Path(tmp), roots[which])

    commands = list(results["startup"]["before"])
    startup = table(["command", "before s", "after s"],
                    [[name, f"{results['startup']['before'][name]:.2f}", f"{results['startup']['after'][name]:.2f}"]
                     for name in commands])
    epoch_rows = [row(which, Case(**entry["case"]), figures) for entry in results["epochs"]
                  for which, figures in entry.items() if which != "case"]
    per_epoch = table(["student", "px", "train/val", "batch", "medal", "bare epoch s", "medal epoch s",
                       "checkpoint s/epoch (training thread)", "last write s (once a run)", "medal / bare"], epoch_rows)
    sweep = table(["medal", "sweep --jobs 2, 8 points: wall s", "8 x one point's compute s", "wall / (8 x compute)",
                   "8 x one point alone s"],
                  [[which, f"{s['sweep_s']:.1f}", f"{8 * s['point_compute_s']:.1f}",
                    f"{s['sweep_s'] / (8 * s['point_compute_s']):.1f}x", f"{s['points_alone_s']:.1f}"]
                   for which, s in results["sweep"].items()])
    resume = table(["medal", "whole run s (8 epochs)", "resumed run s", "resumed from epoch"],
                   [[which, f"{r['whole_s']:.1f}", f"{r['resumed_s']:.1f}", r["resumed_from_epoch"]]
                    for which, r in results["resume"].items()])
    gpu_rows, how = gpu_estimate({k: s["point_s"] for k, s in results["sweep"].items()}, epochs)
    gpu = table(["dataset", "student", "H200 epoch s", f"{GPU_EPOCHS} epochs s", "fixed s before", "share before",
                 "fixed s after", "share after"], gpu_rows)
    results["gpu_estimate"] = {"rows": gpu_rows, "how": how}
    body = "\n\n".join([
        (f"before: {roots['before']}; after: {roots['after']}; epochs {args.epochs} a run (the first a warm-up), "
         f"torch threads {args.threads or torch.get_num_threads()}; load average {load:.1f} at the start, "
         f"{os.getloadavg()[0]:.1f} at the end (other work on the machine makes the epoch figures noisy)"),
        "**Start-up** (median of fresh processes)", startup,
        "**Per epoch** (median; the bare loop: same model, seed, Adam, batches, preprocessing, then the val forward)",
        per_epoch,
        ("**Sweep** (resnet18_28, 2 epochs on 48 images a point, CE; one point's compute: the seconds in its "
         "history.csv, train and val)"), sweep,
        "**Resume** (resnet18_28, 48 images, batch 16: stopped by SIGTERM after 4 of 8 epochs, then run again)", resume,
        f"**GPU estimate: fixed costs' share of a {GPU_EPOCHS}-epoch run on an H200, before vs after**", gpu, how])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    report("Fixed costs around the compute, before vs after (#24)", body, args, torch.device("cpu"))


if __name__ == "__main__":
    main()
