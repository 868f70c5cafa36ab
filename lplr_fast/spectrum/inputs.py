"""Input checks shared by the bounds: tensors or numpy arrays, real floating point, finite,
non-empty; float16/bfloat16 widened to float64 (exact: every such value is a float64)."""

from __future__ import annotations

import numpy as np
import torch

_WIDENED = (torch.float16, torch.bfloat16)


def as_real_tensor(x: object, name: str) -> torch.Tensor:
    """``x`` as a real floating-point tensor (detached). numpy arrays are wrapped (copied
    only when read-only); float16/bfloat16 become float64.

    Raises:
        TypeError: not a tensor/array, complex, integer or boolean, or an unsupported
            numpy dtype.
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "c":
            raise TypeError(f"{name} must be real; complex matrices are not supported")
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point numbers, got numpy {x.dtype}")
        if x.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name}: numpy {x.dtype} is not supported; convert it to float64")
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    elif not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real; complex Hermitian matrices are not supported")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    x = x.detach()
    return x.to(torch.float64) if x.dtype in _WIDENED else x


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
