"""Input checks shared by the bounds: tensors or numpy arrays, real floating point, finite,
non-empty; float16/bfloat16 widened to float64 (exact: every such value is a float64)."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import torch

_WIDENED = (torch.float16, torch.bfloat16)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class WidenedInputWarning(UserWarning):
    """A float16/bfloat16 input was widened to float64 (exactly) before the bounds. It points
    at the caller's line (the first frame outside lplr_fast), so Python's default filter
    shows it once per calling line, argument name and dtype."""


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside the lplr_fast package, counted from the
    function that calls this one."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _from_numpy(x: np.ndarray, name: str) -> torch.Tensor:
    if x.dtype.kind == "c":
        raise TypeError(f"{name} must be real; complex matrices are not supported")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point numbers, got numpy {x.dtype}")
    if x.dtype.itemsize not in (2, 4, 8):
        raise TypeError(
            f"{name}: numpy {x.dtype} ({8 * x.dtype.itemsize}-bit) is not supported; convert "
            f"it to float64 ({name}.astype(numpy.float64))"
        )
    if not x.dtype.isnative:  # big-endian data on a little-endian machine, or the reverse
        x = x.astype(x.dtype.newbyteorder("="))
    if not x.flags.writeable or any(
        s < 0 or s % x.dtype.itemsize for s in x.strides
    ):  # torch takes neither read-only memory nor negative or misaligned strides: copy
        x = x.copy()
    return torch.from_numpy(x)


def as_real_tensor(x: object, name: str) -> torch.Tensor:
    """``x`` as a real floating-point strided tensor (detached). numpy arrays are wrapped
    (copied when read-only, byte-swapped or with negative strides); float16/bfloat16 become
    float64, with a :class:`WidenedInputWarning`.

    Raises:
        TypeError: not a tensor/array, sparse, complex, integer or boolean, or an
            unsupported numpy dtype.
    """
    if isinstance(x, np.ndarray):
        x = _from_numpy(x, name)
    elif not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(
            f"{name} is a sparse tensor ({x.layout}); pass a dense one ({name}.to_dense())"
        )
    if x.is_complex():
        raise TypeError(f"{name} must be real; complex Hermitian matrices are not supported")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    x = x.detach()
    if x.dtype in _WIDENED:
        warnings.warn(
            f"{name}: {x.dtype} entries are widened to float64 (exactly: every such value is "
            "a float64); the bounds are those of the widened matrix",
            WidenedInputWarning,
            stacklevel=_caller_stacklevel(),
        )
        return x.to(torch.float64)
    return x


def as_matrix(k: torch.Tensor, name: str = "K") -> torch.Tensor:
    """A square matrix from a square tensor or an (n, n, k, k) NTK (sample-major order)."""
    if k.dim() == 4:
        n1, n2, a, b = k.shape
        if n1 != n2 or a != b:
            raise ValueError(
                f"{name}: an NTK tensor must have shape (n, n, k, k), got {tuple(k.shape)}"
            )
        return k.permute(0, 2, 1, 3).reshape(n1 * a, n2 * b)
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(
            f"{name} must be a square matrix or an (n, n, k, k) NTK, got shape {tuple(k.shape)}"
        )
    return k


def nonfinite_error(name: str, count: int) -> ValueError:
    return ValueError(
        f"{name} contains {count} NaN or Inf entries; no bound can be certified for it"
    )
