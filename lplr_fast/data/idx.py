"""Reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

Layout: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions D, D big-endian uint32 sizes, then
the values in row-major order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic; a truncated or
    corrupted gzip stream is a ValueError naming the file."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(
            f"{path}: the gzip stream is truncated or corrupted ({exc}); fetch the file again"
        ) from None


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (native byte order).

    Raises:
        FileNotFoundError: no such file.
        ValueError: wrong magic number, unknown type code, or a size that does not match the
            header (truncated or padded file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    return parse_idx(read_file_bytes(path), str(path))


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """The array in the IDX bytes ``data`` (``source`` names them in errors); see
    :func:`read_idx`. Sizes are Python ints: a header whose size product exceeds any file is
    a clear error, never a wrapped-around count."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{source}: not an IDX file (magic number {data[:4].hex() or 'missing'}; an IDX "
            "file starts with 00 00 <type> <ndim>)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{source}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(data) - header}; the file is truncated or corrupted"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
