#!/usr/bin/env bash
# Sample quality against the cost of parallel sampling, for 2-D runs (docs/results.md §7): for each run,
# the unbiased MMD² of `cdm eval --only mmd` samples against held-out points, sequential and parallel
# (each solver at tolerance 0.1, and Picard over a tolerance sweep), with iterations and network
# evaluations per sample. Usage: scripts/parallel-mmd.sh SAMPLER STEPS WINDOW RUN...
set -euo pipefail
sampler=$1 steps=$2 window=$3
shift 3
cdm=${CDM:-target/release/cdm}
n=${N:-2000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
row() {
  local run=$1 label=$2
  shift 2
  "$cdm" eval --ckpt "$run" --n "$n" --only mmd --sampler "$sampler" --steps "$steps" --seed 1 --batch "$n" "$@" \
    --out "$out/eval" > /dev/null 2>&1
  python3 - "$out/eval/report.json" "$run" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["mmd"]["models"][0]
c = r["sampling_cost"]
b = max(c["batches"], 1)
print(f"| {sys.argv[2].rstrip('/').split('/')[-1]} | {sys.argv[3]} | {c['iterations'] / b:g} | {c['evaluations'] / b:g} | {r['mmd2']:.5f} | {c['seconds']:.1f} s |")
PY
}
for run in "$@"; do
  row "$run" sequential
  for solver in picard anderson newton; do
    row "$run" "$solver, τ = 0.1" --parallel "$window" --solver "$solver" --tol 0.1
  done
  for tol in ${TOLS-1 0.3}; do
    row "$run" "picard, τ = $tol" --parallel "$window" --solver picard --tol "$tol"
  done
done
