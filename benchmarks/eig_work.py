"""Work done by the certified eigenvalue bracket, counted rather than timed.

Counts, for ``eig_bounds`` on the benchmark NTKs (MLP 16→256→256→k, float64), the Cholesky
factorisations, triangular solves, one-triangle matvecs and other full passes over the
n×n matrix, and turns them into a flop model (Cholesky n³/3, a pass or a solve ~n²)
against LAPACK's symmetric eigensolver (~4n³/3 for the reduction to tridiagonal form).
Useful on a busy machine where wall-clock ratios mean nothing:

    python3 -m benchmarks.eig_work --sizes 512x2 1024x2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from unittest import mock

import torch

import lplr_fast
from lplr_fast.spectrum import bounds, certify, native

from .run import ntk_matrix


def count_work(a: torch.Tensor) -> Counter:
    counts: Counter = Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    patches = [
        mock.patch.object(
            torch.linalg, "cholesky_ex", counted("cholesky", torch.linalg.cholesky_ex)
        ),
        mock.patch.object(
            torch.linalg, "solve_triangular", counted("solve", torch.linalg.solve_triangular)
        ),
        mock.patch.object(bounds, "symv_upper", counted("symv", native.symv_upper)),
        mock.patch.object(bounds, "square_stats", counted("pass", native.square_stats)),
        mock.patch.object(certify, "abs_quadratic", counted("pass", native.abs_quadratic)),
    ]
    for p in patches:
        p.start()
    try:
        lplr_fast.eig_bounds(a)
    finally:
        for p in patches:
            p.stop()
    return counts


def flop_ratio(counts: Counter, n: int) -> float:
    """Modelled work of eig_bounds / that of eigvalsh (reduction to tridiagonal form)."""
    cubic = counts["cholesky"] * n**3 / 3
    # each shift test also copies the matrix, checks its diagonal and forms one Rayleigh
    # quotient (a product and |v|ᵀ|A||v|): about 3 passes
    square = (counts["solve"] + counts["symv"] + counts["pass"] + 3 * counts["cholesky"]) * n**2
    return (cubic + square) / (4 * n**3 / 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["512x2", "1024x2"], help="n x k")
    args = parser.parse_args()
    for size in args.sizes:
        n, k = (int(v) for v in size.split("x"))
        a = ntk_matrix(torch.device("cpu"), n, k)
        counts = count_work(a)
        ratio = flop_ratio(counts, a.shape[0])
        print(json.dumps({"n·k": a.shape[0], **counts, "modelled_ratio_to_eigvalsh": ratio}))


if __name__ == "__main__":
    main()
