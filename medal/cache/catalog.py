"""Which teacher caches a cache dir holds, and their provenance, read with the standard library alone.

A cache is a Zarr v3 group (medal/cache/store.py); its provenance is the group's attributes, which
Zarr keeps as plain JSON under "attributes" in `<key>.zarr/zarr.json`. Reading that file directly
lets `medal cache ls` and `medal cache info` answer without importing zarr, numpy or torch;
store.py builds the array-reading `TeacherCache` on `CacheEntry`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from medal.runtime.errors import MedalError

FORMAT = 2  # bump when the layout changes; older caches are then refused with a rebuild hint (2: crc32c)


def cache_dir(path: Path | str | None = None) -> Path:
    """--cache-dir, else $MEDAL_CACHE_DIR, else ~/.cache/medal."""
    chosen = path or os.environ.get("MEDAL_CACHE_DIR") or Path.home() / ".cache" / "medal"
    return Path(chosen).expanduser()


def rebuild_command(attrs: dict, root: Path) -> str:
    """The `medal cache-teacher ... --force` command that recomputes a cache, from what it recorded."""
    if "dataset" not in attrs or "teacher" not in attrs:
        return "medal cache-teacher --dataset DATASET --teacher TEACHER --force"
    args = ["medal", "cache-teacher", "--dataset", attrs["dataset"], "--size", attrs.get("size", 28),
            "--teacher", attrs["teacher"], "--image-size", attrs["image_size"]]
    if "data_root" in attrs:
        args += ["--root", attrs["data_root"]]
    if attrs.get("weights", "timm hub") != "timm hub" and attrs.get("teacher_kind") != "run":
        args += ["--weights", attrs["weights"]]
    if attrs.get("teacher_args"):
        args += ["--teacher-args", attrs["teacher_args"]]
    for flag, value in (("--head-epochs", attrs.get("head", {}).get("epochs")), ("--chunk-rows", attrs.get("chunk_rows")),
                        ("--batch-size", attrs.get("batch_size"))):
        if value is not None:
            args += [flag, value]
    args += ["--cache-dir", Path(root).resolve(), "--force"]
    return " ".join(shlex.quote(str(a)) for a in args)


def group_attrs(path: Path) -> dict:
    """A Zarr v3 group's attributes, as zarr itself returns them (it writes them with json.dumps)."""
    meta = json.loads((Path(path) / "zarr.json").read_text())
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise ValueError(f"{path} is not a Zarr v3 group")
    return dict(meta.get("attributes") or {})


@dataclass
class CacheEntry:
    """A finished cache: where it is, its key, and its provenance."""

    path: Path

    @property
    def key(self) -> str:
        return self.path.name.removesuffix(".zarr")

    @property
    def attrs(self) -> dict:
        return group_attrs(self.path)


def open_entry(path: Path) -> CacheEntry:
    """The cache at `path`, or a MedalError when it is not one or was written by another cache format."""
    path = Path(path)
    try:
        attrs = group_attrs(path)
    except Exception:
        raise MedalError(f"{path} is not a medal teacher cache.") from None
    if attrs.get("medal_cache_format") != FORMAT:
        raise MedalError(f"{path} was written by another medal cache format; rebuild it with "
                         f"`{rebuild_command(attrs, path.parent)}`.")
    return CacheEntry(path)


def list_entries(root: Path) -> list[CacheEntry]:
    """Every finished cache under root, oldest first; temporary and foreign folders are skipped."""
    found = []
    for path in sorted(Path(root).glob("*.zarr")):
        try:
            found.append(open_entry(path))
        except MedalError:
            continue
    return sorted(found, key=lambda c: c.attrs.get("created", ""))


def find_entry(root: Path, key: str) -> CacheEntry:
    """A cache by full key or unique prefix."""
    caches = list_entries(root)
    hits = [c for c in caches if c.key == key] or [c for c in caches if c.key.startswith(key)]
    if len(hits) != 1:
        known = ", ".join(c.key for c in caches) or "none"
        what = "no" if not hits else "more than one"
        raise MedalError(f"{what} cache in {root} matches {key!r} (cached: {known}).")
    return hits[0]
