"""`medal export`: a finished run's student for other runtimes, checked against PyTorch after writing.

- onnx, torchscript: one graph from raw pixels to probabilities. Input `images`: uint8
  (batch, size, size, channels) at the dataset's native size and channels, channels last, as a
  MedMNIST .npz holds them; medal's preprocessing (channel repeat, bilinear resize, normalise)
  and the softmax (sigmoid for multi-label data) are inside. Output `probabilities`: float32
  (batch, classes). The batch axis is dynamic.
- safetensors: the bare timm student (normalised float input at image_size, logits out), weights
  under timm's key names plus a config.json in timm's pretrained-config form.

Every export carries the preprocessing it expects and the label names: in ONNX metadata_props,
in TorchScript's extra files, in config.json; onnx and torchscript also get them beside the
file as OUT.json. Each is checked on the run's first test images against medal's own `predict`.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medal.data.medmnist import npz_name
from medal.data.preprocess import to_device
from medal.deploy.inputs import Converter, read_npz, read_store
from medal.deploy.student import Student, load_student, preprocessing
from medal.pipeline.evaluate import predict, scores_from_logits
from medal.runtime.errors import MedalError
from medal.runtime.io import atomic, write_json
from medal.runtime.version import __version__

FORMATS = ("onnx", "torchscript", "safetensors")
TOLERANCE, TOLERANCE_TEXT = 1e-4, "1e-4"
CHECK_IMAGES = 64
CPU = torch.device("cpu")


class Deployable(nn.Module):
    """uint8 (B, size, size, C) pixels -> probabilities: medal's preprocessing, the student and the softmax in one graph."""

    def __init__(self, student: Student):
        super().__init__()
        self.model, self.prep, self.task = student.model, student.prep, student.config["task"]
        self.eval().requires_grad_(False)  # an inference graph: its outputs must not ask for gradients

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return scores_from_logits(self.model(self.prep(images.permute(0, 3, 1, 2))), self.task)


@dataclass
class Exported:
    format: str
    files: list[Path]
    check: str  # the line that says how closely the export matches PyTorch


def metadata(student: Student, graph: bool) -> dict:
    """What the export is, where it came from, and what input it expects."""
    c = student.config
    io_spec = ({"input": f"images: uint8 (batch, {student.size}, {student.size}, {student.facts.channels}), channels last, "
                         "at native size and channels (see preprocessing.to_native); preprocessing.to_input is inside",
                "output": "probabilities: float32 (batch, classes), in label_names order"} if graph else
               {"input": "float32 (batch, *input_size) after preprocessing.to_native and preprocessing.to_input",
                "output": "logits: float32 (batch, classes); apply preprocessing.output for probabilities"})
    return {"medal_version": __version__, "run": student.path.name, "student": c["student"],
            "teachers": c.get("teachers") or [], "cache_keys": c.get("cache_keys") or [], "t": c["t"],
            "alpha": c["alpha"], "seed": c["seed"], "data_md5": c["data_md5"],
            "metrics": {split: student.metrics[split] for split in ("test", "val") if split in student.metrics},
            **io_spec, "label_names": student.facts.label_names, "preprocessing": preprocessing(student)}


def check_images(student: Student, root: Path | None) -> np.ndarray:
    """The run's first test images, native: the real batch every export is checked on."""
    convert = Converter(student.size, student.facts.channels, student.facts.name)
    stored = student.config.get("data_path")
    if stored and Path(stored).suffix == ".zarr":  # an imported dataset
        path = Path(root) / Path(stored).name if root else Path(stored)
        if not path.is_dir():
            raise MedalError(f"the export is checked on the run's test images, but {path} is missing; "
                             f"pass --root DIR where {path.name} lies.")
        return np.asarray(read_store(path, "test", convert, 0).parts[0][:CHECK_IMAGES])
    path = Path(root or student.config["data_root"]) / npz_name(student.facts.name, student.size)
    if not path.is_file():
        raise MedalError(f"the export is checked on the run's test images, but {path} is missing; "
                         f"pass --root DIR where {path.name} lies.")
    return read_npz(path, "test", convert).parts[0][:CHECK_IMAGES]


def compare(kind: str, name: str, got: np.ndarray, expected: np.ndarray) -> str:
    diff = float(np.abs(got - expected).max())
    said = f"max |p_{name} - p_torch| = {diff:.1e} on {len(expected)} test images"
    if not diff < TOLERANCE:
        raise MedalError(f"{kind} check failed: {said} (>= {TOLERANCE_TEXT}); nothing was written.")
    return f"{kind} check: {said} (< {TOLERANCE_TEXT})"


def export_onnx(student: Student, out: Path, images: np.ndarray, expected: np.ndarray) -> Exported:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter needs it)
    except ImportError as exc:
        raise MedalError(f"--format onnx needs the onnx extra ({exc.name} is missing): pip install 'medal[onnx]'.") from None
    from torch.export import Dim

    meta = metadata(student, graph=True)
    example = torch.from_numpy(images[:2])
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Deployable(student), (example,), None, input_names=["images"],
                                    output_names=["probabilities"], dynamic_shapes={"images": {0: Dim("batch")}},
                                    dynamo=True, verbose=False)
    program.model.metadata_props.update({"medal": json.dumps(meta), "label_names": json.dumps(meta["label_names"])})
    result: dict[str, str] = {}

    def save_checked(tmp: Path) -> None:
        program.save(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        result["check"] = compare("onnxruntime", "onnx", session.run(None, {"images": images})[0], expected)

    atomic(out, save_checked)
    return Exported("onnx", [out, write_json(out.with_name(out.name + ".json"), meta)], result["check"])


def export_torchscript(student: Student, out: Path, images: np.ndarray, expected: np.ndarray) -> Exported:
    meta = metadata(student, graph=True)
    result: dict[str, str] = {}

    def save_checked(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, yet still what C++ and mobile load
            traced = torch.jit.trace(Deployable(student), torch.from_numpy(images[:2]))
            torch.jit.save(traced, str(tmp), _extra_files={"medal.json": json.dumps(meta)})
            reloaded = torch.jit.load(str(tmp), map_location="cpu")
            got = reloaded(torch.from_numpy(images)).numpy()
        result["check"] = compare("torchscript", "torchscript", got, expected)

    atomic(out, save_checked)
    return Exported("torchscript", [out, write_json(out.with_name(out.name + ".json"), meta)], result["check"])


def timm_config(student: Student) -> dict:
    """config.json in timm's pretrained-config form (what `save_for_hf` writes), plus medal's notes."""
    model, c, labels = student.model, student.config, student.facts.label_names
    prep = preprocessing(student)
    return {
        "architecture": c["student"],
        "num_classes": len(labels),
        "num_features": int(model.num_features),
        "label_names": labels,
        "model_args": {"num_classes": len(labels), "in_chans": student.in_chans},
        "pretrained_cfg": {
            "tag": "medal", "custom_load": False, "input_size": prep["input_size"], "fixed_input_size": False,
            "interpolation": prep["interpolation"], "crop_pct": 1.0, "crop_mode": "center", "mean": prep["mean"],
            "std": prep["std"], "num_classes": len(labels), "first_conv": model.pretrained_cfg["first_conv"],
            "classifier": model.pretrained_cfg["classifier"],
        },
        "medal": metadata(student, graph=False),
    }


def load_timm(weights: Path, config: dict) -> nn.Module:
    """The documented way back: timm's own loader, with the weights as a file overlay."""
    import timm

    cfg = config["pretrained_cfg"]
    return timm.create_model(config["architecture"], pretrained=True, num_classes=config["num_classes"],
                             in_chans=cfg["input_size"][0],
                             pretrained_cfg_overlay=dict(file=str(weights), num_classes=config["num_classes"],
                                                         input_size=tuple(cfg["input_size"]))).eval()


def export_safetensors(student: Student, out: Path, images: np.ndarray, expected: np.ndarray) -> Exported:
    from safetensors.torch import save

    if out.exists() and not out.is_dir():
        raise MedalError(f"--out {out} is a file; safetensors exports go to a directory (model.safetensors + config.json).")
    out.mkdir(parents=True, exist_ok=True)
    config = timm_config(student)
    state = {k: v.detach().cpu().contiguous() for k, v in student.model.state_dict().items()}
    weights = atomic(out / "model.safetensors", lambda tmp: tmp.write_bytes(save(state, metadata={"format": "pt"})))
    files = [weights, write_json(out / "config.json", config)]
    try:
        got = predict(load_timm(weights, config), to_device(images, CPU), student.prep, student.config["task"], CPU)
        check = compare("timm", "timm", got, expected)
    except MedalError:
        for f in files:
            f.unlink(missing_ok=True)
        raise
    return Exported("safetensors", files, check)


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "safetensors": export_safetensors}


def run_export(run: Path, fmt: str, out: Path, root: Path | None = None) -> Exported:
    """Export on the CPU (what other runtimes compare against), checked on up to 64 test images."""
    if fmt not in FORMATS:
        raise MedalError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    student = load_student(run, CPU)
    images = check_images(student, root)
    expected = predict(student.model, to_device(images, CPU), student.prep, student.config["task"], CPU)
    out = Path(out)
    if fmt != "safetensors":
        if out.is_dir():
            raise MedalError(f"--out {out} is a directory; name the {fmt} file to write.")
        out.parent.mkdir(parents=True, exist_ok=True)
    return EXPORTERS[fmt](student, out, images, expected)
