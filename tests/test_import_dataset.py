"""`medal import-dataset` on image sets generated here, then the pipeline on them through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import error_lines, run_cli
from medmnist.evaluator import getACC, getAUC
from PIL import Image

from medal.data.base import fingerprint
from medal.data.resolve import resolve_dataset

TEACHER_ARGS = ["--teacher", "dinov2_vits14", "--image-size", "28", "--head-epochs", "3", "--batch-size", "32",
                "--device", "cpu"]
STUDENT_ARGS = ["--student", "resnet18_28", "--epochs", "1", "--batch-size", "32", "--image-size", "28",
                "--milestones", "1", "--device", "cpu"]
SHAPES = [(40, 30), (64, 64), (33, 50)]  # (height, width): images of a set need not share a size


def draw(path: Path, band: int, bands: int, index: int, colour: bool, seed: int) -> None:
    """A learnable image: noise with band `band` of `bands` bright; its size and format vary with `index`."""
    rng = np.random.default_rng(seed)
    h, w = SHAPES[index % len(SHAPES)]
    pixels = rng.integers(0, 60, size=(h, w, 3) if colour else (h, w)).astype(np.uint8)
    top = band * h // bands
    pixels[top : top + max(2, h // (2 * bands))] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB" if colour else "L").save(path)


def image_folder(root: Path, classes: list[str], per_split: dict[str, int] | None, colour: bool = False,
                 per_class: int = 10) -> Path:
    """ImageFolder layout, PNG and JPEG mixed: root/{split}/{class}/..., or root/{class}/... when per_split is None."""
    layout = per_split or {None: per_class}
    for s, (split, n) in enumerate(layout.items()):
        for c, name in enumerate(classes):
            for i in range(n):
                where = root / split / name if split else root / name
                draw(where / f"img{i}.{'png' if i % 2 else 'jpg'}", c, len(classes), i, colour, seed=100 * s + 10 * c + i)
    return root


def csv_set(root: Path, labels: list[str], rows: dict[str, int], multi_label: bool) -> Path:
    """Colour images and a CSV with a split column: a class name per row, or one 0/1 column per label."""
    path = root / "labels.csv"
    root.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(labels if multi_label else ["diagnosis"]), "split"])
        k = 0
        for split, n in rows.items():
            for i in range(n):
                k += 1
                if multi_label:
                    on = [(i >> j) & 1 for j in range(len(labels))]  # every pattern, so each label is 0 and 1
                    band = int(np.argmax(on)) if any(on) else len(labels)
                    draw(root / "images" / f"{k}.png", band, len(labels) + 1, i, True, seed=k)
                    writer.writerow([f"images/{k}.png", *on, split])
                else:
                    c = i % len(labels)
                    draw(root / "images" / f"{k}.jpg", c, len(labels), i, True, seed=k)
                    writer.writerow([f"images/{k}.jpg", labels[c], split])
    return path


def import_cli(args: list, capsys, monkeypatch) -> tuple[int, str, str]:
    return run_cli(["import-dataset", *args], capsys, monkeypatch)


def pipeline(dataset: str, tmp_path: Path, vits_weights: Path, capsys, monkeypatch, extra: list) -> dict:
    """cache-teacher -> distill -> evaluate on one dataset; returns distill's JSON."""
    cache_dir = tmp_path / "cache"
    code, out, err = run_cli(["cache-teacher", "--dataset", dataset, "--weights", vits_weights, "--cache-dir", cache_dir,
                              "--json", *extra, *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0, err
    cache = json.loads(out)
    run = tmp_path / "run"
    code, out, err = run_cli(["distill", "--dataset", dataset, "--cache-dir", cache_dir, "--out", run, "--json", *extra,
                              *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["cache_key"] == cache["key"]
    assert result["config"]["data_fingerprint"] == cache["data_fingerprint"]
    code, out, err = run_cli(["evaluate", run, "--json", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["test"]["auc"] == pytest.approx(result["test"]["auc"], abs=1e-6)
    return {**result, "cache": cache, "run": run}


def test_image_folder_end_to_end(tmp_path, vits_weights, capsys, monkeypatch):
    source = image_folder(tmp_path / "derm", ["benign", "melanoma", "nevus"], {"train": 8, "val": 3, "test": 3})
    data_dir = tmp_path / "datasets"
    monkeypatch.setenv("MEDAL_DATA_DIR", str(data_dir))
    code, out, err = import_cli([source, "--name", "derm", "--size", "28"], capsys, monkeypatch)
    assert code == 0, err
    assert "imported derm: multi-class, 3 classes, 28x28x1 (bicubic)" in out
    assert "| melanoma | 8 | 3 | 3 |" in out and "| images | 24 | 9 | 9 |" in out

    path = data_dir / "derm.zarr"
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    assert attrs["medal_dataset_format"] == 1 and attrs["task"] == "multi-class" and attrs["channels"] == 1
    assert attrs["label_names"] == ["benign", "melanoma", "nevus"] and attrs["n_samples"] == {"train": 24, "val": 9, "test": 9}
    assert attrs["interpolation"] == "bicubic" and attrs["source"] == str(source.resolve())
    images = group["train/images"]
    assert images.shape == (24, 28, 28, 1) and images.chunks == (1, 28, 28, 1) and images.shards == (256, 28, 28, 1)
    assert group["train/labels"][...].ravel().tolist() == [0] * 8 + [1] * 8 + [2] * 8  # torchvision's order
    assert not list(data_dir.glob(".*partial*"))

    data = resolve_dataset("derm")
    assert data.fingerprint == fingerprint(data.splits) == attrs["fingerprint"]
    assert data.label_names == attrs["label_names"] and not data.official and data.num_outputs == 3

    result = pipeline("derm", tmp_path, vits_weights, capsys, monkeypatch, [])
    assert result["cache"]["dataset"] == "derm" and result["cache"]["data_path"] == str(path.resolve())
    assert result["cache"]["key"].startswith("derm_28_dinov2_vits14_28_")
    scores = np.load(result["run"] / "test_scores.npy")
    labels = group["test/labels"][...]
    assert scores.shape == (9, 3)
    assert result["test"]["auc"] == pytest.approx(getAUC(labels, scores, "multi-class"))

    # predict: the store's test split (streamed) and the source's test images (decoded and resized as the
    # import did) both give back test_scores.npy; export checks itself on the store's test images.
    for inputs in ([path], [source / "test" / name for name in attrs["label_names"]]):
        code, out, err = run_cli(["predict", result["run"], *inputs, "--json", "--device", "cpu"], capsys, monkeypatch)
        assert code == 0, err
        records = json.loads(out)
        assert [r["predicted"] for r in records] == [attrs["label_names"][i] for i in scores.argmax(1)]
        np.testing.assert_array_equal(np.array([[r[n] for n in attrs["label_names"]] for r in records], np.float32),
                                      scores)
    assert records[0]["input"].endswith("benign/img0.jpg")
    code, out, err = run_cli(["predict", result["run"], path, "--split", "train", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0 and len(out.splitlines()) == 1 + 24 and f"{path}:train:23" in out, err
    code, out, err = run_cli(["export", result["run"], "--format", "torchscript", "--out", tmp_path / "derm.pt"],
                             capsys, monkeypatch)
    assert code == 0 and "check: max |p_" in out + err, err

    # Same bytes twice: the import is reproducible, and the stale-cache check sees a changed dataset.
    code, _, err = import_cli([source, "--name", "derm", "--size", "28"], capsys, monkeypatch)
    assert code == 1 and "already exists" in error_lines(err)[0]
    draw(source / "test" / "nevus" / "img0.jpg", 0, 3, 0, False, seed=999)
    code, _, err = import_cli([source, "--name", "derm", "--size", "28", "--force"], capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["distill", "--dataset", "derm", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r2",
                            *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 1 and "computed from other data" in error_lines(err)[0]


def test_csv_multi_label_end_to_end(tmp_path, vits_weights, capsys, monkeypatch):
    source = csv_set(tmp_path / "xray", ["effusion", "nodule"], {"train": 24, "val": 8, "test": 8}, multi_label=True)
    data_dir = tmp_path / "datasets"
    code, out, err = import_cli([source, "--name", "xray", "--size", "32", "--data-dir", data_dir, "--json"],
                                capsys, monkeypatch)
    assert code == 0, err
    info = json.loads(out)
    assert info["task"] == "multi-label, binary-class" and info["label_names"] == ["effusion", "nodule"]
    assert info["channels"] == 3 and info["size"] == 32 and info["counts"]["train"] == {"effusion": 12, "nodule": 12}
    group = zarr.open_group(info["path"], mode="r")
    assert group["val/labels"].shape == (8, 2) and group["val/images"].shape == (8, 32, 32, 3)

    # --dataset PATH for the teacher, the name and --data-dir for the student
    code, out, err = run_cli(["cache-teacher", "--dataset", info["path"], "--weights", vits_weights, "--cache-dir",
                              tmp_path / "cache", "--json", *TEACHER_ARGS], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["dataset"] == "xray" and json.loads(out)["task"] == "multi-label, binary-class"
    result = pipeline("xray", tmp_path, vits_weights, capsys, monkeypatch, ["--data-dir", data_dir])
    scores = np.load(result["run"] / "test_scores.npy")
    labels = group["test/labels"][...]
    assert scores.shape == (8, 2) and ((scores >= 0) & (scores <= 1)).all()
    assert result["test"]["auc"] == pytest.approx(getAUC(labels, scores, "multi-label, binary-class"))
    assert result["test"]["acc"] == pytest.approx(getACC(labels, scores, "multi-label, binary-class"))

    # sweep over the imported dataset, then report: its rows sit beside no published number
    runs = tmp_path / "sweep"
    code, out, err = run_cli(["sweep", "--dataset", "xray", "--data-dir", data_dir, "--cache-dir", tmp_path / "cache",
                              "--t", "1,2", "--alpha", "0.5", "--runs-dir", runs, *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [
        "xray_resnet18_28_dinov2_vits14_t1_a0.5_s0", "xray_resnet18_28_dinov2_vits14_t2_a0.5_s0"]
    code, out, err = run_cli(["report", "--runs", runs, "--cache-dir", tmp_path / "cache", "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert [(r["dataset"], r["t"]) for r in report["table4"]] == [("xray", 1.0), ("xray", 2.0)], report["table4"]


def test_csv_classes_binary_and_ordinal(tmp_path, capsys, monkeypatch):
    source = csv_set(tmp_path / "skin", ["malignant", "benign"], {"train": 6, "val": 2, "test": 2}, multi_label=False)
    code, out, err = import_cli([source, "--name", "skin", "--size", "16", "--data-dir", tmp_path / "d", "--json"],
                                capsys, monkeypatch)
    assert code == 0, err
    info = json.loads(out)
    assert info["task"] == "binary-class" and info["label_names"] == ["benign", "malignant"] and info["channels"] == 3
    code, out, err = import_cli([source, "--name", "skin1", "--size", "16", "--channels", "1", "--task", "multi-class",
                                 "--data-dir", tmp_path / "d", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["channels"] == 1 and json.loads(out)["task"] == "multi-class"

    grades = tmp_path / "grades"  # class folders 0..10: ordinal order is numeric, not torchvision's text order
    image_folder(grades, [str(g) for g in range(11)], None, per_class=3)
    code, out, err = import_cli([grades, "--name", "grades", "--size", "16", "--task", "ordinal", "--data-dir",
                                 tmp_path / "d", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["task"] == "ordinal-regression" and json.loads(out)["label_names"][-2:] == ["9", "10"]


def test_single_folder_split_is_stratified_and_seeded(tmp_path, capsys, monkeypatch):
    source = image_folder(tmp_path / "tiles", ["stroma", "tumour"], None, colour=True, per_class=10)

    def imported(name: str, seed: int) -> dict:
        code, out, err = import_cli([source, "--name", name, "--size", "24", "--split-fractions", "0.6,0.2,0.2",
                                     "--seed", seed, "--data-dir", tmp_path / "d", "--json"], capsys, monkeypatch)
        assert code == 0, err
        return json.loads(out)

    a, b, c = imported("a", 1), imported("b", 1), imported("c", 2)
    assert a["counts"] == {"train": {"stroma": 6, "tumour": 6}, "val": {"stroma": 2, "tumour": 2},
                           "test": {"stroma": 2, "tumour": 2}}
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]  # the seed alone decides the draw


CORRUPT = b"\x89PNG\r\n\x1a\n not really a png"


def broken_set(tmp_path: Path, case: str) -> list:
    """The source and extra arguments of one bad import."""
    root = image_folder(tmp_path / "src", ["a", "b"], {"train": 3, "val": 1, "test": 1})
    if case == "unreadable":
        (root / "train" / "a" / "broken.png").write_bytes(CORRUPT)
    elif case == "empty class":
        (root / "train" / "c").mkdir()
        (root / "train" / "c" / "notes.txt").write_text("no images here")
    elif case == "split without images":
        for f in (root / "val").rglob("*.*"):
            f.unlink()
        for d in sorted((root / "val").iterdir()):
            d.rmdir()
        (root / "val").rmdir()
    elif case == "labels that do not parse":
        path = csv_set(tmp_path / "csv", ["x", "y"], {"train": 4, "val": 4, "test": 4}, multi_label=True)
        path.write_text(path.read_text().replace("images/3.png,0,1", "images/3.png,0,yes"))
        return [path, "--name", "bad"]
    elif case == "class missing in a split":
        path = csv_set(tmp_path / "csv", ["x", "y", "z"], {"train": 6, "val": 2, "test": 3}, multi_label=False)
        return [path, "--name", "bad"]
    elif case == "MedMNIST name":
        return [root, "--name", "bloodmnist"]
    return [root, "--name", "bad"]


BAD = {
    "unreadable": "1 image cannot be read: ",
    "empty class": "empty class: train/c/ holds no images",
    "split without images": "a split without images",
    "labels that do not parse": "labels that do not parse",
    "class missing in a split": "'z' has no images in val",
    "MedMNIST name": "is a MedMNIST flag",
}


@pytest.mark.parametrize("case", list(BAD))
def test_import_errors(case, tmp_path, capsys, monkeypatch):
    args = broken_set(tmp_path, case)
    code, out, err = import_cli([*args, "--size", "16", "--data-dir", tmp_path / "d"], capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert BAD[case] in lines[0], lines[0]
    if case == "unreadable":
        assert "broken.png" in lines[0] and "--skip-bad" in lines[0]
    assert "Traceback" not in err + out
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir()), "nothing half-written"


def test_skip_bad_counts_unreadable_images(tmp_path, capsys, monkeypatch):
    root = image_folder(tmp_path / "src", ["a", "b"], {"train": 3, "val": 1, "test": 1})
    (root / "train" / "a" / "broken.png").write_bytes(CORRUPT)
    whole = (root / "train" / "b" / "img0.jpg").read_bytes()
    (root / "train" / "b" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # a header Pillow reads, pixels it cannot
    code, out, err = import_cli([root, "--name", "ok", "--size", "16", "--skip-bad", "--data-dir", tmp_path / "d",
                                 "--json"], capsys, monkeypatch)
    assert code == 0, err
    info = json.loads(out)
    assert len(info["skipped"]) == 2 and any("broken.png" in s for s in info["skipped"])
    assert info["n_samples"] == {"train": 6, "val": 2, "test": 2}
    assert "skipped 2 unreadable images" in err


def resave(src: Path, dst: Path, **kw) -> None:
    """The same decoded pixels written again: different bytes (asserted), equal pixels."""
    with Image.open(src) as im:
        im.save(dst, **kw)
    assert dst.read_bytes() != src.read_bytes()


def copy(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


def leaky_folder(root: Path) -> tuple[Path, set[str]]:
    """Classes a, b in train/val/test, plus repeats with known counts; returns the folder and the
    val/test files that repeat a training image (what --drop-duplicates must leave out)."""
    image_folder(root, ["a", "b"], {"train": 4, "val": 2, "test": 2})
    tr, va, te = root / "train", root / "val", root / "test"
    copy(tr / "a" / "img1.png", te / "a" / "copy.png")  # across: test repeats train, byte copy
    copy(tr / "a" / "img0.jpg", va / "a" / "dup.jpg")  # across: val repeats train, byte copy of a JPEG
    resave(tr / "b" / "img1.png", va / "b" / "resaved.bmp")  # across: val repeats train, other format
    resave(tr / "b" / "img3.png", te / "b" / "again.png", compress_level=0)  # across: test repeats train, other compression
    copy(tr / "b" / "img1.png", te / "b" / "chain.png")  # across: test repeats train (and val's resaved.bmp)
    copy(va / "a" / "img1.png", te / "a" / "fromval.png")  # across: test repeats val only: counted, never dropped
    resave(tr / "a" / "img3.png", tr / "a" / "twin.bmp")  # within train
    copy(te / "b" / "img1.png", te / "b" / "twin.png")  # within test
    near = np.array(Image.open(tr / "a" / "img1.png"))
    near[0, 0] += 1  # one pixel off: not a repeat (it may well resize to the same 16x16 image)
    Image.fromarray(near).save(te / "a" / "near.png")
    return root, {"val/a/dup.jpg", "val/b/resaved.bmp", "test/a/copy.png", "test/b/again.png", "test/b/chain.png"}


def files_in_order(root: Path, split: str) -> list[str]:
    """The import's row order: class folders sorted, then their files sorted (torchvision's)."""
    return [f"{split}/{c.name}/{f.name}" for c in sorted((root / split).iterdir()) for f in sorted(c.iterdir())]


def test_duplicates_counted_and_dropped(tmp_path, capsys, monkeypatch):
    source, copies_of_train = leaky_folder(tmp_path / "mri")
    data_dir = tmp_path / "d"
    stores = {}
    for name, extra in (("mri", []), ("mri_clean", ["--drop-duplicates"])):
        code, out, err = import_cli([source, "--name", name, "--size", "16", "--data-dir", data_dir, "--json", *extra],
                                    capsys, monkeypatch)
        assert code == 0, err
        info = json.loads(out)
        assert info["duplicates"] == {"within_splits": 2, "across_splits": 6}, info["duplicates"]
        assert info["duplicates_dropped"] == (5 if extra else 0)
        group = zarr.open_group(info["path"], mode="r")
        assert dict(group.attrs)["duplicates"] == info["duplicates"]
        warnings = [line for line in err.splitlines() if "repeat" in line]
        assert len(warnings) == 1 and warnings[0].startswith(
            "warning: 3 test images and 2 val images repeat training images; 1 test image repeats a val image; "
            "1 test image and 1 train image repeat earlier images of the same split; "), warnings
        assert ("5 val/test copies of training images dropped" in warnings[0]) == bool(extra)
        stores[name] = (info, group)

    full, clean = stores["mri"][1], stores["mri_clean"][1]
    for split in ("train", "val", "test"):
        names = files_in_order(source, split)
        keep = [i for i, n in enumerate(names) if n not in copies_of_train]
        assert full[f"{split}/images"].shape[0] == len(names)
        np.testing.assert_array_equal(clean[f"{split}/images"][...], full[f"{split}/images"][...][keep])
        np.testing.assert_array_equal(clean[f"{split}/labels"][...], full[f"{split}/labels"][...][keep])
    assert stores["mri_clean"][0]["n_samples"] == {"train": 9, "val": 4, "test": 7}
    assert stores["mri"][0]["fingerprint"] != stores["mri_clean"][0]["fingerprint"]

    # A run on each: the card states the repeats, and the leakage while copies of training images remain.
    cards = {}
    for name in stores:
        run = tmp_path / f"run_{name}"
        code, out, err = run_cli(["distill", "--dataset", name, "--data-dir", data_dir, "--alpha", "1", "--student",
                                  "test_resnet", "--epochs", "1", "--batch-size", "8", "--image-size", "16",
                                  "--out", run, "--device", "cpu"], capsys, monkeypatch)
        assert code == 0, err
        cards[name] = (run / "MODEL_CARD.md").read_text()
    assert "**Duplicates** (decoded pixels compared at import): 6 across splits" in cards["mri"]
    assert "2 within splits" in cards["mri"] and "Still in val/test: 6, inflating" in cards["mri"]
    assert "- **Leakage**: val/test images repeating an image of another split remain (6, see Data)" in cards["mri"]
    assert "5 of the former, the val/test copies of training images, were dropped" in cards["mri_clean"]
    assert "Still in val/test: 1, inflating" in cards["mri_clean"] and "remain (1, see Data)" in cards["mri_clean"]
    assert "MedMNIST v2" not in cards["mri"].split("### Data")[1].split("## Evaluation")[0]
