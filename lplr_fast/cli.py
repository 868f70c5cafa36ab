"""Command line: ``lplr-fast demo`` (the main job: a short LPLR study on binary MNIST with an
HTML report), ``run`` (an experiment), ``sweep`` (a grid), ``report``, ``train``, ``plot``,
``ntk`` (a kernel into a tile store), ``ntk-check`` (one NTK against the torch.func
reference) and ``info``. ``ntk``, ``run``, ``sweep`` and ``train`` also run under
``torchrun --nproc_per_node=N -m lplr_fast.cli ...`` (data-parallel; see docs/SCALING.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._backend import backend_info
from .data import DATASETS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lplr-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="the main job: binary MNIST, three widths at a fixed and a reduced step, with LPLR "
        "diagnostics, a table and an HTML report",
    )
    demo.add_argument("--out", default="lplr-demo", help="output folder (default ./lplr-demo)")
    _study_options(demo)
    for name, help_text in (
        (
            "run",
            "run an experiment: a shipped name (see --help) or a TOML file; writes the HTML report",
        ),
        ("sweep", "run the grid of a TOML config (widths × seeds × steps × datasets), resumably"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("config", help=f"TOML file or shipped experiment ({_shipped()})")
        cmd.add_argument("--out", required=True, help="output folder (rerun to resume)")
        _study_options(cmd)
    report = sub.add_parser("report", help="self-contained HTML report of a study or run folder")
    report.add_argument("folder")
    report.add_argument("--out", default=None, help="HTML file (default FOLDER/report.html)")
    check = sub.add_parser(
        "ntk-check",
        help="one NTK against the torch.func reference, with certified eigenvalue brackets",
    )
    check.add_argument("--n", type=int, default=256, help="number of samples (default 256)")
    check.add_argument("--width", type=int, default=512, help="hidden width (default 512)")
    check.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    check.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="teacher",
        help="built-in dataset (default teacher)",
    )
    check.add_argument(
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
    from .distributed.cli import add_parser as add_ntk_parser

    add_ntk_parser(sub)
    plot = sub.add_parser("plot", help="PNG figures of a run folder")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR)")
    return parser


def _shipped() -> str:
    from .study import shipped_experiments

    return ", ".join(shipped_experiments())


def _study_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--quick", action="store_true", help="the shrunken version ([quick])")
    cmd.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    cmd.add_argument(
        "--data-dir",
        default=None,
        help="folder with dataset files (default $LPLR_DATA_DIR): mnist/, fashion-mnist/ "
        "(IDX), cifar-10-batches-py/",
    )
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    demo = cmd.prog.endswith(" demo")
    cmd.add_argument(
        "--threads",
        type=int,
        default=1 if demo else None,
        help="CPU threads for torch (default: "
        + (
            "1: the demo's models are small, and on a shared machine a spinning thread pool "
            "costs more than it gains"
            if demo
            else "torch's default"
        )
        + ")",
    )


def _study(args: argparse.Namespace) -> int:
    """run / sweep / demo: run the study, print findings, write the report (run, demo)."""
    import torch

    from .data import DatasetNotFoundError
    from .study import ConfigError, load_study, run_study
    from .study.runner import StudyLockedError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"lplr-fast {args.command}: --device {args.device} but no CUDA device is available",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"lplr-fast {args.command}: --threads must be ≥ 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    from .distributed.group import DistributedError
    from .distributed.launch import process_group
    from .training import RunFolderError

    try:
        study = load_study("demo" if args.command == "demo" else args.config)
        with process_group(args.device) as device:
            result = run_study(
                study,
                args.out,
                quick=args.quick,
                data_dir=args.data_dir,
                device=device,
                progress=not args.quiet,
            )
            if _main_rank():
                _print_study(args, result)
    except RunFolderError as exc:
        print(
            f"lplr-fast {args.command}: {exc.reason}. The point's run folder {exc.folder} holds "
            f"a run with other data or settings: delete that folder (the point is recomputed) "
            "or use another --out",
            file=sys.stderr,
        )
        return 2
    except (
        ConfigError, DatasetNotFoundError, StudyLockedError, DistributedError, ValueError,
        TypeError,
    ) as exc:  # fmt: skip
        print(f"lplr-fast {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    return 0 if result.status == "completed" else 130


def _main_rank() -> bool:
    from .distributed.group import is_main

    return is_main()


def _print_study(args: argparse.Namespace, result: Any) -> None:
    from .study.demo import compact_table
    from .study.report import write_report

    if result.reused:
        print(f"reused {result.reused} finished run(s) from {args.out} (delete it to recompute)")
    print(compact_table(result.rows))
    for line in result.analysis.get("lines", []):
        print(f"* {line}")
    print(f"table: {args.out}/table.csv")
    if result.status != "completed":
        print(f"{result.status}: rerun the same command to resume", file=sys.stderr)
        return
    if args.command in ("run", "demo"):
        print(f"report: {write_report(args.out)}")
    else:
        print(f"report: lplr-fast report {args.out}")


def _report(args: argparse.Namespace) -> int:
    from .study.report import write_report

    try:
        print(write_report(args.folder, args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"lplr-fast report: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        return _missing_plotting("report", exc)
    return 0


def _missing_plotting(command: str, exc: ModuleNotFoundError) -> int:
    """Exit code 2 with an install hint when matplotlib (an optional dependency) is missing."""
    if exc.name is None or exc.name.split(".")[0] != "matplotlib":
        raise exc
    print(
        f"lplr-fast {command}: the figures need matplotlib, which is not installed: "
        "python3 -m pip install matplotlib (or the package's [plot] extra)",
        file=sys.stderr,
    )
    return 2


def _train(args: argparse.Namespace) -> int:
    from .distributed.group import DistributedError
    from .distributed.launch import process_group
    from .training import RunFolderError
    from .training.cli_run import run_from_config
    from .training.runconfig import ConfigError

    try:
        with process_group(args.device) as device:
            result = run_from_config(args.config, args.out, progress=not args.quiet, device=device)
            main_rank = _main_rank()  # inside: the group is gone afterwards
    except RunFolderError as exc:
        print(
            f"lplr-fast train: {exc.reason}; use another --out, or delete {exc.folder} to "
            "start over",
            file=sys.stderr,
        )
        return 2
    except (ConfigError, DistributedError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"lplr-fast train: {exc}", file=sys.stderr)
        return 2
    if main_rank:
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
    except ModuleNotFoundError as exc:
        return _missing_plotting("plot", exc)
    for path in paths:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code = _run(args)
    from .distributed.launch import launched

    if launched():
        _exit_without_cxx_teardown(code)
    return code


def _exit_without_cxx_teardown(code: int) -> None:
    """Leave a torchrun worker now: its results are written and the group is left, but the
    C++ teardown of the Gloo/TCPStore threads at interpreter exit has aborted ranks on a
    loaded machine ("terminate called without an active exception"), which torchrun then
    reports as a failed job."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        print(json.dumps(backend_info(), indent=2, default=str))
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "plot":
        return _plot(args)
    if args.command == "ntk":
        from .distributed.cli import run as run_ntk

        return run_ntk(args)
    if args.command in ("demo", "run", "sweep"):
        return _study(args)
    if args.command == "report":
        return _report(args)
    from .demo import DemoConfig, format_table, run_demo

    if args.n < 2 or args.width < 1 or args.depth < 1:
        print("lplr-fast ntk-check: --n must be ≥ 2, --width and --depth ≥ 1", file=sys.stderr)
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
