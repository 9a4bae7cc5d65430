"""Stage 1: run the frozen teacher once over every split and cache what distillation needs.

The teacher is a DINOv2 backbone, any timm model, or a finished medal run (medal/models/teacher_spec.py); a
run's student already classifies the dataset, so its logits are cached directly
(medal/pipeline/run_teacher.py). For a backbone:

The backbone's CLS features (fp16) are computed once; a linear head is trained on them with the
paper's recipe; its raw logits (fp32, before any temperature) for every split go into the Zarr
cache. Every later (t, alpha) run reads those logits instead of running the teacher again.

The features are the expensive part, so they are resumable: an interrupted run keeps every
chunk it finished, and the same command computes only the missing ones (see `CacheWriter`).
The head and its logits take seconds and are always redone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, replace
from pathlib import Path

import torch

from medal.cache.store import (
    FORMAT,
    CacheWriter,
    TeacherCache,
    cache_dir,
    cache_key,
    rebuild_command,
)
from medal.data.base import SPLITS, Dataset
from medal.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, to_device
from medal.data.resolve import resolve_dataset
from medal.data.stream.budget import memory_budget
from medal.models.teacher_spec import (
    check_options,
    finished_run,
    format_teacher_args,
    key_weights_id,
    load_timm_teacher,
    model_license,
    parse_teacher,
    parse_teacher_args,
    timm_output_dim,
    timm_preprocessing,
    timm_weights_id,
)
from medal.models.teachers import check_teacher_image_size, feature_dim, load_teacher, weights_id
from medal.pipeline.cache_config import RESUME_KEYS, CacheConfig, CacheResult, recorded_inputs, up_to_date
from medal.pipeline.evaluate import evaluate_scores, scores_from_logits
from medal.pipeline.linear_head import HeadRecipe, head_logits, train_linear_head  # noqa: F401  (HeadRecipe: stage 1 settings, for callers)
from medal.runtime.device import autocast, resolve_device
from medal.runtime.distributed import World, init_world
from medal.runtime.log import log
from medal.runtime.progress import progress
from medal.runtime.version import __version__

DINOV2_IMAGE_SIZE = 224


def run_cache_teacher(cfg: CacheConfig) -> CacheResult:
    """Build (or find) the cache for cfg; every check that can fail runs before any write.

    Under torchrun each rank runs the backbone over its own share of the missing chunks of
    every split; rank 0 then trains the head on all features, writes the logits and renames the cache.
    """
    spec = parse_teacher(cfg.teacher)
    args = parse_teacher_args(cfg.teacher_args)
    check_options(spec, cfg.weights, cfg.image_size, args)
    if spec.kind == "dinov2":
        check_teacher_image_size(cfg.image_size or DINOV2_IMAGE_SIZE)
    elif spec.kind == "run":
        finished_run(Path(spec.name))
    world = init_world(resolve_device(cfg.device))
    device = world.device(resolve_device(cfg.device))
    budget = memory_budget(cfg.max_memory, device, cache_dir(cfg.cache_dir) / "streams")
    data = resolve_dataset(cfg.dataset, cfg.root, cfg.size, cfg.data_dir, budget=budget)
    if spec.kind == "run":
        from medal.pipeline.run_teacher import cache_run_teacher

        return cache_run_teacher(cfg, spec, data, world, device)
    teacher = None
    if spec.kind == "dinov2":
        cfg = replace(cfg, image_size=cfg.image_size or DINOV2_IMAGE_SIZE)
        wid = weights_id(cfg.teacher, cfg.weights)
        preprocessing = {"image_size": cfg.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                         "interpolation": "bilinear", "in_chans": 3}
    else:  # timm: the model says how big its input is, so it is built before the key is known
        teacher = load_timm_teacher(spec, cfg.weights, cfg.image_size, args)
        preprocessing = timm_preprocessing(teacher, cfg.image_size)
        cfg = replace(cfg, image_size=preprocessing["image_size"])
        wid = timm_weights_id(spec, cfg.weights, teacher)
    cfg = replace(cfg, teacher=spec.name, teacher_args=format_teacher_args(args))
    root = cache_dir(cfg.cache_dir)
    key = cache_key(data.flag, data.size, spec.label, cfg.image_size, key_weights_id(wid, cfg.teacher_args))
    existing = up_to_date(root, key, data, cfg.force)
    if existing is not None:
        return CacheResult(existing, created=False)
    if teacher is None:
        teacher = load_teacher(cfg.teacher, cfg.weights, cfg.image_size)
    teacher = teacher.to(device)
    dim = feature_dim(teacher) if spec.kind == "dinov2" else timm_output_dim(teacher)
    licence, licence_source = model_license(teacher, spec)
    prep = Preprocess(cfg.image_size, preprocessing["mean"], preprocessing["std"], device,
                      channels=preprocessing["in_chans"], interpolation=preprocessing["interpolation"])
    inputs = {**recorded_inputs(cfg, data, wid), "teacher_spec": spec.spec, "teacher_kind": spec.kind,
              "license": licence, "license_source": licence_source, "preprocessing": preprocessing}
    identity = {**{k: inputs[k] for k in RESUME_KEYS}, "device": device.type, "torch_version": torch.__version__,
                "cache_format": FORMAT}
    rebuild = rebuild_command({**inputs, "head": asdict(cfg.head)}, root)

    with CacheWriter(root, key, world, identity, rebuild, force=cfg.force) as writer:
        sizes = {s: len(data.splits[s].images) for s in SPLITS}
        done = {s: writer.create(f"{s}/features", (sizes[s], dim), "float16", chunk_rows=cfg.chunk_rows)
                for s in SPLITS}
        if world.main and any(done.values()):
            total = sum(-(-n // cfg.chunk_rows) for n in sizes.values())
            log(f"resuming cache {key}: {sum(map(len, done.values()))} of {total} feature chunks already computed")
        for split in SPLITS:
            teacher_features(teacher, data, split, cfg, device, writer, world, done[split], prep)
        writer.sync()
        cache = None
        if world.main:
            features = {s: torch.as_tensor(writer.read(f"{s}/features"), device=device) for s in SPLITS}
            cache = writer.commit(fit_head(features, data, cfg, writer, inputs, dim))
        world.barrier()
    return CacheResult(cache or TeacherCache(writer.final), created=True)


def teacher_features(teacher: torch.nn.Module, data: Dataset, split: str, cfg: CacheConfig,
                     device: torch.device, writer: CacheWriter, world: World, done: set[int],
                     prep: Preprocess | None = None) -> None:
    """Pooled (DINOv2: CLS) features of one split's chunks not in `done`, streamed to Zarr as fp16, one whole
    chunk at a time; `prep` defaults to DINOv2's (ImageNet mean/std, bilinear to cfg.image_size).

    Batches never straddle a chunk, so a sample's feature is computed in the same batch
    whatever the number of ranks and however often the run was interrupted: the cache is the
    same bit for bit.
    """
    split_images = data.splits[split].images
    n, rows = len(split_images), cfg.chunk_rows
    name = f"{split}/features"
    missing = [c for c in range(-(-n // rows)) if c not in done]  # the same list on every rank
    mine = missing[world.rank :: world.size]
    prep = prep or Preprocess(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD, device)
    bar = progress(total=sum(min(rows, n - c * rows) for c in mine), desc=f"teacher {split}", unit="img",
                   unit_scale=True, leave=False, disable=not world.main)
    with torch.inference_mode(), autocast(device):
        for chunk in mine:
            images = to_device(split_images[chunk * rows : (chunk + 1) * rows], device)
            feats = []
            for start in range(0, len(images), cfg.batch_size):
                feats.append(forward_fitting(teacher, prep, images[start : start + cfg.batch_size]))
                bar.update(len(feats[-1]))
            writer.write(name, chunk * rows, torch.cat(feats).cpu().numpy())
    bar.close()


def forward_fitting(teacher: torch.nn.Module, prep: Preprocess, images: torch.Tensor) -> torch.Tensor:
    """fp16 features of a batch; on CUDA out-of-memory, the same batch again in halves."""
    try:
        return teacher(prep(images)).half()
    except torch.cuda.OutOfMemoryError:
        if len(images) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(images) // 2
        return torch.cat([forward_fitting(teacher, prep, images[:half]), forward_fitting(teacher, prep, images[half:])])


def fit_head(features: dict[str, torch.Tensor], data: Dataset, cfg: CacheConfig, writer: CacheWriter,
             inputs: dict, dim: int) -> dict:
    """Train the linear head, write its raw logits for every split; returns the cache's attrs."""
    targets = torch.as_tensor(data.targets("train"), device=features["train"].device)
    head, chosen = train_linear_head(features, targets, data.splits["val"].labels, data.task, data.multi_label,
                                     data.num_outputs, cfg.head)
    metrics = {}
    for split in SPLITS:
        logits = head_logits(head, features[split])
        writer.put(f"{split}/logits", logits.float().cpu().numpy())
        writer.put(f"{split}/labels", data.splits[split].labels)
        scores = scores_from_logits(logits, data.task).cpu().numpy()
        metrics[split] = evaluate_scores(data.splits[split].labels, scores, data.task)
    writer.put("head/weight", head.weight.detach().float().cpu().numpy())
    writer.put("head/bias", head.bias.detach().float().cpu().numpy())
    return provenance(inputs, cfg, dim, metrics, chosen["epoch"])


def provenance(inputs: dict, cfg: CacheConfig, dim: int, metrics: dict, head_epoch: int) -> dict:
    """What a cache records about itself: its inputs, the head and its metrics, versions and date."""
    return {
        **inputs,
        "feature_dim": dim,
        "head": {**asdict(cfg.head), "best_epoch": head_epoch},
        "head_metrics": metrics,
        "medal_version": __version__,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
