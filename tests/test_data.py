"""Loading MedMNIST files: official, re-saved and subset files, grayscale, and the bundled demo set."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA, make_npz

from medal.data.base import fingerprint
from medal.data.medmnist import BUNDLED_ROOT, load_dataset
from medal.runtime.errors import MedalError


def shared(name: str):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def as_flag(tmp_path, source, flag):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / f"{flag}.npz").symlink_to(source)
    return root


def test_official_bloodmnist_loads_silently(tmp_path, capsys):
    data = load_dataset("bloodmnist", as_flag(tmp_path, shared("bloodmnist.npz"), "bloodmnist"))
    assert data.official and "warning" not in capsys.readouterr().err
    assert {s: len(data.splits[s].labels) for s in data.splits} == {"train": 11959, "val": 1712, "test": 3421}
    assert data.splits["train"].images.shape[1:] == (28, 28, 3) and data.num_outputs == 8


def test_resaved_file_with_flat_labels_loads_with_a_warning(tmp_path, capsys):
    data = load_dataset("breastmnist", as_flag(tmp_path, shared("breastmnist_resaved.npz"), "breastmnist"))
    err = capsys.readouterr().err
    assert not data.official and "not the official breastmnist file" in err and len(err.strip().splitlines()) == 1
    assert data.splits["train"].labels.shape == (546, 1) and data.splits["train"].images.shape == (546, 28, 28, 1)


def test_subset_file_loads_with_a_warning_and_is_never_redownloaded(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", lambda *a, **k: pytest.fail("must not download over a local file"))
    data = load_dataset("pneumoniamnist", as_flag(tmp_path, shared("pneumoniamnist_subset.npz"), "pneumoniamnist"))
    assert "not the official" in capsys.readouterr().err
    assert len(data.splits["train"].labels) == 3882 and data.task == "binary-class"


def test_bundled_demo_set_is_balanced_and_silent(capsys):
    data = load_dataset("bloodmnist", BUNDLED_ROOT)
    assert "warning" not in capsys.readouterr().err
    for split in ("train", "val", "test"):
        counts = np.bincount(data.splits[split].labels[:, 0], minlength=8)
        assert (counts == counts[0]).all() and counts[0] > 0


def test_fingerprint_sees_any_change(tmp_path):
    make_npz(tmp_path, "bloodmnist")
    a = load_dataset("bloodmnist", tmp_path)
    splits = {k: v for k, v in a.splits.items()}
    before = fingerprint(splits)
    splits["test"].images[0, 0, 0, 0] ^= 1
    assert fingerprint(splits) != before


def test_not_an_npz(tmp_path):
    (tmp_path / "bloodmnist.npz").write_text("hello")
    with pytest.raises(MedalError, match="not a MedMNIST .npz"):
        load_dataset("bloodmnist", tmp_path)


def test_wrong_label_width(tmp_path):
    make_npz(tmp_path, "chestmnist", multi_label=3)
    with pytest.raises(MedalError, match="columns"):
        load_dataset("chestmnist", tmp_path)
