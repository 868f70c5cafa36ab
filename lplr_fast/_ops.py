"""Fake (meta) implementations of the ``torch.ops.lplr`` operators, so that torch.compile and
FakeTensor tracing can run through them: output shapes, dtypes and devices, no data.

Registered once, right after ``lplr_fast._C`` (which defines the operators) is loaded.
"""

from __future__ import annotations

import torch

_registered = False


def _gram_accumulate_fake(out, a1, g1, a2, g2, beta, compute_mode, check_finite, route) -> None:
    return None


def _tile_stats_fake(tile: torch.Tensor, row0: int, col0: int):
    f64 = {"dtype": torch.float64, "device": tile.device}
    return (
        tile.new_empty(4, **f64),
        tile.new_empty(tile.shape[0], **f64),
        tile.new_empty(tile.shape[1], **f64),
    )


def _square_stats_fake(a: torch.Tensor):
    f64 = {"dtype": torch.float64, "device": a.device}
    return a.new_empty(6, **f64), a.new_empty(a.shape[0], **f64)


def _symv_upper_fake(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(v)


def _abs_quadratic_fake(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
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
