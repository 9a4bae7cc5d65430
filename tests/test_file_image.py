"""medal.runtime.file_image: a checkpoint's bytes made in memory, then written with O_DIRECT.

The reference is torch itself: the file must hold exactly the bytes torch.save writes into a buffer, with
O_DIRECT or through the page cache, into a new file or over a longer one, the image reused for a smaller state
after a larger one (its tail must not leak into the file) and grown for a larger one, even while torch.save
writes into it.
"""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch

from medal.runtime.file_image import FileImage

BIG = {"w": torch.randn(300_000), "epoch": 3, "nested": {"m": torch.arange(10.0), "same": None}}  # 1.2 MB
SMALL = {"w": torch.arange(7.0)}  # 7 floats: the file is a few blocks, not a whole number of them
PICKLED = {"history": [{"epoch": i, "val_auc": i / 7} for i in range(80_000)]}  # more pickle than the image expects


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_the_file_holds_torch_saves_bytes_whatever_was_there_and_was_saved_before(tmp_path):
    image, path = FileImage(), tmp_path / "checkpoint.pt"
    for obj in (BIG, SMALL, PICKLED, SMALL):  # reused for fewer bytes, grown while saving, over longer and shorter files
        image.save_torch(obj)
        image.write_to(path)
        assert path.read_bytes() == torch_bytes(obj)
    assert torch.equal(torch.load(path, weights_only=True)["w"], SMALL["w"])


def test_the_image_is_made_once_then_reused(tmp_path):
    image = FileImage()
    image.save_torch(BIG)
    memory = image._memory
    image.save_torch({"w": BIG["w"] + 1, "epoch": 4, "nested": BIG["nested"]})
    assert image._memory is memory, "a state of the same size took new memory"


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this OS")
def test_o_direct_is_asked_for_and_a_refusal_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    opened, real_open = [], os.open

    def refusing_open(path, flags, *args):
        opened.append(flags)
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # what tmpfs before Linux 6.6 and some FUSE file systems answer
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    image, path = FileImage(), tmp_path / "checkpoint.pt"
    image.save_torch(BIG)
    image.write_to(path)
    assert path.read_bytes() == torch_bytes(BIG)
    image.write_to(path)
    assert [bool(flags & os.O_DIRECT) for flags in opened] == [True, False, False], "asked again after a refusal"


def test_a_full_disk_is_raised_not_hidden_by_the_fallback(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    image = FileImage()
    image.save_torch(SMALL)
    with pytest.raises(OSError, match="No space left"):
        image.write_to(tmp_path / "checkpoint.pt")


def test_written_piece_by_piece_the_image_grows_and_keeps_every_piece(tmp_path):
    """torch.save's own calls (write, seek, tell), beyond the room the image made: it grows keeping what it holds."""
    image, path = FileImage(), tmp_path / "file"
    pieces = [bytes([i]) * n for i, n in enumerate((3000, 5000, 20_000, 70_000), start=1)]
    for piece in pieces:
        image.write(piece)
    image.seek(10)
    image.write(b"overwritten")
    assert image.tell() == 21
    image.seek(0, os.SEEK_END)
    image.write(b"end")
    image.write_to(path)
    expected = bytearray(b"".join(pieces) + b"end")
    expected[10:21] = b"overwritten"
    assert path.read_bytes() == expected
