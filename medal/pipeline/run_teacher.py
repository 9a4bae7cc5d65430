"""Stage 1 for a finished medal run as the teacher (`medal cache-teacher --teacher runs/ce_resnet50_s0`).

The run's student is already a classifier for this dataset, so there are no backbone features and no
linear head: its raw logits on every split are cached directly, computed by the same functions as
`medal evaluate` (its best.pt in the student timm builds, the run's image size, interpolation,
channels and mean/std), so the softmax of the cached test logits is the run's test_scores.npy. The
cache's `head_metrics` are the run's own AUC/ACC from those logits, so tables show the teacher's row.

The key and attrs name the run (`teacher`: its resolved path) and the SHA-256 of its best.pt: a
retrained run is a new cache. A run of another dataset, or of other images or labels, is refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import torch

from medal.cache.store import FORMAT, CacheWriter, TeacherCache, cache_dir, cache_key, rebuild_command
from medal.data.base import SPLITS, Dataset
from medal.data.preprocess import MEDMNIST_MEAN, MEDMNIST_STD
from medal.data.stream.source import image_source
from medal.models.teacher_spec import TeacherSpec, check_run_data, finished_run, run_config, run_license
from medal.pipeline.cache_config import RESUME_KEYS, CacheConfig, CacheResult, recorded_inputs, up_to_date
from medal.pipeline.evaluate import evaluate_scores, load_run, predict_logits, scores_from_logits
from medal.runtime.distributed import World
from medal.runtime.errors import MedalError
from medal.runtime.io import file_hash
from medal.runtime.version import __version__

# What of the run's config.json the cache repeats, to say which run taught.
RUN_FACTS = ("student", "t", "alpha", "epochs", "seed", "image_size", "interpolation", "as_rgb", "in_chans", "keep",
             "teachers", "cache_keys")


def cache_run_teacher(cfg: CacheConfig, spec: TeacherSpec, data: Dataset, world: World,
                      device: torch.device) -> CacheResult:
    """Build (or find) the cache of a finished run's logits; every check runs before any write."""
    run = finished_run(Path(spec.name))
    config = run_config(run)
    check_run_data(run, config, data)
    if cfg.image_size not in (None, int(config["image_size"])):
        raise MedalError(f"run teacher {run} sees {config['image_size']} px, as it was trained; drop "
                         f"--image-size {cfg.image_size}.")
    best = run / "best.pt"
    cfg = replace(cfg, teacher=spec.name, image_size=int(config["image_size"]), weights=best, teacher_args="")
    wid = file_hash(best, "sha256")
    root = cache_dir(cfg.cache_dir)
    key = cache_key(data.flag, data.size, spec.label, cfg.image_size, wid)
    existing = up_to_date(root, key, data, cfg.force)
    if existing is not None:
        return CacheResult(existing, created=False)
    licence, licence_source = run_license(config)
    inputs = {**recorded_inputs(cfg, data, wid), "teacher_spec": spec.spec, "teacher_kind": "run", "license": licence,
              "license_source": licence_source, "teacher_run": {k: config.get(k) for k in RUN_FACTS},
              "preprocessing": {"image_size": cfg.image_size, "interpolation": config.get("interpolation", "bilinear"),
                                "in_chans": int(config.get("in_chans", 3)), "mean": list(MEDMNIST_MEAN), "std": list(MEDMNIST_STD)}}
    identity = {**{k: inputs[k] for k in RESUME_KEYS}, "device": device.type, "torch_version": torch.__version__,
                "cache_format": FORMAT}
    with CacheWriter(root, key, world, identity, rebuild_command(inputs, root), force=cfg.force) as writer:
        cache = None
        if world.main:
            logits, _ = run_logits(run, data, device)
            metrics = {}
            for split in SPLITS:
                writer.put(f"{split}/logits", logits[split].float().cpu().numpy())
                writer.put(f"{split}/labels", data.splits[split].labels)
                scores = scores_from_logits(logits[split], data.task).cpu().numpy()
                metrics[split] = evaluate_scores(data.splits[split].labels, scores, data.task)
            cache = writer.commit({**inputs, "head_metrics": metrics, "medal_version": __version__,
                                   "torch_version": torch.__version__,
                                   "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        world.barrier()
    return CacheResult(cache or TeacherCache(writer.final), created=True)


def run_logits(run: Path, data, device: torch.device) -> tuple[dict, dict]:
    """({split: raw fp32 logits}, the run's config): its kept student (best.pt), preprocessed as in training.

    The same functions as `medal evaluate` (`load_run`, `predict_logits`): the softmax of the test
    logits is the run's test_scores.npy.
    """
    loaded = load_run(run, device, data=data)
    logits = {split: predict_logits(loaded.model, image_source(data.splits[split].images, device), loaded.prep, device)
              for split in SPLITS}
    return logits, loaded.config
