"""Shared fixtures: small MedMNIST-shaped files generated on the spot, and a random DINOv2 checkpoint."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from medal.models.teachers import save_random_teacher

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_npz(root: Path, flag: str, n: dict[str, int] | None = None, channels: int = 3, classes: int = 8,
             multi_label: int = 0, seed: int = 0) -> Path:
    """A learnable toy file in MedMNIST's layout: each class brightens its own horizontal band."""
    rng = np.random.default_rng(seed)
    n = n or {"train": 48, "val": 24, "test": 24}
    arrays = {}
    for split, count in n.items():
        if multi_label:
            labels = rng.integers(0, 2, size=(count, multi_label))
            labels[:, 0] = np.arange(count) % 2  # both values present in every split
        else:
            labels = (np.arange(count) % classes)[:, None]
        images = rng.integers(0, 60, size=(count, 28, 28, channels)).astype(np.uint8)
        first = labels[:, 0] if not multi_label else labels.argmax(1)
        for i, c in enumerate(first):
            band = int(c) * (28 // max(classes, multi_label or 1))
            images[i, band : band + 3] = 230
        if channels == 1:
            images = images[..., 0]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{flag}.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def vits_weights(tmp_path_factory) -> Path:
    """A randomly initialised DINOv2 ViT-S/14 in the official torch.hub layout."""
    return save_random_teacher("dinov2_vits14", tmp_path_factory.mktemp("weights") / "vits14_random.pth")


@pytest.fixture
def blood_root(tmp_path) -> Path:
    root = tmp_path / "medmnist"
    make_npz(root, "bloodmnist")
    return root


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run `medal ARGS` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from medal.cli import main

    monkeypatch.setattr(sys, "argv", ["medal", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


PROGRESS_LINE = re.compile(r"^.+: [\d,]+ \S+ in \d+\.\ds(, [\d,]+ \S+/s)?( \(.*\))?$")  # medal.runtime.progress, off a terminal


def error_lines(err: str) -> list[str]:
    """What stderr leaves on screen, less one-line warnings (e.g. a non-official data file),
    finished progress bars (tqdm redraws a line with carriage returns, then clears it) and the
    plain progress lines written instead of bars when stderr is not a terminal."""
    shown = (line.rsplit("\r", 1)[-1].strip() for line in err.split("\n"))
    return [line for line in shown if line and not line.startswith(("warning: ", "downloading ")) and not PROGRESS_LINE.match(line)]
