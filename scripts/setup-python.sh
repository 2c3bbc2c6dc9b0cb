#!/usr/bin/env bash
# What the Python package's tests need besides torch, installed once per user into
# ${XDG_CACHE_HOME:-~/.cache}/cdm/python-tools: maturin (builds the wheel), pytest, numpy, and
# Pillow (python/examples/score_folder.py reads images with it). Prints the folder (for
# PYTHONPATH; maturin is in its bin/). A changed list installs afresh.
set -euo pipefail
dir=${XDG_CACHE_HOME:-$HOME/.cache}/cdm/python-tools
requirements=('maturin>=1.5,<2' pytest numpy pillow)
if [ "$(cat "$dir/.complete" 2>/dev/null)" != "${requirements[*]}" ]; then
  echo "cdm: installing ${requirements[*]} for the Python package's tests into $dir (once)" >&2
  rm -rf "$dir"
  python3 -m pip install --quiet --target "$dir" "${requirements[@]}"
  echo "${requirements[*]}" > "$dir/.complete"
fi
echo "$dir"
