#!/usr/bin/env bash
# Parallel against sequential sampling of one checkpoint, as markdown table rows (docs/results.md §6):
# for each sampler (DDPM-1000, DDIM-100/50/25 by default) and each solver, `cdm sample --parallel P
# --compare-sequential --json`: iterations, network evaluations per sample, their ratio to the
# sequential run's, wall-clock of both, and how far the parallel samples are from the sequential ones
# (the same noise). Usage: scripts/parallel-table.sh RUN N [WINDOW] [TOL] [BATCH]
set -euo pipefail
run=$1 n=$2 window=${3:-48} tol=${4:-0.1} batch=${5:-$2}
cdm=${CDM:-target/release/cdm}
configs=${CONFIGS:-"ddpm:1000 ddim:100 ddim:50 ddim:25"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for config in $configs; do
  sampler=${config%%:*} steps=${config##*:}
  p=$((window < steps ? window : steps))
  for solver in picard anderson newton; do
    "$cdm" sample --ckpt "$run" --n "$n" --batch "$batch" --sampler "$sampler" --steps "$steps" --seed 1 \
      --parallel "$p" --tol "$tol" --solver "$solver" --compare-sequential --json --out "$out/x.npy" |
      python3 -c '
import json, sys
r = json.load(sys.stdin)
o, c, s = r["options"], r["cost"], r["sequential_cost"]
cells = [f"{o['"'"'sampler'"'"']}-{o['"'"'steps'"'"']}", o["parallel"], o["solver"], c["iterations"],
         f"{c['"'"'evaluations'"'"']} ({c['"'"'evaluations'"'"'] / s['"'"'evaluations'"'"']:.2f}x)",
         f"{c['"'"'seconds'"'"']:.2f} s", f"{s['"'"'seconds'"'"']:.2f} s",
         f"{s['"'"'seconds'"'"'] / c['"'"'seconds'"'"']:.2f}x", f"{r['"'"'max_abs_difference'"'"']:.1e}"]
print("| " + " | ".join(str(x) for x in cells) + " |")'
  done
done
