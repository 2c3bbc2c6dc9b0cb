#!/usr/bin/env bash
# Builds libcdm_cuda.so, what cdm uses of libtorch_cuda beyond its kernels: c10d's NCCL process
# group for ranks on CUDA devices (csrc/nccl.cpp) and CUDA graphs (csrc/cuda_graph.cpp).
# `cdm` loads it, after libtorch_cuda, from beside its own binary or from $CDM_CUDA_LIBRARY
# (src/device.rs); without it, ranks on GPUs fall back to Gloo through host copies and network
# calls are not replayed as graphs.
# It is compiled here, against this checkout's libtorch, for a GPU host that has no compiler
# (scripts/gpu-bundle.sh calls this). Beyond libtorch's own headers it needs CUDA's runtime
# headers (crt/ and CCCL's nv/ among them) and nccl.h: they come from the NVIDIA wheels of the
# versions the torch 2.11.0 wheel pins, of which only the include/ folders are kept, once, in
# ${XDG_CACHE_HOME:-~/.cache}/cdm/cuda-headers-13.0 (1.2 GB of wheels downloaded, 40 MB kept).
# Usage: scripts/build-cuda.sh OUT.so
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-cuda.sh OUT.so}
torch=$(readlink -f "$root/.libtorch")/torch
[ -f "$torch/lib/libtorch_cuda.so" ] || { echo "build-cuda: no libtorch_cuda.so in $torch/lib: run make setup first" >&2; exit 1; }
headers=${XDG_CACHE_HOME:-$HOME/.cache}/cdm/cuda-headers-13.0
if [ ! -f "$headers/.complete" ]; then
  echo "build-cuda: fetching the CUDA and NCCL headers into $headers (once)" >&2
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  python3 -m pip download --quiet --no-deps -d "$wheels" \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-nccl-cu13==2.28.9 \
    nvidia-cublas==13.1.0.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66
  rm -rf "$headers.tmp"
  python3 - "$wheels" "$headers.tmp" <<'PY'
import pathlib, sys, zipfile
wheels, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest, [n for n in z.namelist() if "/include/" in n])
PY
  touch "$headers.tmp/.complete"
  rm -rf "$headers"
  mv "$headers.tmp" "$headers"
fi
cuda=$headers/nvidia/cu13/include
objects=$(mktemp -d)
trap 'rm -rf "$objects"' EXIT
pids=()
for source in nccl cuda_graph; do
  c++ -std=c++17 -O2 -fPIC -Wno-interference-size -D_GLIBCXX_USE_CXX11_ABI=1 -DGLOG_USE_GLOG_EXPORT \
    -I"$torch/include" -I"$torch/include/torch/csrc/api/include" -I"$cuda" -I"$cuda/cccl" \
    -I"$headers/nvidia/nccl/include" -I"$root/csrc/gloo-names" -c "$root/csrc/$source.cpp" -o "$objects/$source.o" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
# libtorch_cuda's own CUDA libraries need not be here: the GPU host has them, and cdm loads
# libtorch_cuda (and with it them) before this library.
c++ -shared -o "$out" "$objects"/*.o -L"$torch/lib" -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -ltorch_cpu -lc10 \
  -Wl,--allow-shlib-undefined
echo "build-cuda: $out" >&2
