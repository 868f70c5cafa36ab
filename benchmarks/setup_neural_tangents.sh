#!/usr/bin/env bash
# Installs neural-tangents (JAX, CPU) into its own virtual environment for the baseline
# benchmarks: the latest release does not import with current JAX, so the pins below are the
# combination known to install and run all four implementations on CPU (about 2.6 GB).
#
#   bash benchmarks/setup_neural_tangents.sh [VENV_DIR]     (default: .venv-nt)
#
# benchmarks/run.py then finds VENV_DIR/bin/python (or $LPLR_NT_PYTHON) and runs
# benchmarks/nt_baseline.py in it, one subprocess per case.
set -euo pipefail
venv="${1:-.venv-nt}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade "pip==25.3"
"$venv/bin/python" -m pip install -q \
  "neural-tangents==0.6.5" "jax==0.4.25" "jaxlib==0.4.25" "tf2jax==0.3.6" "numpy<2"
"$venv/bin/python" -c "import neural_tangents as nt, jax; print('neural-tangents', nt.__version__, 'jax', jax.__version__)"
