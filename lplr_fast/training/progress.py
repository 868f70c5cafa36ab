"""A one-line progress display on stderr: step, loss, PL ratio and ETA."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.t0 = self.last = time.monotonic()
        self.first_step: int | None = None

    def update(self, step: int, loss: float, pl: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = step
        if not force and now - self.last < 0.5:
            return
        self.last = now
        done = step - self.first_step
        eta = (now - self.t0) / done * (self.total - step) if done > 0 else math.nan
        eta_s = f"{eta:6.0f}s" if math.isfinite(eta) else "     ?"
        width = 24
        filled = int(width * step / max(self.total, 1))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} "
            f"loss {loss:.4e} pl {pl:.3e} ETA {eta_s}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
