"""Fused Triton kernel for the MedAlmighty distillation loss (`medal.kd_loss`).

Why a kernel: the eager loss runs log_softmax(student / t), log_softmax(teacher / t),
kl_div, cross_entropy and their backwards as ~15 separate kernels, each reading and
writing a full (B, C) fp32 tensor. The loss is purely memory-bound, so this kernel
reads student logits, teacher logits and labels once, and in that same pass writes
per-row loss partials and the gradient with respect to the student logits (the trick
fused cross-entropy kernels use: the gradient is saved for backward, so backward is a
single scalar multiply, done in place, and skipped on the device when grad_output is 1).
Forward plus backward then move the minimum: student and teacher logits and labels read
once, the gradient written once.

Per row, with p = softmax(z_s), q = softmax(z_s / t), r = softmax(z_t / t):

    loss_row = [alpha * (lse(z_s) - z_s[y]) + (1 - alpha) * t^2 * sum_c r (log r - log q)] / B
    grad_row = [alpha * (p - onehot(y)) + (1 - alpha) * t * (q - r)] / B

and for multi-label data, element-wise with sigmoids instead of softmaxes, divided by
B * C (BCE-with-logits plus the Bernoulli KL at temperature t).

Numerics: every softmax keeps its max and sum apart (log p = (x - m) - log Z), all
arithmetic is fp32 whatever the input dtype, so logits of +-1e4, all-equal rows and
one-hot teachers give finite losses and gradients.

Layout: one program handles BLOCK_B rows x BLOCK_C columns, BLOCK_C = next power of two
of C, with 8 elements a thread. For C above MAX_BLOCK_C the multi-class kernel loops over
column tiles: a first pass keeps an online max / sum-exp per softmax, a second pass
writes loss and gradient (so logits are read twice only in that case). The multi-label
loss is element-wise: one pass, over tiles of at most MULTILABEL_BLOCK_C columns.

Vector loads: rows start at multiples of ALIGN elements (see `_row_alignment`), which
the kernel is told through the width's factorisation, so it reads and writes in 16-byte
vectors; `tests/test_kd_triton.py` checks the compiled PTX for them.

Gradient storage: in the input dtype, with the batch mean folded in for fp32 and bf16
(bf16 has fp32's exponent range). For fp16 it is stored without the 1/B, which would
flush ~1/B-sized entries into fp16's subnormals before a GradScaler's scale is applied;
backward multiplies by grad_output / B in fp32 and rounds to fp16 again (two roundings,
within the tests' fp16 tolerance).

t and alpha are runtime float arguments, never constexpr, and are passed as Python
floats (an int 1 would be specialised by Triton), so sweeping them never recompiles; nor
does the batch size (n_rows is not specialised), only C, the dtypes and the task kind.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_C = 8192  # widest column tile held in registers; wider C loops over tiles
# The multi-label loss is element-wise, so wide tiles buy nothing there: at 8192 columns
# its sm_90 compile spilled registers to the stack.
MULTILABEL_BLOCK_C = 1024
SCALE_BLOCK = 4096  # elements a program of backward's scaling kernel
# BLOCK_B * BLOCK_C target. Measured on an H200 (B=65536, C=1000, bf16, forward kernel):
# 1024 elements / 4 warps ran in 0.33 ms, 4096 / 8 warps in 0.69 ms; small tiles win.
ELEMS_PER_PROGRAM = 1024
MAX_BLOCK_B = 128


@triton.jit
def _row_block(n_rows, row_units, ALIGN: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's rows: (width, row indices, row mask, (BLOCK_B, 1) element offsets of
    the row starts). The width is rebuilt as row_units * ALIGN, so Triton knows it is a
    multiple of ALIGN and emits vector loads and stores."""
    n_cols = row_units * ALIGN
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    return n_cols, rows, rows < n_rows, rows.to(tl.int64)[:, None] * n_cols


@triton.jit
def _row_stats(x, m, z):
    """Online update of a row max `m` and sum-exp `z` (relative to m) with a tile `x`."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    z = z * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
    return m_new, z


@triton.jit
def _load_tile(s_ptr, t_ptr, base, cols, row_ok, n_cols):
    """fp32 student and teacher tiles; padded columns are -inf, padded rows read zeros
    (finite row stats, never stored)."""
    col_ok = (cols < n_cols)[None, :]
    ok = row_ok[:, None] & col_ok
    s = tl.load(s_ptr + base + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    tt = tl.load(t_ptr + base + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    return tl.where(col_ok, s, float("-inf")), tl.where(col_ok, tt, float("-inf")), col_ok, ok


@triton.jit
def _multiclass_tile(
    s, e_s, q_in, e_q, r_in, e_r, cols, col_ok, y, m_s, z_s, m_q, z_q, m_r, z_r, temp, alpha, inv_n, grad_scale
):
    """Loss partial (per row) and gradient of one (BLOCK_B, BLOCK_C) tile, given row stats.

    q_in = s / t and r_in = teacher / t; e_* = exp(x - m_*) of each, z_* the full-row sums.
    """
    p = e_s * (1.0 / z_s)[:, None]
    q = e_q * (1.0 / z_q)[:, None]
    r = e_r * (1.0 / z_r)[:, None]
    log_z_s = tl.log(z_s)
    hit = cols[None, :] == y[:, None]
    # CE = lse(s) - s[y] = (m - s[y]) + log Z, summed over the tile's single hit column.
    ce = tl.sum(tl.where(hit, (m_s[:, None] - s) + log_z_s[:, None], 0.0), axis=1)
    # log r - log q = (r_in - m_r) - (q_in - m_q) + log(z_q / z_r): max-shifted, no lse rounding.
    log_ratio = (r_in - m_r[:, None]) - (q_in - m_q[:, None]) + (tl.log(z_q) - tl.log(z_r))[:, None]
    kl = tl.sum(tl.where(col_ok, r * log_ratio, 0.0), axis=1)
    loss = (alpha * ce + (1.0 - alpha) * temp * temp * kl) * inv_n
    grad = (alpha * (p - tl.where(hit, 1.0, 0.0)) + (1.0 - alpha) * temp * (q - r)) * grad_scale
    return loss, grad


@triton.jit(do_not_specialize=["n_rows"])  # a short last batch must not recompile
def _kd_multiclass_kernel(
    s_ptr, t_ptr, y_ptr, loss_ptr, grad_ptr,
    n_rows, row_units, temp, inv_temp, alpha, inv_n, grad_scale,
    ALIGN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, NUM_TILES: tl.constexpr,
    STORE_GRAD: tl.constexpr,
):
    """One program: BLOCK_B rows of softmax CE + temperature KL, loss partials and gradient."""
    n_cols, rows, row_ok, base = _row_block(n_rows, row_units, ALIGN, BLOCK_B)
    y = tl.load(y_ptr + rows, mask=row_ok, other=0)
    if NUM_TILES == 1:
        # The whole row is in registers: one exp per softmax and element.
        cols = tl.arange(0, BLOCK_C)
        s, tt, col_ok, ok = _load_tile(s_ptr, t_ptr, base, cols, row_ok, n_cols)
        q_in = s * inv_temp
        r_in = tt * inv_temp
        m_s = tl.max(s, axis=1)
        m_q = tl.max(q_in, axis=1)
        m_r = tl.max(r_in, axis=1)
        e_s = tl.exp(s - m_s[:, None])
        e_q = tl.exp(q_in - m_q[:, None])
        e_r = tl.exp(r_in - m_r[:, None])
        z_s = tl.sum(e_s, axis=1)
        z_q = tl.sum(e_q, axis=1)
        z_r = tl.sum(e_r, axis=1)
        loss, grad = _multiclass_tile(
            s, e_s, q_in, e_q, r_in, e_r, cols, col_ok, y, m_s, z_s, m_q, z_q, m_r, z_r, temp, alpha, inv_n, grad_scale
        )
        if STORE_GRAD:
            tl.store(grad_ptr + base + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=ok)
    else:
        # Pass 1: online max / sum-exp of the three softmaxes over all column tiles.
        m_s = tl.full((BLOCK_B,), float("-inf"), tl.float32)
        m_q = tl.full((BLOCK_B,), float("-inf"), tl.float32)
        m_r = tl.full((BLOCK_B,), float("-inf"), tl.float32)
        z_s = tl.zeros((BLOCK_B,), tl.float32)
        z_q = tl.zeros((BLOCK_B,), tl.float32)
        z_r = tl.zeros((BLOCK_B,), tl.float32)
        for i in range(NUM_TILES):
            cols = i * BLOCK_C + tl.arange(0, BLOCK_C)
            s, tt, col_ok, ok = _load_tile(s_ptr, t_ptr, base, cols, row_ok, n_cols)
            m_s, z_s = _row_stats(s, m_s, z_s)
            m_q, z_q = _row_stats(s * inv_temp, m_q, z_q)
            m_r, z_r = _row_stats(tt * inv_temp, m_r, z_r)
        # Pass 2: loss partials and gradient, tile by tile.
        loss = tl.zeros((BLOCK_B,), tl.float32)
        for i in range(NUM_TILES):
            cols = i * BLOCK_C + tl.arange(0, BLOCK_C)
            s, tt, col_ok, ok = _load_tile(s_ptr, t_ptr, base, cols, row_ok, n_cols)
            q_in = s * inv_temp
            r_in = tt * inv_temp
            e_s = tl.exp(s - m_s[:, None])
            e_q = tl.exp(q_in - m_q[:, None])
            e_r = tl.exp(r_in - m_r[:, None])
            part, grad = _multiclass_tile(
                s, e_s, q_in, e_q, r_in, e_r, cols, col_ok, y, m_s, z_s, m_q, z_q, m_r, z_r, temp, alpha, inv_n, grad_scale
            )
            loss += part
            if STORE_GRAD:
                tl.store(grad_ptr + base + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=ok)
    tl.store(loss_ptr + rows, loss, mask=row_ok)


@triton.jit
def _softplus_neg_abs(x):
    """log(1 + exp(-|x|)), accurate also where exp(-|x|) is below fp32 epsilon."""
    e = tl.exp(-tl.abs(x))
    return tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))


@triton.jit
def _sigmoid(x):
    """Sigmoid without overflow: exp of a non-positive argument only."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit(do_not_specialize=["n_rows"])  # a short last batch must not recompile
def _kd_multilabel_kernel(
    s_ptr, t_ptr, y_ptr, loss_ptr, grad_ptr,
    n_rows, row_units, temp, inv_temp, alpha, inv_n, grad_scale,
    ALIGN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, NUM_TILES: tl.constexpr,
    STORE_GRAD: tl.constexpr,
):
    """One program: BLOCK_B rows of BCE-with-logits + Bernoulli KL at temperature t."""
    n_cols, rows, row_ok, base = _row_block(n_rows, row_units, ALIGN, BLOCK_B)
    loss = tl.zeros((BLOCK_B,), tl.float32)
    for i in range(NUM_TILES):
        cols = i * BLOCK_C + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (cols < n_cols)[None, :]
        offs = base + cols[None, :]
        s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tt = tl.load(t_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        # BCE with logits: max(s, 0) - s * y + log(1 + exp(-|s|)).
        bce = tl.maximum(s, 0.0) - s * y + _softplus_neg_abs(s)
        # Bernoulli KL(r || q), r = sigmoid(tt / t), q = sigmoid(s / t), in log-sigmoid form:
        # log sigmoid(x) = min(x, 0) - sp(x), log sigmoid(-x) = min(-x, 0) - sp(x).
        a = s * inv_temp
        b = tt * inv_temp
        sp_a = _softplus_neg_abs(a)
        sp_b = _softplus_neg_abs(b)
        r = _sigmoid(b)
        r_neg = _sigmoid(-b)
        kl = r * ((tl.minimum(b, 0.0) - sp_b) - (tl.minimum(a, 0.0) - sp_a)) + r_neg * (
            (tl.minimum(-b, 0.0) - sp_b) - (tl.minimum(-a, 0.0) - sp_a)
        )
        elem = alpha * bce + (1.0 - alpha) * temp * temp * kl
        loss += tl.sum(tl.where(ok, elem, 0.0), axis=1) * inv_n
        if STORE_GRAD:
            grad = (alpha * (_sigmoid(s) - y) + (1.0 - alpha) * temp * (_sigmoid(a) - r)) * grad_scale
            tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=ok)
    tl.store(loss_ptr + rows, loss, mask=row_ok)


def _row_alignment(n_cols: int) -> int:
    """Largest power of two (at most 16) dividing the row width.

    Passed as the constexpr ALIGN with the width as n_cols // ALIGN, so Triton can prove
    every row starts on an ALIGN-element boundary and emit 16-byte vector loads. Given the
    bare width, it assumes nothing (1000 is not a multiple of 16) and loads element by
    element: on an H200 that held the kernel near 1.2 TB/s.
    """
    return min(16, n_cols & -n_cols)


def _block_sizes(n_cols: int, max_block_c: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, NUM_TILES) for a row width, BLOCK_C a power of two <= max_block_c."""
    block_c = min(triton.next_power_of_2(n_cols), triton.next_power_of_2(max_block_c))
    block_b = max(1, min(MAX_BLOCK_B, ELEMS_PER_PROGRAM // block_c))
    return block_b, block_c, triton.cdiv(n_cols, block_c)


def _num_warps(tile_elems: int) -> int:
    """Warps per program, for 8 elements a thread (4 warps for 1024 elements, 32 at most).

    Eight a thread is the 1024-element, 4-warp tile that ran fastest on the H200, and keeps
    registers low: 64 at C=1000 in the sm_90 compile, where an 8192 tile on 8 warps took 199
    and left room for one program per SM.
    """
    return max(4, min(32, tile_elems // 256))


def launch_config(n_cols: int, multi_label: bool, max_block_c: int = MAX_BLOCK_C) -> dict[str, int]:
    """Compile-time parameters of one launch (ALIGN, BLOCK_B, BLOCK_C, NUM_TILES, num_warps):
    they depend on the width and task kind only, so a new t, alpha or batch size never
    recompiles."""
    cap = min(max_block_c, MULTILABEL_BLOCK_C) if multi_label else max_block_c
    block_b, block_c, num_tiles = _block_sizes(n_cols, cap)
    return {
        "ALIGN": _row_alignment(n_cols), "BLOCK_B": block_b, "BLOCK_C": block_c,
        "NUM_TILES": num_tiles, "num_warps": _num_warps(block_b * block_c),
    }


def kd_forward(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    t: float,
    alpha: float,
    multi_label: bool,
    store_grad: bool = True,
    config: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Launch the kernel: returns (scalar fp32 loss, gradient or None, its pending scale).

    `config` overrides `launch_config`'s default (`KDLossFunction` passes the tests' tile
    cap through it; `benchmarks/kd_kernel_tune.py` times other tilings).

    The gradient is stored in the input dtype, batch-mean included (scale 1), except for
    fp16: there 1/B-sized entries would sink into fp16's subnormals, so it is stored
    unnormalised and the pending scale 1/B (1/(B C) multi-label) is applied in backward,
    together with grad_output.
    """
    s = student_logits.detach().contiguous()
    tch = teacher_logits.detach().contiguous()
    n_rows, n_cols = s.shape
    if multi_label:
        y = target.detach()
        if y.dtype == torch.bool:
            y = y.to(torch.uint8)
        y = y.contiguous()
        inv_n = 1.0 / (n_rows * n_cols)
        kernel = _kd_multilabel_kernel
    else:
        y = target.detach().long().contiguous()
        inv_n = 1.0 / n_rows
        kernel = _kd_multiclass_kernel
    pending = inv_n if s.dtype == torch.float16 else 1.0
    grad = torch.empty_like(s) if store_grad else None
    partial = torch.empty(n_rows, dtype=torch.float32, device=s.device)
    config = config or launch_config(n_cols, multi_label)
    grid = (triton.cdiv(n_rows, config["BLOCK_B"]),)
    kernel[grid](
        s, tch, y, partial, s if grad is None else grad,  # without a gradient nothing is stored
        n_rows, n_cols // config["ALIGN"], float(t), 1.0 / float(t), float(alpha), float(inv_n),
        float(inv_n / pending), STORE_GRAD=store_grad, **config,
    )
    return partial.sum(), grad, pending


@triton.jit(do_not_specialize=["n_units"])
def _scale_in_place_kernel(x_ptr, g_ptr, pending, n_units, ALIGN: tl.constexpr, BLOCK: tl.constexpr):
    """x *= grad_output * pending, over n_units * ALIGN elements (ALIGN as for the rows, so
    the accesses are vectors). A factor of exactly 1, what `loss.backward()` passes for
    bf16 and fp32, touches no element: backward then costs one launch, not a pass over (B, C)."""
    factor = tl.load(g_ptr).to(tl.float32) * pending
    if factor != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n_units * ALIGN
        x = tl.load(x_ptr + offs, mask=ok).to(tl.float32)
        tl.store(x_ptr + offs, (x * factor).to(x_ptr.dtype.element_ty), mask=ok)


class KDLossFunction(torch.autograd.Function):
    """Autograd wrapper: forward runs the fused kernel, backward scales the kept gradient in place.

    The gradient is kept as a ctx attribute and handed over (not copied) in backward, so a
    second backward through the same graph (retain_graph=True) cannot reuse it and says so.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, target, t, alpha, multi_label, max_block_c=MAX_BLOCK_C):
        store_grad = ctx.needs_input_grad[0]  # evaluation under no_grad writes no gradient
        config = launch_config(student_logits.shape[1], multi_label, max_block_c)
        loss, ctx.grad, ctx.pending = kd_forward(
            student_logits, teacher_logits, target, t, alpha, multi_label, store_grad, config
        )
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:  # reached through the teacher's logits, which get no gradient
            return None, None, None, None, None, None, None
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("medal's fused KD loss supports one backward per forward (no retain_graph reuse).")
        # grad_output is a 0-dim device tensor: the kernel reads it, the host never does (no sync).
        align = _row_alignment(grad.shape[1])  # depends on C only: no recompile for a new batch size
        grid = (triton.cdiv(grad.numel(), SCALE_BLOCK),)
        _scale_in_place_kernel[grid](
            grad, grad_output.contiguous(), float(ctx.pending), grad.numel() // align, ALIGN=align, BLOCK=SCALE_BLOCK
        )
        return grad, None, None, None, None, None, None


def kd_loss_triton(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    t: float,
    alpha: float,
    multi_label: bool = False,
) -> torch.Tensor:
    """Fused-kernel `kd_loss`: same arguments and result as `medal.kd_loss.kd_loss_torch`.

    Returns a 0-dim fp32 loss; the teacher gets no gradient. Class indices must lie in
    [0, C) (they are not checked, which would cost a host sync).
    """
    return KDLossFunction.apply(student_logits, teacher_logits, target, float(t), float(alpha), bool(multi_label))
