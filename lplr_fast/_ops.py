"""Fake (meta) implementations of the ``torch.ops.lplr`` operators, so that torch.compile and
FakeTensor tracing can run through them: output shapes, dtypes, devices and strides, no data.
They check shapes and dtypes as the compiled kernels do, so a traced call fails where the
real one would (the data-dependent checks — finiteness, memory overlap — need real tensors).

Registered once, right after ``lplr_fast._C`` (which defines the operators) is loaded.
"""

from __future__ import annotations

import torch

_registered = False
_FLOATS = (torch.float32, torch.float64)
_INT64_MAX = 2**63 - 1


def _float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def _square(a: torch.Tensor, name: str = "a") -> None:
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {tuple(a.shape)}")
    _float(a, name)


def _same_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _gram_out_shape(a1, g1, a2, g2, mode: int) -> tuple[int, ...]:
    n1, n2, k = a1.shape[0], a2.shape[0], g1.shape[1]
    if mode not in (0, 1, 2):
        raise ValueError(f"mode must be 0 (full), 1 (trace) or 2 (diagonal), got {mode}")
    return ((n1, n2, k, k), (n1, n2), (n1, n2, k))[mode]


def _gram_accumulate_fake(out, a1, g1, a2, g2, beta, compute_mode, check_finite, route) -> None:
    if (a2 is None) != (g2 is None):
        raise ValueError("a2 and g2 must both be given (cross kernel) or both be None")
    a2, g2 = (a1, g1) if a2 is None else (a2, g2)
    for t, name, dim in ((a1, "a1", 2), (g1, "g1", 3), (a2, "a2", 2), (g2, "g2", 3)):
        if t.dim() != dim:
            raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    for t, name in ((a1, "a1"), (g1, "g1"), (a2, "a2"), (g2, "g2"), (out, "out")):
        _float(t, name)
        if t.dtype != a1.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but a1 has dtype {a1.dtype}")
        _same_device(t, a1, name, "a1")
    if g1.shape[0] != a1.shape[0] or g2.shape[0] != a2.shape[0]:
        raise ValueError("g1/g2 must have as many samples as a1/a2")
    if a2.shape[1] != a1.shape[1] or g2.shape[1:] != g1.shape[1:]:
        raise ValueError("a2/g2 must match a1/g1 in d_in, k and d_out")
    want = _gram_out_shape(a1, g1, a2, g2, compute_mode)
    if tuple(out.shape) != want:
        raise ValueError(f"out must have shape {want}, got {tuple(out.shape)}")
    if route not in (0, 1, 2):
        raise ValueError(f"route must be 0 (auto), 1 (gemm) or 2 (fused), got {route}")
    return None


def _tile_stats_fake(tile: torch.Tensor, row0: int, col0: int):
    if tile.dim() != 2:
        raise ValueError(f"tile must be 2-D (rows, cols), got shape {tuple(tile.shape)}")
    _float(tile, "tile")
    if row0 < 0 or col0 < 0:
        raise ValueError(f"row0 and col0 must be >= 0, got {row0} and {col0}")
    if row0 > _INT64_MAX - tile.shape[0] or col0 > _INT64_MAX - tile.shape[1]:
        raise ValueError("row0 + rows and col0 + cols must fit in int64")
    f64 = {"dtype": torch.float64, "device": tile.device}
    return (
        tile.new_empty(4, **f64),
        tile.new_empty(tile.shape[0], **f64),
        tile.new_empty(tile.shape[1], **f64),
    )


def _square_stats_fake(a: torch.Tensor):
    _square(a)
    f64 = {"dtype": torch.float64, "device": a.device}
    return a.new_empty(6, **f64), a.new_empty(a.shape[0], **f64)


def _symv_upper_fake(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    _square(a)
    if v.dim() not in (1, 2) or v.shape[0] != a.shape[0]:
        raise ValueError(f"v must be ({a.shape[0]},) or ({a.shape[0]}, m), got {tuple(v.shape)}")
    if v.dtype != a.dtype:
        raise TypeError(f"v has dtype {v.dtype} but a has dtype {a.dtype}; they must match")
    _same_device(v, a, "v", "a")
    return v.new_empty(v.shape)  # contiguous, as the kernels return


def _abs_quadratic_fake(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    _square(a)
    if v.dim() != 1 or v.shape[0] != a.shape[0]:
        raise ValueError(f"v must be a vector of length {a.shape[0]}, got {tuple(v.shape)}")
    _float(v, "v")
    _same_device(v, a, "v", "a")
    return a.new_empty((), dtype=torch.float64)


def register_fakes() -> None:
    """Attach the fake implementations to the operators (idempotent)."""
    global _registered
    if _registered:
        return
    for name, fn in (
        ("gram_accumulate_", _gram_accumulate_fake),
        ("tile_stats", _tile_stats_fake),
        ("square_stats", _square_stats_fake),
        ("symv_upper", _symv_upper_fake),
        ("abs_quadratic", _abs_quadratic_fake),
    ):
        torch.library.register_fake(f"lplr::{name}")(fn)
    _registered = True
