"""Python 3.10 is supported (``requires-python >= 3.10``): with tomllib and datetime.UTC
taken away every module imports, both TOML readers work and a report is written (a fresh
process; needs ``tomli``, the 3.10 dependency); no source file names another 3.11+ API (the
standard library itself uses those, so they cannot be taken away at run time)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import datetime, importlib, pkgutil, sys
import torch, numpy  # dependencies first: only our own code is held to 3.10
sys.modules["tomllib"] = None  # `import tomllib` now raises ModuleNotFoundError
if hasattr(datetime, "UTC"):  # absent on a real 3.10
    del datetime.UTC

import lplr_fast
for info in pkgutil.walk_packages(lplr_fast.__path__, "lplr_fast."):
    importlib.import_module(info.name)
from lplr_fast.study import load_study
from lplr_fast.study.report import write_report
from lplr_fast.training.runconfig import load_config
load_study("demo")
load_config("teacher")
out = sys.argv[1]
x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(8, 1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
lplr_fast.train(model, x, x.sin(), lr=0.1, steps=3, out_dir=out)
print(write_report(out))
"""


def test_package_runs_without_python_311_names(tmp_path):
    pytest.importorskip("tomli")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "report" in done.stdout


# 3.11+ names of the standard library (module, name); a bare name is a builtin
NEW_IN_311 = {
    ("tomllib", None), ("datetime", "UTC"), ("typing", "Self"), ("typing", "LiteralString"),
    ("typing", "Never"), ("typing", "assert_never"), ("typing", "reveal_type"),
    ("typing", "Required"), ("typing", "NotRequired"), ("typing", "TypeVarTuple"),
    ("typing", "Unpack"), ("typing", "dataclass_transform"), ("enum", "StrEnum"),
    ("enum", "ReprEnum"), ("enum", "verify"), ("enum", "member"), ("enum", "nonmember"),
    ("hashlib", "file_digest"), ("contextlib", "chdir"), ("asyncio", "TaskGroup"),
    ("math", "cbrt"), ("math", "exp2"), ("operator", "call"), (None, "ExceptionGroup"),
    (None, "BaseExceptionGroup"),
}  # fmt: skip


def _uses(tree: ast.AST) -> set[tuple[str | None, str | None]]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found |= {(node.module, a.name) for a in node.names} | {(node.module, None)}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.add((node.value.id, node.attr))
        elif isinstance(node, ast.Name):
            found.add((None, node.id))
        elif isinstance(node, getattr(ast, "TryStar", ())):  # `except*` (no node on 3.10)
            found.add((None, "ExceptionGroup"))
    return found


def test_no_source_names_a_python_311_api():
    offenders = []
    for path in sorted((ROOT / "lplr_fast").rglob("*.py")):
        if path.name == "_compat.py":  # the one place that falls back
            continue
        bad = _uses(ast.parse(path.read_text())) & NEW_IN_311
        offenders += [f"{path.relative_to(ROOT)}: {m}.{n}" for m, n in sorted(bad, key=str)]
    assert not offenders, offenders
