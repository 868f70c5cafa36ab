"""Fault injection for StreamingBounds.update(): make the m-th internal helper call raise,
to check that a failing update leaves no trace."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from unittest import mock

from lplr_fast import StreamingBounds
from lplr_fast.spectrum import accumulate, residual, streaming


def stream_results(stream: StreamingBounds) -> tuple:
    """Every certified number a complete stream gives (for bitwise comparisons)."""
    b = stream.bounds()
    additivity = ()
    if stream.per_layer and stream.psd and stream.layers:
        additivity = (stream.layer_additivity_lower(),)
    return (
        b.lambda_min_lower, b.lambda_min_upper, b.lambda_max_lower, b.lambda_max_upper,
        stream.gershgorin(), stream.trace_bounds(), stream.frobenius_bounds(),
        stream.sym_frobenius_lower(), stream.skew_frobenius_upper(), *additivity,
    )  # fmt: skip


class Injected(RuntimeError):
    pass


# the helpers that update() calls on its way to recording a tile, by module
UPDATE_STEPS = {
    streaming: (
        "as_real_tensor", "tile_stats", "measure_tile", "plan_share", "require_gradual_underflow",
    ),
    accumulate: (
        "tile_stats", "scale_exponent", "scale_tensor", "sum_bounds_fraction", "skew_sq_upper",
        "_radii", "pow2",
    ),
    residual: ("scale_exponent", "scale_tensor", "sum_sq_upper", "gamma_up", "vec_up", "pow2"),
}  # fmt: skip


@contextmanager
def fail_at_call(number: int):
    """Make the ``number``-th call (0-based) of any helper in UPDATE_STEPS raise."""
    calls = [0]

    def wrap(fn):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] - 1 == number:
                raise Injected(f"injected failure at call {number}")
            return fn(*args, **kwargs)

        return wrapped

    with ExitStack() as stack:
        for module, names in UPDATE_STEPS.items():
            patches = {name: wrap(getattr(module, name)) for name in names}
            stack.enter_context(mock.patch.multiple(module, **patches))
        yield calls
