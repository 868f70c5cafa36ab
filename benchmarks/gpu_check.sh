#!/usr/bin/env bash
# One prepared GPU check for a fresh GPU machine (PyTorch and nvcc preinstalled, no internet):
#   1. build with CUDA (sm_90);
#   2. errors raised inside the extension must reach Python (fresh process; if the extension
#      crashes, rebuild once with LPLR_ISOLATE_CXX_RUNTIME=1 and probe again);
#   3. the whole test suite (CUDA tests included), while the C++-runtime probe runs beside it
#      (RUNTIME_PROBE=1);
#   4. the engine's GPU check (sync-free tile loop, zoo exact in float64, probe cost);
#   5. the GPU benchmark group, rows saved as they come; a short table printed last.
# Everything lands in $OUT (default ./gpu_out). Stage limits (seconds): BUILD_TIMEOUT,
# TEST_TIMEOUT, ENGINE_TIMEOUT, BENCH_TIMEOUT; SKIP_TESTS=1 / SKIP_ENGINE=1 / SKIP_BENCH=1
# leave stages out; BENCH_ARGS adds arguments to benchmarks.run (e.g. --quick).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
LOG=${LOG:-$(mktemp -d)}  # long logs; packed into $OUT/gpu_check_logs.tgz at the end
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} OUT
PY=${PYTHON:-python3}
stage() { echo "== $1 ($(date +%T))"; }

stage "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  nvcc --version | tail -1; g++ --version | head -1; nproc; } 2>&1 | tee "$OUT/env.txt"

stage "build"
t0=$(date +%s)
if ! timeout "${BUILD_TIMEOUT:-300}" $PY -m pip install --no-build-isolation --no-deps -e . \
    > "$LOG/build.log" 2>&1; then
  echo "BUILD FAILED"; grep -E "error|Error" "$LOG/build.log" | head -30; tail -20 "$LOG/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
$PY -c "import lplr_fast, json; print(json.dumps(lplr_fast.backend_info(), default=str))" | tee -a "$OUT/env.txt"

stage "errors raised inside the extension reach Python"
if ! $PY -m benchmarks.error_probe 2>&1 | tee -a "$OUT/env.txt"; then
  echo "rebuilding with LPLR_ISOLATE_CXX_RUNTIME=1 (private libstdc++ in the module)"
  LPLR_ISOLATE_CXX_RUNTIME=1 timeout 300 $PY -m pip install --no-build-isolation --no-deps -e . \
    > "$LOG/build_isolated.log" 2>&1 || echo "ISOLATED BUILD FAILED"
  $PY -m benchmarks.error_probe 2>&1 | tee -a "$OUT/env.txt" || echo "STILL CRASHING"
fi

probe_pid=""
if [ "${RUNTIME_PROBE:-0}" = 1 ]; then
  timeout 240 $PY -m benchmarks.cxx_runtime_probe --out "$OUT" > "$LOG/runtime_probe.log" 2>&1 &
  probe_pid=$!
fi

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  XDIST=""; $PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-12}"
  stage "tests: the CUDA tests"
  timeout "${CUDA_TEST_TIMEOUT:-150}" $PY -m pytest -q $XDIST -p no:cacheprovider -m cuda tests \
    > "$OUT/pytest_cuda.log" 2>&1
  echo "pytest (cuda) exit code $?"; grep -E "passed|failed|error" "$OUT/pytest_cuda.log" | tail -2
  grep -E "^(FAILED|ERROR)" "$OUT/pytest_cuda.log" | head -20
  stage "tests: the rest of the suite"
  timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q $XDIST -p no:cacheprovider -m "not cuda" tests \
    > "$OUT/pytest.log" 2>&1
  echo "pytest (rest) exit code $?"; grep -E "passed|failed|error" "$OUT/pytest.log" | tail -2
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20
fi

if [ -n "$probe_pid" ]; then
  wait "$probe_pid"
  stage "C++ runtime probe (tiny op library, link variants)"
  $PY - "$OUT/cxx_runtime_probe.json" <<'EOF' 2>&1 | cut -c1-400
import json, sys
report = json.load(open(sys.argv[1]))
for key, value in report.items():
    if key != "facts":
        print(key, value)
for key, value in report["facts"].items():
    if key != "config":
        print(key, value)
EOF
fi

if [ "${SKIP_ENGINE:-0}" != 1 ]; then
  stage "engine GPU check"
  timeout "${ENGINE_TIMEOUT:-120}" $PY -m benchmarks.gpu_engine_check > "$LOG/engine_check.log" 2>&1
  echo "engine check exit code $?"; tail -15 "$LOG/engine_check.log" | cut -c1-300
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  stage "benchmarks"
  LPLR_BENCH_PARTIAL="$OUT/partial.json" timeout "${BENCH_TIMEOUT:-300}" \
    $PY -m benchmarks.run --device cuda --only gpu,distributed ${BENCH_ARGS:-} --out "$OUT" > "$LOG/bench.log" 2>&1
  echo "benchmarks exit code $?"
  $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
if (out / "results.json").is_file():
    data = json.loads((out / "results.json").read_text())
    m = data["meta"]
    print(f"{m['device_name']}: GEMM fp32 {m['gemm_gflops']:.0f} GFLOP/s, "
          f"fp64 {m.get('gemm_gflops_float64', 0):.0f}")
elif (out / "partial.json").is_file():
    data = {"rows": json.loads((out / "partial.json").read_text())}
    print("benchmarks cut short: partial rows")
else:
    sys.exit("no benchmark results")
for r in data["rows"]:
    t = f"{r['median_s'] * 1e3:9.2f} ms" if "median_s" in r else " " * 12
    extra = " ".join(x for x in (
        f"{r['gflops']:.0f} GF/s" if r.get("gflops") else "",
        f"share {100 * r['gemm_share']:.0f}%" if r.get("gemm_share") else "",
        f"×{r['ratio_to_ours']:.2f}" if r.get("ratio_to_ours", 1.0) != 1.0 else "",
        (r.get("note") or "")[:90]) if x)
    print(f"{r['case'][:58]:58s} {r['impl'][:34]:34s} {t} {extra}")
EOF
fi
stage "done"
# at most 8 files come back from a device run: the long logs travel packed
rm -f "$OUT/RESULTS_cuda.md"  # results.json holds the same rows
tar czf "$OUT/gpu_check_logs.tgz" -C "$LOG" . 2>/dev/null
