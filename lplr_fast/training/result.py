"""RunResult: the logged history and the summary of a training run, and their files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis import NULLABLE_FIELDS, SUMMARY_FIELDS
from .config import HISTORY_COLUMNS, SGD_COLUMNS
from .io import atomic_write_csv, atomic_write_json

HISTORY_CSV, HISTORY_JSON = "history.csv", "history.json"
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
CONFIG_JSON, CHECKPOINT = "config.json", "checkpoint.pt"


@dataclass
class RunResult:
    """``history``: one dict per logged step (columns in ``columns``; NTK columns are NaN at
    steps without an NTK); ``summary``: one record (see ``analysis.SUMMARY_FIELDS``);
    ``config``: the arguments of the run."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def columns(self) -> list[str]:
        extra = SGD_COLUMNS if self.config.get("optimizer") == "sgd" else []
        return HISTORY_COLUMNS + extra

    def column(self, name: str) -> list[float]:
        """One history column as a list (NaN where not logged)."""
        return [float(r.get(name, math.nan)) for r in self.history]

    def write(self, out_dir: str | Path) -> Path:
        """Write history.csv/json, summary.csv/json and config.json atomically."""
        out = Path(out_dir)
        atomic_write_csv(out / HISTORY_CSV, self.history, self.columns)
        atomic_write_json(out / HISTORY_JSON, self.history)
        keys = SUMMARY_FIELDS + [k for k in self.summary if k not in SUMMARY_FIELDS]
        atomic_write_csv(out / SUMMARY_CSV, [self.summary], keys)
        atomic_write_json(out / SUMMARY_JSON, self.summary)
        atomic_write_json(out / CONFIG_JSON, self.config)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> RunResult:
        """Read a run folder written by :meth:`write` (or by ``train(out_dir=...)``)."""
        out = Path(out_dir)
        missing = [n for n in (HISTORY_JSON, SUMMARY_JSON) if not (out / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{out} is not a run folder: missing {', '.join(missing)}")

        def restore(v: Any) -> Any:
            if v is None:
                return math.nan
            if v in ("inf", "-inf"):
                return float(v)
            return v

        history = [
            {k: restore(v) for k, v in row.items()}
            for row in json.loads((out / HISTORY_JSON).read_text())
        ]
        summary = {
            k: v if k in NULLABLE_FIELDS else restore(v)
            for k, v in json.loads((out / SUMMARY_JSON).read_text()).items()
        }
        config_path = out / CONFIG_JSON
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(history, summary, config, out)

    def __str__(self) -> str:
        s = self.summary
        return (
            f"{len(self.history)} logged steps; λ0 = {s.get('lambda0', math.nan):.4g}, "
            f"fitted rate {s.get('fitted_rate', math.nan):.6g} (R² {s.get('fit_r2', math.nan):.3f})"
            f", predicted {s.get('predicted_rate', math.nan):.6g}; {s.get('verdict', '')}"
        )
