"""Smoke tests of the benchmarks: each script runs with --quick on the CPU and prints its table.

They run in a subprocess, as a user would start them, and check the table's rows and that
every measured figure is a positive number; with --append, that the header is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, tmp_path: Path) -> tuple[dict[str, list[str]], str]:
    """(table rows keyed by their first cell, stdout) of `python benchmarks/NAME --quick --device cpu`."""
    results = tmp_path / "RESULTS.md"
    # kd_loss.py measures the device it finds; kd_kernel_compile.py compiles for sm_90 on any machine.
    device = [] if name in ("kd_loss.py", "kd_kernel_compile.py") else ["--device", "cpu"]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), "--quick", *device, "--append", str(results)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
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
    assert [k[:3] for k in rows] == ["(a)", "(b)", "(c)", "(d)"]
    for cells in rows.values():
        ms, img_s, gflop = map(number, cells[:3])
        assert ms > 0 and img_s > 0 and gflop > 0
    gflop_b, gflop_c, gflop_d = (number(cells[2]) for cells in list(rows.values())[1:])
    assert gflop_c > gflop_b == gflop_d  # the online step's count includes the teacher forward
    assert "(b)/(a) step time:" in out and "(c)/(b) step time:" in out and "roofline: achieved" in out
    assert "(d)/(b) step time:" in out


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
        # cells[3], online's teacher share, is a difference of two timed steps: on a loaded machine it can be < 0
        assert all(number(cells[i]) > 0 for i in (0, 1, 2, 4)) and number(cells[-1]) > 0
        number(cells[3])
        assert cells[5] == "1 x 17,092"
    assert "measured per-step, extrapolated to N points" in out


def test_kd_loss(tmp_path):
    rows, out = run_script("kd_loss.py", tmp_path)
    assert set(rows) == {"eager", "compiled"}  # no CUDA: the kernel and Liger are GPU-only
    for cells in rows.values():
        assert cells[0] in ("bfloat16", "float32") and number(cells[3]) > 0 and number(cells[5]) > 0
        assert cells[4] == "n/a"  # device time (host overhead hidden) is CUDA's


def test_kd_loss_summary_ratios():
    """The GPU-only summary table: speed-ups are other / kernel, bandwidth the minimum bytes over time."""
    sys.path.insert(0, str(BENCHMARKS))
    from kd_loss import bytes_moved, summary

    results = {("bfloat16", 65536, 1000): {
        "triton": {"launched": 0.3, "device": 0.1},
        "eager": {"launched": 0.9, "device": 0.9},
        "compiled": {"launched": 0.6, "device": 0.2},
        "liger": {"launched": 1.2, "device": None},  # it syncs: no device time
    }}
    lines = summary(results, peak_gbps=4800.0).splitlines()
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert lines[0].split("|")[4:8] == [" triton device ms ", " x compiled ", " x eager ", " x liger "]
    assert cells[4:7] == ["2.00", "9.00", ""]
    expected_pct = 100 * bytes_moved(65536, 1000, "bfloat16") / 1e-4 / 1e9 / 4800
    assert float(cells[7]) == round(expected_pct, 1) and 80 < expected_pct < 85
    launched = [c.strip() for c in summary(results, 4800.0, "launched").splitlines()[2].strip("|").split("|")]
    assert launched[3:7] == ["0.3000", "2.00", "3.00", "4.00"]


def test_kd_kernel_compile(tmp_path):
    rows, _ = run_script("kd_kernel_compile.py", tmp_path)
    assert set(rows) == {"multi-class", "multi-label", "backward scale"}
    for cells in rows.values():  # the last row of each kind: bf16, C=1000
        assert cells[:2] == ["bfloat16", "1000"] and cells[4:6] == ["16", "16"] and cells[7] == "0"


def test_kd_kernel_tune(tmp_path):
    """Smoke run under Triton's interpreter: each candidate tiling launches the real kernel."""
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "kd_kernel_tune.py"), "--quick", "--classes", "14",
                           "--append", str(results)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in results.read_text().splitlines() if line.startswith("| bfloat16 | 14 |")]
    assert len(lines) == 2 and all(number(line.split("|")[10]) > 0 for line in lines)
    assert "fastest BLOCK_B=" in proc.stdout

    sys.path.insert(0, str(BENCHMARKS))
    from kd_kernel_tune import candidates

    from medal.losses.kd_triton import launch_config

    for c in (2, 14, 1000):
        configs = candidates(c)
        assert launch_config(c, multi_label=False) in configs
        assert all(1 <= cfg["num_warps"] <= 32 and cfg["BLOCK_B"] * cfg["BLOCK_C"] <= 8192 for cfg in configs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_ms_hides_host_overhead():
    """A step whose host time (a 10 ms Python sleep) dwarfs its GPU work is timed by the GPU
    work alone (10 such reps outlast the first stall of 2**26 GPU cycles, so the retry is
    exercised too); a step that reads a value back to the host has no device time."""
    sys.path.insert(0, str(BENCHMARKS))
    from common import device_ms

    x = torch.zeros(64 * 2**20, dtype=torch.uint8, device="cuda")

    def host_heavy() -> None:
        time.sleep(0.01)
        x.add_(1)  # 128 MB moved: tens of microseconds on an H100

    ms = device_ms(host_heavy)
    assert ms is not None and 0 < ms < 0.5
    assert device_ms(lambda: x.sum().item()) is None
