"""MedMNIST's official AUC and ACC, always on probabilities, never on raw logits."""

from __future__ import annotations

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC

from medal.data import MULTI_LABEL


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax per sample, or a sigmoid per label for multi-label data, as medmnist's Evaluator expects."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=1)


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    """{"auc", "acc"} for (N, L) labels and (N, C) probabilities, by medmnist's own functions."""
    return {"auc": float(getAUC(labels, scores, task)), "acc": float(getACC(labels, scores, task))}
