"""Many `distill` runs over a (t, alpha, seed) grid, against one teacher cache.

Every point is an ordinary run directory named by `DistillConfig.run_name` under --runs-dir,
so a sweep can be stopped and started again: finished points (metrics.json present) are
skipped, interrupted ones (a hidden `.NAME.partial` folder) are started afresh by
`run_distill`. With --jobs N, N points train at once as separate `python -m medal distill`
processes: a ResNet50 on 28 px MedMNIST uses a small part of one large GPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from medal.errors import MedalError
from medal.io import read_json, write_json
from medal.kd_loss import check_hyperparameters
from medal.log import log
from medal.pipeline.distill import DistillConfig, prepare, run_distill

POLL_S = 0.5


def parse_values(text: str, option: str, integer: bool = False) -> list[float]:
    """'1,2,5', '1:9' (inclusive, step 1) or '0.1:0.9:0.1', mixed freely; duplicates dropped, order kept."""
    values: list[float] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            numbers = [float(x) for x in part.split(":")]
        except ValueError:
            raise MedalError(f"{option} takes numbers, lists (1,2,5) or ranges (1:9, 0.1:0.9:0.1), got {part!r}.") from None
        if len(numbers) == 1:
            values.append(numbers[0])
        elif len(numbers) in (2, 3):
            values.extend(_range(numbers, option, part))
        else:
            raise MedalError(f"{option} range {part!r} must be START:END or START:END:STEP.")
    if not values:
        raise MedalError(f"{option} needs at least one value.")
    if integer and any(v != int(v) for v in values):
        raise MedalError(f"{option} takes whole numbers, got {text!r}.")
    if any(not math.isfinite(v) for v in values):
        raise MedalError(f"{option} values must be finite numbers, got {text!r}.")
    return list(dict.fromkeys(int(v) if integer else v for v in values))


def _range(numbers: list[float], option: str, part: str) -> list[float]:
    start, end, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1.0
    if not step > 0:
        raise MedalError(f"{option} range {part!r} needs a positive step.")
    if end < start:
        raise MedalError(f"{option} range {part!r} ends before it starts.")
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    if count > 1000:
        raise MedalError(f"{option} range {part!r} expands to {count} values; use a larger step.")
    return [round(start + i * step, 10) for i in range(count)]  # 0.1 + 2 * 0.1 is 0.30000000000000004


@dataclass
class SweepConfig:
    ts: list[float]
    alphas: list[float]
    seeds: list[int]
    base: DistillConfig  # dataset, student, recipe, paths; its t, alpha and seed are replaced per point
    jobs: int = 1
    gpus: tuple[str, ...] = ()  # one process per listed GPU (CUDA_VISIBLE_DEVICES), instead of --jobs


@dataclass
class Point:
    cfg: DistillConfig
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "metrics.json").is_file()


def plan(sweep: SweepConfig) -> list[Point]:
    """Validate the whole grid and resolve the teacher cache(s) once; writes nothing."""
    if sweep.jobs < 1:
        raise MedalError(f"--jobs must be >= 1, got {sweep.jobs}.")
    for t in sweep.ts:
        for alpha in sweep.alphas:
            check_hyperparameters(t, alpha)
    base = replace(sweep.base, t=sweep.ts[0], alpha=min(sweep.alphas), out=None, force=False)
    data, caches = prepare(base)  # checks dataset, cache and data fingerprint before any run starts
    pin = {"cache_key": caches[0].key} if len(caches) == 1 else {}  # every point reads this very cache
    base = replace(base, dataset=data.flag, **pin)
    points: dict[Path, Point] = {}
    for alpha in sweep.alphas:
        for t in sweep.ts:
            for seed in sweep.seeds:
                cfg = replace(base, t=t, alpha=alpha, seed=seed)
                out = Path(base.runs_dir) / cfg.run_name(data.flag, base.teacher if alpha < 1 else None)
                points.setdefault(out, Point(replace(cfg, out=out, force=True), out))  # alpha=1 ignores t
    return list(points.values())


def run_sweep(sweep: SweepConfig) -> list[tuple[Path, dict]]:
    """Run every unfinished point; returns (run dir, metrics) for the whole grid and writes sweep.json."""
    points = plan(sweep)
    todo = [p for p in points if not p.done]
    if len(todo) < len(points):
        log(f"sweep: {len(points) - len(todo)} of {len(points)} runs already finished, skipped")
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", unit="run", dynamic_ncols=True)
    try:
        if sweep.gpus:
            run_parallel(todo, len(sweep.gpus), bar, sweep.gpus)
        elif sweep.jobs == 1:
            for point in todo:
                bar.set_postfix_str(point.out.name)
                run_distill(point.cfg)
                bar.update(1)
        else:
            run_parallel(todo, sweep.jobs, bar)
    finally:
        bar.close()
    results = [(p.out, read_json(p.out / "metrics.json")) for p in points]
    runs_dir = Path(sweep.base.runs_dir)
    write_json(runs_dir / "sweep.json", {
        "grid": {"t": sweep.ts, "alpha": sweep.alphas, "seed": sweep.seeds},
        "runs": [{"run": str(run), "test": m["test"], "val": m["val"]} for run, m in results],
    })
    return results


def distill_command(cfg: DistillConfig) -> list[str]:
    """The `python -m medal distill` line that trains one point in its own process."""
    args = [sys.executable, "-m", "medal", "distill", "--dataset", cfg.dataset, "--t", repr(cfg.t),
            "--alpha", repr(cfg.alpha), "--seed", str(cfg.seed), "--student", cfg.student, "--epochs", str(cfg.epochs),
            "--batch-size", str(cfg.batch_size), "--lr", repr(cfg.lr), "--milestones", ",".join(map(str, cfg.milestones)),
            "--patience", str(cfg.patience), "--image-size", str(cfg.image_size), "--device", cfg.device,
            "--keep", cfg.keep, "--as-rgb" if cfg.as_rgb else "--no-as-rgb",
            "--out", str(cfg.out), "--force"]
    teachers = ",".join(cfg.teachers) or None
    for flag, value in (("--root", cfg.root), ("--size", cfg.size), ("--cache-dir", cfg.cache_dir),
                        ("--cache-key", cfg.cache_key),
                        ("--teachers", teachers), ("--teacher", None if teachers else cfg.teacher)):
        if value is not None:
            args += [flag, str(value)]
    return args + [flag for flag, on in (("--pretrained", cfg.pretrained), ("--compile", cfg.compile),
                                         ("--deterministic", cfg.deterministic)) if on]


def run_parallel(todo: list[Point], jobs: int, bar: tqdm, gpus: tuple[str, ...] = ()) -> None:
    """Keep `jobs` child processes busy (each on its own GPU when `gpus` are given);
    after a failure start no more and name its log."""
    queue, failed = list(todo), []
    running: dict[Path, subprocess.Popen] = {}
    slot_of: dict[Path, int] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs and not failed:
                point = queue.pop(0)
                logfile = point.out.with_name(f".{point.out.name}.log")
                logfile.parent.mkdir(parents=True, exist_ok=True)
                slot = min(set(range(jobs)) - set(slot_of.values()))
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[slot]} if gpus else None
                cfg = replace(point.cfg, device="cuda") if gpus else point.cfg
                with open(logfile, "w") as f:
                    running[point.out] = subprocess.Popen(distill_command(cfg), stdout=f, stderr=subprocess.STDOUT,
                                                          env=env)
                slot_of[point.out] = slot
            if failed and not running:
                break
            time.sleep(POLL_S)
            for out, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[out], slot_of[out]
                logfile = out.with_name(f".{out.name}.log")
                if proc.returncode == 0:
                    logfile.unlink(missing_ok=True)
                    bar.update(1)
                else:
                    failed.append(f"{out.name} (exit {proc.returncode}, log {logfile})")
    finally:
        for proc in running.values():
            proc.terminate()
            proc.wait()
    if failed:
        raise MedalError(f"{len(failed)} sweep run(s) failed, the finished ones are kept: {'; '.join(failed)}.")
