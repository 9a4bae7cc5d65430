"""The teacher cache: one Zarr v3 group per (dataset, size, teacher, image size, weights).

Layout of `<cache dir>/<key>.zarr`:

    attrs               provenance: data MD5 + fingerprint, weights SHA-256, teacher and head
                        config, medal version, date, the linear head's val/test metrics
    {split}/features    (N, D) float16   frozen backbone CLS features
    {split}/logits      (N, C) float32   the linear head's raw logits, before any temperature
    {split}/labels      (N, L) int64     the labels they were computed against
    head/weight, head/bias               the trained linear head

A run teacher's cache (`--teacher RUN_DIR`, see medal/models/teacher_spec.py) holds {split}/logits and
{split}/labels alone: the run's student is already a classifier, so there are no backbone
features and no head.

Arrays are chunked along the sample axis, Blosc/zstd-compressed, and every chunk carries a
crc32c checksum (Zarr v3's `crc32c` codec, after Blosc), so a damaged chunk is caught when it
is read instead of decompressing into garbage or a Blosc error. Every chunk is stored, even an
all-zero one, so a missing chunk file is damage too.

A cache is built in `.<key>.zarr.partial` and renamed into place only when complete, so a
reader never sees half of one. The partial folder survives an interruption (Ctrl-C, SIGTERM,
kill -9) with every feature chunk that was written whole; the same command then resumes from
them (see `CacheWriter`). `.<key>.zarr.lock` beside it keeps two builders apart.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from medal.cache.catalog import (
    FORMAT,
    CacheEntry,
    cache_dir,
    find_entry,
    list_entries,
    open_entry,
    rebuild_command,
)
from medal.data.base import SPLITS
from medal.runtime.distributed import World
from medal.runtime.errors import MedalError
from medal.runtime.filelock import FileLock
from medal.runtime.io import publish_dir
from medal.runtime.log import log
from medal.runtime.zarr_codecs import COMPRESSORS

CHUNK_ROWS = 4096
ARRAY_CONFIG = {"write_empty_chunks": True}  # store every chunk: a missing chunk file is then damage
ARRAYS = tuple(f"{s}/{a}" for s in SPLITS for a in ("features", "logits", "labels")) + ("head/weight", "head/bias")
RUN_TEACHER_ARRAYS = tuple(f"{s}/{a}" for s in SPLITS for a in ("logits", "labels"))


def cache_arrays(attrs: dict) -> tuple[str, ...]:
    """The arrays a cache holds: a run teacher's are its logits and labels alone."""
    return RUN_TEACHER_ARRAYS if attrs.get("teacher_kind") == "run" else ARRAYS


def cache_key(dataset: str, size: int, teacher: str, image_size: int, weights_id: str) -> str:
    """`teacher` is filename-safe (medal.models.teacher_spec.teacher_label); weights_id a SHA-256 (its first 12 digits are
    kept) or a hub tag (hashed)."""
    short = weights_id[:12] if len(weights_id) == 64 else hashlib.sha256(weights_id.encode()).hexdigest()[:12]
    return f"{dataset}_{size}_{teacher}_{image_size}_{short}"


def _create_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype, chunk_rows: int) -> zarr.Array:
    chunks = (min(chunk_rows, max(shape[0], 1)),) + tuple(shape[1:])
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=COMPRESSORS,
                              config=ARRAY_CONFIG, overwrite=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "checksum" in text.lower():
        return "crc32c checksum mismatch"
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def chunk_problem(array: zarr.Array, index: int) -> str | None:
    """Why row chunk `index` of an array cannot be read back, or None when it reads and its checksum holds."""
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    if not (Path(array.store.root) / array.path / key).is_file():
        return "chunk file missing"
    rows = array.chunks[0]
    try:
        array[index * rows : (index + 1) * rows]
    except MemoryError:
        raise
    except Exception as exc:  # a damaged chunk fails in the checksum, Blosc or numpy: all mean the same here
        return _reason(exc)
    return None


def chunk_problems(group: Path, name: str):
    """(row chunk index, what is wrong) for every unreadable chunk of one array; index None: the whole array."""
    try:
        array = zarr.open_array(Path(group) / name, mode="r")
    except Exception as exc:
        yield None, _reason(exc)
        return
    for index in range(array.cdata_shape[0]):
        problem = chunk_problem(array, index)
        if problem:
            yield index, problem


def read_array(group: Path, name: str, label: str, rebuild: str) -> np.ndarray:
    """A whole array, or one MedalError naming the array, its first damaged chunk and the rebuild command."""
    try:
        array = zarr.open_array(Path(group) / name, mode="r")
        data = array[...]
        if array.nchunks_initialized == array.nchunks:
            return data
    except MemoryError:
        raise
    except Exception:
        pass
    index, problem = next(chunk_problems(group, name), (None, "unreadable"))
    where = problem if index is None else f"chunk {index}: {problem}"
    raise MedalError(f"{label}: array {name} is damaged ({where}); rebuild it with `{rebuild}`.")


class TeacherCache(CacheEntry):
    """A finished cache, opened read-only: its provenance (CacheEntry) and its arrays."""

    def array(self, name: str) -> np.ndarray:
        """Every reader goes through here: a damaged chunk ends in one line with the rebuild command."""
        return read_array(self.path, name, f"teacher cache {self.key}", rebuild_command(self.attrs, self.path.parent))

    def logits(self, split: str) -> np.ndarray:
        return self.array(f"{split}/logits")

    def features(self, split: str) -> np.ndarray:
        return self.array(f"{split}/features")

    def labels(self, split: str) -> np.ndarray:
        return self.array(f"{split}/labels")


def open_cache(path: Path) -> TeacherCache:
    return TeacherCache(open_entry(path).path)


def list_caches(root: Path) -> list[TeacherCache]:
    """Every finished cache under root, oldest first; temporary and foreign folders are skipped."""
    return [TeacherCache(entry.path) for entry in list_entries(root)]


def find_cache(root: Path, key: str) -> TeacherCache:
    """A cache by full key or unique prefix."""
    return TeacherCache(find_entry(root, key).path)


class CacheWriter:
    """Builds one cache in `.KEY.zarr.partial`; `commit()` renames it into place.

    Resumable: the partial folder records, in its attrs, the inputs its features depend on
    (`identity`). A later run with the same identity keeps every feature chunk that reads back
    whole (checksum included) and computes only the others; other inputs, or --force, start
    over. Leaving the block without commit keeps the partial folder, so an exception, Ctrl-C,
    SIGTERM or kill -9 loses only the chunks in flight; it is removed only when the disk is full
    or no feature chunk was finished.

    Blocks are written by a background thread, overlapping Zarr compression with the teacher's
    compute. Under torchrun rank 0 takes the lock, opens or creates the partial folder and finds
    the finished chunks; every rank then gets the same list and writes whole chunks of its own.
    """

    def __init__(self, root: Path, key: str, world: World = World(), identity: dict | None = None,
                 rebuild: str = "medal cache-teacher --force", force: bool = False):
        self.root, self.key, self.world = Path(root), key, world
        self.final = self.root / f"{key}.zarr"
        self.tmp = self.root / f".{key}.zarr.partial"
        self.identity, self.rebuild, self.force = identity or {}, rebuild, force
        self.resumed = False
        self._lock: FileLock | None = None  # taken by rank 0 on entering
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future] = []

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "CacheWriter":
        problem = None
        if self.world.main:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                path = self.root / f".{self.key}.zarr.lock"
                self._lock = FileLock(path, f"cache {self.key} is being built right now by {{holder}} (lock {path}); "
                                            f"wait for that command to finish.")
                self.resumed = self._open_partial()
            except MedalError as exc:
                self._release_lock()
                problem = str(exc)
        problem, self.resumed = self.world.broadcast((problem, self.resumed))
        if problem:
            raise MedalError(problem)
        if not self.world.main:
            self.group = zarr.open_group(self.tmp, mode="r+")
        return self

    def _open_partial(self) -> bool:
        """Rank 0: reopen the partial folder when it was started with the same inputs (True), else start afresh."""
        for stale in self.root.glob(f".{self.final.stem}.zarr.partial-*"):  # per-process partials of older medal versions
            shutil.rmtree(stale, ignore_errors=True)
        if self.tmp.exists():
            why = self._why_not_resume()
            if why is None:
                for cut_off in self.tmp.rglob("*.partial"):  # Zarr's temporary file of a chunk write killed midway
                    cut_off.unlink()
                self.group = zarr.open_group(self.tmp, mode="r+")
                return True
            log(f"starting cache {self.key} over: {why}")
            shutil.rmtree(self.tmp)
        self.group = zarr.open_group(self.tmp, mode="w", zarr_format=3)
        self.group.attrs["resume"] = self.identity
        return False

    def _why_not_resume(self) -> str | None:
        if self.force:
            return "--force"
        try:
            recorded = dict(zarr.open_group(self.tmp, mode="r").attrs).get("resume") or {}
        except Exception:
            return "its partial folder is unreadable"
        changed = sorted(k for k in {*recorded, *self.identity} if recorded.get(k) != self.identity.get(k))
        return f"the interrupted run had another {', '.join(changed)}" if changed else None

    def create(self, name: str, shape: tuple[int, ...], dtype: str, chunk_rows: int = CHUNK_ROWS) -> set[int]:
        """Rank 0 creates the array, or keeps it when resuming; returns, on every rank, the row
        chunks already written whole by an interrupted run."""
        done: set[int] = set()
        if self.world.main:
            old = self._resumable_array(name, shape, dtype, chunk_rows)
            if old is None:
                _create_array(self.group, name, shape, dtype, chunk_rows)
            else:
                done = {i for i in range(old.cdata_shape[0]) if chunk_problem(old, i) is None}
        return self.world.broadcast(done)

    def _resumable_array(self, name: str, shape: tuple[int, ...], dtype: str, chunk_rows: int) -> zarr.Array | None:
        if not self.resumed:
            return None
        try:
            array = zarr.open_array(self.tmp / name, mode="r")
        except Exception:
            return None
        same = array.shape == tuple(shape) and array.dtype == np.dtype(dtype) and array.chunks[0] == min(chunk_rows, max(shape[0], 1))
        return array if same else None

    def write(self, name: str, start: int, block: np.ndarray) -> None:
        """Queue rows [start, start + len(block)) of array `name` for writing."""
        self._drain(limit=4)
        self._pending.append(self._pool.submit(self._setitem, name, slice(start, start + len(block)), block))

    def _setitem(self, name: str, rows: slice, block: np.ndarray) -> None:
        zarr.open_array(self.tmp / name, mode="r+").with_config(ARRAY_CONFIG)[rows] = block

    def read(self, name: str) -> np.ndarray:
        """An array as written so far by all ranks (call after sync())."""
        return read_array(self.tmp, name, f"the partial cache {self.key}", self.rebuild)

    def put(self, name: str, array: np.ndarray) -> None:
        """A whole array at once (rank 0 only: used for logits, labels and the head); replaces an older one."""
        _create_array(self.group, name, array.shape, array.dtype, CHUNK_ROWS)
        self.write(name, 0, array)

    def sync(self) -> None:
        """Every queued write finished, on every rank."""
        self._drain()
        self.world.barrier()

    def _drain(self, limit: int = 0) -> None:
        while len(self._pending) > limit:
            self._pending.pop(0).result()

    def commit(self, attrs: dict) -> TeacherCache:
        """Rank 0: record the provenance (replacing the resume record) and rename the cache into place."""
        self._drain()
        self.group.attrs.put({"medal_cache_format": FORMAT, **attrs})
        if self.final.exists():  # --force, or an outdated cache of the same key
            shutil.rmtree(self.final)
        publish_dir(self.tmp, self.final)
        return TeacherCache(self.final)

    def finished_feature_chunks(self) -> int:
        return sum(p.is_file() for p in self.tmp.glob("*/features/c/*/*"))

    def __exit__(self, exc_type, exc, tb) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        if self.world.main:
            if self.tmp.exists() and (full or not self.finished_feature_chunks()):
                shutil.rmtree(self.tmp, ignore_errors=True)
            elif self.tmp.exists() and isinstance(exc, KeyboardInterrupt):
                log(f"kept {self.finished_feature_chunks()} finished feature chunks of cache {self.key} in {self.tmp}; "
                    f"the same command resumes from them.")
            self._release_lock()
        if full:
            raise MedalError(f"the disk under {self.root} is full; nothing was cached (free space or pass --cache-dir).") from None


def cache_attrs(config: dict, key: str) -> dict | None:
    """The teacher cache's provenance, or None when the cache has been deleted or moved."""
    try:
        return open_cache(cache_dir(config.get("cache_dir")) / f"{key}.zarr").attrs
    except MedalError:
        return None
