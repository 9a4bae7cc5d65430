"""Many `distill` runs over a (t, alpha, seed) grid, against one teacher cache.

Every point is an ordinary run directory named by `DistillConfig.run_name` under --runs-dir,
so a sweep can be stopped and started again: finished points (metrics.json present) are
skipped (the claim and log a killed sweep left beside them removed), and an interrupted one is
left to `run_distill`, never forced. With --jobs N, N points train at once in N worker processes
that each train one point after another (`medal.study.sweep_worker`): a ResNet50 on 28 px
MedMNIST uses a small part of one large GPU.

Any number of sweep processes, on one machine or on several sharing the runs dir, can work on
the same grid: each claims a point before it trains it (`medal.study.claims`), moves on past
points claimed by others, waits for them at the end, and takes over claims whose process died.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from medal.losses.kd_loss import check_hyperparameters
from medal.pipeline.distill import DistillConfig, prepare, run_distill
from medal.runtime.errors import MedalError
from medal.runtime.io import read_json, write_json
from medal.runtime.log import log
from medal.runtime.progress import PlainProgress, interactive, progress
from medal.study.claims import Claim, acquire, clear_stale, read_holder
from medal.study.sweep_worker import INTERRUPTED, Worker

POLL_S = 0.5  # how often running children are looked at
WAIT_S = 1.0  # how often the grid is looked at for points finished or released by other processes
CLAIM_TIMEOUT_S = 600.0


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
    claim_timeout: float = CLAIM_TIMEOUT_S  # another host's claim without a heartbeat this long is taken over
    log_dir: Path | None = None  # TensorBoard logs, LOG_DIR/<run name> per point


@dataclass
class Point:
    cfg: DistillConfig
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "metrics.json").is_file()

    @property
    def claim(self) -> Path:
        return self.out.with_name(f".{self.out.name}.claim")

    @property
    def log(self) -> Path:
        return self.out.with_name(f".{self.out.name}.log")

    def clear_leftovers(self, timeout: float) -> None:
        """A finished point's claim and log, left by a sweep killed after the run was published but before it
        released them, are removed once their holder is gone (a success's log is not kept either). A live
        holder, maybe another sweep sharing the runs dir, removes its own."""
        if clear_stale(self.claim, timeout):
            self.log.unlink(missing_ok=True)


def plan(sweep: SweepConfig) -> list[Point]:
    """Validate the whole grid and resolve the teacher cache(s) once; writes nothing."""
    if sweep.jobs < 1:
        raise MedalError(f"--jobs must be >= 1, got {sweep.jobs}.")
    if not sweep.claim_timeout > 0:
        raise MedalError(f"--claim-timeout must be > 0 seconds, got {sweep.claim_timeout:g}.")
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
                log_dir = Path(sweep.log_dir) / out.name if sweep.log_dir else None
                # never force: an interrupted point is left to `distill` to resume
                points.setdefault(out, Point(replace(cfg, out=out, log_dir=log_dir), out))  # alpha=1 ignores t
    return list(points.values())


def run_sweep(sweep: SweepConfig) -> list[tuple[Path, dict]]:
    """Train the points no other process holds until the whole grid is finished, by this process or others;
    returns (run dir, metrics) for the whole grid and writes sweep.json."""
    points = plan(sweep)
    finished = sum(p.done for p in points)
    if finished:
        log(f"sweep: {finished} of {len(points)} runs already finished, skipped")
    Path(sweep.base.runs_dir).mkdir(parents=True, exist_ok=True)  # where the claims go
    bar = progress(total=len(points), initial=finished, desc="sweep", unit="run")
    try:
        with sigterm_as_interrupt():
            if sweep.gpus:
                run_parallel(points, len(sweep.gpus), bar, sweep.gpus, sweep.claim_timeout)
            elif sweep.jobs == 1:
                run_serial(points, bar, sweep.claim_timeout)
            else:
                run_parallel(points, sweep.jobs, bar, claim_timeout=sweep.claim_timeout)
    finally:
        bar.close()
    results = [(p.out, read_json(p.out / "metrics.json")) for p in points]
    runs_dir = Path(sweep.base.runs_dir)
    write_json(runs_dir / "sweep.json", {  # every process of the grid writes the same file
        "grid": {"t": sweep.ts, "alpha": sweep.alphas, "seed": sweep.seeds},
        "runs": [{"run": str(run), "test": m["test"], "val": m["val"]} for run, m in results],
    })
    return results


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` and Slurm's preemption stop a sweep as Ctrl-C does: children stopped, claims released."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Grid:
    """The sweep's points as this process sees them: finished (here or elsewhere), claimable, claimed elsewhere."""

    def __init__(self, points: list[Point], bar: tqdm | PlainProgress, claim_timeout: float):
        self.points, self.bar, self.timeout = points, bar, claim_timeout
        self.finished = {p.out for p in points if p.done}
        self.elsewhere: set[Path] = set()  # points already logged as claimed by another process
        self.waiting: tuple[str, ...] = ()
        self.tidy()

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.points)

    def tidy(self) -> None:
        """Clear what killed sweeps left beside the finished points (at the start, and again at the end
        for points whose holders were still alive then)."""
        for point in self.points:
            if point.out in self.finished:
                point.clear_leftovers(self.timeout)

    def update(self) -> None:
        """Count the points finished since the last look, by this process or another."""
        for point in self.points:
            if point.out not in self.finished and point.done:
                self.finished.add(point.out)
                self.bar.update(1)
                if not interactive():
                    log(f"sweep: {point.out.name} finished ({len(self.finished)} of {len(self.points)})")

    def claim_next(self, here: set[Path]) -> tuple[Point, Claim] | None:
        """The first unfinished point in grid order that no process holds, claimed for this one."""
        for point in self.points:
            if point.out in self.finished or point.out in here or point.done:
                continue
            claim = acquire(point.claim, self.timeout)
            if claim is None:
                if point.out not in self.elsewhere:
                    self.elsewhere.add(point.out)
                    log(f"sweep: {point.out.name} is claimed by {read_holder(point.claim) or 'another process'}, "
                        f"moving on")
                continue
            if point.done:  # its last holder finished it between our look and our claim
                claim.release()
                point.clear_leftovers(self.timeout)
                continue
            if claim.took_over:
                log(f"sweep: took over {point.out.name} from {claim.took_over}")
            return point, claim
        return None

    def wait(self) -> None:
        """Nothing left to claim: say (once per change) which points other processes hold."""
        pending = tuple(p.out.name for p in self.points if p.out not in self.finished)
        if pending != self.waiting:
            self.waiting = pending
            shown = ", ".join(pending[:3]) + (f" and {len(pending) - 3} more" if len(pending) > 3 else "")
            log(f"sweep: waiting for {len(pending)} point(s) claimed by other processes ({shown}); "
                f"a claim whose heartbeat stops for {self.timeout:g}s is taken over")


def run_serial(points: list[Point], bar: tqdm | PlainProgress, claim_timeout: float = CLAIM_TIMEOUT_S) -> None:
    """Train claimable points one after another in this process, until every point is finished."""
    grid = Grid(points, bar, claim_timeout)
    while True:
        grid.update()
        if grid.complete:
            grid.tidy()
            return
        got = grid.claim_next(set())
        if got is None:
            grid.wait()
            time.sleep(WAIT_S)
            continue
        point, claim = got
        try:
            log(f"sweep: training {point.out.name}")
            bar.set_postfix_str(point.out.name)
            run_distill(point.cfg)
        finally:  # on failure too: another process may try the point again
            claim.release()


def distill_command(cfg: DistillConfig) -> list[str]:
    """The `medal distill` arguments that train one point (a worker runs them, medal.study.sweep_worker)."""
    args = ["distill", "--dataset", cfg.dataset, "--t", repr(cfg.t),
            "--alpha", repr(cfg.alpha), "--seed", str(cfg.seed), "--student", cfg.student, "--epochs", str(cfg.epochs),
            "--batch-size", str(cfg.batch_size), "--lr", repr(cfg.lr), "--milestones", ",".join(map(str, cfg.milestones)),
            "--patience", str(cfg.patience), "--image-size", str(cfg.image_size), "--device", cfg.device,
            "--keep", cfg.keep, "--as-rgb" if cfg.as_rgb else "--no-as-rgb", "--interpolation", cfg.interpolation,
            "--out", str(cfg.out)]  # never --force: an interrupted point resumes
    teachers = ",".join(cfg.teachers) or None
    for flag, value in (("--root", cfg.root), ("--data-dir", cfg.data_dir), ("--size", cfg.size),
                        ("--cache-dir", cfg.cache_dir), ("--max-memory", cfg.max_memory),
                        ("--cache-key", cfg.cache_key), ("--log-dir", cfg.log_dir),
                        ("--teachers", teachers), ("--teacher", None if teachers else cfg.teacher),
                        ("--teacher-weighting", cfg.teacher_weighting if teachers else None)):
        if value is not None:
            args += [flag, str(value)]
    return args + [flag for flag, on in (("--pretrained", cfg.pretrained), ("--compile", cfg.compile),
                                         ("--deterministic", cfg.deterministic)) if on]


@dataclass
class Slot:
    """One of the --jobs places (one per GPU with --gpus): its worker, once a point needed one, and its point."""

    gpu: str | None
    worker: Worker | None = None
    point: Point | None = None
    claim: Claim | None = None


def run_parallel(points: list[Point], jobs: int, bar: tqdm | PlainProgress, gpus: tuple[str, ...] = (),
                 claim_timeout: float = CLAIM_TIMEOUT_S) -> None:
    """Keep `jobs` worker processes busy (each on its own GPU when `gpus` are given) until every point is
    finished; a worker trains one point after another, this process holds each point's claim. After a
    failure start no more points and name the failed one's log."""
    grid = Grid(points, bar, claim_timeout)
    slots = [Slot(gpus[i] if gpus else None) for i in range(jobs)]
    failed: list[str] = []
    look_at = 0.0  # when to look at the grid again: at once after a point ended, else every WAIT_S
    try:
        while True:
            if time.monotonic() >= look_at:
                grid.update()
                while not failed and (slot := free_slot(slots)) and (got := grid.claim_next(training(slots))):
                    start_point(slot, *got)
                look_at = time.monotonic() + WAIT_S
            busy = [slot for slot in slots if slot.point]
            if not busy:
                if failed or grid.complete:
                    grid.tidy()
                    break
                grid.wait()
            time.sleep(POLL_S if busy else WAIT_S)
            for slot in busy:
                point, claim, worker = slot.point, slot.claim, slot.worker
                if claim.lost:  # another process trains it now
                    worker.stop()
                    code = None
                elif (code := worker.result()) is None:
                    continue
                slot.point = slot.claim = None
                if code is None or code in INTERRUPTED or not worker.alive:  # it has ended, or ends now
                    worker.close()
                    slot.worker = None
                claim.release()
                look_at = 0.0
                if claim.lost:
                    log(f"sweep: stopped training {point.out.name}: another process took it over")
                elif code == 0:
                    point.log.unlink(missing_ok=True)
                else:
                    failed.append(f"{point.out.name} (exit {code}, log {point.log})")
    finally:
        busy = [slot for slot in slots if slot.point]  # Ctrl-C, SIGTERM: stop them before their claims go
        for slot in busy:
            slot.worker.proc.terminate()  # all at once, then wait for each
        for slot in busy:
            slot.worker.stop()
            slot.claim.release()
        for slot in slots:
            if slot.worker:
                slot.worker.close()
    if failed:
        raise MedalError(f"{len(failed)} sweep run(s) failed, the finished ones are kept: {'; '.join(failed)}.")


def free_slot(slots: list[Slot]) -> Slot | None:
    """A slot with no point, one whose worker is already running first (a new worker costs a start)."""
    free = [slot for slot in slots if slot.point is None]
    return next((s for s in free if s.worker is not None and s.worker.alive), free[0] if free else None)


def training(slots: list[Slot]) -> set[Path]:
    return {slot.point.out for slot in slots if slot.point}


def start_point(slot: Slot, point: Point, claim: Claim) -> None:
    """Give a claimed point to the slot's worker (started now if it has none), its output in `.NAME.log`."""
    if slot.worker is None or not slot.worker.alive:
        slot.worker = Worker(slot.gpu)
    cfg = replace(point.cfg, device="cuda") if slot.gpu is not None else point.cfg
    log(f"sweep: training {point.out.name}" + (f" on GPU {slot.gpu}" if slot.gpu is not None else "")
        + f" (log {point.log})")
    point.log.parent.mkdir(parents=True, exist_ok=True)
    point.log.write_text("")  # the failure message names it, whatever happens to the worker
    slot.worker.train(distill_command(cfg), point.log)
    claim.add_pid(slot.worker.proc.pid)
    slot.point, slot.claim = point, claim
