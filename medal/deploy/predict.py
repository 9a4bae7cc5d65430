"""`medal predict`: class probabilities of a finished run's student for new images.

The images go through exactly what `medal evaluate` does (the same `predict`, batch size and
preprocessing), so the run's own test split gives back its test_scores.npy bit for bit.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medal.cache.store import cache_dir
from medal.data.base import MULTI_LABEL
from medal.data.stream.budget import memory_budget
from medal.data.stream.source import image_source
from medal.deploy.inputs import read_inputs
from medal.deploy.student import load_student
from medal.pipeline.evaluate import predict
from medal.runtime.device import resolve_device

THRESHOLD = 0.5  # a multi-label prediction names every label at or above it (medmnist's ACC does the same)


@dataclass
class Predictions:
    names: list[str]
    label_names: list[str]
    scores: np.ndarray  # (N, C) float32 probabilities
    task: str

    def predicted(self) -> list[str]:
        """The most probable class, or for multi-label data every label at or above the threshold ("; "-joined)."""
        if self.task == MULTI_LABEL:
            return ["; ".join(n for n, p in zip(self.label_names, row) if p >= THRESHOLD) for row in self.scores]
        return [self.label_names[i] for i in self.scores.argmax(1)]

    def records(self) -> list[dict]:
        """One dict per image: input, a probability per label name, predicted. Floats print as the shortest
        decimal that reads back to the same float32."""
        return [{"input": name, **{label: float(str(p)) for label, p in zip(self.label_names, row)}, "predicted": pred}
                for name, row, pred in zip(self.names, self.scores, self.predicted())]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["input", *self.label_names, "predicted"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records())
        return buffer.getvalue()

    def to_json(self) -> str:
        return json.dumps(self.records(), indent=2) + "\n"


def run_predict(run: Path, inputs: list[Path], split: str = "test", device: str = "auto",
                max_memory: str | None = None) -> Predictions:
    """Probabilities for every input image; a .zarr split is streamed (prefetch held within `max_memory`)."""
    dev = resolve_device(device)
    student = load_student(run, dev)
    budget = memory_budget(max_memory, dev, cache_dir() / "streams")
    images = read_inputs(inputs, split, student.size, student.facts.channels, student.facts.name, budget.bytes)
    task = student.config["task"]
    scores = np.concatenate([predict(student.model, image_source(part, dev), student.prep, task, dev)
                             for part in images.parts])
    return Predictions(images.names, student.facts.label_names, scores, task)
