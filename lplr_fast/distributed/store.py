"""A kernel on disk, tile by tile: written by many processes, resumable, read lazily.

Layout of a store folder ``STORE/``::

    manifest.json      what the kernel is: shape, dtype, compute mode, block size, the
                       model/data/options fingerprint, the backend; written last at creation
    kernel.npy         backend "npy": the whole kernel as one .npy file, written in place
                       (np.load(..., mmap_mode="r") reads it lazily)
    kernel.zarr/       backend "zarr": a zarr v3 array, one chunk per tile (zarr.open_array)
    tiles/BI-BJ.json   one marker per finished tile (its sha256), written atomically after
                       the tile's data; a tile without a marker does not exist
    summary.json       bounds and checks of the last complete run (lplr_fast.distributed)

The kernel array has the shape of ``empirical_ntk``'s result ((n1, n2, k, k), (n1, n2) or
(n1, n2, k)). For a symmetric kernel (x2 = None) only tiles on or above the block diagonal
are stored: the array holds NaN (zarr) or 0 (npy) below it; :meth:`StoredKernel.block`
and :meth:`StoredKernel.to_dense` mirror them.

Choice of backend: "npy" is one plain file (any numpy tool reads it; writes go to disjoint
byte ranges with ``pwrite``), right for a node's local disk or a POSIX-coherent parallel
file system; "zarr" keeps each tile in its own file, the safe choice for a shared file
system mounted on many nodes (NFS and the like do not promise coherent writes of one file
from several clients).

Kills and corruption: a tile counts as done only once its marker exists, and the marker is
written (temporary file, fsync, rename) only after the tile's bytes were written and, for
"npy", fsynced; a marker records the tile's digest (SHA-256 over 16 MiB chunks, hashed in
threads), and every tile read back through this module is checked against it, so a torn or
damaged tile is an error, not a number.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..training.io import atomic_write_bytes, atomic_write_json, exclusive_lock
from .schedule import Tile, TileGrid

FORMAT = "lplr-fast ntk store"
VERSION = 2  # 2: the model fingerprint covers the modules' Python state (stores of 1 differ)
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
Backend = Literal["npy", "zarr"]
_MARKER = re.compile(r"^(\d+)-(\d+)\.json$")
# temporary files of this module's own atomic writes (training.io.atomic_write_bytes:
# ".NAME.xxxxxxxx"), left behind when a process is killed between creating and renaming them
_TEMP_TOP = re.compile(r"^\.(manifest|summary)\.json\.[A-Za-z0-9_]+$")
_TEMP_MARKER = re.compile(r"^\.\d+-\d+\.json\.[A-Za-z0-9_]+$")
_STORE_FILES = ("kernel.npy", "kernel.zarr", "tiles", ".lock")


class StoreError(ValueError):
    """The store cannot be used: missing, corrupted, or made for another kernel."""


def kernel_shape(n1: int, n2: int, k: int, compute: str) -> tuple[int, ...]:
    return {"full": (n1, n2, k, k), "trace": (n1, n2), "diagonal": (n1, n2, k)}[compute]


HASH_CHUNK = 1 << 24  # bytes per SHA-256 leaf
_HASH_THREADS = max(1, min(8, os.cpu_count() or 1))


def sha256(array: np.ndarray) -> str:
    """The tile's digest: SHA-256 over the SHA-256 of each 16 MiB chunk of its bytes (and the
    byte count), the chunks hashed in parallel threads (hashlib releases the GIL), so that
    checking a tile costs a fraction of writing it."""
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    chunks = [data[i : i + HASH_CHUNK] for i in range(0, len(data), HASH_CHUNK)] or [data]
    if len(chunks) == 1:
        leaves = [hashlib.sha256(chunks[0]).digest()]
    else:
        with ThreadPoolExecutor(min(_HASH_THREADS, len(chunks))) as pool:
            leaves = list(pool.map(lambda c: hashlib.sha256(c).digest(), chunks))
    root = hashlib.sha256(str(len(data)).encode())
    for leaf in leaves:
        root.update(leaf)
    return root.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a store holds (see module docstring); ``config`` is compared on reopening."""

    backend: str
    config: dict[str, Any]

    @property
    def grid(self) -> TileGrid:
        c = self.config
        return TileGrid(c["n1"], c["n2"], c["block_size"], c["symmetric"])

    @property
    def shape(self) -> tuple[int, ...]:
        c = self.config
        return kernel_shape(c["n1"], c["n2"], c["k"], c["compute"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.config["dtype"])

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "backend": self.backend, **self.config}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StoreError(f"{path} is not an lplr-fast kernel store manifest")
        if data.get("version") != VERSION:
            raise StoreError(
                f"{path} has store version {data.get('version')}, this lplr_fast reads "
                f"version {VERSION}; use another store folder"
            )
        config = {k: v for k, v in data.items() if k not in ("format", "version", "backend")}
        need = ("n1", "n2", "k", "compute", "block_size", "symmetric", "dtype", "fingerprint")
        missing = [k for k in need if k not in config]
        if missing or data.get("backend") not in ("npy", "zarr"):
            raise StoreError(f"{path} is damaged (missing {missing or 'backend'})")
        return cls(data["backend"], config)


class _NpyArray:
    """kernel.npy written with pwrite at the tile's byte ranges, read through a memmap."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path, self.manifest = path, manifest
        self._offset: int | None = None

    @staticmethod
    def create(path: Path, manifest: Manifest) -> None:
        arr = np.lib.format.open_memmap(
            path, mode="w+", dtype=manifest.dtype, shape=manifest.shape
        )  # a sparse file: untouched pages take no disk space
        del arr

    def offset(self) -> int:
        if self._offset is None:
            with open(self.path, "rb") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read(fh)
                if tuple(shape) != self.manifest.shape or fortran or dtype != self.manifest.dtype:
                    raise StoreError(
                        f"{self.path} holds a {dtype} array of shape {tuple(shape)}, the "
                        f"manifest says {self.manifest.dtype} {self.manifest.shape}: the "
                        "store is damaged"
                    )
                self._offset = fh.tell()
        return self._offset

    def check(self) -> None:
        if not self.path.is_file():
            raise StoreError(f"{self.path} is missing: the store is damaged")
        self.offset()
        expected = self.offset() + int(np.prod(self.manifest.shape)) * self.manifest.dtype.itemsize
        if self.path.stat().st_size != expected:
            raise StoreError(
                f"{self.path} has {self.path.stat().st_size} bytes, expected {expected}: the "
                "store is damaged (truncated?)"
            )

    def write(self, rows: slice, cols: slice, tile: np.ndarray) -> None:
        shape = self.manifest.shape
        row_items = int(np.prod(shape[1:]))
        inner = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        item = self.manifest.dtype.itemsize
        tile = np.ascontiguousarray(tile, dtype=self.manifest.dtype)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for i in range(rows.stop - rows.start):
                start = self.offset() + ((rows.start + i) * row_items + cols.start * inner) * item
                data = memoryview(tile[i]).cast("B")
                while data:
                    written = os.pwrite(fd, data, start)
                    data, start = data[written:], start + written
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def reader(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return np.array(self.reader()[rows, cols])


class _ZarrArray:
    """kernel.zarr: a zarr v3 array, chunk = tile."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path, self.manifest = path, manifest
        self._array: Any = None

    @staticmethod
    def _zarr() -> Any:
        try:
            import zarr
        except ImportError:  # pragma: no cover (zarr is pinned in requirements.txt)
            raise StoreError(
                "backend='zarr' needs the zarr package (pip install 'zarr==3.1.6'); or use "
                "backend='npy'"
            ) from None
        return zarr

    @classmethod
    def create(cls, path: Path, manifest: Manifest) -> None:
        b = manifest.config["block_size"]
        chunks = (b, b, *manifest.shape[2:])
        cls._zarr().create_array(
            store=str(path), shape=manifest.shape, chunks=chunks, dtype=manifest.dtype,
            fill_value=np.nan, compressors=None, overwrite=True,
        )  # fmt: skip

    def array(self) -> Any:
        if self._array is None:
            try:
                self._array = self._zarr().open_array(str(self.path), mode="r+")
            except Exception as exc:
                raise StoreError(f"{self.path} cannot be opened as a zarr array: {exc}") from exc
        return self._array

    def check(self) -> None:
        arr = self.array()
        if tuple(arr.shape) != self.manifest.shape or np.dtype(arr.dtype) != self.manifest.dtype:
            raise StoreError(
                f"{self.path} holds a {arr.dtype} array of shape {tuple(arr.shape)}, the "
                f"manifest says {self.manifest.dtype} {self.manifest.shape}: the store is damaged"
            )

    def write(self, rows: slice, cols: slice, tile: np.ndarray) -> None:
        self.array()[rows, cols] = tile

    def reader(self) -> Any:
        return self.array()

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return np.asarray(self.array()[rows, cols])


class StoredKernel:
    """A kernel store, opened for reading (and, through :func:`open_or_create`, writing).

    ``array``: the raw lazily read array (numpy memmap or zarr array; lower blocks of a
    symmetric kernel are not stored). ``tile(t)``: one finished tile, checked against its
    sha256. ``block(rows, cols)``, ``to_dense()``: any block or the whole kernel, mirrored
    from the stored triangle. ``done()``: the finished tiles.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(
                f"{self.path} is not a kernel store (no {MANIFEST}); compute one with "
                "lplr-fast ntk CONFIG --out STORE or lplr_fast.distributed.empirical_ntk"
            )
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{manifest_path} is unreadable ({exc}): the store is damaged"
            ) from exc
        self.manifest = Manifest.from_json(data, manifest_path)
        self.grid = self.manifest.grid
        backend = _NpyArray if self.manifest.backend == "npy" else _ZarrArray
        name = "kernel.npy" if self.manifest.backend == "npy" else "kernel.zarr"
        self._array = backend(self.path / name, self.manifest)
        self._array.check()
        self._markers: dict[Tile, str] | None = None

    # -- description -----------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.config

    @property
    def shape(self) -> tuple[int, ...]:
        return self.manifest.shape

    @property
    def compute(self) -> str:
        return self.config["compute"]

    @property
    def k(self) -> int:
        return self.config["k"]

    @property
    def symmetric(self) -> bool:
        return self.config["symmetric"]

    @property
    def array(self) -> Any:
        return self._array.reader()

    def __repr__(self) -> str:
        done, total = len(self.done()), len(self.grid.tiles())
        return (
            f"StoredKernel({str(self.path)!r}, {self.compute}, shape={self.shape}, "
            f"{self.manifest.dtype}, {self.manifest.backend}, {done}/{total} tiles)"
        )

    # -- markers ---------------------------------------------------------------------------
    def _tiles_dir(self) -> Path:
        return self.path / "tiles"

    def done(self, refresh: bool = False) -> dict[Tile, str]:
        """Finished tiles → their sha256 (markers read once; ``refresh`` to reread)."""
        if self._markers is None or refresh:
            self._markers = self._read_markers()
        return self._markers

    def _read_markers(self) -> dict[Tile, str]:
        folder = self._tiles_dir()
        valid = set(self.grid.tiles())
        out: dict[Tile, str] = {}
        if not folder.is_dir():
            return out
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue  # a marker being written (or left by a kill): not done
            m = _MARKER.match(name)
            tile = (int(m.group(1)), int(m.group(2))) if m else None
            try:
                data = json.loads((folder / name).read_text())
                digest = data["sha256"]
                ok = tile in valid and tuple(data["tile"]) == tile and len(digest) == 64
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise StoreError(
                    f"{folder / name} is not a valid tile marker of this store: the store is "
                    "damaged (delete that file to recompute the tile)"
                )
            out[tile] = digest  # type: ignore[index]
        return out

    @property
    def complete(self) -> bool:
        return len(self.done()) == len(self.grid.tiles())

    def missing(self) -> list[Tile]:
        done = self.done()
        return [t for t in self.grid.tiles() if t not in done]

    # -- reading ---------------------------------------------------------------------------
    def tile(self, tile: Tile, verify: bool = True) -> np.ndarray:
        """The stored tile (numpy, kernel layout), checked against its marker's sha256."""
        digest = self.done().get(tile)
        if digest is None:
            raise StoreError(f"tile {tile} of {self.path} is not finished")
        rows, cols = self.grid.slices(tile)
        data = self._array.read(rows, cols)
        if verify and sha256(data) != digest:
            raise StoreError(
                f"tile {tile} of {self.path} does not match its recorded sha256: the store is "
                f"corrupted (delete {self._tiles_dir() / f'{tile[0]}-{tile[1]}.json'} to "
                "recompute that tile)"
            )
        return data

    def matrix_tile(self, tile: Tile, verify: bool = True) -> torch.Tensor:
        """A finished tile as a 2-D float64 tensor in sample-major (i·k + c) layout."""
        t = torch.from_numpy(self.tile(tile, verify))
        if self.compute == "full":
            r, c, k, _ = t.shape
            return t.permute(0, 2, 1, 3).reshape(r * k, c * k)
        if self.compute == "diagonal":
            raise ValueError("a 'diagonal' kernel holds k separate matrices: read tile() instead")
        return t

    def block(self, rows: slice, cols: slice) -> np.ndarray:
        """Θ[rows, cols] (kernel layout) from finished tiles, mirrored below the diagonal of a
        symmetric kernel; every tile touched is checked. ``rows`` and ``cols`` are slices with
        numpy's meaning (negative ends count from the end, ends beyond the kernel are
        clipped, steps of any sign); the result has the shape ``array[rows, cols]`` would."""
        r_idx = _slice_indices(rows, self.config["n1"], "rows")
        c_idx = _slice_indices(cols, self.config["n2"], "cols")
        out = np.empty((len(r_idx), len(c_idx), *self.shape[2:]), dtype=self.manifest.dtype)
        if len(r_idx) == 0 or len(c_idx) == 0:
            return out
        r0, r1 = int(r_idx.min()), int(r_idx.max()) + 1
        c0, c1 = int(c_idx.min()), int(c_idx.max()) + 1
        box = self._box(r0, r1, c0, c1)
        if len(r_idx) == r1 - r0 and len(c_idx) == c1 - c0 and r_idx[0] == r0 and c_idx[0] == c0:
            return box  # plain ascending slices
        return box[np.ix_(r_idx - r0, c_idx - c0)]

    def _box(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Θ[r0:r1, c0:c1] for 0 ≤ r0 < r1 ≤ n1, 0 ≤ c0 < c1 ≤ n2."""
        out = np.empty((r1 - r0, c1 - c0, *self.shape[2:]), dtype=self.manifest.dtype)
        b = self.grid.block
        for bi in range(r0 // b, -(-r1 // b)):
            for bj in range(c0 // b, -(-c1 // b)):
                src = self._oriented(bi, bj)
                tr, tc = self.grid.slices((bi, bj))
                lo_r, hi_r = max(r0, tr.start), min(r1, tr.stop)
                lo_c, hi_c = max(c0, tc.start), min(c1, tc.stop)
                out[lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0] = src[
                    lo_r - tr.start : hi_r - tr.start, lo_c - tc.start : hi_c - tc.start
                ]
        return out

    def _oriented(self, bi: int, bj: int) -> np.ndarray:
        if not self.symmetric or bi <= bj:
            return self.tile((bi, bj))
        t = self.tile((bj, bi))
        return t.transpose(1, 0, 3, 2) if self.compute == "full" else t.swapaxes(0, 1)

    def to_dense(self) -> torch.Tensor:
        """The whole kernel in memory (small kernels; raises unless every tile is done)."""
        if not self.complete:
            raise StoreError(
                f"{self.path}: {len(self.missing())} of {len(self.grid.tiles())} tiles are "
                "missing; rerun the computation to finish the store"
            )
        n1, n2 = self.config["n1"], self.config["n2"]
        return torch.from_numpy(self._box(0, n1, 0, n2))

    def summary(self) -> dict[str, Any] | None:
        """The summary.json of the last complete run, or None."""
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.path / SUMMARY).read_text())
        return None


def _slice_indices(s: Any, n: int, name: str) -> np.ndarray:
    """The indices a slice selects from range(n), as numpy would."""
    if not isinstance(s, slice):
        raise TypeError(
            f"{name} must be a slice (e.g. slice(0, 10)), got {type(s).__name__}; for single "
            "entries use slice(i, i + 1)"
        )
    for part in ("start", "stop", "step"):
        v = getattr(s, part)
        if v is not None and not isinstance(v, int | np.integer):
            raise TypeError(f"{name}.{part} must be an integer or None, got {v!r}")
    if s.step == 0:
        raise ValueError(f"{name}: slice step cannot be zero")
    return np.arange(*s.indices(n), dtype=np.int64)


class TileStore(StoredKernel):
    """A store opened for writing tiles."""

    def write_tile(self, tile: Tile, data: torch.Tensor, rank: int = 0) -> None:
        """Write one tile's data, then its marker (the tile is done once the marker exists)."""
        rows, cols = self.grid.slices(tile)
        host = data.detach().cpu().numpy()
        expected = (rows.stop - rows.start, cols.stop - cols.start, *self.shape[2:])
        if host.shape != expected or host.dtype != self.manifest.dtype:
            raise ValueError(
                f"tile {tile} has {host.dtype} {host.shape}, the store expects "
                f"{self.manifest.dtype} {expected}"
            )
        self._array.write(rows, cols, host)
        marker = {"tile": list(tile), "sha256": sha256(host), "rank": rank}
        atomic_write_bytes(
            self._tiles_dir() / f"{tile[0]}-{tile[1]}.json", json.dumps(marker).encode()
        )
        self.done()[tile] = marker["sha256"]

    def forget(self, tile: Tile) -> None:
        """Drop a tile's marker (it will be recomputed)."""
        with contextlib.suppress(FileNotFoundError):
            (self._tiles_dir() / f"{tile[0]}-{tile[1]}.json").unlink()
        self.done().pop(tile, None)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY, summary)


def prepare_folder(path: str | Path) -> None:
    """Make the store folder (for its lock) unless it holds something that is no kernel store
    (refused: the lock file is not dropped into a foreign folder)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a folder; choose an empty or new folder")
    if path.is_dir() and not (path / MANIFEST).is_file():
        foreign = [
            p.name for p in path.iterdir()
            if p.name not in _STORE_FILES and not _TEMP_TOP.match(p.name)
        ]  # fmt: skip
        if foreign:
            raise StoreError(
                f"{path} exists and is not a kernel store (it holds {sorted(foreign)[:3]}); "
                "choose an empty or new folder"
            )
    path.mkdir(parents=True, exist_ok=True)


def remove_leftovers(path: str | Path) -> list[str]:
    """Delete the temporary files of atomic writes killed before their rename
    (``.manifest.json.xxxx``, ``tiles/.BI-BJ.json.xxxx``): never part of the store. Call only
    while holding :func:`job_lock` (no other job can be writing them then). Returns their
    names."""
    path = Path(path)
    removed = []
    for folder, pattern in ((path, _TEMP_TOP), (path / "tiles", _TEMP_MARKER)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if pattern.match(entry.name) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                removed.append(str(entry.relative_to(path)))
    return removed


def create_or_check(path: str | Path, backend: Backend | None, config: dict[str, Any]) -> str:
    """Make the store at ``path`` for ``config`` if there is none, or check that the one there
    was made for the same kernel (and, when ``backend`` is given, with that backend). Returns
    "created" or "existing". Call from one process, holding :func:`job_lock`, so that two
    jobs cannot both find no manifest and create the store."""
    path = Path(path)
    if backend not in ("npy", "zarr", None):
        raise ValueError(f"backend must be 'npy', 'zarr' or None, got {backend!r}")
    prepare_folder(path)
    remove_leftovers(path)
    if (path / MANIFEST).is_file():
        store = StoredKernel(path)
        _compare(store.config, config, path)
        if backend is not None and backend != store.manifest.backend:
            raise StoreError(
                f"{path} is a {store.manifest.backend!r} store, not {backend!r} (the backend "
                f"is chosen when a store is created): omit the backend or pass "
                f"{store.manifest.backend!r} to continue it, or use another folder"
            )
        return "existing"
    manifest = Manifest(backend or "npy", config)
    tiles = path / "tiles"  # a creation killed before its manifest: start clean
    if tiles.is_dir():
        for f in tiles.iterdir():
            f.unlink()
    tiles.mkdir(exist_ok=True)
    if manifest.backend == "npy":
        _NpyArray.create(path / "kernel.npy", manifest)
    else:
        _ZarrArray.create(path / "kernel.zarr", manifest)
    atomic_write_json(path / MANIFEST, manifest.to_json())  # last: the store now exists
    return "created"


def _compare(have: dict[str, Any], want: dict[str, Any], path: Path) -> None:
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    keys = [k for k in keys if k not in ("created_by",)]
    if keys:
        detail = ", ".join(f"{k}: store {have.get(k)!r} vs now {want.get(k)!r}" for k in keys[:4])
        raise StoreError(
            f"{path} holds a different kernel ({detail}); it was made for another model, data "
            "or options. Use another --out folder, or delete this one to start over"
        )


@contextlib.contextmanager
def job_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on STORE/.lock for one job (held by its rank 0): a second job on the
    same store is refused instead of racing it. The OS drops it when the holder dies."""

    def refusal() -> StoreError:
        return StoreError(
            f"{path} is being written by another job; wait for it or use another store"
        )

    with exclusive_lock(Path(path) / ".lock", refusal):
        yield


def open_store(path: str | Path) -> StoredKernel:
    """Open a kernel store for reading (lazily; tiles checked as they are read)."""
    return StoredKernel(path)


__all__ = [
    "Backend",
    "Manifest",
    "StoreError",
    "StoredKernel",
    "TileStore",
    "create_or_check",
    "job_lock",
    "kernel_shape",
    "open_store",
    "prepare_folder",
    "remove_leftovers",
]
