#!/usr/bin/env bash
# Fetches NVIDIA's NVRTC library (PyPI wheel `nvidia-cuda-nvrtc`, CUDA 13) into .cache/nvrtc, so the
# kernel compile test (crates/muscle-engine/tests/cuda_kernels.rs) runs on machines without a GPU or
# CUDA toolkit. The wheel is a zip: it is unpacked, not installed, so no Python environment changes.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/nvrtc
if [[ -f $dest/nvidia/cu13/lib/libnvrtc.so.13 ]]; then
  echo "NVRTC already in $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" 'nvidia-cuda-nvrtc>=13,<14'
rm -rf "$dest.partial"
python3 -m zipfile -e "$tmp"/nvidia_cuda_nvrtc-*.whl "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "NVRTC in $dest/nvidia/cu13/lib"
