#!/usr/bin/env bash
# Installs PyTorch 2.11.0 for Python (with its CUDA dependencies, about 4.6 GB) once per user into
# ${XDG_CACHE_HOME:-~/.cache}/cdm/torch-py, for the reference side of `cdm bench` only.
set -euo pipefail
dir=${XDG_CACHE_HOME:-$HOME/.cache}/cdm/torch-py
if [ ! -f "$dir/.complete" ]; then
  echo "cdm: installing PyTorch 2.11.0 for the benchmark reference into $dir (once)" >&2
  python3 -m pip install --quiet --target "$dir" torch==2.11.0
  touch "$dir/.complete"
fi
echo "$dir"
