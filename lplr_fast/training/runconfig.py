"""``lplr-fast train CONFIG.toml``: the TOML run configuration, checked key by key.

Every section and key, with defaults::

    [data]
    dataset = "teacher"    # built-in: "teacher" | "spirals"; or path = "data.npz" / ".csv"
    path = ""              # a local .npz (arrays x, y) or .csv (last column y) file
    n = 64                 # samples of a built-in dataset
    seed = 0               # seed of a built-in dataset
    dtype = "float64"      # "float64" | "float32"

    [model]
    width = 1024           # hidden width of the tanh MLP
    depth = 1              # hidden layers
    seed = 0               # initialisation seed

    [train]                # the arguments of lplr_fast.train
    optimizer = "gd"       # "gd" | "sgd"
    lr = "auto"            # a number, or "auto" = lr_fraction / β₀ (β₀ = certified λ_max at init)
    lr_fraction = 0.9
    steps = 500
    batch_size = 0         # SGD mini-batch size (0 = none, for GD)
    momentum = 0.0
    loss = "mean_half"     # "mean_half" | "sum_half" | "mse"
    l_star = 0.0
    seed = 0
    checkpoint_every = 0   # 0 = every ntk_every steps

    [diagnostics]          # the fields of lplr_fast.Diagnostics
    every = 1
    ntk_every = 50
    ntk_subset = 0         # 0 = all samples; m > 0 = a fixed random subset of m samples
    bounds = "certified"   # "certified" | "fast"
    ntk_compute = "full"   # "full" | "trace"
    stable_window = []     # [] = automatic; [first, last] to override

Unknown sections or keys, and values of the wrong type, are errors naming them.

Example configurations ship with the package (``lplr_fast/training/examples/*.toml``):
``lplr-fast train teacher`` runs ``teacher.toml`` (see :func:`example_configs`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .._compat import tomllib

SCHEMA: dict[str, dict[str, Any]] = {
    "data": {"dataset": "teacher", "path": "", "n": 64, "seed": 0, "dtype": "float64"},
    "model": {"width": 1024, "depth": 1, "seed": 0},
    "train": {
        "optimizer": "gd",
        "lr": "auto",
        "lr_fraction": 0.9,
        "steps": 500,
        "batch_size": 0,
        "momentum": 0.0,
        "loss": "mean_half",
        "l_star": 0.0,
        "seed": 0,
        "checkpoint_every": 0,
    },
    "diagnostics": {
        "every": 1,
        "ntk_every": 50,
        "ntk_subset": 0,
        "bounds": "certified",
        "ntk_compute": "full",
        "stable_window": [],
    },
}


class ConfigError(ValueError):
    """A configuration file that cannot be used, with the reason."""


def _type_ok(default: Any, value: Any, key: str) -> bool:
    if key == "lr":
        return value == "auto" or (isinstance(value, int | float) and not isinstance(value, bool))
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def example_configs() -> dict[str, Path]:
    """The example configurations shipped with the package: name → path of its TOML file."""
    folder = resources.files("lplr_fast.training") / "examples"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file: ``name_or_path`` itself when it exists, else the packaged example of
    that name; ConfigError naming both options otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    examples = example_configs()
    if str(name_or_path) in examples:
        return examples[str(name_or_path)]
    raise ConfigError(
        f"config file {path} does not exist (and it is not one of the packaged examples "
        f"{sorted(examples)})"
    )


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """The configuration with defaults filled in; ConfigError on unknown or mistyped keys.
    ``path``: a TOML file, or the name of a packaged example (:func:`example_configs`)."""
    path = resolve_config(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; known: {sorted(SCHEMA)}")
    config: dict[str, dict[str, Any]] = {}
    for section, defaults in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        bad = sorted(set(given) - set(defaults))
        if bad:
            raise ConfigError(
                f"{path}: unknown key(s) {bad} in [{section}]; known: {sorted(defaults)}"
            )
        merged = dict(defaults)
        for key, value in given.items():
            if not _type_ok(defaults[key], value, key):
                raise ConfigError(
                    f"{path}: [{section}] {key} = {value!r} has the wrong type "
                    f"(expected {type(defaults[key]).__name__})"
                )
            merged[key] = value
        config[section] = merged
    window = config["diagnostics"]["stable_window"]
    if window and len(window) != 2:
        raise ConfigError(f"{path}: [diagnostics] stable_window must be [] or [first, last]")
    return config
