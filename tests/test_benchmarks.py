"""Smoke tests of the benchmarks: each script runs with --quick on the CPU and prints its table.

They run in a subprocess, as a user would start them, and check the table's rows and that
every measured figure is a positive number; with --append, that the header is written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, tmp_path: Path) -> tuple[dict[str, list[str]], str]:
    """(table rows keyed by their first cell, stdout) of `python benchmarks/NAME --quick --device cpu`."""
    results = tmp_path / "RESULTS.md"
    # kd_loss.py measures the device it finds; kd_kernel_compile.py compiles for sm_90 on any machine.
    device = [] if name in ("kd_loss.py", "kd_kernel_compile.py") else ["--device", "cpu"]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), "--quick", *device, "--append", str(results)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    written = results.read_text()
    assert written.startswith("# Benchmark results") and "command: `" in written and "device: CPU" in written
    assert proc.stdout.strip() in written
    return rows, proc.stdout


def number(cell: str) -> float:
    """The leading number of a cell such as '1,234', '0.142 s' or '3.2 ms'."""
    return float(cell.split()[0].replace(",", ""))


def test_train_step(tmp_path):
    rows, out = run_script("train_step.py", tmp_path)
    assert [k[:3] for k in rows] == ["(a)", "(b)", "(c)"]
    for cells in rows.values():
        ms, img_s, gflop = map(number, cells[:3])
        assert ms > 0 and img_s > 0 and gflop > 0
    gflop_b, gflop_c = (number(cells[2]) for cells in list(rows.values())[1:])
    assert gflop_c > gflop_b  # the online step's count includes the teacher forward
    assert "(b)/(a) step time:" in out and "(c)/(b) step time:" in out and "roofline: achieved" in out


def test_teacher_cache(tmp_path):
    rows, out = run_script("teacher_cache.py", tmp_path)
    starts = ["teacher pass", "whole stage 1", "cache read: train logits", "cache read: gather"]
    assert len(rows) == 4 and all(k.startswith(s) for k, s in zip(rows, starts))
    for cells in rows.values():
        assert number(cells[0]) > 0 and number(cells[1]) > 0 and number(cells[2]) > 0
    for key in starts[:2]:
        assert number(next(v for k, v in rows.items() if k.startswith(key))[3]) > 0  # bytes per image
    assert "roofline: achieved" in out


def test_sweep_cost(tmp_path):
    rows, out = run_script("sweep_cost.py", tmp_path)
    assert list(rows) == ["1", "5", "21"]
    teacher_once = {cells[0] for cells in rows.values()}
    assert len(teacher_once) == 1  # the teacher pass is counted once, whatever N
    for cells in rows.values():
        assert all(number(c) > 0 for c in cells[:5]) and number(cells[-1]) > 0
        assert cells[5] == "1 x 17,092"
    assert "measured per-step, extrapolated to N points" in out


def test_kd_loss(tmp_path):
    rows, out = run_script("kd_loss.py", tmp_path)
    assert set(rows) == {"eager", "compiled"}  # no CUDA: the kernel and Liger are GPU-only
    for cells in rows.values():
        assert cells[0] in ("bfloat16", "float32") and number(cells[3]) > 0 and number(cells[4]) > 0


def test_kd_loss_summary_ratios():
    """The GPU-only summary table: speed-ups are other / kernel, bandwidth the minimum bytes over time."""
    sys.path.insert(0, str(BENCHMARKS))
    from kd_loss import bytes_moved, summary

    results = {("bfloat16", 65536, 1000): {"triton": 0.1, "eager": 0.9, "compiled": 0.2}}
    lines = summary(results, peak_gbps=4800.0).splitlines()
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert lines[0].split("|")[5:7] == [" x compiled ", " x eager "]
    assert cells[4:6] == ["2.00", "9.00"]
    expected_pct = 100 * bytes_moved(65536, 1000, "bfloat16") / 1e-4 / 1e9 / 4800
    assert float(cells[6]) == round(expected_pct, 1) and 80 < expected_pct < 85


def test_kd_kernel_compile(tmp_path):
    rows, _ = run_script("kd_kernel_compile.py", tmp_path)
    assert set(rows) == {"multi-class", "multi-label", "backward scale"}
    for cells in rows.values():  # the last row of each kind: bf16, C=1000
        assert cells[:2] == ["bfloat16", "1000"] and cells[4:6] == ["16", "16"] and cells[7] == "0"
