"""The run folder: derived values written once, checkpoints, and the result files.

Files (all written atomically: temporary file, fsync, rename; the two ``.pt`` files start
with the sha256 of their content, checked before use, see ``io.atomic_torch_save``):

* ``derived.pt``: the run's identity and its :class:`Derived` values, written once before
  the first step and never rewritten while the run lives;
* ``checkpoint.pt``: identity, the model, optimizer and SGD generator states and the
  :class:`RunState` at the start of step ``next_step``;
* ``history.*``, ``summary.*``, ``config.json``: the readable results (see ``result.py``);
* ``run.lock``: locked while a process runs the run.

A SIGKILL at any moment leaves every file either complete or absent (and perhaps a
temporary file, removed by the next invocation); the next invocation resumes from the last
checkpoint, or from step 0 with the stored derived values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .io import DamagedFileError, atomic_torch_save, exclusive_lock, verified_torch_load
from .result import CHECKPOINT, CONFIG_JSON, HISTORY_CSV, HISTORY_JSON, SUMMARY_CSV, SUMMARY_JSON
from .state import FORMAT, Derived, RunState, describe_changes, identity_changes

DERIVED = "derived.pt"
LOCK = "run.lock"
_RESULTS = (HISTORY_CSV, HISTORY_JSON, SUMMARY_CSV, SUMMARY_JSON, CONFIG_JSON)
_RUN_FILES = (DERIVED, CHECKPOINT, *_RESULTS)


class RunFolderError(ValueError):
    """The run folder holds another run, or one this call cannot continue. ``reason`` says
    what is wrong without the Python-level advice (command lines add their own), ``folder``
    is the run folder."""

    def __init__(self, reason: str, folder: Path) -> None:
        super().__init__(f"{reason}; use another out_dir or resume=False to start over")
        self.reason, self.folder = reason, folder


class RunFolderInUseError(ValueError):
    """Another process holds the run folder's lock (it is running this run now)."""


def _remedy(out: Path, name: str) -> str:
    """What to do about a damaged ``name`` in the run folder ``out``."""
    if name == CHECKPOINT:
        return (
            f"delete {out / CHECKPOINT} to rerun from step 0 with the stored derived values "
            f"(the same history), or delete the folder {out} to start over"
        )
    return (
        f"delete {out / DERIVED} and {out / CHECKPOINT} (or the folder {out}) to start the run over"
    )


class Checkpointer:
    """Reads and writes one run folder for the run with the given identity.

    Args:
        out_dir: the run folder (created when missing).
        identity: the run's identity (``state.py``); files of another identity are refused.
        device: where loaded tensors go (the model's device).
    """

    def __init__(self, out_dir: str | Path, identity: dict[str, Any], device: torch.device) -> None:
        self.out = Path(out_dir)
        self.identity = identity
        self.device = device
        self.out.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder (``run.lock``, flock) while a run uses it: a
        second process running the same run at the same time is refused. The kernel drops
        the lock when its holder dies, SIGKILL included."""

        def refusal() -> RunFolderInUseError:
            return RunFolderInUseError(
                f"{self.out} is in use by another running process (it holds "
                f"{self.out / LOCK}); wait for it to finish, or write to another folder"
            )

        with exclusive_lock(self.out / LOCK, refusal):
            yield

    def _remove_temporaries(self) -> None:
        """Temporary files of interrupted atomic writes (``.NAME.xxxx`` of our own files)."""
        for name in _RUN_FILES:
            for tmp in self.out.glob(f".{name}.*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def open(self) -> None:
        """Called with the lock held: remove what interrupted writes left behind."""
        self._remove_temporaries()

    def start_over(self) -> None:
        """Forget a previous run in this folder (``resume=False``): the checkpoint goes first,
        so that a kill in between never pairs an old checkpoint with new derived values."""
        for name in (CHECKPOINT, DERIVED, *_RESULTS):
            with contextlib.suppress(FileNotFoundError):
                (self.out / name).unlink()

    def _load(self, name: str) -> dict[str, Any] | None:
        path = self.out / name
        if not path.is_file():
            return None
        try:
            saved = verified_torch_load(path, self.device)
        except DamagedFileError as exc:
            raise DamagedFileError(path, f"{exc.problem}; {_remedy(self.out, name)}") from None
        found = saved.get("format") if isinstance(saved, dict) else None
        if found != FORMAT:
            raise RunFolderError(
                f"{path} was written by another version of lplr_fast (format {found}, "
                f"expected {FORMAT})",
                self.out,
            )
        changed = identity_changes(saved["identity"], self.identity)
        if changed:
            raise RunFolderError(
                f"{path} belongs to a different run (differs in {describe_changes(changed)})",
                self.out,
            )
        return saved

    def load_derived(self) -> Derived | None:
        saved = self._load(DERIVED)
        return None if saved is None else Derived(**saved["derived"])

    def save_derived(self, derived: Derived) -> None:
        payload = {"format": FORMAT, "identity": self.identity, "derived": derived.to_dict()}
        atomic_torch_save(self.out / DERIVED, payload)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """``{"state": RunState, "model": ..., "optimizer": ..., "generator": ...}`` or None."""
        saved = self._load(CHECKPOINT)
        if saved is None:
            return None
        if not (self.out / DERIVED).is_file():
            raise RunFolderError(
                f"{self.out} holds a checkpoint but no {DERIVED}: the folder is incomplete",
                self.out,
            )
        saved["state"] = RunState.from_dict(saved["state"])
        return saved

    def save_checkpoint(
        self,
        state: RunState,
        model_state: dict[str, Any],
        optimizer_state: dict[str, Any],
        generator_state: torch.Tensor,
    ) -> None:
        payload = {
            "format": FORMAT,
            "identity": self.identity,
            "state": state.to_dict(),
            "model": model_state,
            "optimizer": optimizer_state,
            "generator": generator_state,
        }
        atomic_torch_save(self.out / CHECKPOINT, payload)
