"""What identifies a kernel: the model (structure, parameters, buffers, which parameters are
trained), the data and the options that change its numbers. A store made for one fingerprint
refuses any other, so tiles of different kernels never mix."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import torch
from torch import nn

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _update_tensor(digest: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    data = t.cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    digest.update(data.numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of the model's class, structure (repr), every parameter and buffer (name,
    shape, dtype, bytes) and which parameters require gradients."""
    digest = hashlib.sha256()
    structure = _ADDRESS.sub("", repr(model))  # object addresses differ between processes
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n{structure}\n".encode())
    for name, p in model.named_parameters(remove_duplicate=False):
        _update_tensor(digest, f"p:{name}:{p.requires_grad}", p)
    for name, b in model.named_buffers(remove_duplicate=False):
        _update_tensor(digest, f"b:{name}", b)
    return digest.hexdigest()


def data_fingerprint(*tensors: torch.Tensor | None) -> str:
    """sha256 (hex) of the tensors' shapes, dtypes and bytes (None counts as a marker)."""
    digest = hashlib.sha256()
    for i, t in enumerate(tensors):
        if t is None:
            digest.update(f"{i}:none|".encode())
        else:
            _update_tensor(digest, str(i), t)
    return digest.hexdigest()


__all__ = ["data_fingerprint", "model_fingerprint"]
