"""What every command needs of a dataset, whether a MedMNIST file or one imported with `medal import-dataset`.

`medal.data.MedMNISTData` and `medal.datasets.store.ImportedData` both have this shape, so the
pipeline (cache-teacher, distill, evaluate, the figures) never asks which kind it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from medal.data import Split


class Dataset(Protocol):
    flag: str  # the name caches and runs are keyed by: a MedMNIST flag, or an imported dataset's name
    size: int  # images are size x size pixels
    path: Path  # the .npz file or the .zarr folder
    md5: str  # the file's MD5 for MedMNIST; an imported dataset's fingerprint
    official: bool  # the official MedMNIST file (never for an imported dataset)
    splits: dict[str, Split]

    @property
    def task(self) -> str: ...  # a medmnist task string: what getAUC/getACC are told

    @property
    def multi_label(self) -> bool: ...

    @property
    def num_outputs(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def label_names(self) -> list[str]: ...  # class names in logit order, or the multi-label names

    def targets(self, split: str) -> np.ndarray: ...
