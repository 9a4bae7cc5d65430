"""One optimisation step of the student, shared by `distill` and the benchmarks.

Everything stays on the device: the batch is gathered from the resident uint8 split by
index (or handed in, already read, by a streamed split's source), preprocessed on the device, run under bf16 autocast (CUDA), and its soft targets are
gathered from the resident cached teacher logits by the same index. Nothing in the step
reads a value back to the host, so the GPU is never stalled by Python.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medal.data.preprocess import Preprocess
from medal.losses.kd_loss import kd_loss
from medal.runtime.device import autocast

LossFn = Callable[..., torch.Tensor]


class StudentStep:
    """step(idx[, images]) -> detached loss; teacher logits (N, C), (K, N, C) for several teachers, or None.

    `images` None: every call passes its batch (see medal.data.stream.source).
    """

    def __init__(self, student: nn.Module, optimizer: torch.optim.Optimizer, prep: Preprocess, images: torch.Tensor | None,
                 targets: torch.Tensor, teacher_logits: torch.Tensor | None, *, t: float, alpha: float,
                 multi_label: bool, device: torch.device, compile: bool = False):
        self.student, self.optimizer, self.prep = student, optimizer, prep
        self.images, self.targets, self.teacher = images, targets, teacher_logits
        self.t, self.alpha, self.multi_label, self.device = t, alpha, multi_label, device
        # dynamic=False: the short last batch of an epoch gets its own static graph instead of
        # turning the whole step into a slower dynamic-shape one.
        self.forward = torch.compile(student, dynamic=False) if compile else student
        if not torch.are_deterministic_algorithms_enabled():  # --deterministic: no autotuning either
            torch.backends.cudnn.benchmark = True  # input shapes are fixed: tune the convolutions once
        self.loss_fn: LossFn = kd_loss
        if teacher_logits is not None and teacher_logits.ndim == 3:
            from medal.losses.ca_mkd import ca_mkd_loss  # several teachers: confidence-aware weighting

            self.loss_fn = ca_mkd_loss

    def soft_targets(self, idx: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None or self.alpha == 1:
            return None
        return self.teacher[:, idx] if self.teacher.ndim == 3 else self.teacher[idx]

    def __call__(self, idx: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """One update on the samples `idx`; `images` is their uint8 batch when the caller read it."""
        with autocast(self.device):
            logits = self.forward(self.prep(self.images[idx] if images is None else images))
        loss = self.loss_fn(logits.float(), self.soft_targets(idx), self.targets[idx], t=self.t, alpha=self.alpha,
                            multi_label=self.multi_label)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
