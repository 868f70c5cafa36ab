"""A pickle reader that builds numpy arrays and plain containers, and nothing else.

The dataset pickles we read (the classic ``mnist.pkl.gz``, CIFAR-10's python batches) were
written by Python 2's cPickle: a tree of dicts/tuples/lists/str/int holding numpy arrays. An
array is rebuilt from three globals (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``); pickles re-written by Python 3 / numpy 2 also use
``numpy._core.multiarray._reconstruct``, ``numpy._core.numeric._frombuffer`` (protocol 5) and
``_codecs.encode(text, "latin1")`` (bytes under protocol 2). Those, wrapped so they only
accept what array reconstruction passes them, are the only callables the reader resolves:
any other global (``os.system``, ``builtins.eval``, …) is refused before it is called, and
the loaded tree is checked to hold only arrays of numeric dtype and plain values.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that asks for something other than numpy arrays and plain containers."""


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"array reconstruction of {cls!r} refused (only numpy.ndarray)")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], str | bytes):
        raise UnsafePickleError(f"numpy.dtype{args!r} refused: expected a type code")
    code = args[0].decode("latin1") if isinstance(args[0], bytes) else args[0]
    dtype = np.dtype(code)
    if dtype.hasobject or dtype.kind not in "biufcSU":
        raise UnsafePickleError(f"dtype {dtype} refused: only numeric (and fixed string) arrays")
    return np.dtype(code, *args[1:])


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("array from buffer refused: dtype is not a numpy dtype")
    array = np.frombuffer(buf, dtype=dtype)
    return array.reshape(shape, order=order).copy()


def _latin1_encode(text: Any, encoding: Any = "latin1", *rest: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise UnsafePickleError("_codecs.encode refused: only text → bytes in latin1")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
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


def _check_tree(obj: Any, path: str, depth: int = 0) -> None:
    if depth > 8:
        raise UnsafePickleError(f"{path}: nested deeper than a dataset pickle would be")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"{path}: an array of Python objects")
        return
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | bytes | int):
                raise UnsafePickleError(f"{path}: dict key of type {type(key).__name__}")
            _check_tree(value, f"{path}[{key!r}]", depth + 1)
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_tree(value, f"{path}[{i}]", depth + 1)
        return
    raise UnsafePickleError(f"{path}: a {type(obj).__name__}, not an array or plain value")


def load_array_pickle(data: bytes, *, source: str = "pickle", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing only numpy arrays (numeric dtypes) inside dicts, lists,
    tuples, str, bytes, numbers and None.

    Args:
        data: the pickle bytes (already decompressed).
        source: a name for error messages (e.g. the file path).
        encoding: how Python 2 ``str`` objects are decoded ("latin1" keeps the array bytes
            intact and is what numpy expects; "bytes" keeps them as bytes).

    Raises:
        UnsafePickleError: the pickle asks for anything else.
        ValueError: the bytes are not a complete pickle (truncated or corrupted).
    """
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(
            f"{source} is not a readable pickle ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupted: fetch it again"
        ) from None
    _check_tree(obj, source)
    return obj
