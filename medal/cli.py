"""`medal` command line: the three stages, the cache, and a demo that runs offline.

Every user-fixable problem is a MedalError: printed as one sentence on stderr, exit code 1,
no traceback. Human-readable tables go to stdout, or JSON alone with --json.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from medal.runtime.errors import MedalError
from medal.runtime.interrupt import Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil a frozen DINOv2 teacher into a ResNet50 on MedMNIST, paying for the teacher once.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect the teacher caches.")
app.add_typer(cache_app, name="cache")

CacheDirOpt = typer.Option(None, "--cache-dir", envvar="MEDAL_CACHE_DIR", help="Where teacher caches live (default ~/.cache/medal).")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, or cuda[:N].")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout instead of a table.")
AsRgbOpt = typer.Option(True, "--as-rgb/--no-as-rgb", help="Repeat grayscale to 3 channels (the paper, and MedMNIST v2's published runs), or train on 1 channel (MedMNIST's script without --as_rgb).")
InterpolationOpt = typer.Option("bilinear", "--interpolation", help="How images are upsampled to --image-size: bilinear, or nearest (pixel replication, what MedMNIST's (224) models were trained on).")
KeepOpt = typer.Option("best", "--keep", help="Weights kept and evaluated: best (best val AUC: the paper, and MedMNIST v2's published numbers) or last (the last epoch: what MedMNIST's script evaluated before its 2023 fix).")
MaxMemoryOpt = typer.Option(None, "--max-memory", help="Memory for image data, e.g. 8G or 500M (default: half the free RAM, and of the free GPU memory on CUDA); a split that does not fit is streamed from a store converted once into the cache dir.")
DataDirOpt = typer.Option(None, "--data-dir", envvar="MEDAL_DATA_DIR", help="Where imported datasets live (default ~/.cache/medal/datasets).")
TEACHER_SPEC_HELP = ("A DINOv2 name: dinov2_vits14 | dinov2_vitb14 (the paper's) | dinov2_vitl14 | dinov2_vitg14; any timm image "
                     "model: a name (resnet18, convnext_small, vit_large_patch16_224) or hf-hub:ORG/NAME, local-dir:DIR, its "
                     "pooled features cached and a linear head trained on them; or a finished medal run directory, whose "
                     "student's logits are cached directly.")
TeacherWeightingOpt = typer.Option("ca-mkd", "--teacher-weighting", help="Several teachers: ca-mkd (each sample weighs each teacher by its confidence on the label) or mean (the mean of the teachers' probabilities at temperature t).")
DeterministicOpt = typer.Option(False, "--deterministic", help="Repeatable on CUDA too: deterministic algorithms only, no cuDNN autotuning (slower; CPU runs are repeatable without it).")


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MedalError(f"--milestones must be comma-separated epochs such as 50,75, got {text!r}.") from None


@app.command("cache-teacher")
def cache_teacher(
    dataset: str = typer.Option(..., "--dataset", help="A MedMNIST 2D flag (bloodmnist, chestmnist, ...), or an imported dataset's name or .zarr path."),
    teacher: str = typer.Option("dinov2_vitb14", "--teacher", help=TEACHER_SPEC_HELP),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local checkpoint: DINOv2's official torch.hub .pth, or a timm/HF .safetensors or torch checkpoint (tensors only: a pickle's code never runs). Default: download via timm. Not for a run teacher (its best.pt)."),
    teacher_args: Optional[str] = typer.Option(None, "--teacher-args", help="timm teachers: creation arguments the model's config does not carry, KEY=VALUE,... (e.g. init_values=1e-5)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Directory holding the MedMNIST .npz files (default: medmnist's ~/.medmnist)."),
    size: Optional[int] = typer.Option(None, "--size", help="Which MedMNIST file: 28 (default), 64, 128 or 224 pixels; an imported dataset has its own."),
    data_dir: Optional[Path] = DataDirOpt,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Pixels the teacher sees. Default: 224 for DINOv2 (a multiple of 14), a timm model's pretrained config, a run teacher's own (not changeable)."),
    batch_size: int = typer.Option(512, "--batch-size", help="Teacher forward batch size; halved automatically on CUDA out-of-memory."),
    head_epochs: int = typer.Option(100, "--head-epochs", help="Epochs of linear-head training on the cached features."),
    chunk_rows: int = typer.Option(4096, "--chunk-rows", help="Samples per Zarr chunk (and per rank's unit of work under torchrun)."),
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    force: bool = typer.Option(False, "--force", help="Recompute even if an up-to-date cache exists."),
    max_memory: Optional[str] = MaxMemoryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stage 1: run the frozen teacher once over train/val/test and cache its features and raw logits."""
    from medal.pipeline.cache_teacher import CacheConfig, HeadRecipe, run_cache_teacher

    head = HeadRecipe(epochs=head_epochs)
    result = run_cache_teacher(CacheConfig(dataset=dataset, teacher=teacher, weights=weights, teacher_args=teacher_args,
                                           root=root, data_dir=data_dir, size=size,
                                           image_size=image_size, batch_size=batch_size, device=device,
                                           cache_dir=cache_dir, force=force, chunk_rows=chunk_rows,
                                           head=head, max_memory=max_memory))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    attrs = result.cache.attrs
    if as_json:
        print(json.dumps({"key": result.cache.key, "path": str(result.cache.path), "created": result.created, **attrs}, indent=2))
        return
    verb = "cached" if result.created else "already cached (use --force to recompute)"
    print(f"{attrs['dataset']} {verb}: {result.cache.path}")
    print(_head_table(attrs))


def _head_table(attrs: dict) -> str:
    m = attrs["head_metrics"]
    what = "(a finished run)" if attrs.get("teacher_kind") == "run" else "+ linear head"
    return (f"teacher {attrs['teacher']} {what}: test AUC {m['test']['auc']:.4f} ACC {m['test']['acc']:.4f}"
            f" | val AUC {m['val']['auc']:.4f} ACC {m['val']['acc']:.4f}")


@app.command()
def distill(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="MedMNIST flag, or imported dataset name or path; may be omitted when exactly one dataset is cached."),
    root: Optional[Path] = typer.Option(None, "--root", help="MedMNIST directory (default: where the cached data came from)."),
    data_dir: Optional[Path] = DataDirOpt,
    size: Optional[int] = typer.Option(None, "--size", help="Which MedMNIST file (28, 64, 128, 224); default: the cache's, else 28."),
    t: float = typer.Option(2.0, "--t", help="Distillation temperature, > 0 (paper's best: 2)."),
    alpha: float = typer.Option(0.2, "--alpha", help="Weight of CE; 1 - alpha weighs the KL term. --alpha 1 is the plain CE baseline (no cache needed)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Which cached teacher (a SPEC as for cache-teacher: DINOv2 or timm name, or a run directory), when several are cached for the dataset."),
    teachers: Optional[str] = typer.Option(None, "--teachers", help="Several cached teachers (SPECs), comma-separated: ensemble distillation, weighted by --teacher-weighting."),
    teacher_weighting: str = TeacherWeightingOpt,
    cache_key: Optional[str] = typer.Option(None, "--cache-key", help="Exactly which cache to use (see `medal cache ls`)."),
    student: str = typer.Option("resnet50", "--student", help="timm model name of the student (resnet50, seresnet50, skresnet34, ...)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start the student from ImageNet weights (off in the paper)."),
    epochs: int = typer.Option(100, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    milestones: str = typer.Option("50,75", "--milestones", help="Epochs at which the lr is multiplied by 0.1."),
    patience: int = typer.Option(0, "--patience", help="Stop after this many epochs without a better val AUC (0: never; the best epoch is kept either way)."),
    seed: int = typer.Option(0, "--seed", help="Fixes everything random: initial weights, data order."),
    deterministic: bool = DeterministicOpt,
    image_size: int = typer.Option(224, "--image-size", help="Pixels the student sees."),
    as_rgb: bool = AsRgbOpt,
    keep: str = KeepOpt,
    interpolation: str = InterpolationOpt,
    compile: bool = typer.Option(False, "--compile", help="torch.compile the student (pays off on long GPU runs)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<dataset>_<student>_<method>_s<seed>)."),
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory; start an interrupted run over instead of resuming it."),
    max_memory: Optional[str] = MaxMemoryOpt,
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Write TensorBoard scalars (train/loss, val/auc, val/acc, lr, throughput/img_per_s) into DIR. MEDAL_TENSORBOARD=1 without --log-dir writes them to <runs dir or --out's parent>/tensorboard/<run name>."),
    as_json: bool = JsonOpt,
) -> None:
    """Stage 2 (+3): train the student against the cached teacher logits, then evaluate it on test."""
    from medal.pipeline.distill import DistillConfig, run_distill
    from medal.pipeline.evaluate import format_table

    names = tuple(n.strip() for n in teachers.split(",") if n.strip()) if teachers else ()
    cfg = DistillConfig(dataset=dataset, root=root, data_dir=data_dir, size=size, t=t, alpha=alpha, teacher=teacher, teachers=names,
                        teacher_weighting=teacher_weighting,
                        cache_key=cache_key, compile=compile, student=student,
                        pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
                        milestones=_milestones(milestones), patience=patience, seed=seed, deterministic=deterministic,
                        image_size=image_size,
                        as_rgb=as_rgb, keep=keep, interpolation=interpolation, out=out, device=device,
                        cache_dir=cache_dir, force=force, max_memory=max_memory, log_dir=log_dir)
    run = run_distill(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_metrics(run, as_json, format_table)


def _print_metrics(run: Path, as_json: bool, format_table) -> None:
    from medal.runtime.io import read_json

    metrics = read_json(run / "metrics.json")
    if as_json:
        print(json.dumps({"run": str(run), **metrics}, indent=2))
    else:
        print(format_table([(str(run), metrics)]))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A finished run directory (from `medal distill`)."),
    root: Optional[Path] = typer.Option(None, "--root", help="MedMNIST directory, if the data moved since training."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="MEDAL_DATA_DIR", help="Where the imported dataset lies, if it moved since training."),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
    max_memory: Optional[str] = MaxMemoryOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
) -> None:
    """Stage 3: recompute a run's test/val AUC and ACC with medmnist's official metrics."""
    from medal.pipeline.evaluate import evaluate_run, format_table
    from medal.records.model_card import write_model_card

    evaluate_run(run, device=device, root=root, data_dir=data_dir, max_memory=max_memory, caches=cache_dir)
    write_model_card(run)
    _print_metrics(run, as_json, format_table)


@app.command("import-dataset")
def import_dataset(
    source: Path = typer.Argument(..., help="An ImageFolder (train/, val/, test/ of class folders, or class folders alone) or a CSV of path,label[,split]."),
    name: str = typer.Option(..., "--name", help="What --dataset will call it (not a MedMNIST flag)."),
    size: int = typer.Option(..., "--size", help="Images are resized to SIZE x SIZE pixels (bicubic)."),
    split_fractions: Optional[str] = typer.Option(None, "--split-fractions", help="train,val,test fractions for a source without splits (default 0.7,0.1,0.2), stratified by class."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --split-fractions draw."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 or 3 (default: 3 if any image is in colour, else 1)."),
    task: Optional[str] = typer.Option(None, "--task", help="multi-class | binary-class | multi-label | ordinal (default: inferred from the labels)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) images that cannot be read, instead of stopping."),
    data_dir: Optional[Path] = DataDirOpt,
    force: bool = typer.Option(False, "--force", help="Replace a dataset of the same name."),
    drop_duplicates: bool = typer.Option(False, "--drop-duplicates", help="Leave out the val and test images whose decoded pixels repeat a training image's (they stay counted in the dataset's duplicates); a test image repeating a val image, and repeats within a split, are kept. Repeats are always counted and warned about."),
    as_json: bool = JsonOpt,
) -> None:
    """Turn your own labelled images into a medal dataset that every --dataset takes."""
    from medal.data.imported.importer import ImportConfig, summary
    from medal.data.imported.importer import as_json as result_json
    from medal.data.imported.importer import import_dataset as run_import
    from medal.data.imported.sources import parse_fractions

    fractions = parse_fractions(split_fractions) if split_fractions else None
    result = run_import(ImportConfig(source=source, name=name, size=size, split_fractions=fractions, seed=seed,
                                     channels=channels, task=task, skip_bad=skip_bad, data_dir=data_dir, force=force,
                                     drop_duplicates=drop_duplicates))
    print(json.dumps(result_json(result), indent=2) if as_json else summary(result))


@cache_app.command("ls")
def cache_ls(cache_dir: Optional[Path] = CacheDirOpt, as_json: bool = JsonOpt) -> None:
    """List the teacher caches, with what they were computed from."""
    from medal.cache.catalog import cache_dir as resolve
    from medal.cache.catalog import list_entries

    caches = list_entries(resolve(cache_dir))
    if as_json:
        print(json.dumps([{"key": c.key, "path": str(c.path), **c.attrs} for c in caches], indent=2))
        return
    if not caches:
        print(f"no teacher caches in {resolve(cache_dir)}")
        return
    print("| key | dataset | teacher | image size | samples | head test AUC | created |\n|---|---|---|---|---|---|---|")
    for c in caches:
        a = c.attrs
        n = sum(a["n_samples"].values())
        print(f"| {c.key} | {a['dataset']} | {a['teacher']} | {a['image_size']} | {n} | {a['head_metrics']['test']['auc']:.4f} | {a['created']} |")


@cache_app.command("info")
def cache_info(key: str = typer.Argument(..., help="A cache key (or unique prefix) from `medal cache ls`."),
               cache_dir: Optional[Path] = CacheDirOpt) -> None:
    """Print one cache's provenance as JSON."""
    from medal.cache.catalog import cache_dir as resolve
    from medal.cache.catalog import find_entry

    cache = find_entry(resolve(cache_dir), key)
    print(json.dumps({"key": cache.key, "path": str(cache.path), **cache.attrs}, indent=2))


@cache_app.command("verify")
def cache_verify(key: Optional[str] = typer.Argument(None, help="A cache key or unique prefix; default: every cache."),
                 cache_dir: Optional[Path] = CacheDirOpt, as_json: bool = JsonOpt) -> None:
    """Read every chunk of one or all caches and check its crc32c; exit 1 if any is damaged."""
    from medal.cache.store import cache_dir as resolve
    from medal.cache.verify import damage_summary, format_checks, verify_caches

    checks = verify_caches(resolve(cache_dir), key)
    if as_json:
        print(json.dumps([c.as_json() for c in checks], indent=2))
    else:
        print(format_checks(checks) if checks else f"no teacher caches in {resolve(cache_dir)}")
    problem = damage_summary(checks)
    if problem:
        raise MedalError(problem)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Where the demo writes its cache and run."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="DINOv2 ViT-S/14 checkpoint; without it the demo tries a download, then falls back to a random teacher."),
    epochs: int = typer.Option(6, "--epochs", help="Epochs of each student."),
    image_size: int = typer.Option(28, "--image-size", help="Pixels both networks see (multiple of 14; the bundled images are 28)."),
    device: str = DeviceOpt,
) -> None:
    """The pipeline on the bundled BloodMNIST subset in minutes on a CPU: ViT-S/14 teacher, then a resnet10n_28 student trained twice, on labels alone (CE baseline) and distilled (t=2, alpha=0.2), compared."""
    from medal.demo import run_demo

    run_demo(out=out, weights=weights, epochs=epochs, image_size=image_size, device=device)


@app.command()
def sweep(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="MedMNIST flag, or imported dataset name or path; may be omitted when exactly one dataset is cached."),
    t: str = typer.Option("2", "--t", help="Temperatures: a list (1,2,5), a range (1:9, step 1) or START:END:STEP."),
    alpha: str = typer.Option("0.2", "--alpha", help="CE weights in [0, 1], same syntax (0.1:0.9:0.1); 1 is the CE baseline."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds, same syntax (0,1,2 or 0:2)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Which cached teacher (a SPEC: DINOv2 or timm name, or a run directory), when several are cached for the dataset."),
    teachers: Optional[str] = typer.Option(None, "--teachers", help="Several cached teachers (SPECs), comma-separated: ensemble distillation at every point."),
    teacher_weighting: str = TeacherWeightingOpt,
    student: str = typer.Option("resnet50", "--student", help="timm model name of the student."),
    epochs: int = typer.Option(100, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    milestones: str = typer.Option("50,75", "--milestones", help="Epochs at which the lr is multiplied by 0.1."),
    patience: int = typer.Option(0, "--patience", help="Early-stopping patience in epochs (0: never)."),
    image_size: int = typer.Option(224, "--image-size", help="Pixels the student sees."),
    as_rgb: bool = AsRgbOpt,
    keep: str = KeepOpt,
    interpolation: str = InterpolationOpt,
    deterministic: bool = DeterministicOpt,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run directories go, one per point."),
    jobs: int = typer.Option(1, "--jobs", help="Points trained at once, in as many worker processes (for one GPU with spare memory)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Run points in parallel, one worker process per GPU: 0,1,2,3 or 'all' (visible GPUs)."),
    claim_timeout: float = typer.Option(600.0, "--claim-timeout", help="Seconds without a heartbeat after which a claim from another host is taken over (one from this host: as soon as its process is gone). Same value in every process of a grid."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="TensorBoard logs, one folder per point: DIR/<run name>."),
    size: Optional[int] = typer.Option(None, "--size", help="Which MedMNIST file (28, 64, 128, 224); default: the cache's, else 28."),
    root: Optional[Path] = typer.Option(None, "--root", help="MedMNIST directory (default: where the cached data came from)."),
    data_dir: Optional[Path] = DataDirOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    max_memory: Optional[str] = MaxMemoryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Distil at every (t, alpha, seed) of a grid against one cache; finished points are skipped.

    Start the same command several times (GPUs, machines sharing --runs-dir) to share the grid."""
    from medal.pipeline.distill import DistillConfig
    from medal.pipeline.evaluate import format_table
    from medal.study.sweep import SweepConfig, parse_values, run_sweep

    grid = SweepConfig(ts=parse_values(t, "--t"), alphas=parse_values(alpha, "--alpha"),
                       seeds=parse_values(seeds, "--seeds", integer=True), jobs=jobs, gpus=_gpus(gpus),
                       claim_timeout=claim_timeout, log_dir=log_dir,
                       base=DistillConfig(dataset=dataset, root=root, data_dir=data_dir, size=size, teacher=teacher, student=student,
                                          epochs=epochs,
                                          teachers=tuple(n.strip() for n in (teachers or "").split(",") if n.strip()),
                                          teacher_weighting=teacher_weighting,
                                          batch_size=batch_size, lr=lr, milestones=_milestones(milestones),
                                          patience=patience, image_size=image_size, as_rgb=as_rgb, keep=keep,
                                          interpolation=interpolation,
                                          deterministic=deterministic,
                                          runs_dir=runs_dir, device=device,
                                          cache_dir=cache_dir, max_memory=max_memory))
    results = run_sweep(grid)
    if as_json:
        print(json.dumps([{"run": str(run), "test": m["test"], "val": m["val"]} for run, m in results], indent=2))
    else:
        print(format_table([(str(run), m) for run, m in results]))


@app.command()
def report(
    runs: Path = typer.Option(Path("runs"), "--runs", help="Directory holding finished run directories (searched recursively)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the tables and figures go (default RUNS/report)."),
    cache_dir: Optional[Path] = CacheDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The paper's Table 2 and Table 4 / Figure 4, and MedMNIST v2's official benchmark, beside our finished runs."""
    from medal.study.report import run_report

    result = run_report(runs, out, cache_dir)
    if as_json:
        print(json.dumps({"out": str(result.out), "table2": result.table2, "table4": result.table4,
                          "figure4": result.figure4, "medmnist": result.medmnist,
                          "plots": [str(p) for p in result.plots]}, indent=2))
    else:
        print(result.markdown())
        print(f"\nwritten to {result.out}")


@app.command()
def tsne(
    run: Path = typer.Argument(..., help="A finished run directory."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    max_points: int = typer.Option(2000, "--max-points", help="At most this many samples (a fixed random subset)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A CE-baseline run of the same data, shown beside."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG path (default RUN/tsne_SPLIT.png); the 2-D points go beside as .npz."),
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Figure 5: t-SNE of the student's penultimate features beside the teacher's cached CLS features."""
    from medal.study.figures import run_tsne

    print(run_tsne(run, split=split, max_points=max_points, out=out, baseline=baseline, caches=cache_dir, device=device,
                   max_memory=max_memory))


@app.command()
def cam(
    run: Path = typer.Argument(..., help="A finished run directory."),
    n: int = typer.Option(8, "--n", help="How many test images (the first n)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG path (default RUN/gradcam.png)."),
    device: str = DeviceOpt,
    max_memory: Optional[str] = MaxMemoryOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
) -> None:
    """Figure 6: Grad-CAM heatmaps of the student's last stage on test images, with predicted and true labels."""
    from medal.study.figures import run_cam

    print(run_cam(run, n=n, out=out, device=device, max_memory=max_memory, caches=cache_dir))


@app.command("predict")
def predict_cmd(
    run: Path = typer.Argument(..., help="A finished run directory (from `medal distill`)."),
    inputs: list[Path] = typer.Argument(..., help="PNG/JPEG files, folders of them (their image files by name, not subfolders), MedMNIST-format .npz files, or medal dataset stores (.zarr, streamed)."),
    split: str = typer.Option("test", "--split", help="Which split of an .npz or .zarr input: train, val or test."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the CSV (or JSON) here instead of stdout."),
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="A JSON list of records instead of CSV."),
    max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Class probabilities of a run's student for new images: CSV with input, one column per class, predicted.

    Images are first brought to the dataset's native size (Pillow bicubic, antialiased; no crop) and channels
    (colour to grayscale, or grayscale to RGB, with a notice), then preprocessed exactly as in training.
    """
    from medal.deploy.predict import run_predict
    from medal.runtime.io import atomic
    from medal.runtime.log import log

    result = run_predict(run, inputs, split=split, device=device, max_memory=max_memory)
    text = result.to_json() if as_json else result.to_csv()
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic(out, lambda tmp: tmp.write_text(text))
        log(f"{len(result.names)} predictions written to {out}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A finished run directory (from `medal distill`)."),
    fmt: str = typer.Option(..., "--format", help="onnx | torchscript (uint8 pixels in, probabilities out) | safetensors (timm weights + config.json)."),
    out: Path = typer.Option(..., "--out", help="The .onnx / .pt file to write, or the directory for safetensors."),
    root: Optional[Path] = typer.Option(None, "--root", help="MedMNIST directory, if the data moved since training (the export is checked on its test images)."),
) -> None:
    """The student for other runtimes, with its preprocessing and label names, checked against PyTorch."""
    from medal.deploy.export import run_export

    result = run_export(run, fmt, out, root=root)
    print(result.check)
    for path in result.files:
        print(f"wrote {path}")


@app.command("sweep-worker", hidden=True)
def sweep_worker() -> None:
    """Started by `medal sweep --jobs N`: trains the points sent on stdin, each as `medal distill` would."""
    from medal.study.sweep_worker import serve

    raise typer.Exit(serve(run_in_process))


def run_in_process(args: list[str]) -> int:
    """`medal ARGS` in this process, as a process of its own would run it; returns its exit code."""
    import traceback

    argv, sys.argv = sys.argv, ["medal", *args]
    try:
        main()
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 (what Python prints for an uncaught exception, and its exit status)
        traceback.print_exc()
        return 1
    finally:
        sys.argv = argv


def _gpus(text: str | None) -> tuple[str, ...]:
    """--gpus 0,1,3 or all -> the CUDA device indices to give one sweep process each."""
    if not text:
        return ()
    import torch

    visible = [str(i) for i in range(torch.cuda.device_count())]
    chosen = visible if text.strip() == "all" else [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in chosen if g not in visible]
    if not chosen or unknown:
        raise MedalError(f"--gpus must name visible CUDA devices ({', '.join(visible) or 'none here'}), got {text!r}.")
    return tuple(chosen)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and a non-zero exit."""
    try:
        app()
    except MedalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as exc:  # a distill run stopped by Ctrl-C or SIGTERM, its progress kept
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept.", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            print(f"error: the disk is full ({exc.filename or 'while writing'}); nothing half-written was kept.", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
