"""Progress that fits where it goes: a live bar on a terminal, plain lines in a log file.

A tqdm bar redraws itself with carriage returns; in a Slurm log, a CI log, `nohup.out` or a
sweep child's log that becomes a few very long lines of bar frames. When stderr is not a
terminal, a bar here writes nothing while it runs and one plain summary line when it closes
(`line=True`), or nothing at all for bars whose caller already logs a line (an epoch).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from medal.runtime.log import log

T = TypeVar("T")


def interactive() -> bool:
    """True when stderr is a terminal a person watches."""
    return sys.stderr.isatty()


class PlainProgress:
    """The part of tqdm's interface medal uses, printing at most one line, when closed."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, initial: int, line: bool):
        self.iterable, self.desc, self.unit, self.line = iterable, desc, unit, line
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.start, self.postfix, self.closed = initial, time.perf_counter(), "", False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.line:
            seconds = time.perf_counter() - self.start
            rate = f", {self.n / seconds:,.0f} {self.unit}/s" if seconds > 0 and self.n else ""
            extra = f" ({self.postfix})" if self.postfix else ""
            log(f"{self.desc}: {self.n:,} {self.unit} in {seconds:.1f}s{rate}{extra}")

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, *, desc: str, unit: str, total: int | None = None,
             initial: int = 0, disable: bool = False, line: bool = True, **tqdm_kwargs) -> tqdm | PlainProgress:
    """A tqdm bar on a terminal; otherwise a PlainProgress (one summary line on close when `line`)."""
    if interactive():
        return tqdm(iterable, desc=desc, unit=unit, total=total, initial=initial, disable=disable,
                    dynamic_ncols=True, **tqdm_kwargs)
    return PlainProgress(iterable, total, desc, unit, initial, line=line and not disable)


@contextlib.contextmanager
def foreign_bar(desc: str) -> Iterator[None]:
    """Around one library call that draws its own tqdm bar (torchvision's download): the bar on a
    terminal; otherwise one plain line, and the bar's frames go nowhere instead of into the log."""
    if interactive():
        yield
        return
    log(f"{desc} ...")
    with contextlib.redirect_stderr(io.StringIO()):
        yield
