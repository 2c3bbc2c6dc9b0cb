#!/usr/bin/env bash
# Installs libtorch 2.11.0 (CPU part of the PyPI torch wheel, no CUDA packages) once per user
# into ${XDG_CACHE_HOME:-~/.cache}/cdm/libtorch-2.11.0, and links it as .libtorch in this
# checkout, where .cargo/config.toml points LIBTORCH. Safe to run again: it only relinks.
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
