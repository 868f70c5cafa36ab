"""What identifies a kernel or a training run: the model (structure, parameters, buffers,
which parameters are trained, and the plain Python state its modules keep), the data and the
options that change its numbers. A store or run folder made for one fingerprint refuses any
other, so tiles or histories of different kernels never mix.

The model's Python state: every entry of every submodule's ``__dict__`` that ``nn.Module``
does not manage itself (``input_scales = [0.5, 1.0]``, ``self.act = "tanh"``, a tensor kept as
a plain attribute, a function), serialised deterministically: numbers exactly (floats as
``float.hex``), strings, None, tuples/lists/dicts/sets of those, tensors by their bytes,
numpy arrays by dtype, shape and bytes, classes by their qualified name, functions by name,
constants, defaults and captured values (``functools.partial`` by function and arguments),
other objects by their type and their own ``__dict__`` (or, lacking one, their ``repr``
without memory addresses). An object met again (shared or cyclic references) counts as a
reference to its first visit, so the cost is linear in the objects reached. Forward hooks and
``get_extra_state()`` are included too. State the fingerprint cannot see (globals, a C
extension's hidden fields) is caught instead by the numerical check of a reused store
(:mod:`lplr_fast.distributed.kernel`: one stored tile recomputed and compared before the rest
is adopted).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import types
from typing import Any

import numpy as np
import torch
from torch import nn

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_DEPTH = 8  # nesting depth serialised; deeper structures count by type only
# what nn.Module keeps in __dict__ itself (parameters, buffers and submodules are hashed
# separately; hooks by name below)
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) - {"training"}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _update_tensor(digest: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{t.layout}|".encode())
    if t.layout != torch.strided:
        t = t.to_dense()
    data = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    if data.numel():
        digest.update(data.view(torch.uint8).numpy().tobytes())  # any dtype, bit for bit


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


Seen = dict[int, tuple[int, Any]]  # id → (visit number, the object: kept alive, so no id reuse)


def plain_state(value: Any, depth: int = 0, seen: Seen | None = None) -> Any:
    """A deterministic, picklable and JSON-able description of ``value`` (module docstring):
    equal for equal values in any process, different when a number, string or structure
    differs. Tensors become ("tensor", shape, dtype, sha256 of their bytes). ``seen`` maps
    the ids of containers and objects already described to their visit number."""
    if depth > _DEPTH:
        return ("deep", _qualname(type(value)))
    if value is None or isinstance(value, bool | int | str | bytes):
        return value if not isinstance(value, bytes) else ("bytes", value.hex())
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, complex):
        return ("complex", value.real.hex(), value.imag.hex())
    if isinstance(value, enum.Enum):
        return ("enum", _qualname(type(value)), value.name)
    if isinstance(value, torch.Tensor):
        digest = hashlib.sha256()
        _update_tensor(digest, "", value)
        return ("tensor", tuple(value.shape), str(value.dtype), digest.hexdigest())
    if isinstance(value, torch.dtype):
        return ("dtype", str(value))
    if isinstance(value, torch.device):
        return ("device", value.type)  # cuda:LOCAL_RANK differs between ranks, not the model
    if isinstance(value, nn.Module):
        return ("module", _qualname(type(value)))  # hashed in full as a submodule
    if isinstance(value, np.ndarray):
        return _array_state(value, depth, seen)
    if isinstance(value, np.generic):
        return ("numpy", str(value.dtype), value.tobytes().hex())
    seen = {} if seen is None else seen
    if id(value) in seen:
        return ("seen", seen[id(value)][0])
    seen[id(value)] = (len(seen), value)
    return _composite_state(value, depth, seen)


def _array_state(a: np.ndarray, depth: int, seen: Seen | None) -> Any:
    if a.dtype.hasobject:
        return ("ndarray", a.shape, str(a.dtype), plain_state(a.tolist(), depth + 1, seen))
    digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    return ("ndarray", a.shape, a.dtype.str, digest)


def _composite_state(value: Any, depth: int, seen: Seen) -> Any:
    """Containers, callables and objects (first visit)."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [plain_state(v, depth + 1, seen) for v in value])
    if isinstance(value, dict):
        items = [
            (plain_state(k, depth + 1, seen), plain_state(v, depth + 1, seen))
            for k, v in value.items()
        ]
        return ("dict", sorted(items, key=repr))
    if isinstance(value, set | frozenset):
        return ("set", sorted((plain_state(v, depth + 1, seen) for v in value), key=repr))
    if isinstance(value, types.FunctionType):
        return _function_state(value, depth, seen)
    if isinstance(value, functools.partial):
        parts = (value.func, value.args, value.keywords)
        return ("partial", plain_state(parts, depth + 1, seen))
    if isinstance(value, types.BuiltinFunctionType | type):
        return ("callable", _qualname(value))
    if isinstance(value, types.MethodType):
        return ("method", _qualname(value.__func__), plain_state(value.__self__, depth + 1, seen))
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and not isinstance(value, types.ModuleType):
        return ("object", _qualname(type(value)), plain_state(state, depth + 1, seen))
    return ("repr", _qualname(type(value)), _ADDRESS.sub("", repr(value)))


def _function_state(fn: types.FunctionType, depth: int, seen: Seen) -> Any:
    """A Python function by name, constants, defaults and captured values (so that
    ``lambda h: h * 2.0`` and ``lambda h: h * 3.0`` differ); its byte code and source
    location are left out (they change with the Python version and install path)."""
    code = fn.__code__
    consts = [c for c in code.co_consts if not isinstance(c, types.CodeType)]
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # an empty cell
            cells.append(None)
    parts = (consts, fn.__defaults__, fn.__kwdefaults__, cells)
    return ("function", _qualname(fn), plain_state(parts, depth + 1, seen))


def module_state(module: nn.Module) -> dict[str, Any]:
    """The Python state of one module (not its parameters, buffers or submodules), with what
    ``get_extra_state()`` returns where a module defines it."""
    seen: Seen = {}
    out = {k: plain_state(v, 0, seen) for k, v in sorted(module.__dict__.items())
           if k not in _MODULE_INTERNALS}  # fmt: skip
    for hooks in _HOOKS:
        found = getattr(module, hooks, None)
        if found:
            out[hooks] = [plain_state(h, 0, seen) for h in found.values()]
    if type(module).get_extra_state is not nn.Module.get_extra_state:
        out["_extra_state"] = plain_state(module.get_extra_state(), 0, seen)
    return out


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of the model's class, structure (repr), every parameter and buffer (name,
    shape, dtype, bytes), which parameters require gradients, and every submodule's plain
    Python state (:func:`module_state`: e.g. the scales an MLP's forward multiplies by)."""
    digest = hashlib.sha256()
    structure = _ADDRESS.sub("", repr(model))  # object addresses differ between processes
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n{structure}\n".encode())
    for name, p in model.named_parameters(remove_duplicate=False):
        _update_tensor(digest, f"p:{name}:{p.requires_grad}", p)
    for name, b in model.named_buffers(remove_duplicate=False):
        _update_tensor(digest, f"b:{name}", b)
    for name, module in model.named_modules(remove_duplicate=False):
        state = module_state(module)
        digest.update(f"s:{name}:{_qualname(type(module))}:{state!r}\n".encode())
    return digest.hexdigest()


def fingerprint_parts(model: nn.Module) -> dict[str, str]:
    """The pieces of :func:`model_fingerprint` by name, to say which one differs: each
    parameter/buffer (sha256 of its bytes, 16 hex digits) and each module's Python attribute
    (its description, shortened)."""
    parts: dict[str, str] = {}
    for prefix, named in (("", model.named_parameters), ("", model.named_buffers)):
        for name, t in named(remove_duplicate=False):
            digest = hashlib.sha256()
            _update_tensor(digest, name, t)
            parts[prefix + name] = digest.hexdigest()[:16]
    for name, module in model.named_modules(remove_duplicate=False):
        for key, value in module_state(module).items():
            parts[f"{name}.{key}" if name else key] = repr(value)[:200]
    return parts


def data_fingerprint(*tensors: torch.Tensor | None) -> str:
    """sha256 (hex) of the tensors' shapes, dtypes and bytes (None counts as a marker)."""
    digest = hashlib.sha256()
    for i, t in enumerate(tensors):
        if t is None:
            digest.update(f"{i}:none|".encode())
        else:
            _update_tensor(digest, str(i), t)
    return digest.hexdigest()


__all__ = [
    "data_fingerprint",
    "fingerprint_parts",
    "model_fingerprint",
    "module_state",
    "plain_state",
]
