"""Stage 2: train a student against the cached teacher logits, at any temperature and alpha.

The paper's recipe: Adam lr 1e-3, batch 128, x0.1 at epochs 50 and 75, 100 epochs, the
checkpoint with the best validation AUC kept (and, with --patience, training stopped when it
has not improved for that many epochs). The whole split is resident on the device as uint8;
each step gathers a batch and its cached teacher logits by index, so the teacher never runs.
A split too large for --max-memory is streamed from a store instead, in the same order (medal.data.stream).

A run directory is built under a temporary name and renamed when complete:
config.json, history.csv, history.png, best.pt, metrics.json, test_scores.npy, MODEL_CARD.md. Until then the
temporary folder keeps a checkpoint of the last finished epoch, written while training goes on, so the same
command run again after an interruption goes on from there (`medal.pipeline.checkpoint`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from medal.cache.store import TeacherCache, cache_dir, find_cache, list_caches
from medal.data.base import Dataset
from medal.data.checks import check_val_classes
from medal.data.medmnist import default_root
from medal.data.preprocess import INTERPOLATIONS, MEDMNIST_MEAN, MEDMNIST_STD, Preprocess
from medal.data.resolve import dataset_name, is_path, resolve_dataset
from medal.data.stream.budget import memory_budget
from medal.data.stream.source import image_source
from medal.losses.kd_loss import check_hyperparameters
from medal.models.students import build_student, check_student
from medal.models.teacher_spec import cache_matcher, parse_teacher, stale_run_cache, teacher_label
from medal.pipeline.checkpoint import LOCK, Checkpoint, StateCopy, record_stats, run_settings, snapshot
from medal.pipeline.evaluate import evaluate_model, evaluate_scores, predict, student_channels
from medal.pipeline.student_step import StudentStep
from medal.records.model_card import write_model_card
from medal.runtime.allocator import keep_freed_memory
from medal.runtime.background import BackgroundWriter, Write
from medal.runtime.device import resolve_device
from medal.runtime.distributed import World, init_world
from medal.runtime.errors import MedalError
from medal.runtime.filelock import FileLock
from medal.runtime.interrupt import Interrupted, Terminated, exit_code, sigterm_raises
from medal.runtime.io import publish_dir, read_torch, write_json
from medal.runtime.log import log
from medal.runtime.plots import plot_history
from medal.runtime.progress import progress
from medal.runtime.reproducible import (
    deterministic_pooling,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
)
from medal.runtime.tensorboard import open_scalars
from medal.runtime.version import __version__

KEEP = ("best", "last")
WEIGHTINGS = ("ca-mkd", "mean")  # how several teachers' targets are combined (medal.losses.ca_mkd)


@dataclass
class DistillConfig:
    dataset: str | None = None
    root: Path | None = None
    data_dir: Path | None = None  # where imported datasets live; default: where the cached data came from
    size: int | None = None  # which MedMNIST file; default: the cache's, else 28
    t: float = 2.0
    alpha: float = 0.2
    teacher: str | None = None  # a SPEC (medal/models/teacher_spec.py): DINOv2 or timm name, or a run directory
    teachers: tuple[str, ...] = ()  # several cached teachers, weighted by teacher_weighting
    teacher_weighting: str = "ca-mkd"  # several teachers: ca-mkd (confidence-weighted) or mean (of probabilities)
    cache_key: str | None = None
    student: str = "resnet50"
    pretrained: bool = False
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    milestones: tuple[int, ...] = (50, 75)
    patience: int = 0
    seed: int = 0
    deterministic: bool = False  # CUDA too: deterministic algorithms, no cuDNN autotuning (CPU is anyway)
    image_size: int = 224
    as_rgb: bool = True  # grayscale repeated to 3 channels (the paper, MedMNIST v2's runs); False: native channels
    keep: str = "best"  # weights kept and evaluated: best val AUC (the paper, MedMNIST v2) or the last epoch
    interpolation: str = "bilinear"  # upsampling to --image-size; "nearest" is what MedMNIST's (224) models saw
    compile: bool = False
    out: Path | None = None
    runs_dir: Path = Path("runs")
    device: str = "auto"
    cache_dir: Path | None = None
    force: bool = False  # replace a finished run, or start an interrupted one over
    max_memory: str | None = None  # memory for image data ("8G"); splits beyond it stream (medal.data.stream)
    log_dir: Path | None = None  # TensorBoard scalars (see medal/tensorboard.py)

    def run_name(self, dataset: str, teacher: str | None) -> str:
        if self.alpha == 1:
            method = "ce"
        else:
            who = (f"{self.teacher_weighting}_" + "+".join(map(teacher_label, self.teachers)) if len(self.teachers) > 1
                   else teacher_label(teacher) if teacher else None)
            method = f"{who}_t{self.t:g}_a{self.alpha:g}"
        return f"{dataset}_{self.student}_{method}_s{self.seed}"


def check_config(cfg: DistillConfig) -> None:
    check_hyperparameters(cfg.t, cfg.alpha)
    for name in (cfg.teacher, *cfg.teachers):
        if name is not None:
            parse_teacher(name)
    if cfg.teacher_weighting not in WEIGHTINGS:
        raise MedalError(f"--teacher-weighting must be one of {', '.join(WEIGHTINGS)}, got {cfg.teacher_weighting!r}.")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise MedalError("--epochs must be >= 1 and --batch-size >= 2.")
    check_student(cfg.student)
    if cfg.image_size < 16:
        raise MedalError(f"--image-size must be at least 16, got {cfg.image_size}.")
    if cfg.keep not in KEEP:
        raise MedalError(f"--keep must be one of {', '.join(KEEP)}, got {cfg.keep!r}.")
    if cfg.interpolation not in INTERPOLATIONS:
        raise MedalError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {cfg.interpolation!r}.")


def select_cache(cfg: DistillConfig, teacher: str | None) -> TeacherCache:
    """The one cache matching --dataset/--teacher/--cache-key, or a clear error listing what is cached."""
    root = cache_dir(cfg.cache_dir)
    caches = list_caches(root)
    if cfg.cache_key:
        return find_cache(root, cfg.cache_key)
    if cfg.dataset is None:
        datasets = sorted({c.attrs["dataset"] for c in caches})
        if len(datasets) != 1:
            listed = ", ".join(datasets) if datasets else "none"
            raise MedalError(f"pass --dataset: {root} holds caches for {listed}; run `medal cache-teacher` first if none.")
        cfg.dataset = datasets[0]
    matches = cache_matcher(teacher) if teacher is not None else (lambda attrs: True)
    hits = [c for c in caches if c.attrs["dataset"] == cfg.dataset and matches(c.attrs)]
    if not hits:
        stale = stale_run_cache(teacher, [c for c in caches if c.attrs["dataset"] == cfg.dataset]) if teacher else None
        if stale:
            raise MedalError(stale.replace("DATASET", cfg.dataset) + ".")
        hint = f"medal cache-teacher --dataset {cfg.dataset}" + (f" --teacher {teacher}" if teacher else "")
        raise MedalError(f"no teacher cache for {cfg.dataset} in {root}; run `{hint}` first (or --alpha 1 for plain CE).")
    if len(hits) > 1:
        raise MedalError(f"{len(hits)} caches match {cfg.dataset} ({', '.join(c.key for c in hits)}); "
                         f"pick one with --teacher or --cache-key.")
    return hits[0]


def prepare(cfg: DistillConfig) -> tuple[Dataset, list[TeacherCache]]:
    """Resolve the caches and the data, and check that they belong together. Writes nothing."""
    check_config(cfg)
    source = cfg.dataset  # a flag, a name or a path; caches know the dataset by its name
    if cfg.dataset is not None:
        cfg.dataset = dataset_name(cfg.dataset)
    caches: list[TeacherCache] = []
    if cfg.alpha < 1:
        caches = [select_cache(cfg, name) for name in cfg.teachers] if cfg.teachers else [select_cache(cfg, cfg.teacher)]
        cfg.teacher = caches[0].attrs["teacher"]
    elif cfg.dataset is None:
        raise MedalError("--alpha 1 (the plain CE student) needs --dataset.")
    first = caches[0].attrs if caches else None
    recorded = Path(first["data_root"]) if first else None
    root = cfg.root or recorded or default_root()
    if first and cfg.size not in (None, first["size"]):
        raise MedalError(f"--size {cfg.size} differs from the cache's MedMNIST file size {first['size']}.")
    budget = memory_budget(cfg.max_memory, resolve_device(cfg.device), cache_dir(cfg.cache_dir) / "streams")
    data = resolve_dataset(source or cfg.dataset, root, first["size"] if first else cfg.size, cfg.data_dir or recorded,
                           budget=budget)
    if source and is_path(source):
        cfg.data_dir = data.path.parent  # from here on the name finds it (config.json, sweep's child processes)
    for cache in caches:
        if cache.attrs["dataset"] != data.flag or cache.attrs["data_fingerprint"] != data.fingerprint:
            raise MedalError(
                f"teacher cache {cache.key} was computed from other data than {data.path} "
                f"(fingerprint {cache.attrs['data_fingerprint'][:12]} != {data.fingerprint[:12]}); "
                f"rebuild it with `medal cache-teacher --dataset {data.flag} --force`."
            )
    return data, caches


def run_distill(cfg: DistillConfig) -> Path:
    """Train, select on val, evaluate on test; returns the finished run directory.

    Under torchrun every rank trains its shard of each epoch (DDP); rank 0 alone writes.
    An interrupted run (its `.NAME.partial` folder holds a checkpoint) is resumed.
    """
    set_deterministic(cfg.deterministic)  # before anything touches CUDA
    data, caches = prepare(cfg)
    if all(isinstance(split.images, np.ndarray) for split in data.splits.values()):
        keep_freed_memory()  # the steps' host memory stays in the process; not when data streams, short of memory
    check_val_classes(data.flag, data.splits["val"].labels, data.num_outputs, data.multi_label)
    world = init_world(resolve_device(cfg.device))
    device = world.device(resolve_device(cfg.device))
    out = Path(cfg.out) if cfg.out else Path(cfg.runs_dir) / cfg.run_name(data.flag, cfg.teacher)
    if world.main and out.exists() and not cfg.force:
        raise MedalError(f"run directory {out} already exists; pass --force to replace it or --out DIR.")
    in_chans = 3 if cfg.as_rgb else data.channels
    seed_everything(cfg.seed)  # before the student exists: --seed fixes its initial weights
    student = build_student(cfg.student, data.num_outputs, cfg.pretrained, in_chans=in_chans)
    if cfg.deterministic and device.type == "cuda":
        deterministic_pooling(student)
    soft = teacher_logits(caches, len(data.splits["train"].images), data.num_outputs, device,  # a damaged cache stops here
                          weighting=cfg.teacher_weighting, t=cfg.t, multi_label=data.multi_label)
    partial = out.with_name(f".{out.name}.partial")
    config = {**asdict(cfg), "task": data.task, "size": data.size, "data_root": str(data.path.parent.resolve()),
              "data_path": str(data.path.resolve()), "data_md5": data.md5, "data_fingerprint": data.fingerprint,
              "cache_key": caches[0].key if caches else None, "cache_keys": [c.key for c in caches],
              "teachers": [c.attrs["teacher"] for c in caches], "world_size": world.size, "in_chans": in_chans,
              "device_type": device.type, "medal_version": __version__, "torch_version": torch.__version__}
    checkpoint = Checkpoint(partial, run_settings(config))
    lock = None
    if world.main:
        partial.mkdir(parents=True, exist_ok=True)
        lock = FileLock(partial / LOCK, f"{partial} is being trained by {{holder}}; wait for it to finish "
                                        f"or stop it, then run the command again.")  # one process a run
    try:
        resumed = world.broadcast(checkpoint.start(cfg.force) if world.main else None)
        if world.main:
            write_json(partial / "config.json", config)
            if resumed:
                log(checkpoint.resuming(out, resumed["stopped"], cfg.epochs))
        trained = False
        try:
            with sigterm_raises():
                history = train_student(cfg, student, data, soft, device, partial, world, checkpoint, resumed)
                trained = True
                if world.main:
                    last = evaluate_model(student, data, cfg.image_size, device, None, config)  # the weights training ended with
                    kept = read_torch(partial / "best.pt")
                    student.load_state_dict(kept["model"])
                    evaluate_model(student.to(device), data, cfg.image_size, device, partial, config,
                                   extra={"kept": cfg.keep, "kept_epoch": kept["epoch"],
                                          "last_epoch": {"epoch": history[-1]["epoch"], **last}})
                    write_model_card(partial)
        except (KeyboardInterrupt, Terminated) as exc:
            checkpoint.write_best_after_signal()  # a rank other than 0 has written none: nothing to do
            raise Interrupted(checkpoint.interrupted(trained, cfg.epochs), exit_code(exc)) from None
        if world.main:
            checkpoint.remove()
            lock.release()
            if out.exists():
                shutil.rmtree(out)
            publish_dir(partial, out)
        world.barrier()
    finally:
        if lock is not None:
            lock.release()  # the partial folder stays: a rerun resumes from its checkpoint
    return out


def teacher_logits(caches: list[TeacherCache], n: int, outputs: int, device: torch.device, *,
                   weighting: str = "ca-mkd", t: float = 1.0, multi_label: bool = False) -> torch.Tensor | None:
    """The cached train logits on the device: (N, C) for one teacher, (K, N, C) for several under CA-MKD.

    `weighting="mean"` turns several teachers into one (N, C) target, once for the whole run:
    logits whose softmax at t is the mean of the teachers' softened probabilities (medal.losses.ca_mkd).
    """
    if not caches:
        return None
    stacked = torch.stack([torch.as_tensor(c.logits("train")) for c in caches]).to(device)
    if stacked.shape[1:] != (n, outputs):
        raise MedalError(f"teacher cache {caches[0].key} holds {tuple(stacked.shape[1:])} logits for {n} train images.")
    if len(caches) == 1:
        return stacked[0]
    if weighting == "mean":
        from medal.losses.ca_mkd import mean_teacher_logits

        return mean_teacher_logits(stacked, t, multi_label)
    return stacked


def train_student(cfg: DistillConfig, student: nn.Module, data: Dataset, soft: torch.Tensor | None,
                  device: torch.device, run: Path, world: World, checkpoint: Checkpoint,
                  resumed: dict | None = None) -> list[dict]:
    """The training loop, continuing `resumed` (a checkpoint's state) when given.

    After every epoch rank 0 hands a copy of the state to a background writer: the checkpoint, then
    history.csv into `run`, and after the last epoch's, best.pt (`medal.pipeline.checkpoint`); history.png
    at the end.
    """
    generator = torch.Generator().manual_seed(cfg.seed)  # same seed on every rank: same global order
    if resumed:
        student.load_state_dict(resumed["model"])  # before DDP, which copies rank 0's weights to every rank
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    student = student.to(device, memory_format=fmt)
    model = DDP(student, device_ids=[device.index] if device.type == "cuda" else None) if world.distributed else student
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    source = image_source(data.splits["train"].images, device)  # resident, or streamed batch by batch
    prep = Preprocess(cfg.image_size, MEDMNIST_MEAN, MEDMNIST_STD, device, channels=student_channels(student),
                      interpolation=cfg.interpolation)
    step = StudentStep(model, optimizer, prep, None, torch.as_tensor(data.targets("train"), device=device),
                       soft, t=cfg.t, alpha=cfg.alpha,
                       multi_label=data.multi_label, device=device, compile=cfg.compile)
    val_images = image_source(data.splits["val"].images, device) if world.main else None

    history: list[dict] = []
    best_auc, since_best, stop, first = -1.0, 0, False, 1
    kept: dict | None = None  # --keep best: the best epoch's {"model" (a CPU copy), "epoch", "val"}
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["scheduler"])
        history, best_auc, since_best = list(resumed["history"]), resumed["best_auc"], resumed["since_best"]
        stop, first, kept = resumed["stopped"], resumed["epoch"] + 1, resumed.get("kept")
        # Every rank takes rank 0's generators: seeded alike and drawn from alike, they were equal.
        set_rng_state(resumed["rng"], generator, device)
    out = Path(cfg.out) if cfg.out else Path(cfg.runs_dir) / cfg.run_name(data.flag, cfg.teacher)
    scalars = open_scalars(cfg.log_dir, out) if world.main else None
    copies = StateCopy()  # the checkpoint's copy of the state, in the same memory every epoch
    with BackgroundWriter() as writer:
        for epoch in range(first, cfg.epochs + 1):
            if stop:
                break
            model.train()
            start = time.perf_counter()
            order = world.shard(torch.randperm(len(source), generator=generator))
            batches = [b for b in order.to(device).split(cfg.batch_size) if len(b) > 1]  # BatchNorm cannot train on one sample
            rows = [b for b in order.to(source.index_device).split(cfg.batch_size) if len(b) > 1]  # what the source reads
            loss_sum = torch.zeros((), device=device)
            for idx, images in progress(zip(batches, source.batches(rows)), total=len(batches),
                                        desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                                        disable=not world.main, line=False):  # the epoch line says it
                loss_sum += step(idx, images)
            schedule.step()
            train_loss = float(world.all_sum(loss_sum)) / (len(batches) * world.size)
            train_s = time.perf_counter() - start
            if world.main:
                val = evaluate_scores(data.splits["val"].labels, predict(student, val_images, prep, data.task, device),
                                      data.task)
                row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                       "val_auc": val["auc"], "val_acc": val["acc"], "seconds": round(time.perf_counter() - start, 3)}
                history.append(row)
                if scalars:
                    scalars.epoch(row, images_per_s=sum(map(len, batches)) * world.size / train_s)
                if val["auc"] > best_auc:
                    best_auc, since_best = val["auc"], 0
                else:
                    since_best += 1
                stop = bool(cfg.patience) and since_best >= cfg.patience
                if since_best == 0 and cfg.keep == "best":  # copied now: this epoch's checkpoint may be skipped
                    kept = {"model": writer.run_here(partial(snapshot, student.state_dict())), "epoch": epoch, "val": val}
                fields = {"epoch": epoch, "val": val, "best_auc": best_auc, "since_best": since_best, "stopped": stop,
                          "history": history}
                writer.offer(partial(epoch_state, checkpoint, student, optimizer, schedule, generator, device,
                                     kept, cfg.keep == "last", fields, copies))  # the epoch's commit point
                log(f"epoch {epoch:3d}  loss {train_loss:.4f}  val auc {val['auc']:.4f}  acc {val['acc']:.4f}"
                    f"  ({row['seconds']:.1f}s)")
                if stop:
                    log(f"early stop: val AUC has not improved for {cfg.patience} epochs")
            stop = world.broadcast(stop)
    record_stats(writer.stats)
    if scalars:
        scalars.close()
    if world.main:
        plot_history(history, run / "history.png")
    return history


def epoch_state(checkpoint: Checkpoint, student: nn.Module, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, device: torch.device,
                kept: dict | None, keep_last: bool, fields: dict, copies: StateCopy) -> Write:
    """On the training thread: the epoch's state copied to CPU memory, and the write that saves it.

    The copy is the checkpoint file's bytes (`Checkpoint.prepare`), which the writer's thread then writes while
    training goes on. On the CPU torch.save makes them straight from the live model and optimizer: one copy,
    0.044 s for resnet50_28 with Adam. A copy into memory first (`StateCopy`), serialized on the writer's thread,
    would be a second one beside training, whose threads take every core: a write beside them cost the epoch about
    twice its CPU time (benchmarks/RESULTS.md, "Fixed costs"). On a GPU that copy into `copies` (the memory of
    the previous checkpoint's copy, whose write has finished) is the one to make: torch.save would copy each
    tensor to new memory first, and a GPU's host has cores to spare for the rest.

    `kept` (--keep best) is the best epoch's weights, already a CPU copy, carried along so that a resume
    rewrites best.pt exactly. In `copies` it is also this epoch's model when this epoch is the best (one copy
    serves both). From the live state it is written apart from the model every epoch, so that every checkpoint
    has the same size: a file written over a smaller one allocated pages and blocks, 0.14-0.17 s against
    0.04-0.06 s (resnet50_28 on the CI machine, through the page cache).
    """
    live = copies_live_state(device)
    if live:
        model = student.state_dict()
    elif kept is not None and kept["epoch"] == fields["epoch"]:
        model = kept["model"]
    else:
        model = copies("model", student.state_dict())
    state = {**snapshot(fields), "model": model,
             "optimizer": optimizer.state_dict() if live else copies("optimizer", optimizer.state_dict()),
             "scheduler": snapshot(schedule.state_dict()), "rng": snapshot(rng_state(generator, device)),
             "kept": {"model": model, "epoch": fields["epoch"], "val": fields["val"]} if keep_last else kept}
    return checkpoint.prepare(state) if live else partial(checkpoint.save, state)


def copies_live_state(device: torch.device) -> bool:
    """Whether the training thread makes the checkpoint's bytes from the live state itself (the CPU; why:
    `epoch_state`)."""
    return device.type == "cpu"
