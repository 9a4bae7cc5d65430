"""Build medal's bundled demo dataset: a class-balanced subset of the official BloodMNIST (28x28).

Run once by the maintainers: python tools/make_demo_data.py ../shared/data/bloodmnist.npz
"""

import sys
from pathlib import Path

import numpy as np

PER_CLASS = {"train": 40, "val": 12, "test": 25}


def subset(images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator):
    flat = labels.reshape(-1)
    keep = np.concatenate([rng.choice(np.flatnonzero(flat == c), per_class, replace=False) for c in np.unique(flat)])
    keep.sort()
    return images[keep], labels[keep]


def main(source: str) -> None:
    rng = np.random.default_rng(0)
    out = {}
    with np.load(source) as npz:
        for split, n in PER_CLASS.items():
            out[f"{split}_images"], out[f"{split}_labels"] = subset(npz[f"{split}_images"], npz[f"{split}_labels"], n, rng)
    target = Path(__file__).resolve().parents[1] / "medal" / "assets" / "demo" / "bloodmnist.npz"
    np.savez_compressed(target, **out)
    print(target, {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main(sys.argv[1])
