"""Atomic file writes: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file ``.NAME.xxxx`` in the same folder, fsync it, then
    rename it over ``path`` (rename is atomic on POSIX file systems) and fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; results follow the umask
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by
    setting it, which would race with files other threads create meanwhile)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): read it by setting it back at once
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (power loss; a killed process needs no more)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as JSON-able markers (None for NaN, "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with NaN written as null and ±inf as strings (strict JSON readers accept it)."""
    atomic_write_bytes(path, (json.dumps(json_safe(obj), indent=1) + "\n").encode())


def atomic_write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """CSV with a header; missing and NaN values are empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
            elif isinstance(v, float):
                cells.append(repr(v))
            else:
                cells.append(str(v))
        writer.writerow(cells)
    atomic_write_bytes(path, buf.getvalue().encode())


_MAGIC = b"lplr_fast run file 1\nsha256 "  # then 64 hex digits, a newline, torch.save bytes
_HEADER = len(_MAGIC) + 65


class DamagedFileError(ValueError):
    """A file written by :func:`atomic_torch_save` that cannot be trusted: truncated, empty,
    not ours, or its bytes no longer match the digest written with them. ``path``: the file;
    ``problem``: what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is damaged: {problem}")
        self.path, self.problem = path, problem


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` behind a header holding the sha256 of its bytes, written atomically
    as one file (the digest can never be out of step with the data it covers)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode()
    atomic_write_bytes(path, _MAGIC + digest + b"\n" + body)


def verified_torch_load(path: Path, map_location: Any) -> Any:
    """Read a file written by :func:`atomic_torch_save` (``torch.load(weights_only=True)``)
    after checking its digest; :class:`DamagedFileError` when it does not hold."""
    raw = path.read_bytes()
    if len(raw) == 0:
        raise DamagedFileError(path, "the file is empty")
    if raw.startswith(b"PK\x03\x04"):
        raise DamagedFileError(
            path, "written by an older lplr_fast (a torch.save file without a digest)"
        )
    if not raw.startswith(_MAGIC) or len(raw) < _HEADER or raw[_HEADER - 1 : _HEADER] != b"\n":
        raise DamagedFileError(
            path, "no lplr_fast digest header (truncated, overwritten, or an older format)"
        )
    expected, body = raw[len(_MAGIC) : _HEADER - 1].decode("ascii", "replace"), raw[_HEADER:]
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise DamagedFileError(
            path, f"its content does not match its sha256 (stored {expected}, "
            f"found {actual}: truncated or corrupted on disk)"
        )  # fmt: skip
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise DamagedFileError(path, f"torch.load failed: {exc}") from exc


@contextlib.contextmanager
def exclusive_lock(path: Path, refusal: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) while inside; raise
    ``refusal()`` when another process holds it. The kernel drops the lock when its holder
    dies, SIGKILL included. Without fcntl (not POSIX) nothing is locked."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refusal() from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
