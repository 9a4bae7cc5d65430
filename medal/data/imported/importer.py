"""`medal import-dataset`: a labelled image set (ImageFolder or CSV) -> a medal dataset in Zarr.

Images are decoded with Pillow, made 8-bit, converted to the dataset's channel count, resized
to S x S with Pillow's bicubic filter (antialiased when shrinking; the aspect ratio is not
kept, as MedMNIST does not keep it) and written 256 at a time, so memory stays bounded
whatever the size of the set. Decoding runs on a few threads (Pillow releases the GIL); the
output does not depend on their number. Each image's decoded pixels are hashed on the way, to
find the images that repeat another (see medal.data.imported.duplicates).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from medmnist.info import INFO
from PIL import Image, ImageOps

from medal.data.base import SPLITS
from medal.data.imported.duplicates import Duplicates, pixel_digest
from medal.data.imported.sources import Item, Listing, assign_splits, decide_task, order_classes, read_source, some
from medal.data.imported.store import SHARD_ROWS, DatasetWriter, data_dir, read_attrs
from medal.runtime.errors import MedalError
from medal.runtime.log import warn
from medal.runtime.progress import progress
from medal.runtime.version import __version__

INTERPOLATION = "bicubic"  # Pillow's Image.Resampling.BICUBIC; recorded in the dataset's attrs
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
WORKERS = min(8, os.cpu_count() or 1)


@dataclass
class ImportConfig:
    source: Path
    name: str
    size: int
    split_fractions: tuple[float, float, float] | None = None  # None: the source's own splits, else 0.7,0.1,0.2
    seed: int = 0
    channels: int | None = None  # None: 3 if any image is in colour, else 1
    task: str | None = None  # None: inferred from the labels
    skip_bad: bool = False
    data_dir: Path | None = None
    force: bool = False
    drop_duplicates: bool = False  # leave out the val/test images whose pixels repeat a training image's


@dataclass
class ImportResult:
    path: Path
    attrs: dict
    counts: dict[str, list[int]]  # split -> images per class (positives per label, for multi-label data)
    skipped: list[str] = field(default_factory=list)  # "path (why)" of each unreadable image skipped


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name.endswith(".zarr"):
        raise MedalError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (not ending in .zarr), e.g. derm.")
    if name.lower() in INFO:
        raise MedalError(f"--name {name!r} is a MedMNIST flag; pick another name, so that --dataset {name} stays MedMNIST's.")
    return name


def import_dataset(cfg: ImportConfig) -> ImportResult:
    """Check everything that can be checked from the listing, then decode, resize and write every image."""
    check_name(cfg.name)
    if not 8 <= cfg.size <= 1024:
        raise MedalError(f"--size must lie between 8 and 1024 pixels, got {cfg.size}.")
    if cfg.channels not in (None, 1, 3):
        raise MedalError(f"--channels must be 1 or 3, got {cfg.channels}.")
    final = data_dir(cfg.data_dir) / f"{cfg.name}.zarr"
    if final.exists() and not cfg.force:
        raise MedalError(f"dataset {cfg.name} already exists ({final}); pass --force to replace it or choose another --name.")
    listing = read_source(cfg.source)
    if not listing.items:
        raise MedalError(f"{cfg.source} lists no images.")
    task = decide_task(listing, cfg.task)
    listing = order_classes(assign_splits(listing, cfg.split_fractions, cfg.seed), task)
    modes, bad = scan(listing.items)
    if bad and not cfg.skip_bad:
        raise_unreadable(bad)
    width = len(listing.items[0].label)
    check_coverage({s: label_matrix([i for i in listing.items if i.split == s and str(i.path) not in bad], width)
                    for s in SPLITS}, listing)
    channels = cfg.channels or (3 if any(m in COLOUR_MODES for m in modes.values()) else 1)
    duplicates = Duplicates(drop=cfg.drop_duplicates)
    with DatasetWriter(final, cfg.size, channels, width) as writer:
        skipped = write_splits(writer, listing, cfg.size, channels, bad, cfg.skip_bad, duplicates)
        if duplicates.warning():  # before the coverage check: dropped copies may be what empties a class
            warn(duplicates.warning())
        written = {s: writer.labels(s) for s in SPLITS}
        check_coverage(written, listing)
        attrs = {"name": cfg.name, "task": task, "label_names": listing.label_names, "interpolation": INTERPOLATION,
                 "source": str(Path(cfg.source).expanduser().resolve()),
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "medal_version": __version__, **duplicates.as_attrs()}
        path = writer.commit(attrs)
    if skipped:
        warn(f"skipped {len(skipped)} unreadable images (--skip-bad): {some(skipped)}.")
    counts = {s: per_class(written[s], listing) for s in SPLITS}
    return ImportResult(path, read_attrs(path), counts, skipped)


def raise_unreadable(bad: dict[str, str]) -> None:
    listed = [f"{path} ({why})" for path, why in bad.items()]
    raise MedalError(f"{len(bad)} image{'s' if len(bad) > 1 else ''} cannot be read: {some(listed)}; "
                     f"fix or remove them, or pass --skip-bad.")


def scan(items: list[Item]) -> tuple[dict[str, str], dict[str, str]]:
    """Every image's mode from its header (cheap), and the files Pillow cannot even identify."""
    def mode(item: Item) -> tuple[str, str | None, str | None]:
        try:
            with Image.open(item.path) as im:
                return str(item.path), im.mode, None
        except Exception as exc:  # Pillow raises many types for a bad file; each means "cannot read it"
            return str(item.path), None, reason(exc)

    modes, bad = {}, {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for path, m, why in progress(pool.map(mode, items), total=len(items), desc="scan", unit="img", leave=False,
                                      line=False):
            if why is None:
                modes[path] = m
            else:
                bad[path] = why
    return modes, bad


def reason(exc: Exception) -> str:
    text = str(exc).split("\n")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, bytes]:
    """(size, size, channels) uint8: EXIF orientation applied, 8-bit, converted, bicubic-resized; and the
    digest of the decoded pixels before any conversion (what duplicates are found by)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        digest = pixel_digest(im)
        im = eight_bit(im).convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BICUBIC)
        array = np.asarray(im, dtype=np.uint8)
    return (array[..., None] if channels == 1 else array), digest


def eight_bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale keeps its top byte; 32-bit integer and float images are stretched min..max per image."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
    if im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        span = float(a.max() - a.min()) or 1.0
        return Image.fromarray(np.round((a - a.min()) * (255.0 / span)).astype(np.uint8), "L")
    return im


def write_splits(writer: DatasetWriter, listing: Listing, size: int, channels: int, bad: dict[str, str],
                 skip_bad: bool, duplicates: Duplicates) -> list[str]:
    """Decode and write every split, SHARD_ROWS images at a time, counting (and maybe dropping) repeated
    images in `duplicates` in write order; returns the unreadable images skipped."""
    def decode(item: Item) -> tuple[Item, tuple[np.ndarray, bytes] | None, str | None]:
        try:
            return item, load_image(item.path, size, channels), None
        except Exception as exc:  # a truncated or corrupt file fails only now, when its pixels are read
            return item, None, reason(exc)

    failed: dict[str, str] = {}
    bar = progress(total=len(listing.items) - len(bad), desc="import", unit="img")
    with ThreadPoolExecutor(WORKERS) as pool:
        for split in SPLITS:
            items = [i for i in listing.items if i.split == split and str(i.path) not in bad]
            writer.create_split(split, len(items))
            kept = 0
            for start in range(0, len(items), SHARD_ROWS):
                decoded = list(pool.map(decode, items[start : start + SHARD_ROWS]))
                bar.update(len(decoded))
                failed.update({str(item.path): why for item, loaded, why in decoded if loaded is None})
                block = [(item, loaded[0]) for item, loaded, _ in decoded
                         if loaded is not None and duplicates.keep(loaded[1], split)]
                if block:
                    writer.write(split, kept, np.stack([image for _, image in block]),
                                 np.array([item.label for item, _ in block], dtype=np.int64))
                    kept += len(block)
            writer.truncate(split, kept)
    bar.close()
    if failed and not skip_bad:
        raise_unreadable(failed)
    return [f"{path} ({why})" for path, why in [*bad.items(), *failed.items()]]


def label_matrix(items: list[Item], width: int) -> np.ndarray:
    return np.array([item.label for item in items], dtype=np.int64).reshape(-1, width)


def per_class(labels: np.ndarray, listing: Listing) -> list[int]:
    """Images per class, or positives per label for multi-label data."""
    if listing.multi_label:
        return [int(x) for x in labels.sum(0)]
    return [int(x) for x in np.bincount(labels[:, 0], minlength=len(listing.label_names))]


def check_coverage(labels: dict[str, np.ndarray], listing: Listing) -> None:
    """Images in every split, every class in each (multi-label: every label both present and absent):
    medmnist's AUC is per class and undefined otherwise, and the val AUC picks the kept epoch."""
    empty = [f"{s}/" for s in SPLITS if len(labels[s]) == 0]
    if empty:
        raise MedalError(f"a split without images: {', '.join(empty)} (after --skip-bad and --drop-duplicates).")
    problems = []
    for s in SPLITS:
        for name, k in zip(listing.label_names, per_class(labels[s], listing)):
            if k == 0:
                problems.append(f"{name!r} has no {'positive ' if listing.multi_label else ''}images in {s}")
            elif listing.multi_label and k == len(labels[s]):
                problems.append(f"{name!r} is positive in every {s} image")
    if problems:
        raise MedalError(f"empty class: {some(problems)}; every class needs images in train, val and test "
                         f"(medmnist's AUC is per class).")


def summary(result: ImportResult) -> str:
    """The imported dataset in one line, then a markdown table of images per class and split."""
    a = result.attrs
    kind = "labels (positives)" if a["task"] == "multi-label, binary-class" else "classes"
    lines = [f"imported {a['name']}: {a['task']}, {len(a['label_names'])} {kind}, "
             f"{a['size']}x{a['size']}x{a['channels']} ({a['interpolation']}) -> {result.path}"]
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable images (--skip-bad)")
    repeats = a["duplicates"]
    if repeats["within_splits"] or repeats["across_splits"]:
        dropped = f", {a['duplicates_dropped']} val/test copies of training images dropped" if a["duplicates_dropped"] else ""
        lines.append(f"duplicates: {repeats['within_splits']} within splits, {repeats['across_splits']} across splits{dropped}")
    lines += ["", "| class | train | val | test |", "|---|---|---|---|"]
    for i, name in enumerate(a["label_names"]):
        lines.append(f"| {name} | " + " | ".join(str(result.counts[s][i]) for s in SPLITS) + " |")
    lines.append("| images | " + " | ".join(str(a["n_samples"][s]) for s in SPLITS) + " |")
    return "\n".join(lines)


def as_json(result: ImportResult) -> dict:
    return {"path": str(result.path), **result.attrs,
            "counts": {s: dict(zip(result.attrs["label_names"], result.counts[s])) for s in SPLITS},
            "skipped": result.skipped}
