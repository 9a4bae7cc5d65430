"""What stage 1 is asked for and what it records, shared by both ways of caching a teacher:
a backbone with a linear head (cache_teacher) and a finished run's own logits (run_teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medal.cache.store import CHUNK_ROWS, TeacherCache, list_caches
from medal.data.base import SPLITS, Dataset
from medal.pipeline.linear_head import HeadRecipe
from medal.runtime.log import log


@dataclass
class CacheConfig:
    dataset: str
    teacher: str = "dinov2_vitb14"  # a SPEC: DINOv2 name, timm name or identifier, or a finished run directory
    weights: Path | None = None
    teacher_args: str | None = None  # timm creation arguments, KEY=VALUE,...
    root: Path | None = None
    data_dir: Path | None = None  # where imported datasets live
    size: int | None = None  # which MedMNIST file (default 28); an imported dataset has its own size
    image_size: int | None = None  # None: 224 for DINOv2, a timm model's pretrained config, a run's own
    batch_size: int = 512
    device: str = "auto"
    cache_dir: Path | None = None
    force: bool = False
    chunk_rows: int = CHUNK_ROWS
    head: HeadRecipe = field(default_factory=HeadRecipe)
    max_memory: str | None = None  # memory for image data ("8G"); splits beyond it stream (medal.data.stream)


# What a feature chunk depends on: an interrupted build is resumed only when none of these changed.
RESUME_KEYS = ("dataset", "size", "data_fingerprint", "teacher", "weights_sha256", "image_size", "chunk_rows", "batch_size")


@dataclass
class CacheResult:
    cache: TeacherCache
    created: bool  # False when an up-to-date cache already existed


def up_to_date(root: Path, key: str, data: Dataset, force: bool) -> TeacherCache | None:
    """The finished cache of this key when it was computed from this very data (and no --force)."""
    existing = [c for c in list_caches(root) if c.key == key]
    if existing and not force:
        if existing[0].attrs.get("data_fingerprint") == data.fingerprint:
            return existing[0]
        log(f"cache {key} was computed from other data than {data.path}; recomputing it")
    return None


def recorded_inputs(cfg: CacheConfig, data: Dataset, wid: str) -> dict:
    """What a cache is computed from: enough to refuse stale data, to cite the teacher and to rebuild it."""
    return {
        "dataset": data.flag,
        "task": data.task,
        "num_outputs": data.num_outputs,
        "size": data.size,
        "data_root": str(data.path.parent.resolve()),
        "data_path": str(data.path.resolve()),
        "data_file": data.path.name,
        "data_md5": data.md5,
        "data_official": data.official,
        "data_fingerprint": data.fingerprint,
        "n_samples": {s: int(len(data.splits[s].labels)) for s in SPLITS},
        "teacher": cfg.teacher,
        "teacher_args": cfg.teacher_args or "",
        "weights": str(Path(cfg.weights).resolve()) if cfg.weights else "timm hub",
        "weights_sha256": wid,
        "image_size": cfg.image_size,
        "chunk_rows": cfg.chunk_rows,
        "batch_size": cfg.batch_size,
    }
