"""The compression every medal Zarr store uses: the teacher cache and the imported-dataset stores."""

from __future__ import annotations

from zarr.codecs import BloscCodec, Crc32cCodec

# Applied in this order on write, in reverse on read: the checksum is checked before Blosc sees the bytes.
COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())
