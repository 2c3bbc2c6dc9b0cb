#!/usr/bin/env bash
# Makes gpu-bundle/ (git-ignored): what scripts/gpu-check.sh takes to a GPU host, which has
# PyTorch but no Rust toolchain and no network, and receives at most 64 MiB (this checkout's
# tracked files included). Builds here, then compresses:
#   cdm.xz        the release binary (stripped)
#   gpu-tests.xz  tests/gpu.rs, built as a test binary (its tests are #[ignore]d: run with --ignored)
#   libcdm_cuda.so.xz  c10d's NCCL backend and CUDA graphs (scripts/build-cuda.sh); left out,
#                 with a warning, where its headers cannot be fetched (ranks then use Gloo)
#   mnist.tar.xz  MNIST as cached under ~/.cache/cdm/data (fetched first if missing)
#   cifar10-batch1.bin.xz  the first CIFAR-10 training batch (10 000 images, official layout;
#                 fetched first if missing), for scripts/gpu-cifar.sh
#   run.tar.xz    with RUN=DIR, a training run to resume there (config, checkpoint, log; the
#                 checkpoint without the EMA's duplicate of the Gaussian base)
#   syslib.tar.xz this host's copies of the system libraries the binary needs beyond glibc,
#                 libstdc++ and libtorch (the font stack of the plots), for a host that lacks
#                 them (gpu-check.sh then adds them to LD_LIBRARY_PATH)
#   requires      the newest glibc and libstdc++ symbol versions the binaries use
# and fails if the whole would not fit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=gpu-bundle
limit=$((64 * 1024 * 1024))
cargo=${CARGO:-cargo}

$cargo build --release
tests=$($cargo test --release --test gpu --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$tests" ] || { echo "gpu-bundle: no test binary for tests/gpu.rs" >&2; exit 1; }

data=${XDG_CACHE_HOME:-$HOME/.cache}/cdm/data
if [ ! -f "$data/mnist/.complete" ]; then
  # One training step is the shortest way through the binary's own download of MNIST.
  scratch=$(mktemp -d)
  target/release/cdm train --data mnist --preset tiny --steps 1 --batch 2 --device cpu --out "$scratch/run" >&2
  rm -rf "$scratch"
fi

cifar=$data/cifar10/data_batch_1.bin
[ -f "$cifar" ] || target/release/cdm data fetch cifar10 >&2

rm -rf "$out"
mkdir -p "$out"
strip -o "$out/cdm" target/release/cdm
strip -o "$out/gpu-tests" "$tests"
xz -9 -T2 "$out/cdm" "$out/gpu-tests"
if bash scripts/build-cuda.sh "$out/libcdm_cuda.so"; then
  xz -9 "$out/libcdm_cuda.so"
else
  echo "gpu-bundle: no CUDA extension in the bundle (scripts/build-cuda.sh failed): GPU ranks will use Gloo, and no CUDA graphs" >&2
fi
tar -C "$data" -cf - mnist | xz -9 -T2 > "$out/mnist.tar.xz"
xz -6 -T2 -c "$cifar" > "$out/cifar10-batch1.bin.xz"
if [ -n "${RUN:-}" ]; then
  [ -f "$RUN/checkpoint.safetensors" ] || { echo "gpu-bundle: $RUN holds no checkpoint.safetensors" >&2; exit 1; }
  # Without the EMA's copy of the Gaussian base (gpu-check.sh restores it): 67 MB → 43 MB for MNIST.
  mkdir -p "$out/run"
  cp "$RUN/config.json" "$RUN/log.jsonl" "$out/run/"
  python3 scripts/checkpoint-dedup.py strip "$RUN/checkpoint.safetensors" "$out/run/checkpoint.safetensors"
  tar -C "$out/run" -cf - config.json checkpoint.safetensors log.jsonl | xz -6 -T2 > "$out/run.tar.xz"
  rm -rf "$out/run"
fi
git describe --always --dirty --abbrev=40 > "$out/commit"
libtorch=$(readlink -f .libtorch)
mkdir -p "$out/syslib"
ldd target/release/cdm | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
  case "$name" in libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libutil.so.* | libstdc++.so.* | libgcc_s.so.*) continue ;; esac
  [[ $(readlink -f "$path") == "$libtorch"/* ]] && continue
  cp -L "$path" "$out/syslib/$name"
done
tar -C "$out" -cf - syslib | xz -9 -T2 > "$out/syslib.tar.xz"
rm -rf "$out/syslib"
for f in target/release/cdm "$tests"; do
  objdump -T "$f" | grep -oE '(GLIBC|GLIBCXX)_[0-9.]+' | sort -u -V | awk -F_ '{last[$1] = $0} END {print last["GLIBC"], last["GLIBCXX"]}'
done | sort -u -V | tail -1 > "$out/requires"

bundle=$(du -cb "$out"/* | tail -1 | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb | awk '/\ttotal$/ {s += $1} END {print s}')
total=$((bundle + tracked))
ls -l "$out" >&2
echo "gpu-bundle: bundle $((bundle >> 20)) MiB + tracked files $((tracked >> 20)) MiB = $((total >> 20)) MiB of 64 MiB" >&2
if [ "$total" -gt "$limit" ]; then
  echo "gpu-bundle: too big for the GPU host ($total bytes > $limit)" >&2
  exit 1
fi
