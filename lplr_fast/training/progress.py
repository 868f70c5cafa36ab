"""The progress display of a training run: a tqdm bar on stderr (steps done, ETA) with the
latest logged loss and PL ratio."""

from __future__ import annotations

from typing import Any


class Progress:
    """``update`` at logged steps; nothing is shown unless ``enabled``. A resumed run starts
    the bar at its first step."""

    def __init__(self, total: int, enabled: bool, start: int = 0) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", desc="train", leave=True)

    def update(self, step: int, loss: float, pl: float, force: bool = False) -> None:
        """Steps done = ``step``; the postfix shows ``loss`` and ``pl`` (the PL ratio)."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"loss {loss:.4e} pl {pl:.3e}", refresh=False)
        self.bar.update(step - self.bar.n)
        if force:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
