#!/usr/bin/env bash
# One process (2 threads, then 1 thread) against two ranks of 1 thread each, the same parallel
# DDIM run of the MNIST DDM; prints one JSON line per run.
set -euo pipefail
CDM=${CDM:-target/release/cdm}
RUN=${1:?usage: scripts/sample-ranks.sh RUN}
for round in 1 2 3; do
  for setup in "2 1" "1 1" "1 2"; do
    set -- $setup; threads=$1; ranks=$2
    extra=(); [ "$ranks" -gt 1 ] && extra=(--nproc "$ranks")
    out=$(OMP_NUM_THREADS=$threads $CDM sample --device cpu --ckpt $RUN --n ${N:-4} --steps 50 --parallel ${P:-16} --json --out /tmp/s_${threads}_${ranks}.npy "${extra[@]}" 2>/dev/null)
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=r["cost"]; print(json.dumps({"round":int(sys.argv[2]),"threads_per_process":int(sys.argv[3]),"ranks":int(sys.argv[4]),"n":r["n"],"iterations":c["iterations"],"evaluations":c["evaluations"],"seconds":c["seconds"]}))' "$out" $round $threads $ranks
  done
done
