"""Why do C++ exceptions thrown inside an extension crash on some torch images? A probe.

Builds a tiny operator library (one op that throws c10::ValueError with an integer in its
message, one that formats an integer with std::ostringstream) with several link variants,
calls each in a fresh process after ``import torch``, and reports the exit codes, together
with the facts that decide the usual cause (two C++ runtimes in one process): which
libstdc++/libgcc_s files the process maps, and whether torch's libraries export C++ runtime
symbols themselves.

    python3 -m benchmarks.cxx_runtime_probe [--out DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <sstream>
#include <string>

namespace {
// throws with an integer formatted by c10::str (std::ostringstream in this library)
at::Tensor boom(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 7, "boom: x must be 7-D, got ", x.dim(), " dims");
  return x;
}
// throws with a message built without streams (std::to_string)
at::Tensor boom_tostring(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 7, std::string("boom: x must be 7-D, got ") +
                                      std::to_string(x.dim()) + " dims");
  return x;
}
// throws with a literal message (no formatting at all)
at::Tensor boom_literal(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 7, "boom: x must be 7-D");
  return x;
}
// formats an integer with std::ostringstream, no exception
at::Tensor fmt(const at::Tensor& x) {
  std::ostringstream os;
  os << "value " << x.dim();
  TORCH_CHECK(os.str().size() > 0, "unreachable");
  return x;
}
}  // namespace

TORCH_LIBRARY(NAME, m) {
  m.def("boom(Tensor x) -> Tensor");
  m.def("boom_tostring(Tensor x) -> Tensor");
  m.def("boom_literal(Tensor x) -> Tensor");
  m.def("fmt(Tensor x) -> Tensor");
}
TORCH_LIBRARY_IMPL(NAME, CPU, m) {
  m.impl("boom", &boom);
  m.impl("boom_tostring", &boom_tostring);
  m.impl("boom_literal", &boom_literal);
  m.impl("fmt", &fmt);
}
"""

OPS = ("fmt", "boom_literal", "boom_tostring", "boom")

# name → (extra compile flags, extra link flags)
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "default": ([], []),
    "static_libstdcxx_hidden": ([], ["-static-libstdc++", "-Wl,--exclude-libs,ALL"]),
    "static_runtime_hidden": (
        [],
        ["-static-libstdc++", "-static-libgcc", "-Wl,--exclude-libs,ALL"],
    ),
    "bsymbolic": ([], ["-Wl,-Bsymbolic"]),
}

CALL = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])
op = getattr(getattr(torch.ops, sys.argv[2]), sys.argv[3])
try:
    op(torch.ones(2))
    print("returned", flush=True)
except ValueError as err:
    print("ValueError:", str(err).splitlines()[0], flush=True)
"""


def build(name: str, cflags: list[str], ldflags: list[str], root: Path) -> str:
    from torch.utils.cpp_extension import load

    folder = root / name  # one build.ninja per variant: they build concurrently
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{name}.cpp"
    src.write_text(SOURCE.replace("NAME", name))
    load(
        name=name,
        sources=[str(src)],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return str(folder / f"{name}.so")


def run(lib: str, name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Each op in a fresh process (all at once): exit code and what it printed."""

    def one(op: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", CALL, lib, name, op],
            capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
        )  # fmt: skip
        return f"exit {done.returncode}: {done.stdout.strip()[-120:]}"

    with concurrent.futures.ThreadPoolExecutor(len(OPS)) as pool:
        return dict(zip(OPS, pool.map(one, OPS), strict=True))


def bindings(lib: Path) -> list[str]:
    """Where the dynamic linker bound the probe library's C++ runtime references."""
    done = subprocess.run(
        [sys.executable, "-c", CALL, str(lib), lib.stem, "boom"],
        capture_output=True, text=True, env={**os.environ, "LD_DEBUG": "bindings"}, timeout=120,
    )  # fmt: skip
    runtime = ("_ZNSt", "_ZSt", "_ZNKSt", "_ZNSo", "_ZNKSo", "__cxa", "_ZTV", "_ZTI", "_Unwind")
    found = set()
    for ln in done.stderr.splitlines():
        if "binding file" not in ln or f"{lib.name} [0] to" not in ln or "`" not in ln:
            continue
        target = ln.split(" to ")[1].split()[0]
        symbol = ln.split("`")[1].split("'")[0]
        if symbol.startswith(runtime):
            found.add(f"{Path(target).name}: {symbol[:90]}")
    return sorted(found)[:80]


def runtime_facts() -> dict[str, object]:
    lib = Path(torch.__file__).parent / "lib"
    facts: dict[str, object] = {"torch": torch.__version__, "config": torch.__config__.show()[:600]}
    for so in ("libc10.so", "libtorch_cpu.so", "libtorch_python.so"):
        path = lib / so
        if not path.is_file():
            continue
        needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
        facts[f"{so} NEEDED"] = [ln.split("[")[-1].rstrip("]") for ln in needed.stdout.splitlines()
                                 if "NEEDED" in ln]  # fmt: skip
        syms = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                              text=True).stdout.splitlines()  # fmt: skip
        runtime = [s.split()[-1] for s in syms if s.split()[-1].startswith(
            ("_ZNSt6locale", "__cxa_throw", "_ZNSo9_M_insert", "_Unwind_RaiseException",
             "_ZSt21ios_base_library_init"))]  # fmt: skip
        facts[f"{so} exports C++ runtime symbols"] = runtime[:12]
    maps = subprocess.run(
        [sys.executable, "-c", "import torch, lplr_fast; print(open('/proc/self/maps').read())"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    facts["mapped runtimes"] = sorted({ln.split()[-1] for ln in maps.splitlines()
                                       if "libstdc++" in ln or "libgcc_s" in ln})  # fmt: skip
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    report: dict[str, object] = {"facts": runtime_facts()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with concurrent.futures.ThreadPoolExecutor(len(VARIANTS)) as pool:
            futures = {
                name: pool.submit(
                    subprocess.run,
                    [
                        sys.executable,
                        "-c",
                        "from benchmarks.cxx_runtime_probe import build; from pathlib import Path; "
                        f"print(build({('lplrdiag_' + name)!r}, *{flags!r}, Path({tmp!r})))",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                for name, flags in VARIANTS.items()
            }
        for name, future in futures.items():
            built = future.result()
            lib = root / f"lplrdiag_{name}" / f"lplrdiag_{name}.so"
            if not lib.is_file():
                report[name] = {"build failed": built.stderr[-600:]}
                continue
            report[name] = run(str(lib), f"lplrdiag_{name}")
        system = subprocess.run(["g++", "-print-file-name=libstdc++.so.6"], capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
        default = root / "lplrdiag_default" / "lplrdiag_default.so"
        if default.is_file():
            report["default + LD_PRELOAD system libstdc++"] = run(
                str(default), "lplrdiag_default", {"LD_PRELOAD": system}
            )
            report["default, LD_DEBUG bindings of its C++ runtime symbols"] = bindings(default)
    text = json.dumps(report, indent=1, default=str)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cxx_runtime_probe.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
