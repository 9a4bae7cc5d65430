"""Where a step's images come from: the resident split on the device, or rows streamed from a store.

Both give the same thing for the same indices: `source.batches(order)` yields, for each index
tensor (or slice) of `order` in turn, that batch as a contiguous (B, C, H, W) uint8 tensor on the
device. A resident source gathers from the split it holds; a streamed one reads the rows from
the store in a background thread that keeps up to `depth` batches ready in (pinned) host memory,
so reading overlaps the step. Same batches, same order, same bytes: the results cannot differ.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from medal.data.preprocess import to_device
from medal.data.stream.store import StoredImages

Rows = torch.Tensor | slice
MAX_DEPTH = 4


class ResidentImages:
    """The whole split on the device, gathered by index (the fast path, as before streaming)."""

    resident = True

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.index_device = images.device  # where `batches` wants its indices

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, order: Sequence[Rows]) -> Iterator[torch.Tensor]:
        for rows in order:
            yield self.images[rows]


class StreamedImages:
    """Rows read from a store in exactly the given order, prefetched by a background thread.

    Holds at most depth + 2 batches at once (queued, being read, in use), the depth chosen so that
    they take at most a third of the store's `budget_bytes` (at least 1, at most MAX_DEPTH).
    """

    resident = False
    index_device = torch.device("cpu")

    def __init__(self, stored: StoredImages, device: torch.device):
        self.stored, self.device = stored, device

    def __len__(self) -> int:
        return len(self.stored)

    def depth(self, batch_rows: int) -> int:
        return int(np.clip(self.stored.budget_bytes // max(1, 3 * batch_rows * self.stored.row_bytes) - 2, 1, MAX_DEPTH))

    def read(self, rows: Rows) -> torch.Tensor:
        """One batch as the host tensor the device copy is made from (N, C, H, W), pinned on CUDA."""
        index = np.arange(len(self))[rows] if isinstance(rows, slice) else rows.cpu().numpy()
        batch = torch.from_numpy(self.stored.take(index)).permute(0, 3, 1, 2).contiguous()
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def batches(self, order: Sequence[Rows]) -> Iterator[torch.Tensor]:
        if not order:
            return
        first = order[0]
        rows = len(range(len(self))[first]) if isinstance(first, slice) else len(first)
        ready: queue.Queue = queue.Queue(maxsize=self.depth(rows))
        stop = threading.Event()

        def hand_over(item: torch.Tensor | BaseException) -> bool:
            """Queue `item`, waiting while the queue is full; False once the consumer has gone."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in order:
                    if not hand_over(self.read(item)):
                        return
            except BaseException as exc:  # raised in the consumer
                hand_over(exc)

        worker = threading.Thread(target=produce, name="medal-prefetch", daemon=True)
        worker.start()
        try:
            for _ in order:
                batch = ready.get()
                if isinstance(batch, BaseException):
                    raise batch
                yield batch.to(self.device, non_blocking=True)
        finally:
            stop.set()
            worker.join()


def image_source(images: np.ndarray | StoredImages, device: torch.device) -> ResidentImages | StreamedImages:
    """The source for one split as loaded: resident when it is an array, streamed when it is stored."""
    if isinstance(images, StoredImages):
        return StreamedImages(images, device)
    return ResidentImages(to_device(images, device))
