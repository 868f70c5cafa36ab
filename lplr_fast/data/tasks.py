"""Balanced class subsets of an image dataset as regression tasks for the squared loss.

* ``target="binary"``: exactly two classes, y = −1 for ``classes[0]`` and +1 for
  ``classes[1]``, shape (n, 1);
* ``target="onehot"``: k classes, y[i, j] = 1 if sample i is of ``classes[j]`` else 0,
  shape (n, k).

``n_per_class`` samples of each class are drawn without replacement by a generator seeded
with ``seed`` (the same seed, dataset and classes give the same subset), in ascending order of
their index in the split. Standardisation, computed on the subset itself:
"global" (one mean and one standard deviation over all pixels, so ‖x‖²/d ≈ 1), "feature"
(per pixel; pixels constant on the subset become 0) or "none".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .sources import Images

Target = Literal["binary", "onehot"]
Standardize = Literal["global", "feature", "none"]


@dataclass
class Task:
    """x (n, C, H, W) or (n, d) inputs; y (n, 1) for binary, (n, k) for one-hot targets;
    labels (n,) original class labels; indices (n,) positions in the split; description
    says which dataset, classes, seed and standardisation made it."""

    x: torch.Tensor
    y: torch.Tensor
    labels: np.ndarray
    indices: np.ndarray
    description: str
    meta: dict = field(default_factory=dict)


def _balanced_indices(
    labels: np.ndarray, classes: Sequence[int], n_per_class: int, seed: int, name: str
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < n_per_class:
            raise ValueError(
                f"{name}: class {c} has {len(pool)} samples, fewer than n_per_class={n_per_class}"
            )
        chosen.append(rng.choice(pool, size=n_per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _standardize(x: np.ndarray, mode: Standardize) -> np.ndarray:
    x = x.astype(np.float64)
    if mode == "none":
        return x
    if mode == "global":
        std = x.std()
        return (x - x.mean()) / std if std > 0 else x - x.mean()
    if mode == "feature":
        mean, std = x.mean(axis=0), x.std(axis=0)
        return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)
    raise ValueError(f"standardize must be 'global', 'feature' or 'none', got {mode!r}")


def make_task(
    images: Images,
    *,
    classes: Sequence[int] = (0, 1),
    n_per_class: int = 128,
    target: Target = "binary",
    seed: int = 0,
    standardize: Standardize = "global",
    flatten: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Task:
    """A balanced subset of ``images`` as a regression task (module docstring).

    Args:
        images: a loaded split (:func:`lplr_fast.data.load_images`).
        classes: the class labels to keep (two for ``target="binary"``), all distinct.
        n_per_class: samples per class.
        flatten: x of shape (n, C·H·W) instead of (n, C, H, W).
    """
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes must be distinct labels, got {classes}")
    bad = [c for c in classes if not 0 <= c < images.num_classes]
    if bad:
        raise ValueError(f"{images.name} has classes 0..{images.num_classes - 1}, got {bad}")
    if target == "binary" and len(classes) != 2:
        raise ValueError(f"target='binary' needs exactly two classes, got {classes}")
    if target not in ("binary", "onehot"):
        raise ValueError(f"target must be 'binary' or 'onehot', got {target!r}")
    if standardize not in ("global", "feature", "none"):
        raise ValueError(f"standardize must be 'global', 'feature' or 'none', got {standardize!r}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    idx = _balanced_indices(images.labels, classes, n_per_class, seed, images.name)
    labels = images.labels[idx]
    pixels = images.pixels[idx]
    flat = _standardize(pixels.reshape(len(idx), -1), standardize)
    x = flat if flatten else flat.reshape(pixels.shape)
    column = np.array([classes.index(int(c)) for c in labels])  # label → position in classes
    if target == "binary":
        y = np.where(column == 1, 1.0, -1.0)[:, None]
    else:
        y = np.zeros((len(idx), len(classes)))
        y[np.arange(len(idx)), column] = 1.0
    description = (
        f"{images.name} ({images.split}, {images.source}): classes {classes}, "
        f"{n_per_class} per class (n = {len(idx)}), seed {seed}, {target} targets, "
        f"standardize={standardize}"
    )
    meta = {
        "dataset": images.name,
        "split": images.split,
        "source": images.source,
        "classes": classes,
        "n_per_class": n_per_class,
        "n": len(idx),
        "seed": seed,
        "target": target,
        "standardize": standardize,
    }
    return Task(
        torch.as_tensor(x, dtype=dtype),
        torch.as_tensor(y, dtype=dtype),
        labels,
        idx,
        description,
        meta,
    )
