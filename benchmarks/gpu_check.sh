#!/usr/bin/env bash
# One prepared GPU check: build with CUDA, run the whole test suite (CUDA tests included),
# time the GPU benchmarks; everything lands in $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c "import lplr_fast, json; print(json.dumps(lplr_fast.backend_info(), default=str))" | tee "$OUT/backend.json"
python3 -m pytest -q -x tests 2>&1 | tee "$OUT/pytest.log" | tail -5
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
python3 -m benchmarks.run --device cuda ${BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1 \
  || { echo "BENCH FAILED"; tail -30 "$OUT/bench.log"; }
tail -40 "$OUT/bench.log"
