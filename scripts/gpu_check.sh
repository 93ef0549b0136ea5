#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one run, on a machine with an NVIDIA GPU, PyTorch and PEFT but
# no cargo and no network. Build its binaries here first (scripts/build_gpu_bundle.sh -> .gpu/bin),
# carry .gpu there, run this from the repository root:
#   1. every kernel compiles with the machine's NVRTC;
#   2. CUDA against CPU: every Backend verb, then training steps on the tiny checkpoints (f32, 1e-4);
#   3. muscle-bench --device cuda (bf16 and f32) beside scripts/bench_torch.py (bf16 and f32), BERT- and
#      RoBERTa-base, 32 x 64 and 32 x 128; scripts/gpu_report.py prints the ratios.
# Results go to $OUT (or .gpu/out). Each stage has its own time limit so one hang cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
for bin in cuda_kernels cuda_parity muscle-bench; do
  [[ -x .gpu/bin/$bin ]] || { echo "missing .gpu/bin/$bin: run scripts/build_gpu_bundle.sh on the build machine and carry .gpu here" >&2; exit 2; }
done
out="${OUT:-.gpu/out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"

# CUDA's user-space libraries (cuBLAS, NVRTC) where PyTorch's pip wheels put them.
MUSCLE_CUDA_LIB_DIRS="$("$py" - <<'PY'
import os, pathlib
dirs = []
try:
    import nvidia
    for root in nvidia.__path__:
        dirs += sorted({str(p.parent) for p in pathlib.Path(root).glob("*/lib/lib*.so*")})
except ImportError:
    pass
import torch
dirs.append(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(":".join(dirs))
PY
)"
export MUSCLE_CUDA_LIB_DIRS MUSCLE_REQUIRE_GPU=1 MUSCLE_REQUIRE_NVRTC=1 MUSCLE_REPO_ROOT="$PWD"
echo "library folders: $MUSCLE_CUDA_LIB_DIRS" | tee "$out/libs.txt"

status=0
stage() {  # stage <name> <seconds> <command...>
  local name=$1 secs=$2
  shift 2
  echo "== $name"
  timeout "$secs" "$@" > >(tee "$out/$name.txt") 2>&1 || { echo "!! $name failed (exit $?)"; status=1; }
}
stage kernels 60 .gpu/bin/cuda_kernels --test-threads=1
# the emulated twins of the parity checks ran in CI already; here only the GPU ones
stage parity 120 .gpu/bin/cuda_parity --skip emulated --skip driver_calls --nocapture --test-threads=1
for fam in bert roberta; do
  for seq in 64 128; do
    for prec in bf16 f32; do
      stage "ours-$fam-$seq-$prec" 90 .gpu/bin/muscle-bench --device cuda --precision "$prec" --family "$fam" \
        --seq "$seq" --iters 10 --modes lora,musclelora,eval --json "$out/ours-$fam-$seq-$prec.json"
    done
  done
  stage "torch-$fam-bf16" 120 "$py" scripts/bench_torch.py --model "$fam" --dtype bf16 --json "$out/torch-$fam-bf16.json"
  stage "torch-$fam-f32" 120 "$py" scripts/bench_torch.py --model "$fam" --dtype f32 --json "$out/torch-$fam-f32.json"
done
"$py" scripts/gpu_report.py "$out" | tee "$out/report.md"
exit $status
