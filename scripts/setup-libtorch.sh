#!/usr/bin/env bash
# Installs libtorch 2.11.0 (CPU part of the PyPI torch wheel, no CUDA packages) once per user
# into ${XDG_CACHE_HOME:-~/.cache}/cdm/libtorch-2.11.0, and links it as .libtorch in this
# checkout, where .cargo/config.toml points LIBTORCH. Safe to run again: it only relinks.
#
# CUDA=1 (or CUDA unset on a host where nvidia-smi lists a GPU) also installs, once, the CUDA
# packages that the torch wheel itself pins for this platform (its Requires-Dist lines:
# cuda-toolkit[cublas,...], nvidia-cudnn-cu13, nvidia-nccl-cu13, ...; several GB) into the same
# folder, where libtorch_cuda.so's rpath ($ORIGIN/../../nvidia/*/lib) finds them; cdm loads
# libtorch_cuda at start-up when they are there (src/device.rs). CUDA=0 never installs them.
# DRY_RUN=1 prints what that CUDA step would install, and installs none of it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/cdm
dir=$cache/libtorch-2.11.0
if [ ! -f "$dir/.complete" ]; then
  echo "cdm: installing libtorch 2.11.0 into $dir (once; about 1.2 GB)" >&2
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/install.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip install --quiet --no-deps --target "$tmp" \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
fi
ln -sfn "$dir" "$here/.libtorch"

case "${CUDA:-}" in
  1) ;;
  0) exit 0 ;;
  "")
    if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
      [ "${DRY_RUN:-0}" = 1 ] && echo "cdm: no NVIDIA GPU found (nvidia-smi) and CUDA unset: no CUDA packages" >&2
      exit 0
    fi ;;
  *) echo "cdm: CUDA must be 0, 1 or unset, got '$CUDA'" >&2; exit 2 ;;
esac
mapfile -t requirements < <(python3 "$here/scripts/cuda-requirements.py" "$dir"/torch-2.11.0.dist-info)
if [ "${#requirements[@]}" -eq 0 ]; then
  echo "cdm: the torch wheel's metadata pins no CUDA packages for this platform" >&2
  exit 1
fi
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "cdm: the torch wheel pins: ${requirements[*]}; pip would install:" >&2
  python3 -m pip install --dry-run --quiet --ignore-installed --report - --target "$dir.dry-run" "${requirements[@]}" |
    python3 -c 'import json, sys; [print(p["metadata"]["name"] + "==" + p["metadata"]["version"]) for p in json.load(sys.stdin)["install"]]'
  exit 0
fi
if [ ! -f "$dir/.cuda-complete" ]; then
  echo "cdm: installing the CUDA libraries libtorch 2.11.0 pins into $dir (once; several GB): ${requirements[*]}" >&2
  tmp=$(mktemp -d "$cache/cuda.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip install --quiet --target "$tmp" "${requirements[@]}"
  # Merge rather than move: pip --target skips a folder that exists (nvidia/ holds the runtime).
  cp -a "$tmp"/. "$dir"/
  touch "$dir/.cuda-complete"
fi
