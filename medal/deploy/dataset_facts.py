"""What a deployed student needs to know of the data it was trained on, read in one place.

Everything here comes from medmnist's INFO for the run's dataset flag; a dataset that is not
MedMNIST's would describe itself through this one function.
"""

from __future__ import annotations

from dataclasses import dataclass

from medmnist import INFO

from medal.errors import MedalError


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    task: str
    label_names: list[str]  # in output (logit) order
    channels: int  # native channels of the images: 1 grayscale, 3 colour
    license: str  # as the dataset states it, e.g. "CC BY 4.0"
    description: str


def dataset_facts(config: dict) -> DatasetFacts:
    """The facts for a run's config.json (its `dataset` flag)."""
    flag = config["dataset"]
    if flag not in INFO:
        raise MedalError(f"the run's dataset {flag!r} is unknown to this medal; label names cannot be read.")
    info = INFO[flag]
    labels = [info["label"][str(i)] for i in range(len(info["label"]))]
    return DatasetFacts(name=flag, task=info["task"], label_names=labels, channels=int(info["n_channels"]),
                        license=info.get("license", "see the dataset's own terms"), description=info["description"])


def label_names(config: dict) -> list[str]:
    """Class (or, for multi-label data, label) names in the order of the student's outputs."""
    return dataset_facts(config).label_names
