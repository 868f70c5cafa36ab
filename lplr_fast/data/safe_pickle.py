"""A pickle reader that builds numpy arrays and plain containers, and nothing else.

The dataset pickles we read (the classic ``mnist.pkl.gz``, CIFAR-10's python batches) were
written by Python 2's cPickle: a tree of dicts/tuples/lists/str/int holding numpy arrays. An
array is written as ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` followed
by a BUILD with the state ``(1, shape, dtype, is_fortran, raw bytes)``, the dtype as
``numpy.dtype(code, align, copy)`` followed by a BUILD with its state
``(3, byte order, None, None, None, elsize, alignment, flags)``. Pickles re-written by
Python 3 / numpy 2 also use ``numpy._core.multiarray._reconstruct``,
``numpy._core.numeric._frombuffer`` (protocol 5) and ``_codecs.encode(text, "latin1")``.

No numpy object ever sees a value from the file before it is validated. The unpickler resolves
those globals to inert stand-ins that only *record* their arguments and BUILD states (a BUILD
on anything else fails); once the whole file is parsed, every recorded array is checked
completely — the dtype's type code against a short list of numeric codes, its state equal to
the state numpy itself writes for that dtype and byte order, the shape a tuple of
non-negative ints, the data exactly ``prod(shape) · itemsize`` bytes (Python ints, no
overflow) — and only then built, as ``np.frombuffer`` over a fresh copy of those bytes. Any
other global (``os.system``, ``builtins.eval``, …) is refused before anything is called.
Every malformed input (truncated, corrupted, hostile) ends as one ValueError naming the
source; :class:`UnsafePickleError` (a ValueError) when the file asks for something that is
not an array or a plain value.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools
import re
import reprlib
from typing import Any

import numpy as np

MAX_DEPTH = 8  # dataset pickles nest 3 levels (mnist: tuple of pairs); deeper is refused
MAX_NDIM = 32
MAX_ELEMENTS = 2**48  # product of the non-zero dimensions; no dataset array comes close
_TYPE_CODE = re.compile(r"(?:[biuf][1-9][0-9]?|c[1-9][0-9]?|[SU][1-9][0-9]{0,8})\Z")
_UNSET = object()


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that asks for something other than numpy arrays and plain containers."""


class _Global:
    """What a permitted global resolves to: a callable that records its arguments. BUILD on
    it is refused (it has no instance dict, and ``__setstate__`` raises)."""

    __slots__ = ("make", "name")

    def __init__(self, name: str, make: Any) -> None:
        self.name, self.make = name, make

    def __call__(self, *args: Any) -> Any:
        return self.make(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"a state for {self.name} itself is refused")


class _DtypeSpec:
    """``numpy.dtype(*args)`` and its BUILD state, recorded, not applied."""

    __slots__ = ("args", "state")

    def __init__(self, args: tuple) -> None:
        self.args, self.state = args, _UNSET

    def __setstate__(self, state: Any) -> None:
        if self.state is not _UNSET:
            raise UnsafePickleError("a dtype's state is set twice")
        self.state = state


class _ArraySpec:
    """An array to build: ``kind`` "reconstruct" (``args`` = (shape, type code), the data
    in the BUILD ``state``) or "frombuffer" (``args`` = (buffer, dtype, shape, order))."""

    __slots__ = ("args", "kind", "state")

    def __init__(self, kind: str, args: tuple) -> None:
        self.kind, self.args, self.state = kind, args, _UNSET

    def __setstate__(self, state: Any) -> None:
        if self.kind != "reconstruct" or self.state is not _UNSET:
            raise UnsafePickleError("an array's state is set twice (or on a buffer array)")
        self.state = state


def _refuse_ndarray_call(*args: Any) -> Any:
    raise UnsafePickleError("numpy.ndarray(...) called directly (only array reconstruction)")


_NDARRAY = _Global("numpy.ndarray", _refuse_ndarray_call)


def _reconstruct(cls: Any, shape: Any, type_code: Any) -> _ArraySpec:
    if cls is not _NDARRAY:
        raise UnsafePickleError("array reconstruction of anything but numpy.ndarray refused")
    return _ArraySpec("reconstruct", (shape, type_code))


def _frombuffer(*args: Any) -> _ArraySpec:
    if len(args) != 4:
        raise UnsafePickleError(f"_frombuffer with {len(args)} arguments (expected 4)")
    return _ArraySpec("frombuffer", args)


def _latin1_encode(text: Any, encoding: Any = "latin1", *rest: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise UnsafePickleError("_codecs.encode refused: only text → bytes in latin1")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], _Global] = {
    ("numpy.core.multiarray", "_reconstruct"): _Global("_reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Global("_reconstruct", _reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", lambda *args: _DtypeSpec(args)),
    ("numpy.core.numeric", "_frombuffer"): _Global("_frombuffer", _frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _Global("_frombuffer", _frombuffer),
    ("_codecs", "encode"): _Global("_codecs.encode", _latin1_encode),
}

_PLAIN = (str, bytes, int, float, bool, type(None))


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the pickle asks for {module}.{name}; only numpy arrays and plain containers "
                "are read (this file is not a dataset pickle, or has been tampered with)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are refused")


_OPCODES = {op.code.encode("latin1")[0]: op for op in pickletools.opcodes}
_REFUSED_OPCODES = {
    "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID",
    "NEXT_BUFFER",
}  # fmt: skip
_COUNT_FIELDS = {  # argument size descriptors → (bytes of the count, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def _scan_opcodes(data: bytes) -> None:
    """Walk the opcodes before any is executed: every length field and FRAME size within
    the data, memo indices no larger than the number of opcodes so far (a forged index would
    make the unpickler allocate a memo table of that size), no opcode that builds objects
    of other classes, and the STOP opcode exactly at the end. Payloads are skipped unread."""
    pos, ops, end = 0, 0, len(data)
    while pos < end:
        op = _OPCODES.get(data[pos])
        if op is None:
            raise ValueError(f"byte {pos}: {data[pos]:#04x} is not a pickle opcode")
        if op.name in _REFUSED_OPCODES:
            raise UnsafePickleError(f"byte {pos}: opcode {op.name} refused (not array data)")
        start, pos, ops = pos, pos + 1, ops + 1
        arg = op.arg
        if arg is None:
            pass
        elif arg.n >= 0:
            pos += arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise ValueError(f"byte {start}: {op.name} without its end of line")
                line, pos = data[pos:newline], newline + 1
        else:
            width, signed = _COUNT_FIELDS[arg.n]
            count = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            if count < 0:
                raise ValueError(f"byte {start}: {op.name} with a negative length")
            pos += width + count
        if pos > end:
            raise ValueError(f"byte {start}: {op.name} runs past the end of the data")
        if op.name == "FRAME" and int.from_bytes(data[start + 1 : pos], "little") > end - pos:
            raise ValueError(f"byte {start}: FRAME longer than the rest of the data")
        if op.name in ("PUT", "LONG_BINPUT"):
            index = (
                int(line) if op.name == "PUT" else int.from_bytes(data[start + 1 : pos], "little")
            )
            if not 0 <= index <= ops:
                raise ValueError(f"byte {start}: memo index {index} out of range")
        if op.name == "STOP":
            if pos != end:
                raise ValueError(f"{end - pos} bytes after the end of the pickle")
            return
    raise ValueError("the data ends before the pickle's STOP opcode")


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise UnsafePickleError(f"{what} is a {type(value).__name__}, expected text")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _build_dtype(spec: Any) -> np.dtype:
    """The dtype that ``spec`` records, after checking its arguments and its state against
    what numpy writes for that dtype."""
    if not isinstance(spec, _DtypeSpec):
        raise UnsafePickleError(f"an array's dtype is a {type(spec).__name__}, not a dtype")
    if len(spec.args) != 3 or not all(
        isinstance(flag, int) and flag in (0, 1) for flag in spec.args[1:]
    ):
        raise UnsafePickleError(f"numpy.dtype called with {len(spec.args)} unexpected arguments")
    code = _text(spec.args[0], "the dtype's type code")
    if not _TYPE_CODE.match(code):
        raise UnsafePickleError(
            f"dtype {reprlib.repr(code)} refused: only numeric (and fixed string) arrays"
        )
    if spec.args[1]:
        raise UnsafePickleError("aligned dtypes are refused")
    try:
        dtype = np.dtype(code)
    except TypeError:
        raise UnsafePickleError(f"{code!r} is not a numpy type code") from None
    state = spec.state
    if state is _UNSET:
        raise UnsafePickleError(f"dtype {code} without its state")
    if not (isinstance(state, tuple) and len(state) == 8):
        raise UnsafePickleError(f"dtype {code}: its state is not the 8-tuple numpy writes")
    order = _text(state[1], "the dtype's byte order")
    if order not in ("<", ">", "|"):
        raise UnsafePickleError(f"dtype {code}: byte order {reprlib.repr(order)}")
    dtype = dtype.newbyteorder(order) if order != "|" else dtype
    expected = dtype.__reduce__()[2]
    if (state[0], order, *state[2:]) != expected:
        raise UnsafePickleError(
            f"dtype {code}: state {reprlib.repr(state)} is not numpy's {expected}"
        )
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM:
        raise UnsafePickleError(f"array shape {reprlib.repr(shape)} is not a tuple of ≤ 32 ints")
    if not all(_is_int(s) and s >= 0 for s in shape):
        raise UnsafePickleError(f"array shape {reprlib.repr(shape)} holds non-integers or < 0")
    if math.prod(max(s, 1) for s in shape) > MAX_ELEMENTS:
        raise UnsafePickleError(f"array shape {reprlib.repr(shape)} is absurdly large")
    return shape


def _build_array(spec: _ArraySpec) -> np.ndarray:
    if spec.kind == "reconstruct":
        if spec.args[0] != (0,) or _text(spec.args[1], "the type code") != "b":
            raise UnsafePickleError("array reconstruction with unexpected arguments")
        state = spec.state
        if state is _UNSET:
            raise UnsafePickleError("an array without its data (no state)")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise UnsafePickleError("an array state that is not numpy's (1, shape, dtype, …)")
        _, shape, dtype_spec, fortran, raw = state
        if not (isinstance(fortran, int) and fortran in (0, 1)):
            raise UnsafePickleError("an array's is_fortran flag is not a bool")
    else:
        raw, dtype_spec, shape, order = spec.args
        if order not in ("C", "F"):
            raise UnsafePickleError(f"array order {reprlib.repr(order)} (expected 'C' or 'F')")
        fortran = order == "F"
    dtype = _build_dtype(dtype_spec)
    shape = _shape(shape)
    if isinstance(raw, str):
        try:
            data = bytearray(raw, "latin1")
        except UnicodeEncodeError:
            raise UnsafePickleError("array data given as text beyond latin1") from None
    elif isinstance(raw, bytes | bytearray):
        data = bytearray(raw)
    else:
        raise UnsafePickleError(f"array data is a {type(raw).__name__}, not bytes")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise UnsafePickleError(
            f"array of shape {shape} and dtype {dtype} needs {expected} bytes, the file holds "
            f"{len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


class _Materialiser:
    """Rebuilds the loaded tree with real arrays in place of the recorded ones, refusing
    anything but arrays, dicts, lists, tuples and plain values; a shared object is built
    once, a cycle is refused."""

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()
        self.keep: list[Any] = []  # keeps ids in ``done`` unique while it lives

    def build(self, obj: Any, path: tuple, depth: int = 0) -> Any:
        if isinstance(obj, _PLAIN):
            return obj
        if depth > MAX_DEPTH:
            raise UnsafePickleError(f"{_where(path)}: nested deeper than a dataset pickle")
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise UnsafePickleError(f"{_where(path)}: a container that contains itself")
        self.active.add(key)
        built = self._build(obj, path, depth)
        self.active.discard(key)
        self.done[key] = built
        self.keep.append(obj)
        return built

    def _build(self, obj: Any, path: tuple, depth: int) -> Any:
        if isinstance(obj, _ArraySpec):
            try:
                return _build_array(obj)
            except UnsafePickleError as exc:
                raise UnsafePickleError(f"array at {_where(path)}: {exc}") from None
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if not isinstance(k, str | bytes | int):
                    raise UnsafePickleError(f"{_where(path)}: dict key of type {type(k).__name__}")
                out[k] = self.build(v, (*path, k), depth + 1)
            return out
        if isinstance(obj, list | tuple):
            items = [self.build(v, (*path, i), depth + 1) for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else tuple(items)
        what = {_DtypeSpec: "a bare dtype", _Global: "a bare global"}.get(type(obj))
        raise UnsafePickleError(
            f"{_where(path)}: {what or 'a ' + type(obj).__name__}, not an array or plain value"
        )


def _where(path: tuple) -> str:
    return "".join(f"[{reprlib.repr(p)}]" for p in path) or "top level"


def load_array_pickle(data: bytes, *, source: str = "pickle", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing only numpy arrays (numeric dtypes) inside dicts, lists,
    tuples, str, bytes, numbers and None (module docstring).

    Args:
        data: the pickle bytes (already decompressed).
        source: a name for error messages (e.g. the file path).
        encoding: how Python 2 ``str`` objects are decoded ("latin1" keeps the array bytes
            intact and is what numpy expects; "bytes" keeps them as bytes).

    Returns:
        The tree, with writable arrays (each over its own copy of the file's bytes).

    Raises:
        UnsafePickleError: the pickle asks for anything else (a ValueError).
        ValueError: the bytes are not a complete, well-formed pickle (truncated, corrupted,
            bytes after its end, malformed array or dtype state).
    """
    try:
        _scan_opcodes(data)
        loaded = _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
        return _Materialiser().build(loaded, ())
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except Exception as exc:  # any error while parsing untrusted bytes: they are malformed
        detail = str(exc) if len(str(exc)) <= 160 else str(exc)[:157] + "..."
        raise ValueError(
            f"{source} is not a readable pickle ({type(exc).__name__}: {detail}); the file is "
            "truncated or corrupted: fetch it again"
        ) from None
