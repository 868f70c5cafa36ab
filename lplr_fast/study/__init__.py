"""The LPLR study: experiment configurations (TOML, shipped in ``configs/``), a resumable
grid runner, experiment analyses and a self-contained HTML report."""

from .analysis import analyse, fit_power_law
from .config import ConfigError, Point, StudyConfig, load_study, parse_config, shipped_experiments
from .runner import StudyResult, run_study

__all__ = [
    "ConfigError",
    "Point",
    "StudyConfig",
    "StudyResult",
    "analyse",
    "fit_power_law",
    "load_study",
    "parse_config",
    "run_study",
    "shipped_experiments",
]
