"""The student as a deliverable: `medal predict`, `medal export` and MODEL_CARD.md, on two tiny finished runs."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
import timm
import torch
import zarr
from conftest import error_lines, make_npz, run_cli
from PIL import Image

from medal.pipeline.distill import DistillConfig, run_distill

SPLITS = {"train": 32, "val": 16, "test": 16}
BLOOD_LABELS = ["basophil", "eosinophil", "erythroblast",
                "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
                "neutrophil", "platelet"]


def _train(root, flag, out):
    run_distill(DistillConfig(dataset=flag, root=root, alpha=1, student="resnet18_28", image_size=28, epochs=1,
                              batch_size=16, milestones=(), device="cpu", out=out))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A colour run (bloodmnist, 8 classes) and a grayscale one (pneumoniamnist, 2 classes), trained once."""
    base = tmp_path_factory.mktemp("deliver")
    make_npz(base / "data", "bloodmnist", n=SPLITS)
    make_npz(base / "data", "pneumoniamnist", n=SPLITS, channels=1, classes=2)
    return {"colour": _train(base / "data", "bloodmnist", base / "blood_run"),
            "gray": _train(base / "data", "pneumoniamnist", base / "pneumonia_run"),
            "data": base / "data"}


def _scores(records: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([[r[name] for name in labels] for r in records], dtype=np.float32)


@pytest.mark.parametrize("kind, flag", [("colour", "bloodmnist"), ("gray", "pneumoniamnist")])
def test_predict_on_the_test_split_reproduces_test_scores(kind, flag, runs, capsys, monkeypatch):
    run, npz = runs[kind], runs["data"] / f"{flag}.npz"
    code, out, err = run_cli(["predict", run, npz, "--json", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    records = json.loads(out)
    labels = [k for k in records[0] if k not in ("input", "predicted")]
    expected = np.load(run / "test_scores.npy")
    assert np.array_equal(_scores(records, labels), expected)
    assert [r["input"] for r in records] == [f"{npz}:test:{i}" for i in range(SPLITS["test"])]
    assert [r["predicted"] for r in records] == [labels[i] for i in expected.argmax(1)]

    code, out, err = run_cli(["predict", run, npz, "--split", "val", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == SPLITS["val"] and list(rows[0])[0] == "input" and list(rows[0])[-1] == "predicted"


def test_predict_on_png_files_gives_the_same_probabilities(runs, tmp_path, capsys, monkeypatch):
    run = runs["colour"]
    images = np.load(runs["data"] / "bloodmnist.npz")["test_images"]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image: skipped in a folder")
    out_csv = tmp_path / "predictions.csv"
    code, _, err = run_cli(["predict", run, folder, "--out", out_csv, "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["input", *BLOOD_LABELS, "predicted"]
    assert [r["input"] for r in rows] == [str(folder / f"{i:03d}.png") for i in range(len(images))]
    assert np.array_equal(_scores(rows, BLOOD_LABELS), np.load(run / "test_scores.npy"))


def test_colour_and_size_conversions_are_announced(runs, tmp_path, capsys, monkeypatch):
    gray_png, colour_jpg, deep_png = tmp_path / "gray40.png", tmp_path / "colour.jpg", tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 120, np.uint8)).save(gray_png)
    Image.fromarray(np.full((28, 28, 3), (200, 30, 30), np.uint8)).save(colour_jpg)
    Image.fromarray(np.full((28, 28), 40000, np.uint16)).save(deep_png)

    code, out, err = run_cli(["predict", runs["colour"], gray_png, "--json", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert "note: repeated 1 grayscale image(s) to RGB: bloodmnist images are colour" in err
    assert "note: resized 1 image(s) to 28x28 (Pillow bicubic)" in err
    assert json.loads(out)[0]["input"] == str(gray_png)

    code, out, err = run_cli(["predict", runs["gray"], colour_jpg, deep_png, "--json", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert "note: converted 1 colour image(s) to grayscale (Pillow 'L'): pneumoniamnist images are grayscale" in err
    assert "note: scaled 1 16-bit image(s) to 8 bits" in err
    records = json.loads(out)
    assert len(records) == 2 and all(abs(r["normal"] + r["pneumonia"] - 1) < 1e-5 for r in records)


def test_onnx_export_matches_pytorch_under_onnxruntime(runs, tmp_path, capsys, monkeypatch):
    import onnx
    import onnxruntime

    run, path = runs["colour"], tmp_path / "student.onnx"
    code, out, err = run_cli(["export", run, "--format", "onnx", "--out", path], capsys, monkeypatch)
    assert code == 0, err
    said = re.search(r"onnxruntime check: max \|p_onnx - p_torch\| = (\S+) on 16 test images \(< 1e-4\)", out)
    assert said and float(said.group(1)) < 1e-4, out
    images = np.load(runs["data"] / "bloodmnist.npz")["test_images"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (slice(0, 1), slice(0, 5)):  # the batch axis is dynamic
        got = session.run(None, {"images": images[batch]})[0]
        np.testing.assert_allclose(got, np.load(run / "test_scores.npy")[batch], atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["label_names"]) == BLOOD_LABELS
    beside = json.loads((tmp_path / "student.onnx.json").read_text())
    assert beside["preprocessing"]["native_size"] == 28 and beside["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_torchscript_export_reloads(runs, tmp_path, capsys, monkeypatch):
    run, path = runs["gray"], tmp_path / "student.pt"
    code, out, err = run_cli(["export", run, "--format", "torchscript", "--out", path], capsys, monkeypatch)
    assert code == 0, err
    assert "torchscript check: max |p_torchscript - p_torch| =" in out
    extra = {"medal.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    images = np.load(runs["data"] / "pneumoniamnist.npz")["test_images"][..., None]  # (N, 28, 28, 1) as documented
    np.testing.assert_allclose(module(torch.from_numpy(images)).numpy(), np.load(run / "test_scores.npy"), atol=1e-5)
    assert json.loads(extra["medal.json"])["label_names"] == ["normal", "pneumonia"]


def test_safetensors_export_loads_through_timm_as_documented(runs, tmp_path, capsys, monkeypatch):
    from medal.deploy.student import load_student

    run, folder = runs["colour"], tmp_path / "student"
    code, out, err = run_cli(["export", run, "--format", "safetensors", "--out", folder], capsys, monkeypatch)
    assert code == 0, err
    assert "timm check: max |p_timm - p_torch| = 0.0e+00" in out
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18_28" and config["label_names"] == BLOOD_LABELS
    assert config["pretrained_cfg"]["input_size"] == [3, 28, 28] and config["pretrained_cfg"]["mean"] == [0.5] * 3

    c = config["num_classes"]  # the README's snippet
    model = timm.create_model(config["architecture"], pretrained=True, num_classes=c,
                              pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=c)).eval()
    local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    reference = load_student(run, torch.device("cpu")).model
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x)) and torch.equal(local(x), reference(x))


def test_model_card_in_every_finished_run(runs, tmp_path):
    from medal.records.model_card import write_model_card

    card = (runs["colour"] / "MODEL_CARD.md").read_text()
    metrics = json.loads((runs["colour"] / "metrics.json").read_text())
    assert card.startswith("---\nlicense: cc-by-4.0\nlibrary_name: timm\n")
    assert f"| test | {metrics['test']['auc']:.4f} | {metrics['test']['acc']:.4f} |" in card
    assert "![training loss and validation AUC/ACC per epoch](history.png)" in card
    assert "Not a medical device" in card and "cross-entropy baseline" in card

    # A distilled run whose teacher cache is gone: the card says so instead of failing.
    moved = shutil.copytree(runs["colour"], tmp_path / "moved", ignore=shutil.ignore_patterns("*.pt", "*.npy"))
    config = json.loads((moved / "config.json").read_text())
    config.update(alpha=0.2, cache_key="gone", cache_keys=["gone"], teachers=["dinov2_vits14"], cache_dir=str(tmp_path))
    (moved / "config.json").write_text(json.dumps(config))
    card = write_model_card(moved).read_text()
    assert "| dinov2_vits14 | | `gone` | (cache no longer available) |" in card and "| 2 | 0.2 |" in card
    assert "**Teacher licence** (dinov2_vits14): unknown, its cache is gone" in card


BAD = {
    "missing file": (["predict", "{colour}", "{tmp}/nothing.png"], "does not exist"),
    "unreadable image": (["predict", "{colour}", "{tmp}/junk.png"], "could not be read as an image"),
    "folder without images": (["predict", "{colour}", "{tmp}/empty"], "holds no images"),
    "unfinished run": (["predict", "{tmp}/unfinished", "{tmp}/junk.png"], "not a finished medal run"),
    "npz without the split": (["predict", "{colour}", "{tmp}/test_only.npz", "--split", "train"], "has no train_images"),
    "not a dataset store": (["predict", "{colour}", "{tmp}/empty.zarr"], "is not a medal dataset store"),
    "store without the split": (["predict", "{colour}", "{tmp}/test_only.zarr", "--split", "val"], "has no val split"),
    "unknown format": (["export", "{colour}", "--format", "tflite", "--out", "{tmp}/x"], "--format must be one of"),
    "export of an unfinished run": (["export", "{tmp}/unfinished", "--format", "onnx", "--out", "{tmp}/x.onnx"],
                                    "not a finished medal run"),
}


def _files(*folders) -> dict:
    """Every file and folder under `folders`, with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name, runs, tmp_path, capsys, monkeypatch):
    """One line on stderr, nothing on stdout, and nothing written: not where --out points, not in the run."""
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.zarr").mkdir()
    zarr.create_array(tmp_path / "test_only.zarr" / "test" / "images", shape=(2, 28, 28, 3), dtype="uint8")
    (tmp_path / "unfinished").mkdir()
    shutil.copy(runs["colour"] / "config.json", tmp_path / "unfinished")
    np.savez(tmp_path / "test_only.npz", test_images=np.zeros((2, 28, 28, 3), np.uint8))
    args, expected = BAD[name]
    args = [a.format(colour=runs["colour"], tmp=tmp_path) for a in args]
    before = _files(tmp_path, runs["colour"])
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 1, (out, err)
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err and not out
    assert _files(tmp_path, runs["colour"]) == before, "a refused command wrote or changed files"
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.onnx").exists()
