#!/usr/bin/env bash
# Builds, on this machine, everything scripts/gpu_check.sh runs on a GPU machine that has no cargo:
# the CUDA test binaries (kernel compile test, CUDA-vs-CPU parity) and muscle-bench, into .gpu/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p muscle-bench
out="$(cargo test --release -p muscle-engine --test cuda_parity --test cuda_kernels --no-run --message-format=json 2>/dev/null)"
rm -rf .gpu.partial && mkdir -p .gpu.partial/bin
for t in cuda_parity cuda_kernels; do
  exe="$(printf '%s\n' "$out" | python3 -c "import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get('reason')=='compiler-artifact' and m['target']['name']=='$t' and m.get('executable'): print(m['executable'])" | tail -1)"
  [[ -n $exe ]] || { echo "no test binary for $t" >&2; exit 1; }
  cp "$exe" ".gpu.partial/bin/$t"
done
cp target/release/muscle-bench .gpu.partial/bin/
git rev-parse --short HEAD > .gpu.partial/bin/BUILD
strip .gpu.partial/bin/cuda_* .gpu.partial/bin/muscle-bench 2>/dev/null || true
# the previous bundle's benchmark, when it is another commit's, comes along as the "before" variant
# that scripts/gpu_check.sh times beside this build; KEEP_BEFORE=1 keeps the bundle's "before" as it
# is instead (say, the last build that was measured on a GPU, when the previous one never ran there)
if [[ ${KEEP_BEFORE:-0} == 1 && -x .gpu/bin/muscle-bench-before ]]; then
  cp .gpu/bin/muscle-bench-before .gpu.partial/bin/
  cp .gpu/bin/BEFORE .gpu.partial/bin/ 2>/dev/null || true
elif [[ -x .gpu/bin/muscle-bench && -f .gpu/bin/BUILD && "$(cat .gpu/bin/BUILD)" != "$(cat .gpu.partial/bin/BUILD)" ]]; then
  cp .gpu/bin/muscle-bench .gpu.partial/bin/muscle-bench-before
  cp .gpu/bin/BUILD .gpu.partial/bin/BEFORE
elif [[ -x .gpu/bin/muscle-bench-before ]]; then
  cp .gpu/bin/muscle-bench-before .gpu.partial/bin/
  cp .gpu/bin/BEFORE .gpu.partial/bin/ 2>/dev/null || true
fi
rm -rf .gpu && mv .gpu.partial .gpu
ls -la .gpu/bin
