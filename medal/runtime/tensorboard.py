"""TensorBoard scalars of a training run, so that a run, or every point of a sweep, can be watched live.

Off unless asked for: `--log-dir DIR` writes the event file into DIR; `MEDAL_TENSORBOARD=1`
alone writes it to `<runs dir or --out's parent>/tensorboard/<run name>`, beside the runs, so
`tensorboard --logdir runs/tensorboard` shows every run of a grid side by side. One point per
epoch: train/loss, val/auc, val/acc, lr and throughput/img_per_s (training images a second,
validation excluded). The event file is flushed every epoch: it is a live view, not a result,
so it is written in place rather than renamed when complete like a run's files.
"""

from __future__ import annotations

import os
from pathlib import Path

from medal.runtime.errors import MedalError

ENV = "MEDAL_TENSORBOARD"
ON = {"1", "true", "yes", "on"}


def tensorboard_dir(log_dir: Path | None, out: Path) -> Path | None:
    """Where a run's scalars go: --log-dir, else the default when MEDAL_TENSORBOARD is on, else nowhere."""
    if log_dir is not None:
        return Path(log_dir)
    if os.environ.get(ENV, "").strip().lower() in ON:
        return Path(out).parent / "tensorboard" / Path(out).name
    return None


class Scalars:
    """A SummaryWriter that takes one history row per epoch."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MedalError(f"TensorBoard logging (--log-dir or {ENV}=1) needs the tensorboard package: "
                             f"pip install 'medal[tensorboard]' (or pip install tensorboard).") from None
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as exc:
            raise MedalError(f"cannot write TensorBoard logs to {log_dir}: {exc.strerror or exc}.") from None
        self.log_dir = Path(log_dir)

    def epoch(self, row: dict, images_per_s: float) -> None:
        step = row["epoch"]
        for tag, value in (("train/loss", row["train_loss"]), ("val/auc", row["val_auc"]), ("val/acc", row["val_acc"]),
                           ("lr", row["lr"]), ("throughput/img_per_s", images_per_s)):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_scalars(log_dir: Path | None, out: Path) -> Scalars | None:
    """The run's Scalars, or None when TensorBoard logging is off."""
    where = tensorboard_dir(log_dir, out)
    return Scalars(where) if where is not None else None
