"""What `medal import-dataset` reads before any pixel: which files, which labels, which split.

Two sources are understood:

- an image folder in torchvision's ImageFolder layout, `SOURCE/{train,val,test}/<class>/...`, or
  one `SOURCE/<class>/...` folder that is split by `--split-fractions` (stratified by class);
- a CSV with a header row: the image path first (or in a column named `path`), relative to the
  CSV's folder; then one label column (class names or numbers), or several 0/1 columns
  (multi-label); optionally a column named `split` holding train, val or test.

Every problem found here is reported before a single image is decoded.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from medal.data.base import MULTI_LABEL, SPLITS
from medal.runtime.errors import MedalError
from medal.runtime.log import warn

TASKS = {"multi-class": "multi-class", "binary-class": "binary-class", "multi-label": MULTI_LABEL,
         "ordinal": "ordinal-regression"}  # --task value -> medmnist task string (which the strings also are)
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SHOWN = 3  # problems named in one error line; the rest are counted


@dataclass(frozen=True)
class Item:
    path: Path
    label: tuple[int, ...]  # (class index,), or 0/1 per label for multi-label data
    split: str | None  # None until --split-fractions assigns one


@dataclass
class Listing:
    items: list[Item]
    label_names: list[str]
    multi_label: bool
    numeric_labels: bool  # every class name is an integer (required for --task ordinal)


def some(problems: list[str]) -> str:
    """The first few problems, and how many more there are: one error line, however many there were."""
    more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
    return "; ".join(problems[:SHOWN]) + more


def image_extensions() -> set[str]:
    """Every file extension Pillow can open (not those it can only write)."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def read_source(source: Path) -> Listing:
    source = Path(source).expanduser()
    if source.is_file():
        return read_csv(source)
    if source.is_dir():
        return read_image_folder(source)
    raise MedalError(f"{source} does not exist; pass an image folder or a CSV of path,label[,split].")


# ImageFolder -----------------------------------------------------------------------------------

def class_files(folder: Path, extensions: set[str]) -> dict[str, list[Path]]:
    """{class folder name: its image files, sorted, searched recursively as torchvision does}."""
    found: dict[str, list[Path]] = {}
    loose = 0
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found[entry.name] = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                                       and not any(part.startswith(".") for part in p.relative_to(entry).parts))
        elif entry.suffix.lower() in extensions:
            loose += 1
    if loose:
        warn(f"{loose} images lie directly in {folder}, outside any class folder; they are ignored.")
    return found


def read_image_folder(source: Path) -> Listing:
    extensions = image_extensions()
    present = [s for s in SPLITS if (source / s).is_dir()]
    layout = {s: class_files(source / s, extensions) for s in present} if present else {None: class_files(source, extensions)}
    if present and len(present) < len(SPLITS):
        missing = ", ".join(f"{s}/" for s in SPLITS if s not in present)
        raise MedalError(f"{source} has {', '.join(f'{s}/' for s in present)} but no {missing}: a split without images "
                         f"(add it, or put the class folders directly in {source} and use --split-fractions).")
    for split, classes in layout.items():
        where = source / split if split else source
        if not classes:
            raise MedalError(f"{where} holds no class folders: a split without images (expected {where}/<class>/<image>).")
        empty = [f"{where.name}/{name}/" for name, files in classes.items() if not files]
        if empty:
            raise MedalError(f"empty class: {some(empty)} holds no images Pillow can open; add images or remove the folder.")
    names = sorted({name for classes in layout.values() for name in classes})  # torchvision's order
    index = {name: i for i, name in enumerate(names)}
    items = [Item(path, (index[name],), split) for split, classes in layout.items()
             for name in names for path in classes.get(name, [])]
    return Listing(items, names, multi_label=False, numeric_labels=all(is_int(n) for n in names))


# CSV --------------------------------------------------------------------------------------------

def is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def read_csv(source: Path) -> Listing:
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MedalError(f"{source} is neither an image folder nor a readable CSV ({exc}).") from None
    if len(rows) < 2:
        raise MedalError(f"{source} has no rows under its header; expected a CSV of path,label[,split].")
    header = [h.strip() for h in rows[0][1]]
    lower = [h.lower() for h in header]
    path_col = lower.index("path") if "path" in lower else 0
    split_col = lower.index("split") if "split" in lower else None
    label_cols = [i for i in range(len(header)) if i not in (path_col, split_col)]
    if not label_cols:
        raise MedalError(f"{source} has no label column; expected a header such as path,label[,split].")
    multi_label = len(label_cols) > 1
    problems: list[str] = []
    parsed: list[tuple[Path, list[str], str | None]] = []
    for line, row in rows[1:]:
        cells = [c.strip() for c in row]
        if len(cells) != len(header):
            problems.append(f"line {line} has {len(cells)} fields, the header {len(header)}")
            continue
        split = cells[split_col].lower() if split_col is not None else None
        if split is not None and split not in SPLITS:
            problems.append(f"line {line}: split {cells[split_col]!r} is not train, val or test")
        values = [cells[i] for i in label_cols]
        for i, value in zip(label_cols, values):
            if value == "":
                problems.append(f"line {line}: empty {header[i]!r}")
            elif multi_label and value not in ("0", "1"):
                problems.append(f"line {line}: {header[i]!r} is {value!r}, not 0 or 1 (several label columns mean multi-label)")
        if not cells[path_col]:
            problems.append(f"line {line}: empty image path")
        parsed.append((source.parent / cells[path_col], values, split))
    if problems:
        raise MedalError(f"labels that do not parse in {source}: {some(problems)}.")
    if multi_label:
        names = [header[i] for i in label_cols]
        items = [Item(path, tuple(int(v) for v in values), split) for path, values, split in parsed]
        return Listing(items, names, multi_label=True, numeric_labels=False)
    values = {v[0] for _, v, _ in parsed}
    numeric = all(is_int(v) for v in values)
    names = sorted(values, key=int) if numeric else sorted(values)
    index = {name: i for i, name in enumerate(names)}
    items = [Item(path, (index[v[0]],), split) for path, v, split in parsed]
    return Listing(items, names, multi_label=False, numeric_labels=numeric)


# Splits and task --------------------------------------------------------------------------------

def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(x) for x in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise MedalError(f"--split-fractions must be three positive fractions for train,val,test summing to 1 "
                         f"(e.g. 0.7,0.1,0.2), got {text!r}.")
    return fractions  # type: ignore[return-value]


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split for a group of n: at least one in each, rounding half up."""
    val, test = (max(1, math.floor(n * f + 0.5)) for f in fractions[1:])
    return n - val - test, val, test


def assign_splits(listing: Listing, fractions: tuple[float, float, float] | None, seed: int) -> Listing:
    """Give every item a split: keep the source's own, or draw them with --split-fractions and --seed.

    Single-label data is split within each class (stratified), so every class reaches every
    split; multi-label data is split as a whole. The drawn split keeps the source's order.
    """
    presplit = listing.items[0].split is not None
    if presplit:
        if fractions is not None:
            raise MedalError("the source already names each image's split (train/, val/, test/ or a split column); "
                             "drop --split-fractions.")
        return listing
    fractions = fractions or DEFAULT_FRACTIONS
    rng = np.random.default_rng(seed)
    if listing.multi_label:
        groups = {"all images": np.arange(len(listing.items))}
    else:
        by_class = np.array([item.label[0] for item in listing.items])
        groups = {name: np.flatnonzero(by_class == c) for c, name in enumerate(listing.label_names)}
    split_of: dict[int, str] = {}
    for name, members in groups.items():
        train, val, _ = split_counts(len(members), fractions)
        if train < 1:
            raise MedalError(f"class {name!r} has {len(members)} images: too few to give train, val and test one each "
                             f"at --split-fractions {','.join(f'{f:g}' for f in fractions)}.")
        for rank, i in enumerate(rng.permutation(members)):
            split_of[int(i)] = "train" if rank < train else "val" if rank < train + val else "test"
    items = [replace(item, split=split_of[i]) for i, item in enumerate(listing.items)]
    return replace(listing, items=items)


def decide_task(listing: Listing, task: str | None) -> str:
    """The medmnist task string: inferred from the labels, or --task, checked against them."""
    n = len(listing.label_names)
    inferred = MULTI_LABEL if listing.multi_label else "binary-class" if n == 2 else "multi-class"
    chosen = TASKS.get(task, task) if task else inferred
    if chosen not in TASKS.values():
        raise MedalError(f"--task must be one of {', '.join(TASKS)}, got {task!r}.")
    if not listing.multi_label and n < 2:
        raise MedalError(f"only one class ({listing.label_names[0]!r}) was found; a classifier needs at least two.")
    if (chosen == MULTI_LABEL) != listing.multi_label:
        what = "several 0/1 label columns in a CSV" if chosen == MULTI_LABEL else "one label per image"
        raise MedalError(f"--task {task} needs {what}; the source has "
                         f"{'several label columns' if listing.multi_label else 'one label per image'}.")
    if chosen == "binary-class" and n != 2:
        raise MedalError(f"--task binary-class needs exactly 2 classes, the source has {n}.")
    if chosen == "ordinal-regression" and not listing.numeric_labels:
        raise MedalError("--task ordinal needs integer class names (0, 1, 2, ...) so that their order is known; "
                         f"the source has {some(listing.label_names)}.")
    return chosen


def order_classes(listing: Listing, task: str) -> Listing:
    """Ordinal classes in numeric order (an ImageFolder's are sorted as text: 10 before 2)."""
    if task != "ordinal-regression" or listing.multi_label:
        return listing
    names = sorted(listing.label_names, key=int)
    new = {old: names.index(name) for old, name in enumerate(listing.label_names)}
    items = [replace(item, label=(new[item.label[0]],)) for item in listing.items]
    return Listing(items, names, multi_label=False, numeric_labels=True)
