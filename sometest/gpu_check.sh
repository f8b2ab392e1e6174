#!/usr/bin/env bash
# Every GPU figure in one command (issue 19, item 4), run from the repository root on a machine with
# a CUDA GPU; under 8 minutes on one modern GPU:
#
#     bash sometest/gpu_check.sh            # writes into $OUT, or gpu_check_out/ without it
#
# 1. the machine: nvidia-smi, python, torch and its CUDA / cuDNN versions, the GPU torch sees;
# 2. the tests marked `cuda` (tests/test_cuda.py: AMP bf16/fp16 training steps against fp32, exact
#    resume on CUDA, bf16 sampling against fp32, peak memory of a default-size training step at
#    batch 16), with -s so their figures print -> pytest_cuda.log;
# 3. the GPU rows of the benchmark: sometest/bench.py --device cuda --sections train,sample (training
#    step fp32 and AMP bf16 with peak GPU memory, the samplers in fp32 and bf16) -> gpu_bench.json,
#    its table -> gpu_bench.log.
# Refuses (exit 2) where no GPU is visible. Exit status: 0 all passed; otherwise that of the first
# failing step (the bench still runs after failing tests, so one run gives every figure).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_check_out}"

# the interpreter: $PYTHON if set, else .venv/bin/python if it exists, else python3; where the first
# choice's torch sees no GPU (a CPU-only build in .venv), the next one that does is taken
candidates=()
if [ -n "${PYTHON:-}" ]; then candidates+=("$PYTHON"); fi
if [ -x .venv/bin/python ]; then candidates+=(.venv/bin/python); fi
candidates+=(python3)
PY=""
seen=""
for c in "${candidates[@]}"; do
    if said=$("$c" -c 'import torch; print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}"); raise SystemExit(0 if torch.cuda.is_available() else 1)' 2>&1); then
        PY="$c"
        break
    fi
    seen+="  $c: $(echo "$said" | tail -1)"$'\n'
done
if [ -z "$PY" ]; then
    echo "gpu_check.sh: no CUDA GPU visible to torch; refusing. Run it on a machine with a GPU and a CUDA" \
         "build of torch (PYTHON=/path/to/python picks the interpreter). Tried:" >&2
    printf '%s' "$seen" >&2
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L >&2 || true; else echo "  (no nvidia-smi)" >&2; fi
    exit 2
fi

mkdir -p "$OUT_DIR"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"  # deterministic cuBLAS (resume test)
export PYTHONUNBUFFERED=1

{
    echo "== gpu_check.sh $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi || echo "(nvidia-smi not found)"
    "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} GPU(s)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
} 2>&1 | tee "$OUT_DIR/machine.log"

status=0
echo "== pytest -m cuda (log: $OUT_DIR/pytest_cuda.log)"
# timeouts: 200 s here and 240 s for the bench keep the whole script under 8 minutes (expected: the
# tests well under a minute, the bench a few minutes)
timeout 200 "$PY" -m pytest -q -m cuda tests -s -p no:cacheprovider 2>&1 | tee "$OUT_DIR/pytest_cuda.log" \
    || status=${PIPESTATUS[0]}

echo "== bench.py --device cuda --sections train,sample (json: $OUT_DIR/gpu_bench.json)"
timeout 240 "$PY" sometest/bench.py --device cuda --sections train,sample --json "$OUT_DIR/gpu_bench.json" \
    2>&1 | tee "$OUT_DIR/gpu_bench.log" || { rc=${PIPESTATUS[0]}; [ "$status" -ne 0 ] || status=$rc; }

echo "== gpu_check.sh: exit $status; files in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exit "$status"
