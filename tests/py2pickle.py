"""Write pickles the way Python 2's cPickle (protocol 2) wrote the classic dataset files:
``mnist.pkl.gz`` and CIFAR-10's python batches. Arrays become
``numpy.core.multiarray._reconstruct`` + ``BUILD`` with the raw bytes as a BINSTRING, text
keys become SHORT_BINSTRING/BINSTRING (Python 2 ``str``), exactly as in those files."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np


def _binstring(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _array(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    dt = a.dtype
    endian = "|" if dt.itemsize == 1 else "<"
    code = dt.str[1:]  # e.g. "u1", "f4", "i8"
    out = b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
    out += _int(0) + b"\x85" + _binstring(b"b") + b"\x87" + b"R"
    out += b"(" + _int(1) + b"(" + b"".join(_int(s) for s in a.shape) + b"t"
    out += b"cnumpy\ndtype\n" + _binstring(code.encode()) + _int(0) + _int(1) + b"\x87R"
    out += b"(" + _int(3) + _binstring(endian.encode()) + b"NNN" + b"J\xff\xff\xff\xff" * 2
    out += _int(0) + b"tb"
    out += b"\x89" + _binstring(a.astype(dt.newbyteorder("<")).tobytes()) + b"tb"
    return out


def _value(v: Any) -> bytes:
    if isinstance(v, np.ndarray):
        return _array(v)
    if isinstance(v, bytes):
        return _binstring(v)
    if v is None:
        return b"N"
    if isinstance(v, bool):
        return b"\x88" if v else b"\x89"
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_value(x) for x in v) + b"e"
    if isinstance(v, tuple):
        return b"(" + b"".join(_value(x) for x in v) + b"t"
    if isinstance(v, dict):
        return b"}(" + b"".join(_value(k) + _value(x) for k, x in v.items()) + b"u"
    raise TypeError(f"py2pickle cannot write {type(v).__name__}")


def dumps(obj: Any) -> bytes:
    """Protocol-2 pickle of dicts/lists/tuples/bytes (as Python 2 str)/ints/arrays."""
    return b"\x80\x02" + _value(obj) + b"."


def cifar_batch(images: np.ndarray, labels: list[int], name: bytes = b"batch") -> bytes:
    """A CIFAR-10 python batch: images (N, 3, 32, 32) uint8, labels N ints."""
    return dumps(
        {
            b"batch_label": name,
            b"labels": list(labels),
            b"data": images.reshape(len(images), -1),
            b"filenames": [b"img_%d.png" % i for i in range(len(images))],
        }
    )
