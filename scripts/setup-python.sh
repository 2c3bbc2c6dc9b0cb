#!/usr/bin/env bash
# What the Python package's tests need besides torch, installed once per user into
# ${XDG_CACHE_HOME:-~/.cache}/cdm/python-tools: maturin (builds the wheel), pytest and numpy.
# Prints the folder (for PYTHONPATH; maturin is in its bin/).
set -euo pipefail
dir=${XDG_CACHE_HOME:-$HOME/.cache}/cdm/python-tools
if [ ! -f "$dir/.complete" ]; then
  echo "cdm: installing maturin, pytest and numpy for the Python package's tests into $dir (once)" >&2
  python3 -m pip install --quiet --target "$dir" 'maturin>=1.5,<2' pytest numpy
  touch "$dir/.complete"
fi
echo "$dir"
