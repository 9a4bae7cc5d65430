"""`medal demo` offline: random-teacher fallback, the CE baseline trained like the distilled student, the table."""

from __future__ import annotations

import json

from conftest import run_cli

from medal.pipeline import cache_teacher
from medal.runtime.errors import MedalError


def test_offline_demo_compares_baseline_and_distilled(tmp_path, capsys, monkeypatch):
    real = cache_teacher.load_teacher

    def offline(teacher, weights, image_size):
        if weights is None:  # what load_teacher says when the hub cannot be reached
            raise MedalError(f"DINOv2 weights for {teacher} could not be downloaded (LocalEntryNotFoundError); pass --weights FILE.")
        return real(teacher, weights, image_size)

    monkeypatch.setattr(cache_teacher, "load_teacher", offline)
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", "--out", out, "--epochs", "1", "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert "RANDOMLY INITIALISED" in err and "[5/5]" in err

    rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith(("| run", "| image"))]
    assert [r.split(" | ")[0] for r in rows][:3] == ["| teacher random dinov2_vits14 + linear head",
                                                 "| CE baseline resnet10n_28 (alpha=1)",
                                                 "| distilled resnet10n_28 (t=2, alpha=0.2)"]
    assert "says nothing about DINOv2" in stdout
    assert len(rows) == 3 + 4 and "onnxruntime check: max |p_onnx - p_torch|" in stdout  # predicted PNGs, export
    assert (out / "student.onnx").is_file() and (out / "distilled" / "MODEL_CARD.md").is_file()

    baseline, distilled = (json.loads((out / name / "config.json").read_text()) for name in ("ce_baseline", "distilled"))
    assert baseline["alpha"] == 1 and baseline["cache_key"] is None
    assert distilled["alpha"] == 0.2 and distilled["cache_key"]
    for key in ("student", "seed", "epochs", "batch_size", "lr", "milestones", "image_size", "data_fingerprint"):
        assert baseline[key] == distilled[key], key
