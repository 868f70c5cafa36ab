"""Builds lplr_fast._C against the torch already installed (no build isolation).

CPU kernels are always built (OpenMP on). CUDA kernels are added when the installed torch
has CUDA and a CUDA toolkit is found; ``LPLR_NO_CUDA=1`` forces a CPU-only build.
``TORCH_CUDA_ARCH_LIST`` is honoured; unset, it defaults to "8.0;9.0" (Hopper included).

Install:  pip install --no-build-isolation --no-deps -e .

The C++ standard is left to torch.utils.cpp_extension: it must match the one torch was built
with (C++20 for recent torch, whose headers and ABI assume it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def source_hash() -> str:
    """Hash of the kernel sources, compiled into the module to detect stale builds. The one
    implementation lives in lplr_fast/_source_hash.py (loaded by path: importing the package
    here would try to load the extension being built)."""
    spec = importlib.util.spec_from_file_location(
        "_src_hash", ROOT / "lplr_fast" / "_source_hash.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel_source_hash(CSRC)


def find_cuda_home() -> str | None:
    """The CUDA toolkit root. A `nvcc` on PATH may be a wrapper script, from whose location
    torch would guess the wrong root, so ask nvcc itself where it lives."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    try:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(r"^#\$ TOP=(\S+)", dry.stderr + dry.stdout, re.M)
        if match:
            return str(Path(match.group(1)).resolve())
    except (OSError, subprocess.SubprocessError):
        pass
    return str(Path(nvcc).resolve().parent.parent)


def want_cuda() -> bool:
    if os.environ.get("LPLR_NO_CUDA", "0") == "1":
        return False
    import torch

    if torch.version.cuda is None:
        return False
    cuda_home = find_cuda_home()
    if cuda_home is None:
        return False
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    return True


def extensions() -> list:
    with_cuda = want_cuda()
    from torch.utils import cpp_extension

    cpu_sources = [
        "csrc/bindings.cpp",
        "csrc/ops.cpp",
        "csrc/gram_checks.cpp",
        "csrc/gram_gemm.cpp",
        "csrc/spectral_generic.cpp",
        "csrc/cpu/gram_cpu.cpp",
        "csrc/cpu/spectral_cpu.cpp",
    ]
    # -g0: no debug sections (they made the module 17.8 MB instead of 0.4 MB)
    cxx_flags = ["-O3", "-g0", "-fopenmp", f'-DLPLR_SOURCE_HASH="{source_hash()}"']
    link_flags = ["-fopenmp"]
    if os.environ.get("LPLR_ISOLATE_CXX_RUNTIME", "0") == "1":
        # A private, hidden copy of libstdc++ in the module: for images where the system C++
        # runtime and the one torch was built against clash (see csrc/message.h).
        link_flags += ["-static-libstdc++", "-Wl,--exclude-libs,ALL"]
    if not with_cuda:
        return [
            cpp_extension.CppExtension(
                "lplr_fast._C",
                cpu_sources,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=link_flags,
            )
        ]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return [
        cpp_extension.CUDAExtension(
            "lplr_fast._C",
            [
                *cpu_sources,
                "csrc/cuda/gram_cuda.cpp",
                "csrc/cuda/ops_cuda.cpp",
                "csrc/cuda/gram_kernels.cu",
            ],
            define_macros=[("LPLR_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-lineinfo"],
            },
            extra_link_args=link_flags,
        )
    ]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


def install_requires() -> list[str]:
    """The runtime dependencies; torch pinned to the public version of the torch this build
    compiles against (``2.13.0`` also matches ``2.13.0+cu130``): ``_C`` loads only with it."""
    import torch

    return [
        f"torch=={str(torch.__version__).split('+')[0]}",
        "numpy>=1.24",
        "tqdm>=4.60",  # progress bars (study runner, distributed kernels, training)
        "tomli>=1.1; python_version < '3.11'",
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
    install_requires=install_requires(),
)
