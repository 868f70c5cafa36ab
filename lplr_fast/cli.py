"""Command line: ``lplr-fast demo`` (the default job), ``train``, ``plot`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys

from ._backend import backend_info
from .data import DATASETS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lplr-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="NTK + certified eigenvalue demo on a built-in dataset")
    demo.add_argument("--n", type=int, default=256, help="number of samples (default 256)")
    demo.add_argument("--width", type=int, default=512, help="hidden width (default 512)")
    demo.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="teacher",
        help="built-in dataset (default teacher)",
    )
    demo.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the torch.func reference (faster for large n)",
    )
    sub.add_parser("info", help="print what the compiled backend supports, as JSON")
    train = sub.add_parser(
        "train", help="GD/SGD with LPLR diagnostics from a TOML config (resumes RUN_DIR)"
    )
    train.add_argument(
        "config",
        help="TOML file (keys: lplr_fast/training/runconfig.py) or a packaged example name "
        "(teacher)",
    )
    train.add_argument("--out", required=True, help="run folder (history, summary, checkpoint)")
    train.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    train.add_argument("--quiet", action="store_true", help="no progress line")
    plot = sub.add_parser("plot", help="PNG figures of a run folder")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR)")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .training.cli_run import run_from_config
    from .training.runconfig import ConfigError

    try:
        result = run_from_config(args.config, args.out, progress=not args.quiet, device=args.device)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"lplr-fast train: {exc}", file=sys.stderr)
        return 2
    print(result)
    print(f"run written to {args.out}")
    status = result.summary.get("status", "")
    if status.startswith("interrupted"):
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 1 if status.startswith("diverged") else 0


def _plot(args: argparse.Namespace) -> int:
    from .training.plot import plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except FileNotFoundError as exc:
        print(f"lplr-fast plot: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        print(json.dumps(backend_info(), indent=2, default=str))
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "plot":
        return _plot(args)
    from .demo import DemoConfig, format_table, run_demo

    if args.n < 2 or args.width < 1 or args.depth < 1:
        print("lplr-fast demo: --n must be ≥ 2, --width and --depth ≥ 1", file=sys.stderr)
        return 2
    cfg = DemoConfig(
        n=args.n,
        width=args.width,
        depth=args.depth,
        device=args.device,
        seed=args.seed,
        reference=not args.no_reference,
        dataset=args.dataset,
    )
    print(format_table(run_demo(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
