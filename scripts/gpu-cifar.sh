#!/usr/bin/env bash
# Paper-size training on a GPU host (the constraints of scripts/gpu-check.sh: no Rust, no network,
# at most 64 MiB taken along, at most 8 files of 16 MiB each back). Run from the repository root
# with gpu-bundle/ (`make gpu-bundle`, which packs the first CIFAR-10 training batch) beside it:
#   bash scripts/gpu-cifar.sh [OUT]  (default: $OUT, else ./gpu-cifar-out)
# For each of GPU_CIFAR_MODELS (default "cdm ddm") it trains configs/cifar10.toml, the paper's
# recipe, for GPU_CIFAR_SECONDS (default 120) in GPU_CIFAR_PRECISION (default bf16), then draws
# GPU_CIFAR_SAMPLES (default 1000) DDIM-50 samples from the EMA weights. The whole CIFAR-10 does
# not travel: the bundle's 10 000 images of data_batch_1 stand in for all five training batches
# (the same batch linked five times, so the training draws from those 10 000). OUT gets:
#   MODEL-log.jsonl        the training log: loss, gradient norm, training seconds at each step
#   MODEL-grid.png         64 samples
#   MODEL-samples.tar      the samples as PNGs: `cdm fid --samples folder:DIR --reference
#                          cifar10` scores them here against the whole training set
#   gpu-memory.csv         the GPU's memory in use, every half second (nvidia-smi)
#   summary.md, stages.txt, check.log, host.txt, device.json
set -uo pipefail
default_out=gpu-cifar-out budget=${GPU_CIFAR_BUDGET:-420} out_arg=${1:-}
# shellcheck source=scripts/gpu-common.sh
source "$(dirname "$0")/gpu-common.sh"
seconds=${GPU_CIFAR_SECONDS:-120}
samples=${GPU_CIFAR_SAMPLES:-1000}
precision=${GPU_CIFAR_PRECISION:-bf16}
batch=128 steps=()
if [ "$device" = cpu ]; then # a dry run: every stage, briefly
  samples=4 batch=2 steps=(--steps 3)
fi

[ -f "$bundle/cifar10-batch1.bin.xz" ] || { log "missing $bundle/cifar10-batch1.bin.xz: run \`make gpu-bundle\`"; exit 1; }
cifar=$work/cifar10
mkdir -p "$cifar"
unpack "$bundle/cifar10-batch1.bin.xz" "$cifar/data_batch_1.bin"
for i in 2 3 4 5; do ln -sf data_batch_1.bin "$cifar/data_batch_$i.bin"; done

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -lms 500 > "$out/gpu-memory.csv" 2>&1 &
  poll=$!
  trap 'kill $poll 2>/dev/null; rm -rf "$work"' EXIT
fi

for model in ${GPU_CIFAR_MODELS:-cdm ddm}; do
  run=$work/runs/$model
  # Stopped by the clock (exit 124); checkpoints every 100 steps keep the EMA weights to sample.
  stage "train-$model" "$seconds" 60 "$cdm" train --config configs/cifar10.toml --model "$model" \
    --data "cifar10:$cifar" --batch "$batch" --precision "$precision" --checkpoint-every 100 \
    --sample-every 0 --fid-every 0 --device "$device" --out "$run" "${steps[@]}"
  cp "$run/log.jsonl" "$out/$model-log.jsonl" 2>/dev/null
  if [ -f "$run/checkpoint.safetensors" ]; then
    sample=("$cdm" sample --ckpt "$run" --sampler ddim --steps 50 --batch 500 --device "$device")
    [ "$device" = cpu ] && sample=("$cdm" sample --ckpt "$run" --sampler ddim --steps 2 --device cpu)
    stage "grid-$model" 30 30 "${sample[@]}" --n "$((samples < 64 ? samples : 64))" --out "$out/$model-grid.png"
    stage "samples-$model" 60 20 "${sample[@]}" --n "$samples" --out "$work/samples-$model" &&
      tar -C "$work" -cf "$out/$model-samples.tar" "samples-$model"
  else
    log "$model: no checkpoint in its time: no samples"
  fi
done

python3 - "$out" "$batch" "$precision" > "$out/summary.md" <<'EOF'
import json, pathlib, sys
out, batch, precision = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(f"# CIFAR-10, the paper's recipe, {precision}, batch {batch}\n")
print("| model | steps | ms per step (after the first logged step) | images/s | last loss |\n|---|---|---|---|---|")
for log in sorted(out.glob("*-log.jsonl")):
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    if len(lines) < 2:
        print(f"| {log.name} | {len(lines)} lines | - | - | - |")
        continue
    a, b = lines[0], lines[-1]
    ms = 1000 * (b["seconds"] - a["seconds"]) / (b["step"] - a["step"])
    print(f"| {log.name.split('-')[0]} | {b['step']} | {ms:.1f} | {batch * 1000 / ms:.0f} | {b['loss']:.4g} |")
mem = out / "gpu-memory.csv"
if mem.exists():
    used = [int(l.split(",")[1].split()[0]) for l in mem.read_text().splitlines()[1:] if "MiB" in l]
    if used:
        print(f"\nPeak GPU memory in use: {max(used)} MiB (nvidia-smi, every 0.5 s)")
EOF
cat "$out/summary.md" >&2
log "done in $(($(date +%s) - start))s"
