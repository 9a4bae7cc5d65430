"""Stage 1: run the frozen DINOv2 teacher once over every split and cache what distillation needs.

The backbone's CLS features (fp16) are computed once; a linear head is trained on them with the
paper's recipe; its raw logits (fp32, before any temperature) for every split go into the Zarr
cache. Every later (t, alpha) run reads those logits instead of running the teacher again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import medal
from medal.cache.store import CacheWriter, TeacherCache, cache_dir, cache_key, list_caches
from medal.data import SPLITS, MedMNISTData, check_dataset, load_dataset
from medal.errors import MedalError
from medal.device import autocast, resolve_device
from medal.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, to_device
from medal.metrics import evaluate_scores, scores_from_logits
from medal.models import check_teacher, check_teacher_image_size, feature_dim, load_teacher, weights_id
from medal.pipeline.linear_head import HeadRecipe, head_logits, train_linear_head


@dataclass
class CacheConfig:
    dataset: str
    teacher: str = "dinov2_vitb14"
    weights: Path | None = None
    root: Path | None = None
    size: int = 28
    image_size: int = 224
    batch_size: int = 256
    device: str = "auto"
    cache_dir: Path | None = None
    force: bool = False
    head: HeadRecipe = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.head = self.head or HeadRecipe()


@dataclass
class CacheResult:
    cache: TeacherCache
    created: bool  # False when an up-to-date cache already existed


def run_cache_teacher(cfg: CacheConfig) -> CacheResult:
    """Build (or find) the cache for cfg; every check that can fail runs before any write."""
    check_dataset(cfg.dataset)
    check_teacher(cfg.teacher)
    check_teacher_image_size(cfg.image_size)
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise MedalError(f"weights file {cfg.weights} does not exist.")
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.root, cfg.size)
    wid = weights_id(cfg.teacher, cfg.weights)
    root = cache_dir(cfg.cache_dir)
    key = cache_key(data.flag, data.size, cfg.teacher, cfg.image_size, wid)
    existing = [c for c in list_caches(root) if c.key == key]
    if existing and not cfg.force:
        if existing[0].attrs.get("data_fingerprint") == data.fingerprint():
            return CacheResult(existing[0], created=False)
    teacher = load_teacher(cfg.teacher, cfg.weights, cfg.image_size).to(device)

    with CacheWriter(root, key) as writer:
        features = {s: teacher_features(teacher, data, s, cfg, device, writer) for s in SPLITS}
        targets = torch.as_tensor(data.targets("train"), device=device)
        head, chosen = train_linear_head(
            features, targets, data.splits["val"].labels, data.task, data.multi_label, data.num_outputs, cfg.head
        )
        metrics = {}
        for split in SPLITS:
            logits = head_logits(head, features[split])
            writer.put(f"{split}/logits", logits.float().cpu().numpy())
            writer.put(f"{split}/labels", data.splits[split].labels)
            scores = scores_from_logits(logits, data.task).cpu().numpy()
            metrics[split] = evaluate_scores(data.splits[split].labels, scores, data.task)
        writer.put("head/weight", head.weight.detach().float().cpu().numpy())
        writer.put("head/bias", head.bias.detach().float().cpu().numpy())
        cache = writer.commit(provenance(cfg, data, wid, feature_dim(teacher), metrics, chosen["epoch"]))
    return CacheResult(cache, created=True)


def teacher_features(
    teacher: torch.nn.Module, data: MedMNISTData, split: str, cfg: CacheConfig, device: torch.device, writer: CacheWriter
) -> torch.Tensor:
    """CLS features of one split, kept on the device for the head and streamed to Zarr as fp16."""
    images = to_device(data.splits[split].images, device)
    prep = Preprocess(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD, device)
    name = f"{split}/features"
    writer.create(name, (len(images), feature_dim(teacher)), "float16")
    out = []
    bar = tqdm(total=len(images), desc=f"teacher {split}", unit="img", unit_scale=True, leave=False)
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(images), cfg.batch_size):
            feats = teacher(prep(images[start : start + cfg.batch_size])).half()
            out.append(feats)
            writer.write(name, start, feats.cpu().numpy())
            bar.update(len(feats))
    bar.close()
    return torch.cat(out)


def provenance(cfg: CacheConfig, data: MedMNISTData, wid: str, dim: int, metrics: dict, head_epoch: int) -> dict:
    """What a cache records about itself: enough to refuse stale data and to cite the teacher."""
    return {
        "dataset": data.flag,
        "task": data.task,
        "num_outputs": data.num_outputs,
        "size": data.size,
        "data_root": str(data.path.parent.resolve()),
        "data_file": data.path.name,
        "data_md5": data.md5,
        "data_official": data.official,
        "data_fingerprint": data.fingerprint(),
        "n_samples": {s: int(len(data.splits[s].labels)) for s in SPLITS},
        "teacher": cfg.teacher,
        "weights": str(Path(cfg.weights).resolve()) if cfg.weights else "timm hub",
        "weights_sha256": wid,
        "image_size": cfg.image_size,
        "feature_dim": dim,
        "head": {**asdict(cfg.head), "best_epoch": head_epoch},
        "head_metrics": metrics,
        "medal_version": medal.__version__,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
