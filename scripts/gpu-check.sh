#!/usr/bin/env bash
# The GPU check, for a GPU host that has PyTorch (2.11.0+cu130) in python3's site-packages but no
# Rust and no network. Run from the repository root with gpu-bundle/ (`make gpu-bundle`) beside
# it: bash scripts/gpu-check.sh [OUT]  (default: $OUT, else ./gpu-check-out).
# The set-up is scripts/gpu-common.sh's; then it writes to OUT, each stage time-boxed so the
# whole stays under GPU_CHECK_SECONDS (default 420):
#   nvidia-smi.txt, host.txt  the GPU, the driver, python3's torch
#   device.json               the device line: what `cdm device` picks, and why not CUDA
#   gpu-tests.txt             tests/gpu.rs: GPU against CPU, with tolerances
#   bench-SIZE-PREC.json      `cdm bench` against bench/reference.py on the same device, for the
#                             CIFAR-10 CDM and DDM in bf16 and f32 and the tiny UNet's CDM in
#                             bf16: times, FLOPs, TFLOP/s (f32 after the training), the
#                             training and sampling steps also replayed from CUDA graphs
#   train-short[-graphs].jsonl  make mnist's recipe for 200 steps, as it is and with its steps
#                             replayed from a CUDA graph: the logs, whose losses should agree
#   rank-bench-SIZE.json      the CIFAR-10 benches (bf16, Rust only) plain, then as the one rank
#                             of a launcher's job: collectives on NCCL (Gloo where it could not
#                             be loaded), the step with its all-reduce and the all-reduce alone
#   mnist/                    `make mnist`'s training in bf16 (GPU_CHECK_TRAIN_STEPS, default its
#                             2000 steps; GPU_CHECK_TRAIN_PRECISION), stopped by the clock if need
#                             be and then resumable (from gpu-bundle/run.tar.xz: `make gpu-bundle
#                             RUN=OUT/mnist`); its log and grids
#   nll-PREC.json, denoising-PREC/  the trained weights scored in f32 and in bf16: test-set
#                             bits/dim (uniform dequantization), the denoising MSE per level
#   parallel-*.json           parallel sampling of the trained weights against sequential:
#                             DDPM-1000 (p = 48) and DDIM-50 (p = 50, 16), one sample and 16,
#                             and one sample of each with the calls replayed from CUDA graphs;
#                             iterations, evaluations, one iteration against its window's
#                             network call replayed alone, the speed-up by the clock
#   stages.txt, check.log     each stage's exit code and seconds; summary.md, the figures
# GPU_CHECK_SKIP="gpu-tests bench" leaves out the stages whose names start so (a rerun of the
# training alone, say). GPU_CHECK_DEVICE=cpu runs everything on the CPU, briefly, with the CPU
# standing in for the GPU in the GPU tests: a dry run on a host without a GPU. So does a host
# where CUDA cannot be used, saying so.
default_out=gpu-check-out budget=${GPU_CHECK_SECONDS:-420} out_arg=${1:-}
train_steps=${GPU_CHECK_TRAIN_STEPS:-2000}
# shellcheck source=scripts/gpu-common.sh
source "$(dirname "$0")/gpu-common.sh"

if [ "$device" = cuda ]; then
  stage gpu-tests 60 240 "$work/gpu-tests" --ignored --test-threads 1 --nocapture
  steps=8 rounds=1 unet_batch=32 cifar_batch=128
else
  log "gpu-tests: no GPU, so the CPU stands in for it (a check of the tests themselves)"
  CDM_GPU_TEST_DEVICE=cpu stage gpu-tests 120 240 "$work/gpu-tests" --ignored --test-threads 1 --nocapture
  steps=1 rounds=1 unet_batch=4 cifar_batch=2
fi
cat "$out/gpu-tests.err" "$out/gpu-tests.out" > "$out/gpu-tests.txt" 2>/dev/null

# Each size in a precision (bench PRECISION): f32 has PyTorch's eager f32 beside it, bf16 its bf16
# autocast, and on CUDA both have its best eager setting (bf16 autocast and channels-last). The
# tiny UNet (make mnist's network) in bf16 only: the recipe's speed is timed by its training.
bench_flags=(--device "$device" --rounds "$rounds" --steps "$steps")
[ "$reference" = no ] && bench_flags+=(--no-reference)
bench() {
  local precision=$1 size batch limit sizes=(cifar10-cdm cifar10-ddm)
  [ "$precision" = bf16 ] && sizes+=(unet-cdm)
  for size in "${sizes[@]}"; do
    batch=$cifar_batch limit=60
    [ "$size" = unet-cdm ] && batch=$unet_batch limit=40
    stage "bench-$size-$precision" "$limit" 60 "$cdm" bench --size "$size" --batch "$batch" --precision "$precision" "${bench_flags[@]}" &&
      cp "$out/bench-$size-$precision.out" "$out/bench-$size-$precision.json"
  done
}
bench bf16

# make mnist's recipe for a few steps as it is, then with each step's loss and backward pass
# replayed from a CUDA graph (--cuda-graphs): the time per step, and the same losses.
short_steps=200
[ "$device" = cpu ] && short_steps=6
for graphs in "" graphs; do
  name=train-short${graphs:+-$graphs}
  stage "$name" 45 230 "$cdm" train --data mnist --conditional --model cdm --base-per-class --min-snr 5 --preset tiny \
    --batch 32 --lr 4e-4 --steps "$short_steps" --sample-every 0 --precision bf16 \
    --device "$device" ${graphs:+--cuda-graphs} --out "$work/$name"
  cp "$work/$name/log.jsonl" "$out/$name.jsonl" 2>/dev/null
done

# The data-parallel engine with a world of one against the plain step, for the sizes whose
# gradients are large: its overhead, and the all-reduce of the whole gradient alone. Two JSON
# lines in rank-bench-SIZE.json: the plain step, then the same as the one rank of a job.
for size in cifar10-ddm cifar10-cdm; do
  stage "rank-bench-$size" 90 60 bash -c '"$@" && WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT=29533 "$@"' _ "$cdm" bench --size "$size" --batch "$cifar_batch" --precision bf16 --no-reference \
    --device "$device" --rounds "$rounds" --steps "$steps" && cp "$out/rank-bench-$size.out" "$out/rank-bench-$size.json"
done

# make mnist's recipe in bf16 (its cosine learning rate ends at --steps), stopped by the clock
# if need be: checkpoints every 250 steps keep it resumable.
run=$out/mnist
if [ -f "$bundle/run.tar.xz" ] && [ ! -f "$run/checkpoint.safetensors" ]; then
  mkdir -p "$run"
  unpack "$bundle/run.tar.xz" "$work/run.tar" && tar -C "$run" -xf "$work/run.tar"
  python3 scripts/checkpoint-dedup.py restore "$run/checkpoint.safetensors" "$run/checkpoint.safetensors"
fi
done_steps=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["step"])' "$run/log.jsonl" 2>/dev/null || echo 0)
[ "$done_steps" -gt 0 ] && log "resuming the MNIST run at step $done_steps"
# What follows the training: scoring and sampling (60 s), parallel sampling (50 s), the f32
# benches (120 s).
train_limit=$((($(left) - 230 * scale) / scale))
if [ "$device" = cpu ]; then # a few steps: enough to go through every stage
  train_steps=${GPU_CHECK_TRAIN_STEPS:-$((done_steps + 10))}
  [ "$train_limit" -gt 150 ] && train_limit=150
fi
stage train "$train_limit" 180 "$cdm" train --data mnist --conditional --model cdm --base-per-class --min-snr 5 \
  --preset tiny --batch 32 --lr 4e-4 --steps "$train_steps" --sample-every 1000 --checkpoint-every 250 \
  --precision "${GPU_CHECK_TRAIN_PRECISION:-bf16}" --device "$device" --out "$run"
tail -n 1 "$run/log.jsonl" > "$out/train-last.json" 2>/dev/null
if [ -f "$run/checkpoint.safetensors" ]; then
  # bf16 against f32 on the same weights: bits/dim of the whole test set (10k images, one
  # forward pass each) and the denoising MSE per level (the first 1000 test images).
  n_denoise=1000
  [ "$device" = cpu ] && n_denoise=50
  for precision in f32 bf16; do
    stage "nll-$precision" 20 130 "$cdm" nll --ckpt "$run" --data mnist:split=test --dequantize uniform --json \
      --precision "$precision" --device "$device" && cp "$out/nll-$precision.out" "$out/nll-$precision.json"
    stage "denoising-$precision" 20 125 "$cdm" eval --ckpt "$run" --only denoising --n "$n_denoise" \
      --data mnist:split=test --precision "$precision" --device "$device" --out "$out/denoising-$precision"
  done
  sample=("$cdm" sample --ckpt "$run" --n 100 --sampler ddim --steps 50 --clip-x0 1 --precision bf16 --device "$device")
  [ "$device" = cpu ] && sample=("$cdm" sample --ckpt "$run" --n 10 --sampler ddim --steps 5 --clip-x0 1 --device cpu)
  stage sample-conditional 15 120 "${sample[@]}" --out "$out/conditional.png"
  # Parallel sampling's latency: each case (sampler, steps, window, samples) against the
  # sequential run with the same noise, one iteration against its windows' network calls
  # replayed alone (`latency` in parallel-*.json).
  # A case ending in "graphs" replays the network calls, sequential and parallel, from CUDA graphs.
  cases=("ddpm 1000 48 1" "ddpm 1000 48 1 graphs" "ddpm 1000 48 16" "ddim 50 50 1" "ddim 50 16 1"
    "ddim 50 16 1 graphs" "ddim 50 16 16")
  [ "$device" = cpu ] && cases=("ddpm 20 8 1" "ddim 10 4 1" "ddim 10 4 1 graphs")
  for case in "${cases[@]}"; do
    read -r sampler steps window n graphs <<< "$case"
    name=parallel-$sampler$steps-p$window-n$n${graphs:+-$graphs}
    stage "$name" 40 125 "$cdm" sample --ckpt "$run" --n "$n" --sampler "$sampler" --steps "$steps" \
      --parallel "$window" --tol 0.1 --clip-x0 1 --seed 2 --compare-sequential --json --device "$device" \
      ${graphs:+--cuda-graphs} --out "$work/$name.npy" && cp "$out/$name.out" "$out/$name.json"
  done
else
  log "no checkpoint yet: no bits/dim or samples"
fi
bench f32

python3 - "$out" "$device" > "$out/summary.md" <<'EOF'
import json, pathlib, sys
out, device = pathlib.Path(sys.argv[1]), sys.argv[2]
def load(name):
    try:
        return json.loads((out / name).read_text().strip().splitlines()[-1])
    except Exception:
        return None
print(f"# GPU check ({device})\n")
print("device:", (out / "device.json").read_text().strip() if (out / "device.json").exists() else "?")
stages = (out / "stages.txt").read_text().split("\n")
print("\n| stage | exit | seconds |\n|---|---|---|")
for line in filter(None, stages):
    print("| " + " | ".join(line.split()) + " |")
print("\n| bench | precision | batch | rust train ms | queued | from a CUDA graph, queued | pytorch train ms | ratio | rust sample ms | from a CUDA graph | pytorch sample ms | ratio | rust train TFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(out.glob("bench-*.json")):
    b = load(path.name)
    if b:
        f = lambda k: f"{b[k]:.1f}" if isinstance(b.get(k), (int, float)) else "-"
        r = lambda k: f"{b[k]:.2f}" if isinstance(b.get(k), (int, float)) else "-"
        rate = (b.get("rust_train_rate") or {}).get("tflops")
        print(f"| {b.get('size')} | {b.get('precision')} | {b.get('batch')} | {f('rust_ms_per_step')} | {f('rust_ms_per_step_queued')} | {f('rust_ms_per_step_queued_cuda_graph')} | {f('pytorch_ms_per_step')} | {r('rust_over_pytorch')} | "
              f"{f('rust_ms_per_sample_step')} | {f('rust_ms_per_sample_step_cuda_graph')} | {f('pytorch_ms_per_sample_step')} | {r('rust_over_pytorch_sampling')} | {rate if rate is None else round(rate, 1)} |")
for path in sorted(out.glob("rank-bench-*.json")):
    lines = [json.loads(l) for l in path.read_text().split("\n") if l.strip()]
    if len(lines) == 2 and "ranks" in lines[1]:
        plain, rank = lines
        r = rank["ranks"]
        print(f"\n{path.stem}: world of one over {r['backend']}: {rank['rust_ms_per_step']:.1f} ms a step against "
              f"{plain['rust_ms_per_step']:.1f} plain; the all-reduce alone {r['all_reduce_ms']:.2f} ms")
short = [(name, [json.loads(l) for l in (out / f"{name}.jsonl").read_text().split("\n") if l.strip()])
         for name in ["train-short", "train-short-graphs"] if (out / f"{name}.jsonl").exists()]
if short:
    print("\n| make mnist's recipe, bf16 | steps | loss at each logged step | training s | ms a step after the first logged step |\n|---|---|---|---|---|")
for name, lines in short:
    pace = (lines[-1]["seconds"] - lines[0]["seconds"]) / max(lines[-1]["step"] - lines[0]["step"], 1) * 1e3 if len(lines) > 1 else None
    print(f"| {name} | {lines[-1]['step']} | {', '.join('%.6f' % l['loss'] for l in lines)} | {lines[-1]['seconds']:.2f} | {pace if pace is None else round(pace, 2)} |")
t = load("train-last.json")
if t:
    print(f"\nMNIST training (bf16) reached step {t.get('step')} (loss {t.get('loss')}) in {t.get('seconds')} s of training")
rows = [(p.name, load(p.name)) for p in sorted(out.glob("parallel-*.json"))]
if any(r for _, r in rows):
    print("\n| case | iterations | evaluations / sequential | iteration ms | its windows' evaluation ms | ratio | parallel s | sequential s | speed-up | max abs gap |\n|---|---|---|---|---|---|---|---|---|---|")
for name, r in rows:
    if r:
        c, l = r["cost"], r["latency"]
        print(f"| {name[:-5]} | {c['iterations']} | {c['evaluations'] / c['steps']:.2f} | {l['iteration_seconds'] * 1e3:.2f} | "
              f"{l['window_evaluation_seconds'] * 1e3:.2f} | {l['iteration_over_evaluation']:.2f} | {c['seconds']:.2f} | "
              f"{r['sequential_cost']['seconds']:.2f} | {l['speed_up']:.2f} | {r['max_abs_difference']:.1e} |")
for precision in ["f32", "bf16"]:
    n = load(f"nll-{precision}.json")
    if n:
        print(f"bits/dim on the MNIST test set, {precision}: {n.get('bits_per_dim_8bit')} ({n.get('bits_per_dim_8bit_convention')})")
EOF
cat "$out/summary.md" >&2
log "done in $(($(date +%s) - start))s"
