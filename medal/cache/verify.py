"""`medal cache verify`: read back every chunk of every array of the caches, checksums included.

Reading is the only way to find a damaged chunk (a bad disk block, a truncated copy, a bit
flipped in transit): each chunk's crc32c is checked against its bytes, and a missing chunk
file is damage too. Nothing is repaired; each damaged cache comes with its rebuild command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import zarr

from medal.cache.store import cache_arrays, chunk_problem, find_cache, open_cache, rebuild_command
from medal.runtime.errors import MedalError
from medal.runtime.progress import progress


@dataclass
class Damage:
    array: str | None  # None: the cache itself cannot be opened
    chunk: int | None  # row-chunk index; None: the whole array
    error: str


@dataclass
class CacheCheck:
    key: str
    path: str
    chunks: int = 0  # chunks read
    damaged: list[Damage] = field(default_factory=list)
    rebuild: str = ""

    @property
    def ok(self) -> bool:
        return not self.damaged

    def as_json(self) -> dict:
        return {"key": self.key, "path": self.path, "ok": self.ok, "chunks": self.chunks,
                "damaged": [asdict(d) for d in self.damaged], "rebuild": self.rebuild}


def verify_caches(root: Path, key: str | None = None) -> list[CacheCheck]:
    """One cache (key or unique prefix) or every `*.zarr` folder under root, each read in full."""
    paths = [find_cache(root, key).path] if key else sorted(Path(root).glob("*.zarr"))
    checks = [CacheCheck(p.name.removesuffix(".zarr"), str(p), rebuild=_rebuild(p)) for p in paths]
    arrays: list[tuple[CacheCheck, str, zarr.Array | None]] = []
    for check in checks:
        try:
            cache = open_cache(Path(check.path))
        except MedalError as exc:
            check.damaged.append(Damage(None, None, str(exc)))
            continue
        for name in cache_arrays(cache.attrs):
            try:
                arrays.append((check, name, zarr.open_array(Path(check.path) / name, mode="r")))
            except Exception as exc:  # metadata missing or unreadable: the array is lost as a whole
                check.damaged.append(Damage(name, None, f"{type(exc).__name__}: {exc}"[:200]))
    bar = progress(total=sum(a.cdata_shape[0] for _, _, a in arrays), desc="verify caches", unit="chunk",
                   leave=False, line=False)  # the report says how many chunks were read
    for check, name, array in arrays:
        for index in range(array.cdata_shape[0]):
            problem = chunk_problem(array, index)
            if problem:
                check.damaged.append(Damage(name, index, problem))
            check.chunks += 1
            bar.update(1)
    bar.close()
    return checks


def _rebuild(path: Path) -> str:
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        attrs = {}
    return rebuild_command(attrs, path.parent)


def format_checks(checks: list[CacheCheck]) -> str:
    """One `ok` line per sound cache; one line per damaged chunk and the rebuild command otherwise."""
    lines = []
    for c in checks:
        if c.ok:
            lines.append(f"ok       {c.key}: {c.chunks} chunks read, every checksum matches")
            continue
        for d in c.damaged:
            where = " ".join(x for x in (d.array, None if d.chunk is None else f"chunk {d.chunk}") if x)
            lines.append(f"damaged  {c.key}{' ' + where if where else ''}: {d.error}")
        lines.append(f"         rebuild: {c.rebuild}")
    return "\n".join(lines)


def damage_summary(checks: list[CacheCheck]) -> str | None:
    """The error line's sentence when anything is damaged, else None."""
    bad = [c for c in checks if not c.ok]
    if len(bad) == 1:
        n, noun = len(bad[0].damaged), "chunk" if all(d.chunk is not None for d in bad[0].damaged) else "part"
        return (f"cache {bad[0].key} is damaged ({n} damaged {noun}{'s' if n != 1 else ''}); "
                f"rebuild it with `{bad[0].rebuild}`.")
    if bad:
        return (f"{len(bad)} of {len(checks)} caches are damaged ({', '.join(c.key for c in bad)}); "
                f"rebuild each with the command printed above.")
    return None
