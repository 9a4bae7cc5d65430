"""New images for a student: PNG/JPEG files, folders of them, a MedMNIST-format .npz, or a split
of a medal dataset store (`medal import-dataset`'s .zarr), which is streamed, not loaded.

Every image is brought to what the student's training images were before medal's own
preprocessing: the dataset's native size (e.g. 28x28, Pillow's bicubic filter, antialiased
when shrinking; a non-square image is resized, not cropped) and its native channels (colour
converted to grayscale with Pillow's "L" luma, or grayscale repeated to RGB). What was
converted is said in one notice line per kind, on stderr.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medal.data.stream.store import StoredImages
from medal.runtime.errors import MedalError
from medal.runtime.log import log

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GRAY_MODES = ("L", "LA", "1")  # anything else Pillow opens is made RGB


@dataclass
class Images:
    names: list[str]  # one per image: the file, or NPZ:SPLIT:INDEX / STORE:SPLIT:INDEX
    parts: list[np.ndarray | StoredImages]  # (N, size, size, channels) uint8 each, in order; a stored part streams


class Converter:
    """Brings (H, W, C) uint8 images to the native size and channels, counting what it changed."""

    def __init__(self, size: int, channels: int, dataset: str):
        self.size, self.channels, self.dataset = size, channels, dataset
        self.counts: Counter[str] = Counter()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape[-1] != self.channels:
            if self.channels == 1:
                image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
                self.counts["gray"] += 1
            else:
                image = np.repeat(image, 3, axis=-1)
                self.counts["rgb"] += 1
        if image.shape[:2] != (self.size, self.size):
            pil = Image.fromarray(image[..., 0] if self.channels == 1 else image)
            image = np.asarray(pil.resize((self.size, self.size), Image.Resampling.BICUBIC)).reshape(self.size, self.size, -1)
            self.counts["resize"] += 1
        return image

    def notices(self) -> list[str]:
        said = {
            "16bit": "scaled {n} 16-bit image(s) to 8 bits (divided by 257)",
            "gray": f"converted {{n}} colour image(s) to grayscale (Pillow 'L'): {self.dataset} images are grayscale",
            "rgb": f"repeated {{n}} grayscale image(s) to RGB: {self.dataset} images are colour",
            "resize": f"resized {{n}} image(s) to {self.size}x{self.size} (Pillow bicubic), the size of {self.dataset}'s "
                      f"training images",
        }
        return [f"note: {text.format(n=self.counts[kind])}" for kind, text in said.items() if self.counts[kind]]


def read_image(path: Path, convert: Converter) -> np.ndarray:
    """One image file as (size, size, channels) uint8."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MedalError(f"{path} could not be read as an image ({type(exc).__name__}).") from None
    if image.mode.startswith("I"):  # 16-bit (or 32-bit integer) grayscale, common for medical images
        array = np.asarray(image, dtype=np.float64) / 257.0
        convert.counts["16bit"] += 1
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)[..., None]
    elif image.mode == "F":
        raise MedalError(f"{path} holds floating-point pixels; save it as an 8-bit PNG or JPEG.")
    else:
        image = image.convert("L" if image.mode in GRAY_MODES else "RGB")
        array = np.asarray(image).reshape(image.height, image.width, -1)
    return convert(array)


def read_npz(path: Path, split: str, convert: Converter) -> Images:
    """The `{split}_images` array of a MedMNIST-format file."""
    try:
        with np.load(path) as npz:
            keys = list(npz.files)
            images = npz[f"{split}_images"] if f"{split}_images" in keys else None
    except (OSError, ValueError) as exc:
        raise MedalError(f"{path} could not be read as a .npz file ({type(exc).__name__}).") from None
    if images is None:
        held = sorted(k.removesuffix("_images") for k in keys if k.endswith("_images")) or ["no *_images arrays"]
        raise MedalError(f"{path} has no {split}_images (it holds {', '.join(held)}); pick one with --split.")
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise MedalError(f"{path}: {split}_images must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}.")
    if images.ndim == 3:
        images = images[..., None]
    native = images.shape[1:] == (convert.size, convert.size, convert.channels)
    array = np.ascontiguousarray(images) if native else np.stack([convert(image) for image in images])
    return Images([f"{path}:{split}:{i}" for i in range(len(images))], [array])


def read_store(path: Path, split: str, convert: Converter, budget_bytes: int) -> Images:
    """One split of a medal dataset store: streamed as it is when native, else read a block at a time and converted."""
    array_dir = path / split / "images"
    if not (array_dir / "zarr.json").is_file():
        held = sorted(p.parent.name for p in path.glob("*/images/zarr.json"))
        if not held:
            raise MedalError(f"{path} is not a medal dataset store (no */images arrays); make one with `medal import-dataset`.")
        raise MedalError(f"{path} has no {split} split (it holds {', '.join(held)}); pick one with --split.")
    stored = StoredImages(array_dir, budget_bytes)
    if stored.dtype != np.uint8 or len(stored.row_shape) != 3:
        raise MedalError(f"{array_dir} must hold uint8 (N, H, W, C) images, got {stored.dtype} {stored.shape}.")
    names = [f"{path}:{split}:{i}" for i in range(len(stored))]
    if stored.row_shape == (convert.size, convert.size, convert.channels):
        return Images(names, [stored])
    return Images(names, [np.stack([convert(image) for block in stored.blocks() for image in block])])


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in a folder (not its subfolders), sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MedalError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}; subfolders are not searched).")
    return files


def read_inputs(paths: list[Path], split: str, size: int, channels: int, dataset: str, budget_bytes: int = 0) -> Images:
    """Every input, in the order given (a folder's files by name), at native size and channels.

    Consecutive in-memory inputs are joined into one part (one batch sequence, as `evaluate` runs);
    a native .zarr split stays a part of its own, read batch by batch within `budget_bytes`.
    """
    convert = Converter(size, channels, dataset)
    names: list[str] = []
    parts: list[np.ndarray | StoredImages] = []
    pending: list[np.ndarray] = []
    for path in map(Path, paths):
        if not path.exists():
            raise MedalError(f"input {path} does not exist.")
        if path.is_dir() and path.suffix.lower() == ".zarr":
            images = read_store(path, split, convert, budget_bytes)
        elif path.is_dir():
            files = folder_images(path)
            images = Images(list(map(str, files)), [np.stack([read_image(f, convert) for f in files])])
        elif path.suffix.lower() == ".npz":
            images = read_npz(path, split, convert)
        else:
            images = Images([str(path)], [read_image(path, convert)[None]])
        names += images.names
        for part in images.parts:
            if isinstance(part, np.ndarray):
                pending.append(part)
            else:
                parts += [np.concatenate(pending)] if pending else []
                parts.append(part)
                pending = []
    parts += [np.concatenate(pending)] if pending else []
    for line in convert.notices():
        log(line)
    if not names:
        raise MedalError("the inputs hold no images.")
    return Images(names, parts)
