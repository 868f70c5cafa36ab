"""``lplr-fast ntk CONFIG --out STORE``: the NTK of a study point's model on its data into a
tile store, with certified bounds; the same command under ``torchrun --nproc_per_node=N -m
lplr_fast.cli ntk ...`` splits the tiles over the processes (and a rerun finishes an
interrupted store)."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

import torch


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser(
        "ntk",
        help="the NTK of a config's model and data into a tile store (resumable; works under "
        "torchrun), with certified bounds",
    )
    cmd.add_argument("config", help="study TOML file or shipped experiment (its data and model)")
    cmd.add_argument("--out", required=True, help="store folder (rerun to finish it)")
    cmd.add_argument("--point", default=None, help="grid point label when the config has several")
    cmd.add_argument("--quick", action="store_true", help="the config's shrunken version")
    cmd.add_argument(
        "--compute", choices=("full", "trace", "diagonal"), default=None,
        help="kernel layout (default: the config's diagnostics.ntk_compute)",
    )  # fmt: skip
    cmd.add_argument("--block-size", type=int, default=None, help="samples per tile side")
    cmd.add_argument(
        "--backend", choices=("npy", "zarr"), default=None,
        help="store format of a new store (default npy; an existing store keeps its own, and "
        "another one given here is refused)",
    )  # fmt: skip
    cmd.add_argument("--device", default="cpu", help="cpu or cuda (cuda:LOCAL_RANK per rank)")
    cmd.add_argument("--data-dir", default=None, help="dataset folder (default $LPLR_DATA_DIR)")
    cmd.add_argument("--no-verify", action="store_true", help="skip the probe self-check")
    cmd.add_argument(
        "--dense-limit", type=int, default=None,
        help="largest n·k factorised on rank 0 for certified λ_min (default: by device)",
    )  # fmt: skip
    cmd.add_argument("--lanczos", action="store_true", help="also Lanczos estimates")
    cmd.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    cmd.add_argument(
        "--timeout-min", type=float, default=60.0,
        help="how long ranks wait for each other under torchrun (a dead rank is noticed at "
        "once; default 60)",
    )  # fmt: skip
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")


def _point(args: argparse.Namespace) -> Any:
    from ..study import load_study

    points = load_study(args.config).points(quick=args.quick)
    if args.point is not None:
        chosen = [p for p in points if p.label == args.point]
        if not chosen:
            raise ValueError(
                f"no point {args.point!r}; the config has: {', '.join(p.label for p in points)}"
            )
        return chosen[0]
    if len(points) > 1:
        raise ValueError(
            f"the config has {len(points)} points; pick one with --point (one of: "
            f"{', '.join(repr(p.label) for p in points)})"
        )
    return points[0]


def _fmt(b: Any) -> str:
    return "n/a" if b is None else str(b)


def run(args: argparse.Namespace) -> int:
    from ..data import DatasetNotFoundError
    from ..study import ConfigError
    from ..study.build import ImageCache, build_data, build_model
    from . import empirical_ntk, is_main, store_bounds
    from .group import DistributedError
    from .launch import process_group
    from .store import StoreError

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"lplr-fast ntk: --device {args.device} but no CUDA device", file=sys.stderr)
        return 2
    try:
        point = _point(args)
        cfg = point.config
        data = build_data(cfg["data"], cfg["model"]["kind"] == "mlp", ImageCache(args.data_dir))
        net = build_model(cfg["model"], data.x, data.y.shape[1], data.x.dtype)
        compute = args.compute or cfg["diagnostics"]["ntk_compute"]
        timeout = datetime.timedelta(minutes=args.timeout_min)
        with process_group(args.device, timeout) as device:
            result = empirical_ntk(
                net.to(device), data.x.to(device), store=args.out, compute=compute,
                block_size=args.block_size, backend=args.backend,
                verify="off" if args.no_verify else "probe", progress=not args.quiet,
                batchnorm="eval" if cfg["model"].get("norm") == "batch" else "error",
            )  # fmt: skip
            extra = None
            if result.bounds is not None:
                extra = store_bounds(
                    result.store, dense_limit=args.dense_limit, lanczos=args.lanczos,
                    device=device, streaming=result.bounds,
                )  # fmt: skip
            if is_main():
                _report(args, point, data, result, extra)
    except (ConfigError, DatasetNotFoundError, StoreError, DistributedError, ValueError) as exc:
        print(f"lplr-fast ntk: {exc}", file=sys.stderr)
        return 2
    return 0


def _report(args: argparse.Namespace, point: Any, data: Any, result: Any, extra: Any) -> None:
    store = result.store
    summary = store.summary() or {}
    print(f"point: {point.label}; data: {data.description}")
    print(
        f"store: {store.path} ({store.manifest.backend}, {store.compute}, shape {store.shape}, "
        f"{store.manifest.dtype}); tiles computed {result.computed}, reused {result.reused}"
    )
    if result.probe is not None:
        p = result.probe
        print(f"probe check: passed (|uᵀΘv − (J₁ᵀu)·(J₂ᵀv)| ≤ {p.tolerance:.3g})")
    if extra is not None:
        print(f"streaming (certified): {_fmt(extra.streaming)}")
        print(f"dense     (certified): {_fmt(extra.dense) if extra.dense else extra.dense_skipped}")
        if extra.lanczos is not None:
            print(f"lanczos   (estimate):  {_fmt(extra.lanczos)}")
        summary["store_bounds"] = {
            "streaming": extra.streaming.to_dict(),
            "dense": None if extra.dense is None else extra.dense.to_dict(),
            "dense_skipped": extra.dense_skipped,
            "lanczos": None if extra.lanczos is None else extra.lanczos.to_dict(),
        }
        from ..training.io import json_safe
        from .store import TileStore

        TileStore(store.path).write_summary(json_safe(summary))
    print(f"summary: {store.path / 'summary.json'}")


__all__ = ["add_parser", "run"]
