"""Short GPU check of the NTK engine (no build needed; uses the compiled module if present):

1. the tile loop makes no host synchronisation (torch.cuda.set_sync_debug_mode("error"));
2. zoo models on the GPU, float64, exact against the Jacobian reference (full/trace/diagonal,
   x2 = None and x2 ≠ x1);
3. float32 kernels on the GPU pass their probe check (TF32 is switched off by the engine);
4. rough probe overhead (verify="probe" vs "off") on the MLP and CNN cases.

    python3 -m benchmarks.gpu_engine_check   # writes $OUT/gpu_engine_check.json
"""

from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from pathlib import Path

import torch

from lplr_fast import empirical_ntk, ntk_blocks
from tests.zoo import ZOO, build, inputs

from .models import ResNetCNN, mlp

OUT = Path(os.environ.get("OUT", "/tmp")) / "gpu_engine_check.json"
ZOO_ON_GPU = [
    "mlp_tanh",
    "small_cnn",
    "resnet_bn_ln",
    "conv_zoo",
    "functional_head",
    "tied_embedding",
    "sequence_first",
    "keyword_gate",
    "normalised_subclasses",
    "weight_norm_param",
    "mha_batch_first",
    "transformer_classifier",
    "lstm",
    "gru_bidirectional",
    "custom_functions",
    "compiled",
]


def save(results: dict) -> None:
    OUT.write_text(json.dumps(results, indent=1, default=str))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def reduce(full: torch.Tensor, compute: str) -> torch.Tensor:
    if compute == "full":
        return full
    diag = full.diagonal(dim1=2, dim2=3)
    return diag.sum(-1) if compute == "trace" else diag


def no_sync(dev: torch.device) -> str:
    torch.manual_seed(0)
    model = mlp([6, 32, 32, 3]).double().to(dev).eval()
    x = torch.randn(9, 6, dtype=torch.float64, device=dev)
    stream = ntk_blocks(model, x, block_size=4, verify="off")
    first = next(stream)
    torch.cuda.set_sync_debug_mode("error")
    try:
        tiles = [first, *stream]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return f"ok, {len(tiles)} tiles"


def zoo(dev: torch.device) -> dict:
    out = {}
    gen = torch.Generator().manual_seed(0)
    for name in ZOO_ON_GPU:
        try:
            model = build(name).to(dev)
            kind = ZOO[name][1]
            x1, x2 = inputs(kind, 5, gen).to(dev), inputs(kind, 3, gen).to(dev)
            worst = 0.0
            for second in (None, x2):
                ref = empirical_ntk(model, x1, second, implementation="jacobian")
                for compute in ("full", "trace", "diagonal"):
                    got = empirical_ntk(model, x1, second, compute=compute, block_size=2)
                    worst = max(worst, rel(got, reduce(ref, compute)))
            out[name] = worst
        except Exception:
            out[name] = "ERROR " + traceback.format_exc()[-600:]
    return out


def float32_probe(dev: torch.device) -> dict:
    out = {}
    gen = torch.Generator().manual_seed(1)
    for name in ("small_cnn", "resnet_bn_ln", "transformer_classifier", "lstm"):
        try:
            model = build(name).float().to(dev)
            kind = ZOO[name][1]
            x = inputs(kind, 16, gen)
            x = (x.float() if x.is_floating_point() else x).to(dev)
            for compute in ("full", "trace", "diagonal"):
                empirical_ntk(model, x, compute=compute, block_size=8)
            out[name] = "passed"
        except Exception:
            out[name] = "ERROR " + traceback.format_exc()[-600:]
    return out


def timed(fn) -> float:
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def probe_cost(dev: torch.device) -> dict:
    out = {}
    torch.manual_seed(0)
    net = mlp([784, 2048, 2048, 2048, 10]).to(dev).eval()
    cnn = ResNetCNN().to(dev).eval()
    cases = [
        ("MLP 784-2048^3-10 n=2048 full f32", net, torch.randn(2048, 784, device=dev), "full"),
        ("MLP 784-2048^3-10 n=2048 trace f32", net, torch.randn(2048, 784, device=dev), "trace"),
        ("ResNet CNN n=256 full f32", cnn, torch.randn(256, 3, 32, 32, device=dev), "full"),
    ]
    for name, model, x, compute in cases:
        try:
            empirical_ntk(model, x[:64], compute=compute)
            off = timed(
                lambda m=model, x=x, c=compute: empirical_ntk(m, x, compute=c, verify="off")
            )
            on = timed(lambda m=model, x=x, c=compute: empirical_ntk(m, x, compute=c))
            out[name] = {"off_s": off, "probe_s": on, "overhead": on / off - 1}
        except Exception:
            out[name] = "ERROR " + traceback.format_exc()[-600:]
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    dev = torch.device("cuda")
    results: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    for key, fn in (
        ("no_sync", no_sync),
        ("zoo_float64_rel_err", zoo),
        ("float32_probe", float32_probe),
        ("probe_cost", probe_cost),
    ):
        start = time.perf_counter()
        try:
            results[key] = fn(dev)
        except Exception:
            results[key] = "ERROR " + traceback.format_exc()[-800:]
        results[key + "_seconds"] = time.perf_counter() - start
        save(results)
        print(key, json.dumps(results[key], default=str)[:2000], flush=True)


if __name__ == "__main__":
    main()
