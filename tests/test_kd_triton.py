"""The fused Triton distillation kernel against the independent float64 reference.

On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which must be
set before triton is first imported; pytest has usually imported torch and triton by
then, so the comparison runs in a fresh interpreter: this very file run as a script
(`python tests/test_kd_triton.py multi-class`), which prints a JSON summary. On a CUDA
machine the `gpu` tests run the compiled kernel in-process.

Tolerances (kernel vs reference evaluated in float64 on the same, already-rounded inputs;
max|grad| is floored at the un-cancelled gradient size, 2.5 * (alpha + (1 - alpha) t) / n):
  loss, every dtype:     rtol 2e-5, atol 1e-6 * (alpha + (1 - alpha) t^2) (fp32 compute whatever
                         the input; the KL round-off grows with its t^2 weight, and on GPU
                         exp / log are the fast approximate instructions)
  gradient fp32:         max error <= 1e-5 * max|grad|
  gradient fp16:         max error <= 1e-3 * max|grad| + 2^-24 (stored in fp16 without the 1/B, then
                         scaled and rounded again: two half-ulp roundings, 2^-10 relative; 2^-24 is
                         fp16's subnormal step, which 1/(B C) gradients reach)
  gradient bf16:         max error <= 1.2e-2 * max|grad| (stored in bf16: one bf16 ulp, 2^-7 relative, as
                         the interpreter truncates on casts where the GPU rounds to nearest, plus the
                         half-ulp rounding of the backward's grad_output multiply)
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = ("multi-class", "multi-label")
LOSS_RTOL, LOSS_ATOL = 2e-5, 1e-6
GRAD_REL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1.2e-2}
GRAD_FLOOR = {"float16": 2.0**-24}  # fp16's smallest subnormal: 1/(B C)-sized gradients round to it


def _check(
    case, got_loss, got_grad, ref_loss, ref_grad, dtype_name: str, loss_unit: float, grad_unit: float
) -> str | None:
    """None when the kernel's loss and gradient match the reference, else a description.

    loss_unit = alpha + (1 - alpha) t^2 scales the absolute loss tolerance (the KL term's
    fp32 round-off is multiplied by t^2). Gradient errors are measured against
    max(max |grad|, grad_unit), grad_unit being the size a gradient entry has before
    cancellation (e.g. sigmoid(7) - 1 loses fp32 digits).
    """
    import torch

    if not torch.isfinite(got_loss).all() or not torch.isfinite(got_grad).all():
        return f"{case}: non-finite loss {got_loss.item()} or gradient"
    loss_err = abs(got_loss.double().item() - ref_loss.item())
    if loss_err > LOSS_ATOL * loss_unit + LOSS_RTOL * abs(ref_loss.item()):
        return f"{case}: loss {got_loss.item()!r} vs reference {ref_loss.item()!r}"
    scale = max(ref_grad.abs().max().item(), grad_unit)
    grad_err = (got_grad.double().cpu() - ref_grad.cpu()).abs().max().item()
    if grad_err > GRAD_REL[dtype_name] * scale + GRAD_FLOOR.get(dtype_name, 0.0):
        return f"{case}: gradient max error {grad_err:.3g} vs max |grad| {scale:.3g}"
    return None


def run_cases(kind: str, device: str = "cpu", big: bool = False) -> dict:
    """Compare kernel and reference over the case grid of one task kind; returns a summary."""
    import torch

    sys.path.insert(0, str(HERE))
    from test_kd_loss import ALPHAS, LOGIT_KINDS, TEMPERATURES, make_case, reference_kd_loss

    from medal.losses import kd_triton
    from medal.losses.kd_triton import KDLossFunction

    production_elems = kd_triton.ELEMS_PER_PROGRAM

    multi_label = kind == "multi-label"
    grid = list(itertools.product(TEMPERATURES, ALPHAS))
    cases = []  # (logit kind, B, C, dtype, t, alpha, max_block_c)
    # fp32: every (t, alpha) for every width, batch size and logit kind (for C=1000, the
    # interpreter's slowest, the batch size cycles through the (t, alpha) grid instead).
    for c, b, logits in itertools.product((2, 7, 14), (1, 3, 33), LOGIT_KINDS):
        cases += [(logits, b, c, torch.float32, t, alpha, None) for t, alpha in grid]
    for logits in LOGIT_KINDS:
        cases += [(logits, (1, 3, 33)[i % 3], 1000, torch.float32, t, alpha, None) for i, (t, alpha) in enumerate(grid)]
    # Column-tile loop (C above the tile cap), forced with a small cap.
    for c, logits in itertools.product((1000, 3000), LOGIT_KINDS):
        cases += [(logits, 3, c, torch.float32, t, alpha, 256) for t, alpha in [(0.5, 0.2), (8.0, 0.0), (1.0, 1.0)]]
    # Half precisions: every logit kind, a spread of (t, alpha).
    for dtype, c, logits in itertools.product((torch.bfloat16, torch.float16), (7, 1000), LOGIT_KINDS):
        cases += [(logits, b, c, dtype, t, alpha, None) for b, (t, alpha) in zip((33, 1, 3), grid[1::4])]
    if big:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            cases += [("random", 4096, 1000, dtype, 2.0, 0.2, None), ("extreme", 4096, 1000, dtype, 0.5, 0.2, None)]
            cases += [("random", 4096, 14, dtype, 8.0, 0.2, None), ("one-hot-teacher", 65536, 8, dtype, 1.0, 0.0, None)]

    failures = []
    for n, (logits, b, c, dtype, t, alpha, max_block_c) in enumerate(cases):
        # The interpreter pays per program: the big fp32 grid runs with 4x taller row blocks
        # on CPU; the other cases (and every case on GPU) use the production block sizes.
        wide = device == "cpu" and dtype == torch.float32 and max_block_c is None
        kd_triton.ELEMS_PER_PROGRAM = 4 * production_elems if wide else production_elems
        s, z_t, y = make_case(logits, b, c, multi_label, seed=n, dtype=dtype, device=device)
        s.requires_grad_(True)
        z_t.requires_grad_(True)
        extra = () if max_block_c is None else (max_block_c,)
        loss = KDLossFunction.apply(s, z_t, y, t, alpha, multi_label, *extra)
        # grad_output alternates: 1 (the kernel skips the scaling) and 2.5 (it scales in place).
        grad_out = 1.0 if n % 2 else 2.5
        (grad_out * loss).backward()
        s_ref = s.detach().double().requires_grad_(True)
        ref = reference_kd_loss(s_ref, z_t.detach(), y, t, alpha, multi_label)
        (grad_out * ref).backward()
        name = str(dtype).removeprefix("torch.")
        case = f"{kind} {logits} B={b} C={c} {name} t={t} alpha={alpha} tile_cap={max_block_c} grad_out={grad_out}"
        unit = grad_out * (alpha + (1 - alpha) * t) / (b * c if multi_label else b)
        problem = _check(case, loss, s.grad, ref.detach(), s_ref.grad, name, alpha + (1 - alpha) * t * t, unit)
        if problem is None and (s.grad.dtype != dtype or loss.dtype != torch.float32 or z_t.grad is not None):
            problem = f"{case}: grad dtype {s.grad.dtype}, loss dtype {loss.dtype}, teacher grad {z_t.grad is not None}"
        if problem:
            failures.append(problem)
    kd_triton.ELEMS_PER_PROGRAM = production_elems
    return {"cases": len(cases), "failures": failures}


def run_dispatch_check() -> list[str]:
    """`kd_loss` with MEDAL_KD_KERNEL=triton reaches the kernel (the interpreter runs CPU tensors)."""
    import torch

    sys.path.insert(0, str(HERE))
    from test_kd_loss import make_case, reference_kd_loss

    from medal.losses.kd_loss import kd_loss

    os.environ["MEDAL_KD_KERNEL"] = "triton"
    s, z_t, y = make_case("random", 5, 9, False, seed=1)
    s.requires_grad_(True)
    loss = kd_loss(s, z_t, y, t=1, alpha=0.2)  # int t: converted to float, no specialisation
    ref = reference_kd_loss(s, z_t, y, 1.0, 0.2, False)
    problems = []
    if loss.grad_fn is None or "KDLossFunction" not in type(loss.grad_fn).__name__:
        problems.append(f"kd_loss did not dispatch to the kernel: grad_fn {loss.grad_fn}")
    if abs(loss.item() - ref.item()) > 1e-5 * abs(ref.item()):
        problems.append(f"dispatched loss {loss.item()} vs reference {ref.item()}")
    with torch.no_grad():
        nograd = kd_loss(s, z_t, y, t=1.0, alpha=0.2)
    if abs(nograd.item() - loss.item()) > 0:
        problems.append("loss under no_grad differs")
    teacher_only = kd_loss(s.detach(), z_t.clone().requires_grad_(True), y, t=1.0, alpha=0.2)
    teacher_only.backward()  # the student needs no gradient: backward must pass, not complain
    loss.backward(retain_graph=True)
    try:
        loss.backward()
        problems.append("a second backward through the same graph reused the handed-over gradient")
    except RuntimeError as exc:
        if "one backward per forward" not in str(exc):
            problems.append(f"second backward failed with an unexpected error: {exc}")
    return problems


def run_scale_check(device: str = "cpu") -> list[str]:
    """Backward's in-place scaling with fewer programs than blocks (each program loops over
    several, as at B * C above SCALE_PROGRAMS * SCALE_BLOCK) and a short last block; and a
    factor of 1, which leaves the gradient untouched."""
    import torch

    from medal.losses.kd_triton import _scale_in_place_kernel

    problems = []
    for factor, dtype in ((2.5, torch.float32), (0.5, torch.bfloat16), (1.0, torch.float32)):
        x = torch.arange(1, 201, dtype=torch.float32, device=device).to(dtype)  # 12.5 blocks of 16
        g = torch.tensor(factor / 4, dtype=torch.float32, device=device)
        _scale_in_place_kernel[(3,)](x, g, 4.0, 200 // 8, ALIGN=8, BLOCK=16)
        expected = (torch.arange(1, 201, dtype=torch.float32, device=device) * factor).to(dtype)
        if not torch.equal(x, expected):
            wrong = (x != expected).nonzero().flatten().tolist()
            problems.append(f"scale by {factor} in {dtype}: wrong at {wrong[:10]}")
    return problems


def run_tiling_check(device: str = "cpu") -> list[str]:
    """Every tiling `benchmarks/kd_kernel_tune.py` may time (and so suggest as a new default)
    gives the reference's loss and gradient, with a batch that leaves the last row block short."""

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kd_kernel_tune import candidates
    from test_kd_loss import make_case, reference_kd_loss

    from medal.losses.kd_triton import kd_forward

    problems = []
    for c, b in ((14, 33), (1000, 33 if device == "cuda" else 3)):  # fused reductions are slow under the interpreter
        s, z_t, y = make_case("random", b, c, False, seed=c, device=device)
        s_ref = s.double().requires_grad_(True)
        ref = reference_kd_loss(s_ref, z_t, y, 2.0, 0.2, False)
        ref.backward()
        for config in candidates(c):
            loss, grad, _ = kd_forward(s, z_t, y, 2.0, 0.2, multi_label=False, config=config)
            case = f"tiling {config} C={c}"
            problem = _check(case, loss, grad, ref.detach(), s_ref.grad, "float32", 0.2 + 0.8 * 4.0, 1.8 / b)
            if problem:
                problems.append(problem)
    return problems


def _interpreter_run(kind: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("MEDAL_KD_KERNEL", None)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::RuntimeWarning", str(Path(__file__)), kind],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_reference_under_interpreter(kind: str) -> None:
    summary = _interpreter_run(kind)
    assert summary["interpreted"], "TRITON_INTERPRET did not reach the subprocess"
    assert summary["cases"] >= 500
    assert not summary["failures"], "\n".join(summary["failures"][:20])
    if kind == "multi-class":
        assert not summary["dispatch"], "\n".join(summary["dispatch"])
        assert summary["scale"] == [], "\n".join(summary["scale"])
        assert summary["tilings"] == [], "\n".join(summary["tilings"])


@needs_triton
@pytest.mark.parametrize(
    ("kind", "dtype", "n_cols"),
    [("multi-class", "bfloat16", 1000), ("multi-class", "float32", 1000), ("multi-class", "bfloat16", 8),
     ("multi-class", "float16", 32000), ("multi-label", "float32", 16)],
)
def test_kernel_compiles_to_16_byte_vector_accesses(kind: str, dtype: str, n_cols: int) -> None:
    """Compile for sm_90 without a GPU (Triton ships ptxas) and read the PTX: logits must
    be read and the gradient written (and scaled in backward) in 16-byte vectors, with no
    register spills (fp16 at C = 32000, on the column-tile loop, once spilled). With the
    bare width C = 1000 the kernel compiled to 2-byte loads and ran at about a quarter of
    HBM bandwidth."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kd_kernel_compile import compile_kernel, compile_scale_kernel, resource_usage, widest_access

    compiled, _ = compile_kernel(kind == "multi-label", dtype, n_cols)
    scale = compile_scale_kernel(dtype, n_cols)  # backward's pass when grad_output is not 1
    for kernel in (compiled, scale):
        assert widest_access(kernel.asm["ptx"], "ld") == 16
        assert widest_access(kernel.asm["ptx"], "st") == 16
        assert resource_usage(kernel.asm["cubin"])["stack"] == 0


@needs_triton
def test_compiled_kernel_takes_the_fast_row_math() -> None:
    """Compiled, each row's logs and divisions are the GPU's approximate instructions
    (FAST_MATH). The interpreter cannot run them, so on a CPU this is what CI can check of
    that path: it compiles for sm_90 and holds no exact division or libdevice log sequence.
    Its numbers are checked on CUDA, by the gpu tests below."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kd_kernel_compile import compile_kernel

    compiled, config = compile_kernel(False, "bfloat16", 1000)
    ptx = compiled.asm["ptx"]
    assert config["FAST_MATH"]
    assert "lg2.approx" in ptx and "div.approx" in ptx
    assert "div.full" not in ptx and "div.rn" not in ptx


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_reference_on_cuda(kind: str) -> None:
    summary = run_cases(kind, device="cuda", big=True)
    assert not summary["failures"], "\n".join(summary["failures"][:20])
    if kind == "multi-class":
        assert run_tiling_check("cuda") == []
        assert run_scale_check("cuda") == []


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
def test_temperature_alpha_and_batch_do_not_recompile() -> None:
    import torch

    from medal.losses import kd_triton

    s = torch.randn(256, 1000, device="cuda", requires_grad=True)
    z_t = torch.randn(256, 1000, device="cuda")
    y = torch.randint(0, 1000, (256,), device="cuda")
    kd_triton.kd_loss_triton(s, z_t, y, t=2.0, alpha=0.5).backward()
    try:
        caches = [kernel.device_caches[torch.cuda.current_device()][0]
                  for kernel in (kd_triton._kd_multiclass_kernel, kd_triton._scale_in_place_kernel)]
    except (AttributeError, KeyError, IndexError, TypeError):
        pytest.skip("this Triton version keeps its kernel cache elsewhere")
    before = [len(cache) for cache in caches]
    for t, alpha in itertools.product((0.5, 1, 3.0, 8.0), (0.0, 0.3, 1)):
        kd_triton.kd_loss_triton(s, z_t, y, t=t, alpha=alpha).backward()
    for b in (1, 17, 255):  # nor does a short last batch
        kd_triton.kd_loss_triton(s[:b], z_t[:b], y[:b], t=2.0, alpha=0.5).backward()
    torch.cuda.synchronize()
    after = [len(cache) for cache in caches]
    assert after == before, f"compiled variants (loss, scale kernels) went from {before} to {after} for new t / alpha / batch"


if __name__ == "__main__":
    # Worker: run with TRITON_INTERPRET=1 in the environment, before triton is imported.
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # NaN in masked-off lanes under numpy
    import torch

    torch.set_num_threads(1)  # tiny tensors: idle intra-op threads only spin against a busy machine
    start = time.perf_counter()
    result = run_cases(sys.argv[1])
    if sys.argv[1] == "multi-class":
        result["dispatch"] = run_dispatch_check()
        result["scale"] = run_scale_check()
        result["tilings"] = run_tiling_check()
    from triton import knobs

    result["interpreted"] = bool(getattr(knobs.runtime, "interpret", os.environ.get("TRITON_INTERPRET") == "1"))
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
