"""Matrix-free operators for the (uncertified) Lanczos estimates: anything with ``shape`` and
``matvec``, e.g. :class:`lplr_fast.NTKOperator` (torch tensors in and out) or a scipy
``LinearOperator`` (numpy arrays in and out, a numpy ``dtype``)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class SymmetricOperator(Protocol):
    """What ``eig_bounds`` and ``ntk_distance`` need of a matrix-free operator."""

    shape: tuple[int, int]

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def is_operator(k: object) -> bool:
    """Has ``shape`` and ``matvec`` and is not a stored array."""
    stored = torch.is_tensor(k) or hasattr(k, "__array__")
    return hasattr(k, "matvec") and hasattr(k, "shape") and not stored


class CheckedOperator:
    """A square operator with a torch ``dtype`` and ``device``; ``matvec`` takes and returns
    torch vectors whatever the wrapped operator speaks."""

    def __init__(self, op: SymmetricOperator, name: str) -> None:
        try:
            shape = tuple(int(s) for s in op.shape)
        except (TypeError, ValueError):
            raise TypeError(f"{name}.shape must be a pair of integers, got {op.shape!r}") from None
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
            raise ValueError(f"the operator {name} must be square and non-empty, got shape {shape}")
        self.shape: tuple[int, int] = (shape[0], shape[1])
        raw = getattr(op, "dtype", None)
        self._numpy = raw is not None and not isinstance(raw, torch.dtype)
        self.dtype = _numpy_dtype(raw, name) if self._numpy else _torch_dtype(raw, name)
        self.device = torch.device("cpu") if self._numpy else getattr(op, "device", "cpu")
        self.psd = bool(getattr(op, "psd", False))
        self._op = op

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = self._op.matvec(v.detach().cpu().numpy() if self._numpy else v)
        if not torch.is_tensor(out):
            out = torch.as_tensor(np.asarray(out))
        if out.is_complex():
            raise TypeError("the operator returned complex values; it must be real symmetric")
        return out.reshape(-1) if out.dim() == 2 and out.shape[-1] == 1 else out


def _torch_dtype(dtype: torch.dtype | None, name: str) -> torch.dtype:
    if dtype is None:
        return torch.float64
    if dtype.is_complex:
        raise TypeError(f"{name} is complex ({dtype}); only real symmetric operators are supported")
    return dtype if dtype.is_floating_point else torch.float64


def _numpy_dtype(dtype: object, name: str) -> torch.dtype:
    try:
        np_dtype = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name}.dtype {dtype!r} is neither a torch nor a numpy dtype") from None
    if np_dtype.kind == "c":
        raise TypeError(
            f"{name} is complex ({np_dtype}); only real symmetric operators are supported"
        )
    return torch.float32 if np_dtype == np.float32 else torch.float64
