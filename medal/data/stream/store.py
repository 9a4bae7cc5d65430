"""The chunked image store streamed splits are read from, and MedMNIST .npz files converted into it.

Layout (shared with imported datasets): `<name>.zarr/`, a Zarr v3 group whose attrs hold `name`,
`task`, `label_names`, `size`, `channels`, `n_samples` and `fingerprint`; arrays `{split}/images`
(N, S, S, C) uint8, one image per chunk inside shards of up to 256 images (Blosc zstd), and
`{split}/labels` (N, L) int64. One image per chunk makes a random row one small read.

Reading and writing go around zarr's generic machinery where the layout is this one: zarr 3
spends milliseconds of Python per chunk, a shuffled batch of 128 rows touches 128 chunks, and a
training step must not wait for that. `StoredImages` reads each shard's index once and then a row
is one `pread` and one Blosc decompression (tens of microseconds); the converter writes whole
shard files (the chunks, then the index of (offset, nbytes) and its crc32c, as zarr's sharding
codec specifies), after zarr has written the metadata. Any other layout is read through zarr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from medmnist.info import INFO

from medal.runtime.errors import MedalError
from medal.runtime.io import publish_dir
from medal.runtime.progress import progress

MAX_SHARD_ROWS = 256
BLOSC = dict(cname="zstd", clevel=3, shuffle="bitshuffle")
SHARD_BYTES = 16 * 2**20  # fewer images a shard at large sizes: writing one holds it in memory
EMPTY = np.uint64(2**64 - 1)  # a shard index's (offset, nbytes) of a chunk never written (all fill value)


def shard_rows(row_bytes: int) -> int:
    """Images a shard: the largest power of two up to 256 whose shard stays within SHARD_BYTES."""
    rows = MAX_SHARD_ROWS
    while rows > 1 and rows * row_bytes > SHARD_BYTES:
        rows //= 2
    return rows


def store_name(flag: str, size: int, md5: str) -> str:
    return f"{flag}_{size}_{md5[:12]}.zarr"


def npz_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, zipfile.ZipExtFile]:
    """(shape, dtype, stream positioned at the data) of one .npy member, without reading its data."""
    stream = zf.open(member)
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"{member} is a .npy version {version} file")
    shape, fortran_order, dtype = readers[version](stream)
    if fortran_order:
        raise ValueError(f"{member} is stored in Fortran order")
    return tuple(shape), dtype, stream


def npz_image_bytes(path: Path) -> dict[str, int]:
    """Bytes of each split's images in a MedMNIST .npz, from the member headers alone."""
    with zipfile.ZipFile(path) as zf:
        sizes = {}
        for split in ("train", "val", "test"):
            shape, dtype, stream = npz_header(zf, f"{split}_images.npy")
            stream.close()
            sizes[split] = int(np.prod(shape)) * dtype.itemsize
    return sizes


def _read_exact(stream, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = stream.read(left)
        if not part:
            raise ValueError("the file ends early")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def write_shard(array: Path, shard: int, row_dims: int, raw: bytes, row_bytes: int, rows: int) -> None:
    """One shard file of a (N, ...) uint8 array: each row Blosc-compressed, then the index and its crc32c."""
    from crc32c import crc32c
    from numcodecs import blosc

    index = np.full((rows, 2), EMPTY, dtype="<u8")
    path = array / "/".join(["c", str(shard), *("0" * row_dims)])
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with open(path, "wb") as f:
        for i in range(len(raw) // row_bytes):
            chunk = blosc.compress(raw[i * row_bytes : (i + 1) * row_bytes], BLOSC["cname"].encode(), BLOSC["clevel"],
                                   blosc.BITSHUFFLE)
            f.write(chunk)
            index[i] = offset, len(chunk)
            offset += len(chunk)
        f.write(index.tobytes())
        f.write(struct.pack("<I", crc32c(index.tobytes())))


def convert_npz(path: Path, out: Path, flag: str, size: int, md5: str) -> Path:
    """Write the store for a MedMNIST .npz at `out`, once: built under a temporary name, renamed.

    Images are copied member by member one shard at a time (never the whole member: np.load would
    inflate it entirely), so the conversion holds about two shards (at most 2 x SHARD_BYTES), and
    the data fingerprint is hashed as they pass, exactly as `medal.data.base.fingerprint` hashes the
    loaded arrays.
    """
    import zarr
    from zarr.codecs import BloscCodec

    from medal.data.base import MULTI_LABEL, SPLITS

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest, counts = hashlib.sha256(), {}
    try:
        group = zarr.open_group(tmp, mode="w")
        with zipfile.ZipFile(path) as zf, np.load(path) as npz:
            headers = {s: npz_header(zf, f"{s}_images.npy") for s in SPLITS}
            total = sum(h[0][0] for h in headers.values())
            bar = progress(total=total, desc=f"converting {path.name} for streaming", unit="img", unit_scale=True)
            for split in SPLITS:
                shape, dtype, stream = headers[split]
                if dtype != np.uint8 or len(shape) not in (3, 4):
                    raise ValueError(f"{split}_images are {dtype} {shape}, not uint8 (N, H, W[, C])")
                shape = shape if len(shape) == 4 else (*shape, 1)  # grayscale files store (N, H, W)
                labels = npz[f"{split}_labels"]
                labels = (labels[:, None] if labels.ndim == 1 else labels).astype(np.int64)
                width = len(INFO[flag]["label"]) if INFO[flag]["task"] == MULTI_LABEL else 1
                if len(labels) != shape[0] or labels.shape[1] != width:
                    raise ValueError(f"{shape[0]} {split} images but labels of shape {labels.shape}")
                row_bytes = int(np.prod(shape[1:]))
                rows = shard_rows(row_bytes)
                group.create_array(f"{split}/images", shape=shape, dtype="uint8", chunks=(1, *shape[1:]),
                                   shards=(rows, *shape[1:]), fill_value=0, compressors=BloscCodec(**BLOSC))
                digest.update(f"{split}:uint8:{shape}".encode())
                with stream:
                    for shard, start in enumerate(range(0, shape[0], rows)):
                        n = min(rows, shape[0] - start)
                        raw = _read_exact(stream, n * row_bytes)
                        digest.update(raw)
                        write_shard(tmp / split / "images", shard, len(shape) - 1, raw, row_bytes, rows)
                        bar.update(n)
                group.create_array(f"{split}/labels", data=labels, chunks=labels.shape)
                digest.update(f"{split}:int64:{labels.shape}".encode())
                digest.update(labels.tobytes())
                counts[split] = int(shape[0])
            bar.close()
        group.attrs.update({
            "name": flag, "task": INFO[flag]["task"], "label_names": list(INFO[flag]["label"].values()),
            "size": size, "channels": int(shape[-1]), "n_samples": counts, "fingerprint": digest.hexdigest(),
            "source_file": path.name, "source_md5": md5,
        })
        try:
            publish_dir(tmp, out)
        except OSError:
            if not (out / "zarr.json").is_file():  # not another process converting the same file first
                raise
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise MedalError(f"{path} could not be converted for streaming ({exc}).") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class StoredImages:
    """One split's (N, S, S, C) uint8 images in a store, read by row in any order.

    Quacks like the resident array where medal needs it to: `shape`, `dtype`, `nbytes`, `len()`,
    and `images[a:b]` or `images[rows]` returning a numpy array, so stage 1's chunk loop and the
    figures work on a streamed split unchanged.
    """

    def __init__(self, path: Path, budget_bytes: int = 0):
        self.path, self.budget_bytes = Path(path), budget_bytes  # what its readers may hold at once
        meta = json.loads((self.path / "zarr.json").read_text())
        self.shape = tuple(int(d) for d in meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.nbytes = self.shape[0] * self.row_bytes
        self.fill = meta.get("fill_value") or 0
        self._layout = _shard_layout(meta, self.shape)
        self._indexes: dict[int, np.ndarray | None] = {}
        self._array = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | np.ndarray | list[int]) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take(np.arange(len(self))[[key]])[0]
        return self.take(np.arange(len(self))[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)

    def blocks(self, rows: int = 4096) -> Iterator[np.ndarray]:
        """The images in order, `rows` at a time (hashing a split without holding it)."""
        for start in range(0, len(self), rows):
            yield self.take(np.arange(start, min(start + rows, len(self))))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Images at `rows`, in that order (N, S, S, C)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._layout is None:
            return self._take_zarr(rows)
        shard_len, separator, codec = self._layout
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        shards = rows // shard_len
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            path = self.path / separator.join(["c", str(int(shard)), *("0" * len(self.row_shape))])
            if not path.is_file():
                out[where] = self.fill
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                index = self._index(int(shard), fd, shard_len)
                for pos in where:
                    offset, nbytes = index[rows[pos] % shard_len]
                    if offset == EMPTY:
                        out[pos] = self.fill
                        continue
                    raw = codec(os.pread(fd, int(nbytes), int(offset)))
                    out[pos] = np.frombuffer(raw, self.dtype).reshape(self.row_shape)
            finally:
                os.close(fd)
        return out

    def _index(self, shard: int, fd: int, shard_len: int) -> np.ndarray:
        """A shard's (offset, nbytes) per image, read once from its end (16 bytes an image)."""
        if shard not in self._indexes:
            size = shard_len * 16
            end = os.fstat(fd).st_size - 4  # the index is followed by its crc32c
            self._indexes[shard] = np.frombuffer(os.pread(fd, size, end - size), dtype="<u8").reshape(shard_len, 2)
        return self._indexes[shard]

    def _take_zarr(self, rows: np.ndarray) -> np.ndarray:
        import zarr

        if self._array is None:
            self._array = zarr.open_array(self.path, mode="r")
        unique, inverse = np.unique(rows, return_inverse=True)
        picked = self._array.get_orthogonal_selection((unique, *(slice(None),) * len(self.row_shape)))
        return picked[inverse]


def _shard_layout(meta: dict, shape: tuple[int, ...]):
    """(images a shard, key separator, decode) for the one-image-a-chunk sharded layout, else None."""
    from numcodecs import Zstd, blosc

    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return None
    config = codecs[0]["configuration"]
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
    keys = meta.get("chunk_key_encoding", {})
    inner = [c["name"] for c in config["codecs"]]
    index = [c["name"] for c in config.get("index_codecs", [])]
    if (config["chunk_shape"] != [1, *shape[1:]] or grid[1:] != list(shape[1:])
            or config.get("index_location", "end") != "end" or index != ["bytes", "crc32c"]
            or keys.get("name") != "default" or inner[:1] != ["bytes"]):
        return None
    decoders = {(): bytes, ("blosc",): blosc.decompress, ("zstd",): Zstd().decode}
    decode = decoders.get(tuple(inner[1:]))
    if decode is None:
        return None
    separator = keys.get("configuration", {}).get("separator", "/")
    return int(grid[0]), separator, decode
