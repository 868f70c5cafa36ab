"""Release metadata: the sdist holds every requirements file the README installs from, and a
wheel built against one torch says so clearly when another torch is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lplr_fast._backend import torch_mismatch

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_manifest_includes_every_requirements_file_the_readme_uses():
    if not (ROOT / "MANIFEST.in").is_file():  # tests run against an installed wheel (CI)
        pytest.skip("needs the source tree (README.md, MANIFEST.in)")
    used = set(re.findall(r"-r\s+(\S+\.txt)", (ROOT / "README.md").read_text()))
    assert "requirements-nodeps.txt" in used
    included = set()
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split()
        if words and words[0] == "include":
            included |= set(words[1:])
    assert used <= included, sorted(used - included)


def test_torch_mismatch_names_both_versions():
    hint = torch_mismatch(["torch==2.13.0", "numpy>=1.24"], "2.11.0+cu130")
    assert hint is not None and "torch 2.13.0" in hint and "torch 2.11.0+cu130" in hint
    assert "install torch==2.13.0" in hint


def test_torch_mismatch_accepts_a_local_build_of_the_pinned_version():
    assert torch_mismatch(["torch==2.13.0"], "2.13.0+cu130") is None
    assert torch_mismatch(["torch==2.13.0"], "2.13.0") is None
    assert torch_mismatch(["numpy>=1.24", "tomli>=1.1; python_version < '3.11'"], "2.1") is None
    assert torch_mismatch([], "2.13.0") is None


@pytest.mark.parametrize("command", ["report", "plot"])
def test_figures_without_matplotlib_say_what_to_install(tmp_path, command):
    script = (
        "import sys, torch, lplr_fast\n"
        "from lplr_fast.cli import main\n"
        "x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(8, 1)\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))\n"
        "lplr_fast.train(m.double(), x, x.sin(), lr=0.1, steps=2, out_dir=sys.argv[1])\n"
        "sys.modules['matplotlib'] = None\n"
        f"sys.exit(main([{command!r}, sys.argv[1]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "pip install matplotlib" in done.stderr
