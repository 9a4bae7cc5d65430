"""Stage 3: MedMNIST's official test/val AUC and ACC of a trained student.

Run at the end of every `distill`, and again on any finished run with `medal evaluate RUN`.
The scores the metrics come from are saved as test_scores.npy (test-split order), so anyone
can recompute them with medmnist's `getAUC`/`getACC`. The metrics are always computed on
probabilities, never on raw logits (`scores_from_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from torch import nn

from medal.cache.store import cache_dir
from medal.data.base import MULTI_LABEL, Dataset
from medal.data.preprocess import MEDMNIST_MEAN, MEDMNIST_STD, Preprocess
from medal.data.resolve import resolve_dataset
from medal.data.stream.budget import memory_budget
from medal.data.stream.source import ResidentImages, StreamedImages, image_source
from medal.models.students import build_student
from medal.runtime.device import autocast, resolve_device
from medal.runtime.errors import MedalError
from medal.runtime.io import read_json, read_torch, write_json, write_npy


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax per sample, or a sigmoid per label for multi-label data, as medmnist's Evaluator expects."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=1)


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    """{"auc", "acc"} for (N, L) labels and (N, C) probabilities, by medmnist's own functions."""
    return {"auc": float(getAUC(labels, scores, task)), "acc": float(getACC(labels, scores, task))}


def predict_logits(model: nn.Module, images: torch.Tensor | ResidentImages | StreamedImages, prep: Preprocess,
                   device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Raw fp32 logits for uint8 images on the device, or streamed (a run teacher's cache holds these)."""
    source = ResidentImages(images) if isinstance(images, torch.Tensor) else images
    order = [slice(i, i + batch_size) for i in range(0, len(source), batch_size)]
    model.eval()
    with torch.inference_mode(), autocast(device):
        return torch.cat([model(prep(batch)).float() for batch in source.batches(order)])


def predict(model: nn.Module, images: torch.Tensor | ResidentImages | StreamedImages, prep: Preprocess, task: str,
            device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Probabilities (softmax, or sigmoid for multi-label) for uint8 images on the device, or streamed."""
    return scores_from_logits(predict_logits(model, images, prep, device, batch_size), task).cpu().numpy()


def student_channels(model: nn.Module) -> int:
    """Input channels the student was built for (3, or 1 for grayscale kept as it is)."""
    return int(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels)


def evaluate_model(model: nn.Module, data: Dataset, image_size: int, device: torch.device, run: Path | None,
                   config: dict, extra: dict | None = None) -> dict:
    """Test and val metrics; with a `run`, also written there as metrics.json and test_scores.npy."""
    prep = Preprocess(image_size, MEDMNIST_MEAN, MEDMNIST_STD, device, channels=student_channels(model),
                      interpolation=config.get("interpolation", "bilinear"))
    metrics: dict = {}
    for split in ("test", "val"):
        scores = predict(model, image_source(data.splits[split].images, device), prep, data.task, device)
        metrics[split] = evaluate_scores(data.splits[split].labels, scores, data.task)
        if split == "test" and run is not None:
            write_npy(run / "test_scores.npy", scores)
    if run is not None:
        previous = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
        kept = {k: previous[k] for k in ("kept", "kept_epoch", "last_epoch") if k in previous}
        write_json(run / "metrics.json", {**metrics, **kept, **(extra or {}), "config": config})
    return metrics


@dataclass
class LoadedRun:
    path: Path
    config: dict
    data: Dataset
    model: nn.Module
    prep: Preprocess


def load_run(run: Path, device: torch.device, root: Path | None = None, data: Dataset | None = None,
             data_dir: Path | None = None, max_memory: str | None = None, caches: Path | None = None) -> LoadedRun:
    """A finished run's student (eval mode, on `device`) and the data it was trained on.

    The data is loaded under the same `--max-memory` budget as `distill`'s: splits that do not fit
    are read from a store batch by batch (a MedMNIST .npz is converted once, under `caches`/streams).
    """
    run = Path(run)
    for name in ("config.json", "best.pt"):
        if not (run / name).is_file():
            raise MedalError(f"{run} is not a finished medal run (no {name}).")
    config = read_json(run / "config.json")
    if data is None:
        recorded = Path(config["data_root"])  # the MedMNIST directory, or the data dir holding <name>.zarr
        budget = memory_budget(max_memory, device, cache_dir(caches) / "streams")
        data = resolve_dataset(config["dataset"], root or recorded, config["size"], data_dir or recorded, budget=budget)
    if data.fingerprint != config["data_fingerprint"]:
        raise MedalError(f"the data in {data.path} is not the data {run} was trained on (fingerprint differs).")
    model = build_student(config["student"], data.num_outputs, in_chans=config.get("in_chans", 3))
    model.load_state_dict(read_torch(run / "best.pt")["model"])
    prep = Preprocess(config["image_size"], MEDMNIST_MEAN, MEDMNIST_STD, device, channels=config.get("in_chans", 3),
                      interpolation=config.get("interpolation", "bilinear"))
    return LoadedRun(run, config, data, model.to(device).eval(), prep)


def evaluate_run(run: Path, device: str = "auto", root: Path | None = None, data_dir: Path | None = None,
                 max_memory: str | None = None, caches: Path | None = None) -> dict:
    """Recompute a finished run's metrics from its best.pt."""
    dev = resolve_device(device)
    loaded = load_run(run, dev, root, data_dir=data_dir, max_memory=max_memory, caches=caches)
    return evaluate_model(loaded.model, loaded.data, loaded.config["image_size"], dev, loaded.path, loaded.config)


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table of (name, {"test": {...}, "val": {...}}) rows."""
    lines = ["| run | test AUC | test ACC | val AUC | val ACC |", "|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['test']['auc']:.4f} | {m['test']['acc']:.4f} | {m['val']['auc']:.4f} | {m['val']['acc']:.4f} |")
    return "\n".join(lines)
