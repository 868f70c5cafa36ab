"""neural-tangents baseline, run inside the environment of setup_neural_tangents.sh (JAX,
no torch). Rebuilds the network exported by benchmarks/models.py::export as a pure JAX
function and times ``nt.empirical_ntk_fn``:

    python nt_baseline.py CASE.npz --impl 3 [--trace] [--repeat 3] [--save K.npy]
                          [--build jax|stax]

``--build jax`` (default) writes the network as a plain JAX function; ``--build stax`` builds
MLPs the way neural-tangents users do, with ``stax.serial(Dense(..., parameterization=
"standard"), Erf()/..., ...)`` (same function: standard-parameterised Dense is x·W + b),
loaded with the exported weights.

Prints one JSON line: compile_s (first call, includes tracing and XLA compilation),
median_s/min_s/max_s (steady state), peak_mib (peak RSS growth during the first call, which
includes compilation, as for our probe); see peakmem.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
from jax import lax
from peakmem import PeakMemory

ACTIVATIONS = {"tanh": jnp.tanh, "erf": jax.scipy.special.erf}


def _dense_layers(names: list[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in names}, key=int)


def mlp_fn(names: list[str], act: str = "tanh"):
    layers = _dense_layers(names)
    nonlinear = ACTIVATIONS[act]

    def f(params, x):
        h = x
        for i, layer in enumerate(layers):
            h = h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
            if i < len(layers) - 1:
                h = nonlinear(h)
        return h

    return f


def stax_mlp(params: dict, act: str):
    """The same MLP as a neural-tangents stax network, and its parameters in stax's layout
    (a tuple per layer: (W, b) for Dense with W as (in, out), () for the nonlinearity)."""
    from neural_tangents import stax

    nonlinear = {"erf": stax.Erf, "relu": stax.Relu}[act]
    layers, stax_params = [], []
    names = _dense_layers(list(params))
    for i, layer in enumerate(names):
        w, b = params[f"{layer}.weight"], params[f"{layer}.bias"]
        layers.append(stax.Dense(w.shape[0], parameterization="standard"))
        stax_params.append((w.T, b))
        if i < len(names) - 1:
            layers.append(nonlinear())
            stax_params.append(())
    _, apply_fn, _ = stax.serial(*layers)
    return apply_fn, tuple(stax_params)


def conv(params, name, x, stride=1):
    y = lax.conv_general_dilated(
        x, params[f"{name}.weight"], (stride, stride), [(1, 1), (1, 1)],
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )  # fmt: skip
    return y + params[f"{name}.bias"][None, :, None, None]


def resnet_fn(names: list[str]):
    def block(params, name, x):
        h = jax.nn.relu(conv(params, f"{name}.conv1", x))
        return jax.nn.relu(conv(params, f"{name}.conv2", h) + x)

    def f(params, x):
        h = block(params, "block1", jax.nn.relu(conv(params, "stem", x)))
        h = block(params, "block2", jax.nn.relu(conv(params, "down", h, stride=2)))
        return h.mean(axis=(2, 3)) @ params["head.weight"].T + params["head.bias"]

    return f


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--impl", type=int, default=3, help="1 Jacobian, 2 NTK-VP, 3 structured")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--save", default=None)
    parser.add_argument("--build", choices=("jax", "stax"), default="jax")
    parser.add_argument(
        "--batch", type=int, default=0,
        help="tile the kernel into batch×batch blocks (what nt.batch does); 0 = one call",
    )  # fmt: skip
    args = parser.parse_args()
    data = np.load(args.case)
    params = {k[2:]: jnp.asarray(data[k]) for k in data.files if k.startswith("p:")}
    x = jnp.asarray(data["x"])
    kind = str(data["kind"])
    act = str(data["act"]) if "act" in data.files else "tanh"
    if args.build == "stax":
        if kind != "mlp":
            raise SystemExit("--build stax: MLP cases only")
        f, params = stax_mlp(params, act)
    else:
        f = mlp_fn(list(params), act) if kind == "mlp" else resnet_fn(list(params))
    fn = jax.jit(
        nt.empirical_ntk_fn(
            f,
            trace_axes=(-1,) if args.trace else (),
            vmap_axes=0,
            implementation=nt.NtkImplementation(args.impl),
        )
    )

    def compute():
        if not args.batch or args.batch >= x.shape[0]:
            return np.asarray(fn(x, None, params).block_until_ready())
        b = args.batch
        rows = []
        for i in range(0, x.shape[0], b):
            cols = [np.asarray(fn(x[i : i + b], x[j : j + b], params).block_until_ready())
                    for j in range(0, x.shape[0], b)]  # fmt: skip
            rows.append(np.concatenate(cols, axis=1))
        return np.concatenate(rows, axis=0)

    with PeakMemory() as compile_memory:
        start = time.perf_counter()
        kernel = compute()
        compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        compute()
        times.append(time.perf_counter() - start)
    if args.save:
        np.save(args.save, np.asarray(kernel))
    print(
        json.dumps(
            {
                "compile_s": compile_s,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "peak_mib": compile_memory.mib,
                "shape": list(kernel.shape),
                "batch": args.batch,
                "build": args.build,
                "jax": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
