"""Train the teacher's linear head on cached backbone features (the paper's DINOv2 recipe).

Adam, lr 1e-3, batch 32, x0.1 at epochs 50 and 75, CE (BCE for multi-label data); the
epoch with the best validation AUC is kept. On cached features this costs seconds, which is
why the backbone's features are stored: the head can be retrained without the backbone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medal.pipeline.evaluate import evaluate_scores, scores_from_logits
from medal.runtime.progress import progress


@dataclass
class HeadRecipe:
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    milestones: tuple[int, ...] = (50, 75)
    seed: int = 0


def head_logits(head: nn.Module, features: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([head(features[i : i + batch].float()) for i in range(0, len(features), batch)])


def train_linear_head(
    features: dict[str, torch.Tensor],
    targets: torch.Tensor,
    val_labels: np.ndarray,
    task: str,
    multi_label: bool,
    num_outputs: int,
    recipe: HeadRecipe,
) -> tuple[nn.Linear, dict]:
    """Returns the best-on-val head and {"epoch", "val": {auc, acc}}."""
    device = features["train"].device
    generator = torch.Generator(device="cpu").manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    head = nn.Linear(features["train"].shape[1], num_outputs).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=0.1)
    x, n = features["train"].float(), len(targets)
    best = {"val": {"auc": -1.0, "acc": 0.0}, "epoch": -1}
    best_state = copy.deepcopy(head.state_dict())
    bar = progress(range(recipe.epochs), desc="linear head", unit="epoch", leave=False)
    for epoch in bar:
        for idx in torch.randperm(n, generator=generator).to(device).split(recipe.batch_size):
            logits = head(x[idx])
            y = targets[idx]
            loss = F.binary_cross_entropy_with_logits(logits, y) if multi_label else F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        scores = scores_from_logits(head_logits(head, features["val"]), task).cpu().numpy()
        val = evaluate_scores(val_labels, scores, task)
        if val["auc"] > best["val"]["auc"]:
            best = {"val": val, "epoch": epoch + 1}
            best_state = copy.deepcopy(head.state_dict())
        bar.set_postfix(val_auc=f"{val['auc']:.4f}", best=f"{best['val']['auc']:.4f}")
    head.load_state_dict(best_state)
    return head, best
