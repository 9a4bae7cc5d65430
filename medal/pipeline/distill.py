"""Stage 2: train a student against the cached teacher logits, at any temperature and alpha.

The paper's recipe: Adam lr 1e-3, batch 128, x0.1 at epochs 50 and 75, 100 epochs, the
checkpoint with the best validation AUC kept (and, with --patience, training stopped when it
has not improved for that many epochs). The whole split is resident on the device as uint8;
each step gathers a batch and its cached teacher logits by index, so the teacher never runs.

A run directory is built under a temporary name and renamed when complete:
config.json, history.csv, history.png, best.pt, metrics.json, test_scores.npy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import medal
from medal.cache.store import TeacherCache, cache_dir, list_caches
from medal.data import SPLITS, MedMNISTData, check_dataset, default_root, load_dataset
from medal.device import autocast, resolve_device
from medal.errors import MedalError
from medal.images import MEDMNIST_MEAN, MEDMNIST_STD, Preprocess, to_device
from medal.io import write_csv, write_json, write_torch
from medal.kd_loss import check_hyperparameters, kd_loss
from medal.log import log
from medal.metrics import evaluate_scores
from medal.models import build_student, check_student, check_teacher
from medal.pipeline.evaluate import evaluate_model, predict
from medal.plots import plot_history


@dataclass
class DistillConfig:
    dataset: str | None = None
    root: Path | None = None
    t: float = 2.0
    alpha: float = 0.2
    teacher: str | None = None
    student: str = "resnet50"
    pretrained: bool = False
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    milestones: tuple[int, ...] = (50, 75)
    patience: int = 0
    seed: int = 0
    image_size: int = 224
    out: Path | None = None
    runs_dir: Path = Path("runs")
    device: str = "auto"
    cache_dir: Path | None = None
    force: bool = False
    extra: dict = field(default_factory=dict)

    def run_name(self, dataset: str, teacher: str | None) -> str:
        method = "ce" if self.alpha == 1 else f"{teacher}_t{self.t:g}_a{self.alpha:g}"
        return f"{dataset}_{self.student}_{method}_s{self.seed}"


def check_config(cfg: DistillConfig) -> None:
    check_hyperparameters(cfg.t, cfg.alpha)
    if cfg.teacher is not None:
        check_teacher(cfg.teacher)
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise MedalError("--epochs must be >= 1 and --batch-size >= 2.")
    check_student(cfg.student)
    if cfg.image_size < 16:
        raise MedalError(f"--image-size must be at least 16, got {cfg.image_size}.")


def select_cache(cfg: DistillConfig) -> TeacherCache:
    """The one cache matching --dataset/--teacher, or a clear error listing what is cached."""
    root = cache_dir(cfg.cache_dir)
    caches = list_caches(root)
    if cfg.dataset is None:
        datasets = sorted({c.attrs["dataset"] for c in caches})
        if len(datasets) != 1:
            listed = ", ".join(datasets) if datasets else "none"
            raise MedalError(f"pass --dataset: {root} holds caches for {listed}; run `medal cache-teacher` first if none.")
        cfg.dataset = datasets[0]
    hits = [c for c in caches if c.attrs["dataset"] == cfg.dataset and cfg.teacher in (None, c.attrs["teacher"])]
    if not hits:
        hint = f"medal cache-teacher --dataset {cfg.dataset}" + (f" --teacher {cfg.teacher}" if cfg.teacher else "")
        raise MedalError(f"no teacher cache for {cfg.dataset} in {root}; run `{hint}` first (or --alpha 1 for plain CE).")
    if len(hits) > 1:
        raise MedalError(
            f"{len(hits)} caches match {cfg.dataset} ({', '.join(c.key for c in hits)}); pick one with --teacher or --cache-key."
        )
    return hits[0]


def prepare(cfg: DistillConfig) -> tuple[MedMNISTData, TeacherCache | None]:
    """Resolve the cache and the data, and check that they belong together. Writes nothing."""
    check_config(cfg)
    cache = None
    if cfg.alpha < 1:
        cache = cfg.extra.get("cache") or select_cache(cfg)
        cfg.teacher = cache.attrs["teacher"]
    elif cfg.dataset is None:
        raise MedalError("--alpha 1 (the plain CE student) needs --dataset.")
    cfg.dataset = check_dataset(cfg.dataset)
    root = cfg.root or (Path(cache.attrs["data_root"]) if cache else default_root())
    data = load_dataset(cfg.dataset, root, cache.attrs["size"] if cache else 28)
    if cache is not None and cache.attrs["data_fingerprint"] != data.fingerprint():
        raise MedalError(
            f"teacher cache {cache.key} was computed from other data than {data.path} "
            f"(fingerprint {cache.attrs['data_fingerprint'][:12]} != {data.fingerprint()[:12]}); "
            f"rebuild it with `medal cache-teacher --dataset {data.flag} --force`."
        )
    return data, cache


def run_distill(cfg: DistillConfig) -> Path:
    """Train, select on val, evaluate on test; returns the finished run directory."""
    data, cache = prepare(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else Path(cfg.runs_dir) / cfg.run_name(data.flag, cfg.teacher)
    if out.exists() and not cfg.force:
        raise MedalError(f"run directory {out} already exists; pass --force to replace it or --out DIR.")
    student = build_student(cfg.student, data.num_outputs, cfg.pretrained)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        config = {**{k: v for k, v in asdict(cfg).items() if k != "extra"}, "task": data.task,
                  "size": data.size, "data_root": str(data.path.parent.resolve()), "data_md5": data.md5,
                  "data_fingerprint": data.fingerprint(), "cache_key": cache.key if cache else None,
                  "medal_version": medal.__version__, "torch_version": torch.__version__}
        write_json(partial / "config.json", config)
        train_student(cfg, student, data, cache, device, partial)
        student.load_state_dict(torch.load(partial / "best.pt", map_location="cpu")["model"])
        evaluate_model(student.to(device), data, cfg.image_size, device, partial, config)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def train_student(
    cfg: DistillConfig, student: nn.Module, data: MedMNISTData, cache: TeacherCache | None, device: torch.device, run: Path
) -> list[dict]:
    """The training loop; writes history.csv/.png and best.pt into `run` as it goes."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    student = student.to(device, memory_format=fmt)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    prep = Preprocess(cfg.image_size, MEDMNIST_MEAN, MEDMNIST_STD, device)
    images = to_device(data.splits["train"].images, device)
    targets = torch.as_tensor(data.targets("train"), device=device)
    teacher = torch.as_tensor(cache.logits("train"), device=device) if cache is not None else None
    if teacher is not None and teacher.shape != (len(images), data.num_outputs):
        raise MedalError(f"teacher cache {cache.key} holds {tuple(teacher.shape)} logits for {len(images)} train images.")
    val_images = to_device(data.splits["val"].images, device)
    val_labels = data.splits["val"].labels

    history: list[dict] = []
    best_auc, since_best = -1.0, 0
    steps = len(images) // cfg.batch_size + (len(images) % cfg.batch_size > 1)
    for epoch in range(1, cfg.epochs + 1):
        student.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(len(images), generator=generator).to(device)
        bar = tqdm(order.split(cfg.batch_size)[:steps], desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        for idx in bar:  # a last batch of one sample is dropped: BatchNorm cannot train on it
            with autocast(device):
                logits = student(prep(images[idx]))
            loss = kd_loss(logits.float(), None if teacher is None else teacher[idx], targets[idx],
                           t=cfg.t, alpha=cfg.alpha, multi_label=data.multi_label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        schedule.step()
        val = evaluate_scores(val_labels, predict(student, val_images, prep, data.task, device), data.task)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": float(loss_sum) / max(steps, 1),
               "val_auc": val["auc"], "val_acc": val["acc"], "seconds": round(time.perf_counter() - start, 3)}
        history.append(row)
        write_csv(run / "history.csv", history)
        if val["auc"] > best_auc:
            best_auc, since_best = val["auc"], 0
            write_torch(run / "best.pt", {"model": student.state_dict(), "epoch": epoch, "val": val})
        else:
            since_best += 1
        log(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val auc {val['auc']:.4f}  acc {val['acc']:.4f}"
            f"  ({row['seconds']:.1f}s)")
        if cfg.patience and since_best >= cfg.patience:
            log(f"early stop: val AUC has not improved for {cfg.patience} epochs")
            break
    plot_history(history, run / "history.png")
    return history
