"""Metrics are medmnist's own, on probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC

from medal.pipeline.evaluate import evaluate_scores, scores_from_logits

TASKS = {
    "multi-class": (6, 1),
    "ordinal-regression": (5, 1),
    "binary-class": (2, 1),
    "multi-label, binary-class": (14, 14),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_matches_medmnist_on_random_inputs(task):
    classes, width = TASKS[task]
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 2 if width > 1 else classes, size=(n, width))
    logits = torch.from_numpy(rng.normal(size=(n, classes)).astype(np.float32))
    scores = scores_from_logits(logits, task).numpy()
    got = evaluate_scores(labels, scores, task)
    assert got == {"auc": pytest.approx(getAUC(labels, scores, task)), "acc": pytest.approx(getACC(labels, scores, task))}


def test_known_values():
    labels = np.array([[0], [1], [2], [2]])
    scores = np.eye(3)[[0, 1, 2, 2]].astype(np.float32)
    assert evaluate_scores(labels, scores, "multi-class") == {"auc": 1.0, "acc": 1.0}
    binary = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    # positives score 0.8, 0.4; negatives 0.1, 0.7: 3 of 4 pairs ordered; 2 of 4 right at 0.5
    assert evaluate_scores(np.array([[0], [1], [1], [0]]), binary, "binary-class") == {"auc": 0.75, "acc": 0.5}


def test_probabilities_not_logits():
    """Binary ACC thresholds at 0.5: on raw logits it would be wrong, on softmax it is right."""
    logits = torch.tensor([[0.0, 0.3], [0.0, -0.3]])  # class 1 wins, then class 0
    scores = scores_from_logits(logits, "binary-class").numpy()
    assert np.allclose(scores.sum(1), 1)
    labels = np.array([[1], [0]])
    assert evaluate_scores(labels, scores, "binary-class")["acc"] == 1.0
    multi = scores_from_logits(torch.tensor([[-2.0, 3.0]]), "multi-label, binary-class").numpy()
    assert np.allclose(multi, torch.sigmoid(torch.tensor([[-2.0, 3.0]])).numpy())
