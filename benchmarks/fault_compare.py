"""What "identical" means in the fault matrix: every output file of a rerun against an uninterrupted run.

Both runs wrote into the same folder path (one after the other), so paths recorded in the outputs
(config.json, metrics.json, sweep.json, cache attributes) are the same and compared like the rest.

Visible files (no path component starting with ".") are outputs and must exist in both trees:
- `history.csv`: every column but `seconds` (wall time per epoch);
- `history.png`: present; its bytes are not compared (a plot of the numbers checked above);
- `*.pt` (best.pt): loaded; tensors equal bit for bit (dtype, shape, values), everything else ==;
- `zarr.json` (Zarr metadata, attributes included): parsed; `attributes.created` (a date) left out;
- everything else byte for byte: metrics.json, config.json, test_scores.npy, MODEL_CARD.md,
  sweep.json, every Zarr chunk (cache features/logits/labels/head, dataset images/labels).

Hidden entries (partial folders, claims, locks, logs, temporary files) are no output: those the
uninterrupted run did not leave are reported apart, as leftovers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SKIPPED = {"history.png"}  # compared by presence only
TIMING_COLUMNS = {"seconds"}  # history.csv
UNDATED = ("created",)  # zarr.json attributes


def tree(root: Path) -> tuple[set[str], set[str]]:
    """(visible files, hidden entries) under root, as paths relative to it; a hidden folder is not entered."""
    visible: set[str] = set()
    hidden: set[str] = set()
    if not root.exists():
        return visible, hidden
    stack = [root]
    while stack:
        for path in stack.pop().iterdir():
            rel = str(path.relative_to(root))
            if path.name.startswith("."):
                hidden.add(rel)
            elif path.is_dir():
                stack.append(path)
            else:
                visible.add(rel)
    return visible, hidden


def differences(reference: Path, got: Path) -> list[str]:
    """One line per output that is missing, extra or different in `got`; empty when identical."""
    ref_files, _ = tree(reference)
    got_files, _ = tree(got)
    found = [f"{rel}: missing" for rel in sorted(ref_files - got_files)]
    found += [f"{rel}: not in the uninterrupted run" for rel in sorted(got_files - ref_files)]
    for rel in sorted(ref_files & got_files):
        why = file_difference(reference / rel, got / rel)
        if why:
            found.append(f"{rel}: {why}")
    return found


def leftovers(reference: Path, got: Path) -> list[str]:
    """Hidden entries in `got` that the uninterrupted run did not leave."""
    return sorted(tree(got)[1] - tree(reference)[1])


def file_difference(a: Path, b: Path) -> str | None:
    """Why two output files differ, or None."""
    if a.name in SKIPPED:
        return None
    if a.name == "history.csv":
        return None if history(a) == history(b) else "rows differ (seconds aside)"
    if a.suffix == ".pt":
        return value_difference(load_torch(a), load_torch(b), "")
    if a.name == "zarr.json":
        return None if undated(a) == undated(b) else "metadata or attributes differ (created aside)"
    if a.read_bytes() != b.read_bytes():
        return "bytes differ"
    return None


def history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def undated(path: Path) -> dict:
    meta = json.loads(path.read_text())
    for key in UNDATED:
        meta.get("attributes", {}).pop(key, None)
    return meta


def load_torch(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def value_difference(a: Any, b: Any, where: str) -> str | None:
    """The first place (a key path) where two loaded objects differ; tensors bit for bit."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return None if same else f"tensor {where or '.'} differs"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"keys of {where or '.'} differ"
        for key in a:
            why = value_difference(a[key], b[key], f"{where}.{key}" if where else str(key))
            if why:
                return why
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"length of {where or '.'} differs"
        for i, (x, y) in enumerate(zip(a, b)):
            why = value_difference(x, y, f"{where}[{i}]")
            if why:
                return why
        return None
    return None if type(a) is type(b) and a == b else f"{where or '.'} differs ({a!r} != {b!r})"
