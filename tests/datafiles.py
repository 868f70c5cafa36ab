"""Dataset files written by the tests: IDX (MNIST/Fashion-MNIST layout) and CIFAR-10 python
batches in the exact format of the official files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from .py2pickle import cifar_batch

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(a: np.ndarray) -> bytes:
    code = _CODES[a.dtype.type]
    head = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, split: str, n: int, seed: int = 0, gz: bool = False) -> tuple:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for stem, arr in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


def write_cifar(
    folder: Path, n: int = 4, protocol: int | None = None, cyclic: bool = False
) -> list[np.ndarray]:
    """data_batch_1..5 and test_batch with n random images each; labels random, or
    0, 1, …, 9, 0, … with ``cyclic``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        if cyclic:
            labels = [i % 10 for i in range(n)]
        if protocol is None:
            data = cifar_batch(images, labels, name.encode())
        else:
            data = pickle.dumps(
                {b"data": images.reshape(n, -1), b"labels": labels, b"batch_label": b"x"},
                protocol=protocol,
            )
        (folder / name).write_bytes(data)
        written.append(images)
    return written
