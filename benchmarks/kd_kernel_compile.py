"""What the fused KD kernel compiles to on an H100/H200 (sm_90), read without a GPU.

Triton ships LLVM and ptxas, so the kernel compiles for sm_90 on any machine. This script
compiles it (and backward's in-place scaling kernel) at the launch configuration
`medal.losses.kd_triton` would use and reports, per task kind, dtype and width: the widest
global load and store (16 bytes means vector accesses), registers per thread and stack bytes
(non-zero means spills), and the SASS instructions a thread runs (the kernel has no loop at
one column tile), which bound how fast a kernel can issue when bytes are not the limit. On
the H200, v1 -> v2 cut the instruction count by a fifth and the bf16 time by a quarter. The
speed itself needs `benchmarks/kd_loss.py` on the GPU.

    python benchmarks/kd_kernel_compile.py [--quick] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import report, table  # noqa: E402

from medal.losses import kd_triton  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
DTYPES = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


def compile_kernel(multi_label: bool, dtype: str, n_cols: int, target: GPUTarget = SM90) -> tuple[object, dict]:
    """(compiled kernel, launch config) of the training-time launch for `dtype` logits of width n_cols."""
    kernel = kd_triton._kd_multilabel_kernel if multi_label else kd_triton._kd_multiclass_kernel
    config = kd_triton.launch_config(n_cols, multi_label)
    constexprs = {k: v for k, v in config.items() if k != "num_warps"} | {"STORE_GRAD": True}
    ty = DTYPES[dtype]
    pointers = {"s_ptr": f"*{ty}", "t_ptr": f"*{ty}", "y_ptr": "*fp32" if multi_label else "*i64",
                "loss_ptr": "*fp32", "grad_ptr": f"*{ty}"}
    signature = {**pointers, "n_rows": "i32", "row_units": "i32"}
    signature |= {name: "fp32" for name in ("temp", "inv_temp", "alpha", "inv_n", "grad_scale")}
    signature |= {name: "constexpr" for name in constexprs}
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(pointers))}  # torch allocations are 16-byte aligned
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=target, options={"num_warps": config["num_warps"]}), config


def compile_scale_kernel(dtype: str, n_cols: int, target: GPUTarget = SM90) -> object:
    """The backward's in-place scaling kernel, compiled for a (B, n_cols) gradient of `dtype`."""
    signature = {"x_ptr": f"*{DTYPES[dtype]}", "g_ptr": "*fp32", "pending": "fp32", "n_units": "i32",
                 "ALIGN": "constexpr", "BLOCK": "constexpr"}
    constexprs = {"ALIGN": kd_triton._row_alignment(n_cols), "BLOCK": kd_triton.SCALE_BLOCK}
    aligned = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    source = ASTSource(fn=kd_triton._scale_in_place_kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=target, options={"num_warps": 4})


def widest_access(ptx: str, op: str) -> int:
    """Bytes moved by the widest `ld.global` (op="ld") or `st.global` (op="st") in PTX text."""
    widths = [int(vec or 1) * int(bits) // 8
              for vec, bits in re.findall(rf"\b{op}\.global(?:\.[a-z_0-9]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx)]
    if not widths:
        raise ValueError(f"no {op}.global instruction in the PTX")
    return max(widths)


def cuobjdump(cubin: bytes, flag: str) -> str:
    """What cuobjdump (shipped with Triton) prints for a cubin with `flag`."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        return subprocess.run([str(tool), flag, fh.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers per thread and stack bytes."""
    text = cuobjdump(cubin, "--dump-resource-usage")
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", text)
    if not found:
        raise ValueError(f"cuobjdump printed no resource usage: {text[-300:]!r}")
    return {"registers": int(found[1]), "stack": int(found[2])}


def sass_instructions(cubin: bytes) -> int:
    """Machine instructions in the cubin, NOP padding left out."""
    lines = re.findall(r"^\s*/\*[0-9a-f]{4,}\*/\s+(\S.*?);", cuobjdump(cubin, "-sass"), flags=re.MULTILINE)
    if not lines:
        raise ValueError("cuobjdump printed no SASS")
    return sum(not line.startswith("NOP") for line in lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two widths, bf16 only")
    ap.add_argument("--append", type=Path, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    widths = (14, 1000) if args.quick else (8, 14, 1000, 4096, 32000)
    dtypes = ("bfloat16",) if args.quick else ("bfloat16", "float32", "float16")
    rows = []
    for kind in ("multi-class", "multi-label", "backward scale"):
        for dtype in dtypes:
            for n_cols in widths:
                if kind == "backward scale":
                    compiled = compile_scale_kernel(dtype, n_cols)
                    layout, warps = f"{kd_triton.SCALE_BLOCK} elements", 4
                else:
                    compiled, config = compile_kernel(kind == "multi-label", dtype, n_cols)
                    layout = f"{config['BLOCK_B']} x {config['BLOCK_C']} x {config['NUM_TILES']}"
                    warps = config["num_warps"]
                usage = resource_usage(compiled.asm["cubin"])
                ptx = compiled.asm["ptx"]
                rows.append([kind, dtype, n_cols, layout, warps, widest_access(ptx, "ld"), widest_access(ptx, "st"),
                             usage["registers"], usage["stack"], sass_instructions(compiled.asm["cubin"])])
    headers = ["kind", "dtype", "C", "rows x cols x tiles", "warps", "widest load B", "widest store B",
               "registers", "stack B", "SASS instructions a thread"]
    body = table(headers, rows, right=[False, False] + [True] * 8)
    report("kd kernel compiled for sm_90 (static, no GPU)", body, args, device=torch.device("cpu"))
    return body


if __name__ == "__main__":
    main()
