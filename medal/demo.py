"""`medal demo`: the three stages end to end, on CPU, in minutes, with no download.

Data: the BloodMNIST subset bundled in medal/data. Teacher: DINOv2 ViT-S/14 from --weights or
the hub; when neither can be had (offline), a randomly initialised ViT-S/14, said loudly, so the
pipeline still runs end to end and shows what a real run writes.
"""

from __future__ import annotations

from pathlib import Path

from medal.cache.store import TeacherCache
from medal.data import BUNDLED_ROOT, DEMO_DATASET
from medal.errors import MedalError
from medal.log import log, warn
from medal.models import save_random_teacher
from medal.pipeline.cache_teacher import CacheConfig, HeadRecipe, run_cache_teacher
from medal.pipeline.distill import DistillConfig, run_distill
from medal.pipeline.evaluate import format_table
from medal.io import read_json

TEACHER = "dinov2_vits14"


def run_demo(out: Path, weights: Path | None, epochs: int, image_size: int, device: str) -> Path:
    out = Path(out)
    cache_dir = out / "cache"
    head = HeadRecipe(epochs=30)

    def stage1(w: Path | None) -> TeacherCache:
        cfg = CacheConfig(dataset=DEMO_DATASET, teacher=TEACHER, weights=w, root=BUNDLED_ROOT, image_size=image_size,
                          batch_size=64, device=device, cache_dir=cache_dir, head=head)
        return run_cache_teacher(cfg).cache

    log(f"[1/3] teacher cache: {TEACHER} at {image_size}px over the bundled {DEMO_DATASET} subset")
    try:
        cache = stage1(weights)
    except MedalError as exc:
        if weights is not None or "could not be downloaded" not in str(exc):
            raise
        warn(f"{exc} The demo goes on with a RANDOMLY INITIALISED {TEACHER}: its numbers show the pipeline, not DINOv2.")
        cache = stage1(save_random_teacher(TEACHER, _mkdir(out) / f"{TEACHER}_random.pth"))
    a = cache.attrs
    log(f"      cached {sum(a['n_samples'].values())} images -> {cache.path}")

    log(f"[2/3] distillation: resnet50 student, t=2, alpha=0.2, {epochs} epochs at {image_size}px")
    cfg = DistillConfig(dataset=DEMO_DATASET, t=2.0, alpha=0.2, epochs=epochs, batch_size=32,
                        milestones=(max(1, epochs // 2), max(1, 3 * epochs // 4)), image_size=image_size,
                        out=out / "run", device=device, cache_dir=cache_dir, force=True, cache_key=cache.key)
    run = run_distill(cfg)

    log("[3/3] evaluation (MedMNIST's official AUC/ACC)")
    teacher_row = {"test": a["head_metrics"]["test"], "val": a["head_metrics"]["val"]}
    print(format_table([(f"teacher {TEACHER} + linear head", teacher_row),
                        ("student resnet50 (t=2, alpha=0.2)", read_json(run / "metrics.json"))]))
    print(f"\nrun directory: {run}  (config.json, history.csv, history.png, best.pt, metrics.json, test_scores.npy)")
    return run


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
