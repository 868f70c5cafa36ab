"""Hash of the kernel sources; shared by setup.py (baked into the build) and the loader
(compared at import to detect a stale build). Standard library only."""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def kernel_source_hash(csrc: Path) -> str:
    """sha256 over the relative paths and bytes of every kernel source under ``csrc``,
    truncated to 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(csrc.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and path.is_file():
            digest.update(path.relative_to(csrc).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
