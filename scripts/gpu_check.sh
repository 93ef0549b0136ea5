#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one run, on a machine with an NVIDIA GPU, PyTorch and PEFT but
# no cargo and no network. Build its binaries here first (scripts/build_gpu_bundle.sh -> .gpu/bin),
# carry .gpu there, run this from the repository root:
#   1. every kernel compiles with the machine's NVRTC;
#   2. CUDA against CPU: every Backend verb, then training steps on the tiny checkpoints (f32, 1e-4),
#      issued call by call and in graph mode (MUSCLE_CUDA_GRAPHS=1);
#   3. muscle-bench --device cuda (bf16 and f32) beside scripts/bench_torch.py (bf16 and f32), BERT- and
#      RoBERTa-base, 32 x 64 and 32 x 128; scripts/gpu_report.py prints the ratios;
#   4. variants of our bf16 step: graph mode, an earlier build (.gpu/bin/muscle-bench-before, when
#      carried), attention's GEMMs in exact f32 (MUSCLE_CUDA_TF32=0), flash attention, and the batched GEMMs issued
#      one by one (MUSCLE_CUDA_BATCHED=0), to measure each change.
# Results go to .gpu/out, or, under the device tool, to $OUT as one archive (gpu-check.tgz) and report.md.
# Each stage has its own time limit so one hang cannot eat the rest, and the whole check a deadline
# (GPU_CHECK_SECONDS, 420 by default). GPU_CHECK_PLAN=profile runs 1, 2 and only BERT-base bf16 of 3,
# with muscle-bench --profile (GPU time per kind of call).
set -uo pipefail
cd "$(dirname "$0")/.."
for bin in cuda_kernels cuda_parity muscle-bench; do
  [[ -x .gpu/bin/$bin ]] || { echo "missing .gpu/bin/$bin: run scripts/build_gpu_bundle.sh on the build machine and carry .gpu here" >&2; exit 2; }
done
# under the device tool the files are gathered elsewhere and packed into $OUT at the end
if [[ -n ${OUT:-} ]]; then out="$(mktemp -d)"; else out=.gpu/out; fi
mkdir -p "$out"
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
echo "build $(cat .gpu/bin/BUILD 2>/dev/null || echo unknown); the \"before\" variant: $(cat .gpu/bin/BEFORE 2>/dev/null || echo none)" \
  | tee "$out/build.txt"

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
dirs.append("/usr/local/cuda/lib64")
print(":".join(dirs))
PY
)"
export MUSCLE_CUDA_LIB_DIRS MUSCLE_REQUIRE_GPU=1 MUSCLE_REQUIRE_NVRTC=1 MUSCLE_REPO_ROOT="$PWD"
# the compiled kernels, kept between this check's processes (each would otherwise compile them again)
export MUSCLE_KERNEL_CACHE="${MUSCLE_KERNEL_CACHE:-$PWD/.gpu/kernel-cache}"
echo "library folders: $MUSCLE_CUDA_LIB_DIRS" | tee "$out/libs.txt"

status=0
# One deadline for the whole check (GPU time is short): stages run in order of importance and each gets
# at most what is left of it; a stage that would start with under 20 s left is skipped and says so.
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-420}))
stage() {  # stage <name> <seconds> <command...>
  local name=$1 secs=$2 left=$((deadline - SECONDS))
  shift 2
  if (( left < 20 )); then echo "-- $name skipped: the check's deadline is near"; echo "skipped" > "$out/$name.txt"; return; fi
  (( secs > left )) && secs=$left
  echo "== $name (at ${SECONDS}s, limit ${secs}s)"
  timeout "$secs" "$@" > >(tee "$out/$name.txt") 2>&1 || { echo "!! $name failed (exit $?)"; status=1; }
}
# Everything under $OUT goes back in one archive (the device tool returns at most 8 files), the report beside it.
pack() {
  "$py" scripts/gpu_report.py "$out" > "$out/report.md" 2>&1
  if [[ -n ${OUT:-} ]]; then tar czf "$OUT/gpu-check.tgz" -C "$out" . && cp "$out/report.md" "$OUT/report.md"; fi
  echo "== report"; cat "$out/report.md"
}
trap pack EXIT
"$py" -c "import torch, peft, transformers; print('torch', torch.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" 2>&1 | tee "$out/python.txt"

stage kernels 60 .gpu/bin/cuda_kernels --test-threads=1
# the emulated twins of the parity checks ran in CI already; here only the GPU ones, issued call by
# call and then in graph mode
stage parity 150 .gpu/bin/cuda_parity --skip emulated --skip driver_calls --nocapture --test-threads=1
stage parity-graphs 150 env MUSCLE_CUDA_GRAPHS=1 .gpu/bin/cuda_parity --skip emulated --skip driver_calls --nocapture \
  --test-threads=1
ours() {  # ours <family> <seq> <precision> [muscle-bench flags...]
  local fam=$1 seq=$2 prec=$3
  shift 3
  stage "ours-$fam-$seq-$prec" 90 .gpu/bin/muscle-bench --device cuda --precision "$prec" --family "$fam" --seq "$seq" \
    --iters 10 --modes lora,musclelora,eval --json "$out/ours-$fam-$seq-$prec.json" "$@"
}
theirs() {  # theirs <family> <precision>
  stage "torch-$1-$2" 150 "$py" scripts/bench_torch.py --model "$1" --dtype "$2" --iters 10 --json "$out/torch-$1-$2.json"
}
variant() {  # variant <name> <binary> <family> <seq> [env...] [-- flags...]: the training steps by another build or setting
  local name=$1 bin=$2 fam=$3 seq=$4
  shift 4
  local envs=() flags=()
  while (($#)); do
    if [[ $1 == -- ]]; then shift; flags=("$@"); break; fi
    envs+=("$1"); shift
  done
  [[ -x $bin ]] || return 0
  stage "variant-$name-$fam-$seq-bf16" 60 env "${envs[@]}" "$bin" --device cuda --precision bf16 --family "$fam" --seq "$seq" \
    --iters 10 --modes lora,musclelora "${flags[@]}" --json "$out/variant-$name-$fam-$seq-bf16.json"
}
if [[ ${GPU_CHECK_PLAN:-full} == profile ]]; then
  # a short look: BERT-base bf16 beside PyTorch, with every call of one step timed on the GPU
  ours bert 64 bf16 --profile; ours bert 128 bf16 --profile; theirs bert bf16
  exit $status
fi
# the issue's target first (BERT-base bf16, with a profile of one step, and in graph mode), then
# RoBERTa, then what each change bought (an earlier build carried as .gpu/bin/muscle-bench-before;
# attention's GEMMs in exact f32; flash attention at the benchmark's lengths), then f32
ours bert 64 bf16 --profile; ours bert 128 bf16 --profile
variant graphs .gpu/bin/muscle-bench bert 64 MUSCLE_CUDA_GRAPHS=1
variant graphs .gpu/bin/muscle-bench bert 128 MUSCLE_CUDA_GRAPHS=1
theirs bert bf16
ours roberta 64 bf16; ours roberta 128 bf16; theirs roberta bf16
variant graphs .gpu/bin/muscle-bench roberta 64 MUSCLE_CUDA_GRAPHS=1
variant graphs .gpu/bin/muscle-bench roberta 128 MUSCLE_CUDA_GRAPHS=1
for seq in 64 128; do
  variant before .gpu/bin/muscle-bench-before bert "$seq"
  variant f32attention .gpu/bin/muscle-bench bert "$seq" MUSCLE_CUDA_TF32=0
  variant flash .gpu/bin/muscle-bench bert "$seq" -- --attention flash
  variant unbatched .gpu/bin/muscle-bench bert "$seq" MUSCLE_CUDA_BATCHED=0
done
for fam in bert roberta; do
  ours "$fam" 64 f32; ours "$fam" 128 f32; theirs "$fam" f32
done
exit $status
