#!/usr/bin/env bash
# Builds the Python package's wheel (cdm-*.whl) into target/wheels with maturin, in the Cargo
# profile PROFILE (release unless set; `make test` builds dev, reusing the root crate's compiled
# dependencies in target/). Prints the wheel's path.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tools=$(bash "$here/scripts/setup-python.sh")
out="$here/target/wheels"
rm -f "$out"/cdm-*.whl
CARGO_TARGET_DIR="$here/target" "$tools/bin/maturin" build --quiet -m "$here/python/Cargo.toml" \
  --profile "${PROFILE:-release}" -i python3 -o "$out" >&2
ls "$out"/cdm-*.whl
