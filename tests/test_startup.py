"""A CLI that answers at once (#24): `import medal`, `--help` and `medal cache ls/info` load no torch, timm,
medmnist or zarr, while the README's promises (`from medal import kd_loss`, medal's (28) ResNets in timm's
registry after `import medal`) keep working. Each check runs in a fresh interpreter, where sys.modules tells
what was imported; no test times anything (benchmarks/startup.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main

import medal
from medal.cache.catalog import FORMAT
from medal.cache.store import CacheWriter
from medal.cli import app

HEAVY = ("torch", "timm", "medmnist", "zarr")
REPO = Path(medal.__file__).resolve().parents[1]
REPORT_HEAVY = f"""
import atexit, sys
atexit.register(lambda: print("heavy:", ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))
"""
RUN_MEDAL = REPORT_HEAVY + "sys.argv = ['medal', *sys.argv[1:]]\nfrom medal.cli import main\nmain()\n"


def fresh(code: str, *args: str) -> tuple[str, list[str]]:
    """Run `python -c code args` in a new interpreter on this checkout; it must succeed: (stdout, heavy modules loaded)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("heavy:")]
    assert proc.returncode == 0 and lines, proc.stderr
    return proc.stdout, [m for m in lines[-1].removeprefix("heavy:").strip().split(",") if m]


def test_import_medal_is_light():
    _, heavy = fresh(REPORT_HEAVY + "import medal")
    assert heavy == []


def test_readme_promises_after_a_light_import():
    check = ("import medal, timm\n"
             "assert timm.create_model('resnet50_28', num_classes=3).fc.out_features == 3\n"
             "from medal import kd_loss\n"
             "from medal.losses.kd_loss import kd_loss as real\n"
             "assert kd_loss is real\n")
    _, heavy = fresh(REPORT_HEAVY + check)
    assert "timm" in heavy


def test_timm_imported_before_medal_still_gets_the_28_resnets():
    fresh(REPORT_HEAVY + "import timm, medal\nassert timm.is_model('resnet18_28') and timm.is_model('resnet10n_28')")


@pytest.mark.parametrize("command", [[], ["distill"], ["cache"]])
def test_help_loads_nothing_heavy_and_lists_every_command_and_option(command):
    out, heavy = fresh(RUN_MEDAL, *command, "--help")
    assert heavy == []
    group = typer.main.get_command(app)
    declared = group.commands[command[0]] if command else group
    if hasattr(declared, "commands"):
        names = [name for name, sub in declared.commands.items() if not sub.hidden]  # sweep-worker is internal
    else:
        names = [opt for p in declared.params for opt in p.opts + p.secondary_opts]
    assert len(names) > 1 and all(name in out for name in names)


ATTRS = {"dataset": "tinymnist", "teacher": "dinov2_vits14", "image_size": 28, "size": 28,
         "n_samples": {"train": 4, "val": 2, "test": 1}, "created": "2025-01-02T03:04:05+00:00",
         "head_metrics": {"val": {"auc": 0.5, "acc": 0.5}, "test": {"auc": 0.8125, "acc": 0.75}}}


@pytest.fixture
def one_cache(tmp_path) -> tuple[Path, str]:
    """A cache dir holding one tiny finished cache (no teacher run), beside a foreign folder and a partial one."""
    root, key = tmp_path / "caches", "tinymnist_28_dinov2_vits14_28_0123456789ab"
    with CacheWriter(root, key) as writer:
        writer.put("test/logits", np.zeros((1, 2), np.float32))
        writer.commit(ATTRS)
    (root / "foreign.zarr").mkdir()
    (root / ".other.zarr.partial").mkdir()
    return root, key


def test_cache_ls_on_an_empty_dir(tmp_path):
    out, heavy = fresh(RUN_MEDAL, "cache", "ls", "--cache-dir", str(tmp_path))
    assert heavy == []
    assert out == f"no teacher caches in {tmp_path}\n"


def test_cache_ls_and_info_read_the_provenance_without_zarr(one_cache):
    root, key = one_cache
    out, heavy = fresh(RUN_MEDAL, "cache", "ls", "--cache-dir", str(root))
    assert heavy == []
    assert out.splitlines() == ["| key | dataset | teacher | image size | samples | head test AUC | created |",
                                "|---|---|---|---|---|---|---|",
                                f"| {key} | tinymnist | dinov2_vits14 | 28 | 7 | 0.8125 | 2025-01-02T03:04:05+00:00 |"]
    out, heavy = fresh(RUN_MEDAL, "cache", "info", key[:12], "--cache-dir", str(root))
    assert heavy == []
    assert json.loads(out) == {"key": key, "path": str(root / f"{key}.zarr"), "medal_cache_format": FORMAT, **ATTRS}
