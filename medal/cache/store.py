"""The teacher cache: one Zarr v3 group per (dataset, size, teacher, image size, weights).

Layout of `<cache dir>/<key>.zarr`:

    attrs               provenance: data MD5 + fingerprint, weights SHA-256, teacher and head
                        config, medal version, date, the linear head's val/test metrics
    {split}/features    (N, D) float16   frozen backbone CLS features
    {split}/logits      (N, C) float32   the linear head's raw logits, before any temperature
    {split}/labels      (N, L) int64     the labels they were computed against
    head/weight, head/bias               the trained linear head

Arrays are chunked along the sample axis and Blosc/zstd-compressed. A cache is written under
a hidden temporary name and renamed into place only when complete, so a reader never sees
half of one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from medal.distributed import World
from medal.errors import MedalError

FORMAT = 1  # bump when the layout changes; older caches are then refused with a rebuild hint
CHUNK_ROWS = 4096
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def cache_dir(path: Path | str | None = None) -> Path:
    """--cache-dir, else $MEDAL_CACHE_DIR, else ~/.cache/medal."""
    chosen = path or os.environ.get("MEDAL_CACHE_DIR") or Path.home() / ".cache" / "medal"
    return Path(chosen).expanduser()


def cache_key(dataset: str, size: int, teacher: str, image_size: int, weights_id: str) -> str:
    short = weights_id[:12] if len(weights_id) == 64 else hashlib.sha256(weights_id.encode()).hexdigest()[:12]
    return f"{dataset}_{size}_{teacher}_{image_size}_{short}"


@dataclass
class TeacherCache:
    """A finished cache, opened read-only."""

    path: Path

    @property
    def key(self) -> str:
        return self.path.name.removesuffix(".zarr")

    @property
    def attrs(self) -> dict:
        return dict(self._group().attrs)

    def _group(self) -> zarr.Group:
        return zarr.open_group(self.path, mode="r")

    def array(self, name: str) -> np.ndarray:
        return self._group()[name][...]

    def logits(self, split: str) -> np.ndarray:
        return self.array(f"{split}/logits")

    def features(self, split: str) -> np.ndarray:
        return self.array(f"{split}/features")

    def labels(self, split: str) -> np.ndarray:
        return self.array(f"{split}/labels")


def open_cache(path: Path) -> TeacherCache:
    path = Path(path)
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        raise MedalError(f"{path} is not a medal teacher cache.") from None
    if attrs.get("medal_cache_format") != FORMAT:
        raise MedalError(f"{path} was written by another medal cache format; rebuild it with `medal cache-teacher --force`.")
    return TeacherCache(path)


def list_caches(root: Path) -> list[TeacherCache]:
    """Every finished cache under root, oldest first; temporary and foreign folders are skipped."""
    found = []
    for path in sorted(Path(root).glob("*.zarr")):
        try:
            found.append(open_cache(path))
        except MedalError:
            continue
    return sorted(found, key=lambda c: c.attrs.get("created", ""))


def find_cache(root: Path, key: str) -> TeacherCache:
    """A cache by full key or unique prefix."""
    caches = list_caches(root)
    hits = [c for c in caches if c.key == key] or [c for c in caches if c.key.startswith(key)]
    if len(hits) != 1:
        known = ", ".join(c.key for c in caches) or "none"
        what = "no" if not hits else "more than one"
        raise MedalError(f"{what} cache in {root} matches {key!r} (cached: {known}).")
    return hits[0]


class CacheWriter:
    """Writes one cache under a temporary name; `commit()` renames it into place.

    Used as a context manager: leaving the block without commit (an error, Ctrl-C) deletes the
    temporary folder, so nothing half-written survives. Blocks are written by a background
    thread, overlapping Zarr compression with the teacher's compute. Under torchrun every rank
    opens the same temporary group (rank 0 creates it) and writes whole chunks of its own.
    """

    def __init__(self, root: Path, key: str, world: World = World()):
        self.root, self.world = Path(root), world
        self.final = self.root / f"{key}.zarr"
        self.tmp = self.root / f".{key}.zarr.partial-{world.broadcast(os.getpid())}"
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future] = []

    def __enter__(self) -> "CacheWriter":
        if self.world.main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f".{self.final.stem}.zarr.partial-*"):  # left by an interrupted run
                shutil.rmtree(stale, ignore_errors=True)
            self.group = zarr.open_group(self.tmp, mode="w", zarr_format=3)
        self.world.barrier()
        if not self.world.main:
            self.group = zarr.open_group(self.tmp, mode="r+")
        return self

    def create(self, name: str, shape: tuple[int, ...], dtype: str, chunk_rows: int = CHUNK_ROWS) -> None:
        """Rank 0 creates the array; every rank may write to it after the barrier."""
        if self.world.main:
            chunks = (min(chunk_rows, max(shape[0], 1)),) + tuple(shape[1:])
            self.group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=COMPRESSOR)
        self.world.barrier()

    def write(self, name: str, start: int, block: np.ndarray) -> None:
        """Queue rows [start, start + len(block)) of array `name` for writing."""
        self._drain(limit=4)
        self._pending.append(self._pool.submit(self._setitem, name, slice(start, start + len(block)), block))

    def _setitem(self, name: str, rows: slice, block: np.ndarray) -> None:
        zarr.open_array(self.tmp / name, mode="r+")[rows] = block

    def read(self, name: str) -> np.ndarray:
        """An array as written so far by all ranks (call after sync())."""
        return zarr.open_array(self.tmp / name, mode="r")[...]

    def put(self, name: str, array: np.ndarray) -> None:
        """A whole array at once (rank 0 only: used for logits, labels and the head)."""
        chunks = (min(CHUNK_ROWS, max(array.shape[0], 1)),) + tuple(array.shape[1:])
        self.group.create_array(name, shape=array.shape, chunks=chunks, dtype=array.dtype, compressors=COMPRESSOR)
        self.write(name, 0, array)

    def sync(self) -> None:
        """Every queued write finished, on every rank."""
        self._drain()
        self.world.barrier()

    def _drain(self, limit: int = 0) -> None:
        while len(self._pending) > limit:
            self._pending.pop(0).result()

    def commit(self, attrs: dict) -> TeacherCache:
        self._drain()
        self.group.attrs.update({"medal_cache_format": FORMAT, **attrs})
        if self.final.exists():  # --force, or a concurrent run finished first
            shutil.rmtree(self.final)
        self.tmp.rename(self.final)
        return TeacherCache(self.final)

    def __exit__(self, exc_type, exc, tb) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        if self.world.main and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise MedalError(f"the disk under {self.root} is full; nothing was cached (free space or pass --cache-dir).") from None
