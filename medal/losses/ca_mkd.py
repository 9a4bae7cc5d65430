"""CA-MKD: confidence-aware multi-teacher distillation (Zhang et al., ICASSP 2022), logits part only.

The paper's Table 2 compares MedAlmighty with CA-MKD over three DINOv2 teachers. Each sample
weighs each teacher by how well that teacher predicts the sample's own label:

    w_k = softmax_k(-CE(z_k, y))            (multi-label: -mean BCE over the labels)
    loss = alpha * CE(z_s, y) + (1 - alpha) * t^2 * mean_b sum_k w_k KL(p_k || p_s)

The weights are detached: they steer the student, they are not trained. This softmax(-CE)
weighting equals `kd_loss_torch` when there is one teacher or all teachers agree; the original
(1 - softmax(CE)) / (K - 1) is not defined for one teacher. CA-MKD's intermediate-feature term
is left out: the cache holds logits and CLS features, not a CNN's feature maps.

`--teacher-weighting mean` is the plain alternative: every teacher counts alike, the soft target
being the mean of the teachers' softened probabilities (`mean_teacher_logits`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medal.losses.kd_loss import check_hyperparameters, hard_loss, per_sample_kl
from medal.runtime.errors import MedalError


def teacher_weights(teacher_logits: torch.Tensor, target: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """(K, B) per-sample teacher weights, summing to 1 over K; no gradient flows through them."""
    z = teacher_logits.detach().float()
    k, b, c = z.shape
    if multi_label:
        ce = F.binary_cross_entropy_with_logits(z, target.float().expand(k, b, c), reduction="none").mean(-1)
    else:
        ce = F.cross_entropy(z.reshape(k * b, c), target.long().repeat(k), reduction="none").view(k, b)
    return torch.softmax(-ce, dim=0)


def ca_mkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    t: float,
    alpha: float,
    multi_label: bool = False,
) -> torch.Tensor:
    """Loss of a (B, C) student against (K, B, C) raw logits of K teachers, batch-mean, fp32."""
    check_hyperparameters(t, alpha)
    if student_logits.ndim != 2 or teacher_logits.ndim != 3 or teacher_logits.shape[1:] != student_logits.shape:
        raise MedalError(f"CA-MKD needs (B, C) student and (K, B, C) teacher logits, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}.")
    s = student_logits.float()
    loss = s.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * hard_loss(s, target, multi_label)
    if alpha < 1:
        w = teacher_weights(teacher_logits, target, multi_label)
        kl = (w * per_sample_kl(s.unsqueeze(0), teacher_logits.float(), t, multi_label)).sum(0).mean()
        loss = loss + (1 - alpha) * t * t * kl
    return loss


def mean_teacher_logits(teacher_logits: torch.Tensor, t: float, multi_label: bool = False) -> torch.Tensor:
    """(K, N, C) teacher logits -> (N, C) logits of the teachers' mean softened prediction (--teacher-weighting mean).

    The soft target is p = mean_k softmax(z_k / t) (multi-label: mean_k sigmoid(z_k / t), per label).
    `kd_loss` takes teacher *logits* and divides them by t itself, so this returns t * log p
    (multi-label: t * logit p): then softmax(returned / t) = p / sum(p) = p exactly (sigmoid(returned / t)
    = p), and the loss is alpha * CE + (1 - alpha) * t^2 * KL(p || softmax(z_s / t)) through the same
    kd_loss, fused kernel included. Averaging logits instead would be a different (geometric) mean.
    Computed in log space (logsumexp), so a probability that underflows gives a very negative, finite logit.
    """
    z = teacher_logits.detach().float() / t
    log_k = math.log(z.shape[0])
    if multi_label:
        log_p = torch.logsumexp(F.logsigmoid(z), dim=0) - log_k
        log_q = torch.logsumexp(F.logsigmoid(-z), dim=0) - log_k  # log(1 - p)
        return t * (log_p - log_q)
    return t * (torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - log_k)
