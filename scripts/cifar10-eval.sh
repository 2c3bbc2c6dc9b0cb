#!/usr/bin/env bash
# The CDM paper's rows for a trained CIFAR-10 run (its Table 1 and Table 2): FID of N EMA samples
# against the training set for DDPM-1000, DDIM-50, DDIM-100 and the second-order DPM-Solver at 25
# steps, and test-set bits/dim in both 8-bit conventions (a CDM: one pass; a DDM: its I-MMSE
# estimate). Each part is a `cdm eval` report in RUN/eval/NAME/; the table is RUN/eval/paper-rows.md.
#   bash scripts/cifar10-eval.sh RUN [DEVICE=auto] [FID_SAMPLES=10000] [FID_REFERENCE=50000] [BATCH=256]
# A part whose report.json exists is not run again, so an interrupted evaluation resumes.
# EVAL_FLAGS adds flags to every FID (e.g. "--guidance 0.5" for a conditional run); NLL_IMAGES
# (default 10000, the whole test set) sets the images scored for bits/dim.
set -euo pipefail
run=${1:?usage: cifar10-eval.sh RUN [DEVICE] [FID_SAMPLES] [FID_REFERENCE] [BATCH]}
device=${2:-auto} samples=${3:-10000} reference=${4:-50000} batch=${5:-256}
cdm=${CDM:-target/release/cdm}
eval=$run/eval
common=(--ckpt "$run" --device "$device" --batch "$batch")
part() { # part NAME FLAGS...: one report, unless it is there already
  local name=$1
  shift
  if [ -f "$eval/$name/report.json" ]; then
    echo "cifar10-eval: $eval/$name done already" >&2
    return
  fi
  "$cdm" eval "${common[@]}" --out "$eval/$name" "$@"
}
fid() {
  local name=$1
  shift
  # shellcheck disable=SC2086 # EVAL_FLAGS is a list of flags
  part "$name" --only fid --fid-samples "$samples" --fid-reference "$reference" "$@" ${EVAL_FLAGS:-}
}
part nll --only nll --data cifar10:split=test --n "${NLL_IMAGES:-10000}"
fid ddim50 --sampler ddim --steps 50
fid ddim100 --sampler ddim --steps 100
fid dpm2-25 --sampler dpm2 --steps 25
fid ddpm1000 --sampler ddpm --steps 1000
python3 "$(dirname "$0")/paper-rows.py" "$eval" | tee "$eval/paper-rows.md"
