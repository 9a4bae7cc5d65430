"""`medal demo`: the whole pipeline on CPU, in minutes, with no download, and a comparison to read.

Data: the BloodMNIST subset bundled in medal/assets/demo (320 train / 96 val / 200 test, 8 classes).
Teacher: DINOv2 ViT-S/14 from --weights or the hub; when neither can be had (offline), a randomly
initialised ViT-S/14, said loudly, so the pipeline still runs end to end. Student: resnet10n_28, a
narrow CIFAR-style ResNet-10 at the images' native 28 px, the smallest student that still learns
this subset in a few epochs (val AUC above 0.9) on a 2-core CPU. The CE baseline is trained
exactly as the distilled student (same student, seed, epochs, batches) with alpha=1, so the table
compares like with like.

Each stage is a function of its own, run in order by `run_demo`. The last one uses the distilled
student as a user would: `medal predict` on a few bundled test images saved as PNG files, and
`medal export` to ONNX (TorchScript where onnxruntime is not installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medal.cache.store import TeacherCache
from medal.data.medmnist import BUNDLED_ROOT, DEMO_DATASET
from medal.models.teachers import save_random_teacher
from medal.pipeline.cache_teacher import CacheConfig, HeadRecipe, run_cache_teacher
from medal.pipeline.distill import DistillConfig, run_distill
from medal.pipeline.evaluate import format_table
from medal.runtime.errors import MedalError
from medal.runtime.io import read_json
from medal.runtime.log import log, warn

TEACHER = "dinov2_vits14"
STUDENT = "resnet10n_28"
T, ALPHA = 2.0, 0.2  # the paper's best setting
EPOCHS, IMAGE_SIZE, BATCH_SIZE = 6, 28, 32
STAGES = ("teacher cache", "CE baseline", "distilled student", "comparison", "the student in use")
N_PREDICT = 4


@dataclass
class DemoResult:
    cache: TeacherCache
    random_teacher: bool  # offline: the teacher is a randomly initialised ViT, not DINOv2
    baseline: Path  # finished run directories
    distilled: Path


def stage(number: int, text: str) -> None:
    log(f"[{number}/{len(STAGES)}] {STAGES[number - 1]}: {text}")


def run_demo(out: Path, weights: Path | None, epochs: int = EPOCHS, image_size: int = IMAGE_SIZE,
             device: str = "auto") -> DemoResult:
    out = Path(out)
    stage(1, f"{TEACHER} at {image_size}px over the bundled {DEMO_DATASET} subset, then its linear head")
    cache, random_teacher = teacher_cache(out, weights, image_size, device)
    stage(2, f"{STUDENT} trained on the labels alone (alpha=1), {epochs} epochs at {image_size}px")
    baseline = train(out / "ce_baseline", cache, 1.0, epochs, image_size, device)
    stage(3, f"{STUDENT} trained on the teacher's logits (t={T:g}, alpha={ALPHA:g}), the same way")
    distilled = train(out / "distilled", cache, ALPHA, epochs, image_size, device)
    result = DemoResult(cache, random_teacher, baseline, distilled)
    stage(4, "MedMNIST's official AUC/ACC")
    print(comparison(result))
    stage(5, f"predict {N_PREDICT} bundled test images saved as PNG, then export the distilled student")
    print(use_student(result.distilled, out))
    return result


def teacher_cache(out: Path, weights: Path | None, image_size: int, device: str) -> tuple[TeacherCache, bool]:
    """Stage 1, with the random-teacher fallback when DINOv2 cannot be downloaded."""
    def build(w: Path | None) -> TeacherCache:
        cfg = CacheConfig(dataset=DEMO_DATASET, teacher=TEACHER, weights=w, root=BUNDLED_ROOT, image_size=image_size,
                          batch_size=64, device=device, cache_dir=out / "cache", head=HeadRecipe(epochs=30))
        return run_cache_teacher(cfg).cache

    try:
        cache, random_teacher = build(weights), False
    except MedalError as exc:
        if weights is not None or "could not be downloaded" not in str(exc):
            raise
        warn(f"{exc} The demo goes on with a RANDOMLY INITIALISED {TEACHER}: its numbers show the pipeline, not DINOv2.")
        out.mkdir(parents=True, exist_ok=True)
        cache, random_teacher = build(save_random_teacher(TEACHER, out / f"{TEACHER}_random.pth")), True
    log(f"      cached {sum(cache.attrs['n_samples'].values())} images -> {cache.path}")
    return cache, random_teacher


def train(run: Path, cache: TeacherCache, alpha: float, epochs: int, image_size: int, device: str) -> Path:
    """Stages 2 and 3: one student run; only alpha differs between the two."""
    cfg = DistillConfig(dataset=DEMO_DATASET, root=BUNDLED_ROOT, t=T, alpha=alpha, student=STUDENT, epochs=epochs, batch_size=BATCH_SIZE,
                        milestones=(max(1, epochs - 1),), image_size=image_size, out=run, device=device,
                        cache_dir=cache.path.parent, force=True, cache_key=cache.key if alpha < 1 else None)
    return run_distill(cfg)


def comparison(result: DemoResult) -> str:
    """The table, what it does and does not show, and where everything was written."""
    a = result.cache.attrs
    teacher = "random " + TEACHER if result.random_teacher else TEACHER
    table = format_table([
        (f"teacher {teacher} + linear head", {"test": a["head_metrics"]["test"], "val": a["head_metrics"]["val"]}),
        (f"CE baseline {STUDENT} (alpha=1)", read_json(result.baseline / "metrics.json")),
        (f"distilled {STUDENT} (t={T:g}, alpha={ALPHA:g})", read_json(result.distilled / "metrics.json")),
    ])
    if result.random_teacher:
        meaning = (f"The teacher is a randomly initialised ViT-S/14 (no weights could be had offline): its logits are a "
                   f"linear head on random-ViT features, so the distilled student's gain or loss against the CE "
                   f"baseline says nothing about DINOv2. What the table does show: both students learn this subset, "
                   f"trained the same way, and distillation runs end to end from cached logits. For the real "
                   f"comparison pass --weights dinov2_vits14_pretrain.pth.")
    else:
        meaning = (f"Both students share student, seed, epochs and batches; only alpha differs. One seed on "
                   f"{a['n_samples']['test']} test images: a difference of a few points is within seed-to-seed noise. "
                   f"The paper's comparison needs the full dataset and several seeds (`medal sweep --seeds 0:2`).")
    return (f"{table}\n\n{meaning}\n\nrun directories: {result.baseline}, {result.distilled}  "
            f"(config.json, history.csv, history.png, best.pt, metrics.json, test_scores.npy, MODEL_CARD.md)")


def use_student(run: Path, out: Path) -> str:
    """Stage 5: what `medal predict RUN IMAGES` and `medal export RUN` give for the distilled student."""
    import importlib.util

    import numpy as np
    from PIL import Image

    from medal.deploy.export import run_export
    from medal.deploy.predict import run_predict

    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(BUNDLED_ROOT / f"{DEMO_DATASET}.npz") as npz:
        images, labels = npz["test_images"][:N_PREDICT], npz["test_labels"][:N_PREDICT, 0]
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"test_{i}.png")
        Image.fromarray(image).save(paths[-1])
    predictions = run_predict(run, paths)
    names = predictions.label_names
    lines = ["| image | true label | predicted | probability |", "|---|---|---|---|"]
    for path, label, row, guess in zip(paths, labels, predictions.scores, predictions.predicted()):
        lines.append(f"| {path.name} | {names[int(label)]} | {guess} | {row.max():.3f} |")
    fmt = "onnx" if importlib.util.find_spec("onnxruntime") else "torchscript"
    exported = run_export(run, fmt, out / f"student.{fmt}")
    return "\n".join([*lines, "", f"medal predict {run} {folder}/*.png  (the same, from the command line)",
                      f"exported to {', '.join(map(str, exported.files))}", exported.check])
