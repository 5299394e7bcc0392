#!/usr/bin/env bash
# Everything a lent GPU machine is for, in stages that each fit one 10-minute device command (the
# first call also builds; a warm machine keeps the build for the next):
#
#   benchmarks/gpu_session.sh step    # end-to-end train step, bf16: MDTv2-S/2, MDTv2-XL/2, DiT-S/2 (issue 7)
#   benchmarks/gpu_session.sh test    # the whole test suite on the GPU (CUDA and Triton kernels)
#   benchmarks/gpu_session.sh ops     # per-op profile (bf16) and the Adan step on the GPU
#   benchmarks/gpu_session.sh all     # all three, one after the other (about 20 minutes; 11 files, more
#                                     # than the device tool brings back: there, one stage per call)
#
# Run it in the repository root of a machine whose python3 has a CUDA torch, triton, pytest and
# hypothesis (the device tool's machines do). Logs and result tables go to $OUT (default
# /tmp/gpu_session), flat, at most 8 files per stage; copy the result tables into benchmarks/results/.
# It stops with a non-zero status, saying why, when the GPU build or a stage fails: a CUDA extension
# that did not build is never benchmarked as if it had.
set -uo pipefail
cd "$(dirname "$0")/.."

stage=${1:-all}
case "$stage" in step|test|ops|all) ;; *) echo "usage: $0 step|test|ops|all" >&2; exit 2 ;; esac
OUT=${OUT:-/tmp/gpu_session}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
# Only the lent GPU's architecture (sm_90 for H100/H200): a third of the nvcc time of the default list.
export MDT_KERNELS_CUDA_ARCHS=${MDT_KERNELS_CUDA_ARCHS:-$($PY -c \
  "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')" 2>/dev/null || echo "8.0;9.0")}

log() { echo "[$(date +%H:%M:%S)] $*"; }

setup() {
  log "environment -> $OUT/env.txt"
  { nvidia-smi; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, torch.cuda.get_device_name())"; } > "$OUT/env.txt" 2>&1
  if ! $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "no usable GPU: torch.cuda.is_available() is False (see $OUT/env.txt)" >&2; exit 1
  fi
  log "building mdt_kernels._C with CUDA for ${MDT_KERNELS_CUDA_ARCHS} -> $OUT/build.log"
  if ! MDT_KERNELS_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log" >&2; echo "the CUDA build failed" >&2; exit 1
  fi
  $PY - <<'EOF' || exit 1
import mdt_kernels as mk
backends = mk.available_backends("cuda")
print("backends on cuda:", backends)
missing = {"cuda", "triton"} - set(backends)
if missing:
    raise SystemExit(f"backends missing on the GPU: {sorted(missing)}")
EOF
}

run_tests() {
  # Whole suite on 8 workers; a per-test limit so one hung kernel cannot eat the call.
  log "pytest -> $OUT/tests.log"
  timeout 480 $PY -m pytest -q -n 8 --timeout 300 -p no:cacheprovider -rs --durations=15 tests \
    > "$OUT/tests.log" 2>&1
  local rc=$?
  tail -5 "$OUT/tests.log"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40
  [ "$rc" = 124 ] && echo "pytest ran past 480 s; see $OUT/tests.log" >&2
  return "$rc"
}

run_step() {
  log "train_step bf16: MDTv2-S/2, MDTv2-XL/2, DiT-S/2 -> $OUT/step.log"
  $PY -m benchmarks.train_step --device cuda --precision bf16 --models MDTv2-S/2 MDTv2-XL/2 DiT-S/2 \
    --rounds 3 --iters 20 --profile --out "$OUT" > "$OUT/step.log" 2>&1
  local rc=$?
  grep -E "WARNING|Error" "$OUT/step.log" | head -20
  grep -h "^|" "$OUT"/train_step_*.md 2>/dev/null | cut -d"|" -f2-9 | head -40  # model .. vs compiled unfused
  return "$rc"
}

run_ops() {
  local rc=0
  log "profile_ops bf16 and optim_step bf16 -> $OUT/ops.log"
  # The Adan step first (quick); profile_ops writes its table after every op, so a cut-off run keeps them.
  $PY -m benchmarks.optim_step --device cuda --dtype bf16 --out "$OUT" > "$OUT/ops.log" 2>&1 || rc=1
  $PY -m benchmarks.profile_ops --dtype bf16 --device cuda --min-time 0.2 --out "$OUT" >> "$OUT/ops.log" 2>&1 || rc=1
  grep -E "WARNING|Error" "$OUT/ops.log" | head -40
  return "$rc"
}

setup
rc=0
case "$stage" in
  step) run_step || rc=1 ;;
  test) run_tests || rc=1 ;;
  ops) run_ops || rc=1 ;;
  all) run_step || rc=1; run_tests || rc=1; run_ops || rc=1 ;;
esac
ls -l "$OUT"
log "done (status $rc)"
exit "$rc"
