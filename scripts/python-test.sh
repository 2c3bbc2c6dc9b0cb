#!/usr/bin/env bash
# The Python package's tests (`make test`): the wheel built once (dev profile), installed into
# target/python, and python/tests run against the `cdm` binary of the same checkout, with the
# torch 2.11 of scripts/setup-pytorch.sh and the tools of scripts/setup-python.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
torch=$(bash "$here/scripts/setup-pytorch.sh")
tools=$(bash "$here/scripts/setup-python.sh")
cargo build --quiet --bin cdm
wheel=$(PROFILE=dev bash "$here/scripts/python-wheel.sh")
site="$here/target/python"
rm -rf "$site"
python3 -m pip install --quiet --root-user-action=ignore --no-deps --no-warn-script-location --target "$site" "$wheel"
CDM_BIN="$here/target/debug/cdm" PYTHONPATH="$site:$tools:$torch" python3 -m pytest -q -p no:cacheprovider "$here/python/tests" "$@"
