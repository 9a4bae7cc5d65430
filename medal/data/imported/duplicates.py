"""Images that repeat another image of the set, found while `medal import-dataset` decodes them.

A test image that is also a training image inflates every test metric, and real folder sets
have them (the same scan exported twice, a file copied into two split folders). Two images are
the same when their decoded pixels are: same mode, size and palette, same pixel bytes, compared
after EXIF orientation and before any conversion or resizing. A byte copy and the same pixels
saved again (another PNG compression, BMP, TIFF) both count; a JPEG re-encoding does not, since
its pixels change. Only a SHA-256 per distinct image is kept, so memory grows with the number of
images, never with their size.

Images are visited in the order they are written: train, then val, then test, each in the
source's order. An image whose pixels were seen before is a repeat, counted once:

- `across_splits`: its pixels first appeared in an earlier split: the val/test images that repeat
  an image of another split (a val image repeating a training image; a test image repeating a
  training or a val image);
- `within_splits`: its pixels first appeared earlier in its own split.

So within_splits + across_splits = images - distinct images. With `--drop-duplicates` the val
and test images whose pixels appear in train (the copies of what the student trains on) are not
written, and stay counted; a test image repeating a val image, and repeats within a split, are kept.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from medal.data.base import SPLITS


def pixel_digest(im: Image.Image) -> bytes:
    """SHA-256 of a decoded image: its mode, size, palette (palette images) and pixel bytes."""
    digest = hashlib.sha256(f"{im.mode}:{im.size}".encode())
    if im.mode in ("P", "PA"):
        digest.update(bytes(im.getpalette() or []) + repr(im.info.get("transparency")).encode())
    digest.update(im.tobytes())
    return digest.digest()


def images(n: int, split: str) -> str:
    return f"{n} {split} image{'s' if n != 1 else ''}"


def listed(counts: Counter) -> tuple[str, int]:
    """The counts as words, test first (e.g. `4 test images and 1 val image`), and their total."""
    phrases = [images(counts[s], s) for s in reversed(SPLITS) if counts[s]]
    return " and ".join(phrases), sum(counts.values())


@dataclass
class Duplicates:
    """The repeats among the images of one import, counted as the module docstring defines them."""

    drop: bool = False  # --drop-duplicates: leave out the val/test copies of training images
    first_split: dict[bytes, str] = field(default_factory=dict, repr=False)  # pixel digest -> split it first appeared in
    within: Counter = field(default_factory=Counter)  # split -> images repeating an earlier image of that split
    of_train: Counter = field(default_factory=Counter)  # val/test split -> images repeating a training image
    of_val: int = 0  # test images repeating a val image (and no training image)
    dropped: int = 0

    def keep(self, digest: bytes, split: str) -> bool:
        """Count one image (in write order); False when --drop-duplicates leaves it out."""
        first = self.first_split.get(digest)
        if first is None:
            self.first_split[digest] = split
            return True
        if first == split:
            self.within[split] += 1
            return True
        if first == "val":
            self.of_val += 1
            return True
        self.of_train[split] += 1
        if self.drop:
            self.dropped += 1
            return False
        return True

    def as_attrs(self) -> dict:
        across = sum(self.of_train.values()) + self.of_val
        return {"duplicates": {"within_splits": sum(self.within.values()), "across_splits": across},
                "duplicates_dropped": self.dropped}

    def warning(self) -> str | None:
        """One line naming every kind of repeat found, or None when every image is distinct."""
        parts = []
        if self.of_train:
            text, n = listed(self.of_train)
            parts.append(f"{text} {'repeats a training image' if n == 1 else 'repeat training images'}")
        if self.of_val:
            parts.append(f"{images(self.of_val, 'test')} {'repeats a val image' if self.of_val == 1 else 'repeat val images'}")
        if self.within:
            text, n = listed(self.within)
            parts.append(f"{text} {'repeats an earlier image' if n == 1 else 'repeat earlier images'} of the same split")
        if not parts:
            return None
        if self.dropped:
            parts.append(f"{self.dropped} val/test copies of training images dropped (--drop-duplicates)")
        elif self.of_train:
            parts.append("val/test metrics on them are inflated; --drop-duplicates leaves out the val/test copies "
                         "of training images")
        return "; ".join(parts) + "."
