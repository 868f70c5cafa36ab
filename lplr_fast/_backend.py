"""Loads the compiled module ``lplr_fast._C`` and says what it supports.

When the module is missing, was built for another kernel API, or is older than the kernel
sources next to the package (a source checkout edited after the build), the package falls
back to the pure-PyTorch reference implementations and says so once with a warning. An
installed wheel has no kernel sources next to it: only the API version is checked there.
Set ``LPLR_REQUIRE_NATIVE=1`` to turn that fallback into an error (the test suite does).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ._source_hash import kernel_source_hash

KERNEL_API_VERSION = 3  # must equal lplr::kKernelApiVersion in csrc/gram.h

_ROOT = Path(__file__).resolve().parent.parent


def _source_tree_csrc() -> Path | None:
    """csrc/ of the source checkout (or unpacked sdist) this package is imported from; None
    for an installed package (site-packages has no setup.py, and a csrc/ folder there would
    belong to someone else)."""
    csrc = _ROOT / "csrc"
    if (_ROOT / "setup.py").is_file() and csrc.is_dir():
        return csrc
    return None


_state: dict[str, Any] = {"loaded": False, "module": None, "reason": None, "warned": False}


class NativeUnavailableError(RuntimeError):
    """The compiled module is required but absent or stale."""


def _installed_requirements() -> list[str]:
    """Requires-Dist of the installed lplr_fast distribution ([] when there is none)."""
    from importlib import metadata

    try:
        return metadata.requires("lplr_fast") or []
    except metadata.PackageNotFoundError:
        return []


def torch_mismatch(requirements: list[str], installed: str) -> str | None:
    """Why ``_C`` cannot load when the wheel pins another torch (setup.py pins the one it was
    compiled against) than the ``installed`` version; None when the pin matches or is absent.
    """
    for requirement in requirements:
        match = re.fullmatch(r"\s*torch\s*==\s*([^\s;]+)\s*", requirement)
        if match and match.group(1) != installed.split("+")[0]:
            built = match.group(1)
            return (
                f"this lplr_fast was built against torch {built} but torch {installed} is "
                f"installed: install torch=={built}, or rebuild lplr_fast against torch "
                f"{installed} (pip install --no-build-isolation --no-deps from its sdist)"
            )
    return None


def _try_load() -> tuple[ModuleType | None, str | None]:
    try:
        from . import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        hint = torch_mismatch(_installed_requirements(), str(torch.__version__))
        return None, f"lplr_fast._C could not be imported ({exc})" + (f"; {hint}" if hint else "")
    info = _C.build_info()
    if info.get("kernel_api_version") != KERNEL_API_VERSION:
        return None, (
            f"lplr_fast._C has kernel API {info.get('kernel_api_version')}, the Python layer "
            f"expects {KERNEL_API_VERSION}: the build is stale"
        )
    csrc = _source_tree_csrc()
    if csrc is not None:
        current = kernel_source_hash(csrc)
        if info.get("source_hash") != current:
            return None, (
                f"lplr_fast._C was built from kernel sources {info.get('source_hash')} but "
                f"csrc/ now hashes to {current}: the build is stale"
            )
    from . import _ops

    _ops.register_fakes()
    return _C, None


def native() -> ModuleType | None:
    """The compiled module, or None (after one warning) when it is unusable."""
    if not _state["loaded"]:
        module, reason = _try_load()
        _state.update(loaded=True, module=module, reason=reason)
    if _state["module"] is None:
        if os.environ.get("LPLR_REQUIRE_NATIVE", "0") == "1":
            raise NativeUnavailableError(
                f"{_state['reason']}. Rebuild with: pip install --no-build-isolation --no-deps -e ."
            )
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(
                f"{_state['reason']}; using the slower pure-PyTorch reference kernels. "
                "Rebuild with: pip install --no-build-isolation --no-deps -e .",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state["module"]


def supports(device: torch.device) -> bool:
    """Whether the compiled kernels can run on ``device``."""
    module = native()
    if module is None:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and bool(module.build_info()["cuda"])


def _source_check() -> str:
    csrc = _source_tree_csrc()
    if csrc is None:
        return "installed package (no kernel sources next to it): kernel API version checked"
    return f"source tree: build compared with the kernel sources in {csrc}"


def backend_info() -> dict[str, Any]:
    """What this installation can do: compiled or not (and why), CPU/CUDA kernels, OpenMP
    threads, build flags, and the torch it runs on."""
    module = native()
    info: dict[str, Any] = {
        "compiled": module is not None,
        "fallback_reason": _state["reason"],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "kernel_api_version": KERNEL_API_VERSION,
        "source_check": _source_check(),
    }
    if module is None:
        info.update(cpu=False, cuda=False, openmp=False, openmp_max_threads=0)
    else:
        build = dict(module.build_info())
        info.update(
            cpu=True,
            cuda=build.pop("cuda"),
            openmp=build.pop("openmp"),
            openmp_max_threads=build.pop("openmp_max_threads"),
            build=build,
        )
    return info
