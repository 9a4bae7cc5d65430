"""Loading MedMNIST files: official, re-saved and subset files, grayscale, and the bundled demo set."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA, make_npz

from medal.data.base import fingerprint
from medal.data.medmnist import BUNDLED_ROOT, load_dataset
from medal.runtime.errors import MedalError


def shared(name: str, written: str):
    """A real file from ../shared/data beside the checkout; `written` names the test that checks the same on written data."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real MedMNIST files live in ../shared/data beside the checkout); "
                    f"the same behaviour is checked on written data by {written}")
    return path


def as_flag(tmp_path, source, flag):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / f"{flag}.npz").symlink_to(source)
    return root


def test_official_bloodmnist_loads_silently(tmp_path, capsys):
    data = load_dataset("bloodmnist", as_flag(tmp_path, shared("bloodmnist.npz", "test_written_file_with_the_official_md5_loads_silently"), "bloodmnist"))
    assert data.official and "warning" not in capsys.readouterr().err
    assert {s: len(data.splits[s].labels) for s in data.splits} == {"train": 11959, "val": 1712, "test": 3421}
    assert data.splits["train"].images.shape[1:] == (28, 28, 3) and data.num_outputs == 8


def test_resaved_file_with_flat_labels_loads_with_a_warning(tmp_path, capsys):
    data = load_dataset("breastmnist", as_flag(tmp_path, shared("breastmnist_resaved.npz", "test_written_file_with_flat_labels_loads_with_a_warning"), "breastmnist"))
    err = capsys.readouterr().err
    assert not data.official and "not the official breastmnist file" in err and len(err.strip().splitlines()) == 1
    assert data.splits["train"].labels.shape == (546, 1) and data.splits["train"].images.shape == (546, 28, 28, 1)


def test_subset_file_loads_with_a_warning_and_is_never_redownloaded(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", lambda *a, **k: pytest.fail("must not download over a local file"))
    data = load_dataset("pneumoniamnist", as_flag(tmp_path, shared("pneumoniamnist_subset.npz", "test_written_file_with_flat_labels_loads_with_a_warning"), "pneumoniamnist"))
    assert "not the official" in capsys.readouterr().err
    assert len(data.splits["train"].labels) == 3882 and data.task == "binary-class"


def test_written_file_with_the_official_md5_loads_silently(tmp_path, capsys, monkeypatch):
    """What the official file gets: no warning. Made official here by giving medmnist's table the written file's MD5."""
    from medmnist.info import INFO

    from medal.runtime.io import file_hash

    path = make_npz(tmp_path, "bloodmnist")
    data = load_dataset("bloodmnist", tmp_path)
    err = capsys.readouterr().err
    assert not data.official and "not the official bloodmnist file" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setitem(INFO["bloodmnist"], "MD5", file_hash(path, "md5"))
    data = load_dataset("bloodmnist", tmp_path)
    assert data.official and capsys.readouterr().err == ""
    assert {s: len(data.splits[s].labels) for s in data.splits} == {"train": 48, "val": 24, "test": 24}


def test_written_file_with_flat_labels_loads_with_a_warning(tmp_path, capsys, monkeypatch):
    """A re-saved grayscale file: (N,) labels and (N, H, W) images come out as (N, 1) and (N, H, W, 1), with
    one warning line; a local file that is not the official one is used as it is, never downloaded over."""
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", lambda *a, **k: pytest.fail("must not download over a local file"))
    rng = np.random.default_rng(0)
    counts = {"train": 10, "val": 4, "test": 6}
    arrays = {}
    for split, n in counts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)  # 1-D
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    data = load_dataset("breastmnist", tmp_path)
    err = capsys.readouterr().err
    assert not data.official and "not the official breastmnist file" in err and len(err.strip().splitlines()) == 1
    for split, n in counts.items():
        assert data.splits[split].labels.shape == (n, 1) and data.splits[split].images.shape == (n, 28, 28, 1)
        assert (data.splits[split].labels[:, 0] == arrays[f"{split}_labels"]).all()
        assert (data.splits[split].images[..., 0] == arrays[f"{split}_images"]).all()
    assert data.task == "binary-class" and data.channels == 1


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
