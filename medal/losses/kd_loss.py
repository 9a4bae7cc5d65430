"""The MedAlmighty distillation loss, one public function for every task kind.

    loss = alpha * CE(z_s, y) + (1 - alpha) * t^2 * KL(p_t || p_s),   p = softmax(z / t)

batch-mean. For multi-label data (ChestMNIST) CE is BCE-with-logits and the KL is the
per-label Bernoulli KL at temperature t; both are averaged over all (sample, label)
elements so that alpha weighs terms of the same scale.

`kd_loss` picks its backend: the fused Triton kernel for CUDA tensors, plain torch
otherwise; `MEDAL_KD_KERNEL=torch|triton` forces one. The torch path is exact and is
the reference the kernel is tested against.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

from medal.runtime.errors import MedalError

BACKENDS = ("torch", "triton")


def check_hyperparameters(t: float, alpha: float) -> None:
    """Refuse a temperature or weight the loss is not defined for, in one sentence."""
    if not t > 0:
        raise MedalError(f"temperature t must be > 0, got {t}.")
    if not 0.0 <= alpha <= 1.0:
        raise MedalError(f"alpha must lie in [0, 1], got {alpha}.")


def hard_loss(student_logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """The supervised term: CE on class indices, or BCE-with-logits averaged over all labels."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(student_logits, target.to(student_logits.dtype))
    return F.cross_entropy(student_logits, target.long())


def per_sample_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float, multi_label: bool) -> torch.Tensor:
    """KL(teacher || student) at temperature t per sample, over the last axis (leading axes broadcast).

    Multi-class: summed over classes. Multi-label: the Bernoulli KL, averaged over labels.
    """
    st, tt = student_logits / t, teacher_logits / t
    if multi_label:
        # p log(p/q) + (1-p) log((1-p)/(1-q)), in log-sigmoid form (stable for large logits).
        p = torch.sigmoid(tt)
        kl = p * (F.logsigmoid(tt) - F.logsigmoid(st)) + (1 - p) * (F.logsigmoid(-tt) - F.logsigmoid(-st))
        return kl.mean(-1)
    log_pt = F.log_softmax(tt, dim=-1)
    return (log_pt.exp() * (log_pt - F.log_softmax(st, dim=-1))).sum(-1)


def kd_loss_torch(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    target: torch.Tensor,
    *,
    t: float,
    alpha: float,
    multi_label: bool = False,
) -> torch.Tensor:
    """Plain-torch loss, computed in fp32 (fp64 for fp64 input) whatever the input dtype."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = student_logits.to(dtype)
    loss = s.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * hard_loss(s, target, multi_label)
    if alpha < 1:
        if teacher_logits is None:
            raise MedalError("alpha < 1 needs teacher logits: build a cache with `medal cache-teacher`.")
        kl = per_sample_kl(s, teacher_logits.detach().to(dtype), t, multi_label).mean()  # a target: no gradient, as in the kernel
        loss = loss + (1 - alpha) * t * t * kl
    return loss


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _backend(student_logits: torch.Tensor) -> str:
    """MEDAL_KD_KERNEL if set, else Triton for CUDA tensors where it is installed (not on
    every platform that has CUDA), else torch."""
    forced = os.environ.get("MEDAL_KD_KERNEL", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise MedalError(f"MEDAL_KD_KERNEL must be one of {', '.join(BACKENDS)}, got {forced!r}.")
        if forced == "triton" and not _triton_available():
            raise MedalError("MEDAL_KD_KERNEL=triton needs the triton package, which is not installed.")
        return forced
    return "triton" if student_logits.is_cuda and _triton_available() else "torch"


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    target: torch.Tensor,
    *,
    t: float,
    alpha: float,
    multi_label: bool = False,
) -> torch.Tensor:
    """Distillation loss of a (B, C) student against (B, C) raw teacher logits.

    `target` holds class indices (B,), or a 0/1 float (B, C) matrix when `multi_label`.
    `teacher_logits` may be None only when alpha == 1 (the plain CE baseline); they get no gradient.
    """
    check_hyperparameters(t, alpha)
    if student_logits.ndim != 2:
        raise MedalError(f"student logits must be (batch, classes), got shape {tuple(student_logits.shape)}.")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise MedalError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match student logits {tuple(student_logits.shape)}."
        )
    if _backend(student_logits) == "triton" and teacher_logits is not None:
        from medal.losses.kd_triton import kd_loss_triton

        return kd_loss_triton(student_logits, teacher_logits, target, t=t, alpha=alpha, multi_label=multi_label)
    return kd_loss_torch(student_logits, teacher_logits, target, t=t, alpha=alpha, multi_label=multi_label)
