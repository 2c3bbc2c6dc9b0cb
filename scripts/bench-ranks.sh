#!/usr/bin/env bash
# One process with every core against N data-parallel ranks (Gloo, one core's share each) on
# this host, alternated round by round so both see the same load: Rust's training step and the
# gradient all-reduce's share of it, per bench size. Prints a Markdown table; the raw reports go
# to $OUT (default bench-ranks.jsonl).
#   scripts/bench-ranks.sh [ROUNDS] [NPROC] [SIZE[:BATCH]...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
nproc=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
sizes=("${@:-mlp2d unet-ddm unet-cdm cifar10-ddm:16}")
read -r -a sizes <<< "${sizes[*]}"
out=${OUT:-bench-ranks.jsonl}
cargo build --release --quiet
: > "$out"
for round in $(seq "$rounds"); do
  for spec in "${sizes[@]}"; do
    size=${spec%%:*}
    batch=()
    [ "$spec" != "$size" ] && batch=(--batch "${spec#*:}")
    for ranks in 1 "$nproc"; do
      extra=()
      [ "$ranks" -gt 1 ] && extra=(--nproc "$ranks")
      target/release/cdm bench --size "$size" "${batch[@]}" --device cpu --no-reference --rounds 1 --steps 5 "${extra[@]}" 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["round"]=int(sys.argv[1]); r["nproc"]=int(sys.argv[2]); print(json.dumps(r))' "$round" "$ranks" >> "$out"
    done
  done
done
python3 - "$out" "$nproc" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = sys.argv[2]
print(f"| size | batch | 1 process ms/step | {n} ranks ms/step | speed-up | all-reduce ms | its share of the step |")
print("|---|---|---|---|---|---|---|")
for size in dict.fromkeys(r["size"] for r in rows):
    one = [r["rust_ms_per_step"] for r in rows if r["size"] == size and r["nproc"] == 1]
    many = [r for r in rows if r["size"] == size and r["nproc"] > 1]
    step = statistics.median(r["rust_ms_per_step"] for r in many)
    reduce = statistics.median(r["ranks"]["all_reduce_ms"] for r in many)
    one_ms = statistics.median(one)
    print(f"| {size} | {many[0]['batch']} | {one_ms:.1f} | {step:.1f} | {one_ms / step:.2f}× | {reduce:.2f} | {reduce / step:.1%} |")
PY
