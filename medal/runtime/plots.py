"""PNG figures for people (the same numbers are always written as CSV/JSON too)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medal.runtime.io import atomic  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def plot_history(history: list[dict], path: Path) -> Path:
    """Training loss and validation AUC/ACC per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [row["train_loss"] for row in history], marker=".")
    left.set(xlabel="epoch", ylabel="train loss", title="loss")
    right.plot(epochs, [row["val_auc"] for row in history], marker=".", label="val AUC")
    right.plot(epochs, [row["val_acc"] for row in history], marker=".", label="val ACC")
    right.set(xlabel="epoch", ylim=(0, 1.02), title="validation")
    right.legend()
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, path)
