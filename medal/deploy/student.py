"""A finished run's student, rebuilt for inference without its training data.

`medal.pipeline.evaluate.load_run` rebuilds the same student but also loads and fingerprints
the dataset; predicting new images or exporting must not need the training file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medal.data.facts import DatasetFacts, dataset_facts
from medal.data.preprocess import MEDMNIST_MEAN, MEDMNIST_STD, Preprocess
from medal.models.students import build_student
from medal.runtime.errors import MedalError
from medal.runtime.io import read_json, read_torch

RUN_FILES = ("config.json", "best.pt", "metrics.json")


@dataclass
class Student:
    path: Path
    config: dict
    metrics: dict
    facts: DatasetFacts
    model: nn.Module  # eval mode, on the device
    prep: Preprocess  # uint8 (B, C, size, size) -> the normalised input the student was trained on

    @property
    def size(self) -> int:
        """Pixels of the MedMNIST file it was trained on: the native size inputs are brought to first."""
        return int(self.config["size"])

    @property
    def in_chans(self) -> int:
        return int(self.config.get("in_chans", 3))


def check_finished(run: Path) -> Path:
    """A run directory that `medal distill` completed, or a MedalError naming what is missing."""
    run = Path(run)
    if not run.is_dir():
        raise MedalError(f"run directory {run} does not exist." if not run.exists() else f"{run} is not a run directory.")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing or run.name.endswith(".partial"):
        what = f"no {', '.join(missing)}" if missing else "still being written"
        raise MedalError(f"{run} is not a finished medal run ({what}); let `medal distill` complete first.")
    return run


def load_student(run: Path, device: torch.device) -> Student:
    """The kept weights (best.pt) in the student timm builds, with the training preprocessing."""
    run = check_finished(run)
    config, metrics = read_json(run / "config.json"), read_json(run / "metrics.json")
    facts = dataset_facts(config)
    in_chans = int(config.get("in_chans", 3))
    model = build_student(config["student"], len(facts.label_names), in_chans=in_chans)
    state = read_torch(run / "best.pt")  # tensors only: a crafted best.pt runs no code
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise MedalError(f"{run / 'best.pt'} does not fit the run's {config['student']} ({type(exc).__name__}).") from None
    prep = Preprocess(config["image_size"], MEDMNIST_MEAN, MEDMNIST_STD, device, channels=in_chans,
                      interpolation=config.get("interpolation", "bilinear"))
    return Student(run, config, metrics, facts, model.to(device).eval(), prep)


def preprocessing(student: Student) -> dict:
    """How a raw image becomes the student's input: embedded in, or written beside, every export."""
    facts, size, image_size = student.facts, student.size, int(student.config["image_size"])
    mode = student.config.get("interpolation", "bilinear")
    return {
        "dataset": facts.name,
        "task": facts.task,
        "label_names": facts.label_names,
        "native_size": size,
        "native_channels": facts.channels,
        "to_native": f"resize to {size}x{size} with Pillow's bicubic filter (antialiased when shrinking), no crop; "
                     + ("colour converted to grayscale (Pillow 'L')" if facts.channels == 1
                        else "grayscale repeated to RGB"),
        "input_size": [student.in_chans, image_size, image_size],
        "to_input": f"uint8 -> float, {'grayscale repeated to 3 channels, ' if facts.channels < student.in_chans else ''}"
                    f"{mode} resize to {image_size}x{image_size} (torch interpolate"
                    f"{', align_corners=False' if mode == 'bilinear' else ''}, no antialias), then (x / 255 - mean) / std",
        "interpolation": mode,
        "mean": list(MEDMNIST_MEAN[: student.in_chans]),
        "std": list(MEDMNIST_STD[: student.in_chans]),
        "output": "sigmoid per label" if facts.task.startswith("multi-label") else "softmax over classes",
    }
