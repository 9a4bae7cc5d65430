"""The fault matrix (benchmarks/fault_matrix.py): its comparison of outputs, and a small matrix on `distill --alpha 1`.

The comparison is checked on output trees built here, against differences written down by hand;
the matrix runs as a user starts it, K=2 (one SIGKILL, one SIGTERM), and must find every rerun
bit-identical to the uninterrupted run, with nothing left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from fault_compare import differences, leftovers


def outputs(folder: Path, seconds: str = "1.5", created: str = "2026-01-01T00:00:00+00:00") -> Path:
    """A run directory and a Zarr group's metadata, as medal writes them."""
    run = folder / "run"
    run.mkdir(parents=True)
    (run / "history.csv").write_text(f"epoch,lr,train_loss,val_auc,val_acc,seconds\n1,0.001,0.5,0.75,0.5,{seconds}\n")
    (run / "history.png").write_bytes(seconds.encode())  # its bytes may differ
    (run / "metrics.json").write_text('{"test": {"auc": 0.75}}\n')
    torch.save({"model": {"w": torch.arange(6, dtype=torch.float32)}, "epoch": 1, "val": {"auc": 0.75}}, run / "best.pt")
    group = folder / "cache" / "key.zarr"
    group.mkdir(parents=True)
    (group / "zarr.json").write_text(json.dumps({"zarr_format": 3, "attributes": {"created": created, "teacher": "vits14"}}))
    return folder


def test_compare_ignores_timing_and_dates_and_nothing_else(tmp_path):
    reference = outputs(tmp_path / "reference")
    got = outputs(tmp_path / "got", seconds="9.9", created="2027-05-05T00:00:00+00:00")
    assert differences(reference, got) == [] and leftovers(reference, got) == []

    state = torch.load(got / "run" / "best.pt")
    state["model"]["w"][3] = torch.nextafter(state["model"]["w"][3], torch.tensor(10.0))  # one ulp
    torch.save(state, got / "run" / "best.pt")
    (got / "run" / "metrics.json").write_text('{"test": {"auc": 0.76}}\n')
    (got / "run" / "history.csv").write_text("epoch,lr,train_loss,val_auc,val_acc,seconds\n1,0.001,0.5,0.76,0.5,1.5\n")
    meta = json.loads((got / "cache" / "key.zarr" / "zarr.json").read_text())
    meta["attributes"]["teacher"] = "vitb14"
    (got / "cache" / "key.zarr" / "zarr.json").write_text(json.dumps(meta))
    (got / "run" / "test_scores.npy").write_bytes(b"")
    (got / "run" / "history.png").unlink()
    (got / ".run.partial").mkdir()
    (got / "run" / ".best.pt.tmp-1-ab").write_bytes(b"")
    assert differences(reference, got) == [
        "run/history.png: missing",
        "run/test_scores.npy: not in the uninterrupted run",
        "cache/key.zarr/zarr.json: metadata or attributes differ (created aside)",
        "run/best.pt: tensor model.w differs",
        "run/history.csv: rows differ (seconds aside)",
        "run/metrics.json: bytes differ",
    ]
    assert leftovers(reference, got) == [".run.partial", "run/.best.pt.tmp-1-ab"]


@pytest.mark.slow
def test_fault_matrix_distill_is_identical_after_each_kill(tmp_path):
    out = tmp_path / "matrix"
    # seed 20 puts the two moments at 69% and 56% of the uninterrupted run's wall time
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "fault_matrix.py"), "--k", "2", "--seed", "20",
                           "--commands", "distill-ce", "--out", str(out)], capture_output=True, text=True, timeout=1200, check=False)
    report = json.loads((out / "fault_matrix.json").read_text())
    (row,) = report["rows"]
    assert row["kills"] == 2 and row["signals"] == {"SIGKILL": 1, "SIGTERM": 1}
    assert row["identical"] == 2, [t["differences"] for t in row["trials"]]
    assert row["problems"] == [], row["problems"]
    assert row["resumed"] == row["saved_progress"], "a rerun started over although progress was saved"
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("| `distill --alpha 1` |"))
    assert "| 2 (1 + 1) |" in line and "| 2 of 2 |" in line and line.endswith("| none |")
