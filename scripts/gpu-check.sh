#!/usr/bin/env bash
# The GPU check, for a GPU host that has PyTorch (2.11.0+cu130) in python3's site-packages but no
# Rust and no network. Run from the repository root with gpu-bundle/ (`make gpu-bundle`) beside
# it: bash scripts/gpu-check.sh [OUT]  (default: $OUT, else ./gpu-check-out).
# It points the loader at the host's own torch/lib and nvidia/*/lib, then writes to OUT, each
# stage time-boxed so the whole stays under GPU_CHECK_SECONDS (default 420):
#   nvidia-smi.txt, host.txt  the GPU, the driver, python3's torch
#   device.json               the device line: what `cdm device` picks, and why not CUDA
#   gpu-tests.txt             tests/gpu.rs: GPU against CPU, with tolerances
#   bench-SIZE.json           `cdm bench` against bench/reference.py on the same device
#   mnist/                    `make mnist`'s training (GPU_CHECK_TRAIN_STEPS, default its 2000
#                             steps), stopped by the clock if need be and then resumable (from
#                             gpu-bundle/run.tar.xz: `make gpu-bundle RUN=OUT/mnist`); its log and
#                             grids; nll.json (bits/dim, uniform dequantization), *.png samples
#   stages.txt, check.log     each stage's exit code and seconds; summary.md, the figures
# GPU_CHECK_SKIP="gpu-tests bench" leaves out the stages whose names start so (a rerun of the
# training alone, say). GPU_CHECK_DEVICE=cpu runs everything on the CPU, briefly, with the CPU standing in for the GPU
# in the GPU tests: a dry run on a host without a GPU. So does a host where CUDA cannot be used,
# saying so.
set -uo pipefail
export NO_COLOR=1 # plain log lines in OUT
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bundle=${GPU_BUNDLE:-$root/gpu-bundle}
budget=${GPU_CHECK_SECONDS:-420}
scale=1 # stage limits are for the GPU; a CPU dry run gets several times as long
device=${GPU_CHECK_DEVICE:-cuda}
train_steps=${GPU_CHECK_TRAIN_STEPS:-2000}
start=$(date +%s)
: > "$out/stages.txt"

log() { echo "[$(($(date +%s) - start))s] $*" | tee -a "$out/check.log" >&2; }
left() { echo $((start + budget - $(date +%s))); }

# stage NAME LIMIT RESERVE CMD...: runs CMD with stdout to OUT/NAME.out and stderr to
# OUT/NAME.err, for at most LIMIT seconds and never into the last RESERVE seconds of the budget.
stage() {
  local name=$1 limit=$(($2 * scale)) reserve=$(($3 * scale))
  shift 3
  local skip
  for skip in ${GPU_CHECK_SKIP:-}; do
    if [[ $name == "$skip"* ]]; then
      log "$name: skipped (GPU_CHECK_SKIP)"
      echo "$name skipped 0" >> "$out/stages.txt"
      return 1
    fi
  done
  local cap=$(($(left) - reserve))
  [ "$cap" -lt "$limit" ] && limit=$cap
  if [ "$limit" -lt 5 ]; then
    log "$name: skipped, the time budget is spent"
    echo "$name skipped 0" >> "$out/stages.txt"
    return 1
  fi
  log "$name: up to ${limit}s: $*"
  local t0 rc
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$out/$name.out" 2> "$out/$name.err"
  rc=$?
  [ "$rc" = 124 ] && log "$name: stopped at its time limit"
  log "$name: exit $rc after $(($(date +%s) - t0))s"
  echo "$name $rc $(($(date +%s) - t0))" >> "$out/stages.txt"
  return "$rc"
}

unpack() { # unpack FILE.xz DEST: xz, else Python's lzma
  if command -v xz >/dev/null; then xz -dc "$1" > "$2"; else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1" > "$2"; fi
}

# The host's torch and CUDA libraries: torch/lib, then every nvidia/*/lib beside torch.
torch_dir=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)
if [ -n "$torch_dir" ]; then
  libs=$torch_dir/lib
  for d in "$(dirname "$torch_dir")"/nvidia/*/lib; do [ -d "$d" ] && libs=$libs:$d; done
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  reference=yes
else
  log "python3 has no torch: the binaries use the libtorch they were built with, and bench runs Rust only"
  reference=no
fi
log "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

# The bundle: binaries and data into a scratch folder (not OUT, which goes back), MNIST as the
# per-user cache the binary reads.
work=$(mktemp -d "${TMPDIR:-/tmp}/cdm-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
for f in cdm.xz gpu-tests.xz mnist.tar.xz; do
  [ -f "$bundle/$f" ] || { log "missing $bundle/$f: run \`make gpu-bundle\` where Rust is"; exit 1; }
done
unpack "$bundle/cdm.xz" "$work/cdm" && unpack "$bundle/gpu-tests.xz" "$work/gpu-tests" && chmod +x "$work/cdm" "$work/gpu-tests"
mkdir -p "$work/cache/cdm/data"
unpack "$bundle/mnist.tar.xz" "$work/mnist.tar" && tar -C "$work/cache/cdm/data" -xf "$work/mnist.tar" && rm "$work/mnist.tar"
export XDG_CACHE_HOME=$work/cache
cdm=$work/cdm
log "bundle of commit $(cat "$bundle/commit" 2>/dev/null || echo unknown)"
# Only for what the host lacks (LD_LIBRARY_PATH would put them before its own).
if [ -f "$bundle/syslib.tar.xz" ] && ldd "$cdm" | grep -q "not found"; then
  log "the host lacks $(ldd "$cdm" | awk '/not found/ {printf "%s ", $1}'): using the bundle's copies"
  unpack "$bundle/syslib.tar.xz" "$work/syslib.tar" && tar -C "$work" -xf "$work/syslib.tar"
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$work/syslib
fi
if ! "$cdm" --version > /dev/null 2> "$out/start.err"; then
  log "the binary does not start here: $(cat "$out/start.err"); it needs $(cat "$bundle/requires" 2>/dev/null) and the host has $(ldd --version | head -1)"
  exit 1
fi

{
  uname -a
  ldd --version | head -1
  echo "the binaries need: $(cat "$bundle/requires" 2>/dev/null)"
  ldd "$cdm"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
  echo "bundle commit: $(cat "$bundle/commit" 2>/dev/null)"
} > "$out/host.txt"
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$out/nvidia-smi.txt" 2>&1; fi

stage device 60 300 "$cdm" device --device auto
cp "$out/device.out" "$out/device.json" 2>/dev/null
if [ "$device" = cuda ] && ! grep -q '"device":"cuda:0"' "$out/device.json"; then
  log "no usable GPU ($(cat "$out/device.err")); running the CPU parts only"
  device=cpu
fi
if [ "$device" = cpu ]; then
  scale=4
  budget=${GPU_CHECK_SECONDS:-$((budget * scale))}
fi

if [ "$device" = cuda ]; then
  stage gpu-tests 120 240 "$work/gpu-tests" --ignored --test-threads 1 --nocapture
  cat "$out/gpu-tests.err" "$out/gpu-tests.out" > "$out/gpu-tests.txt" 2>/dev/null
  steps=10 rounds=2 unet_batch=32 cifar_batch=128
else
  log "gpu-tests: no GPU, so the CPU stands in for it (a check of the tests themselves)"
  CDM_GPU_TEST_DEVICE=cpu stage gpu-tests 120 240 "$work/gpu-tests" --ignored --test-threads 1 --nocapture
  cat "$out/gpu-tests.err" "$out/gpu-tests.out" > "$out/gpu-tests.txt" 2>/dev/null
  steps=1 rounds=1 unet_batch=4 cifar_batch=2
fi

bench_flags=(--device "$device" --rounds "$rounds")
[ "$reference" = no ] && bench_flags+=(--no-reference)
stage bench-unet-cdm 60 200 "$cdm" bench --size unet-cdm --batch "$unet_batch" --steps "$steps" "${bench_flags[@]}"
stage bench-unet-ddm 45 180 "$cdm" bench --size unet-ddm --batch "$unet_batch" --steps "$steps" "${bench_flags[@]}"
stage bench-cifar10-cdm 75 150 "$cdm" bench --size cifar10-cdm --batch "$cifar_batch" --steps "$steps" "${bench_flags[@]}"
stage bench-cifar10-ddm 60 120 "$cdm" bench --size cifar10-ddm --batch "$cifar_batch" --steps "$steps" "${bench_flags[@]}"
for size in unet-cdm unet-ddm cifar10-cdm cifar10-ddm; do
  cp "$out/bench-$size.out" "$out/bench-$size.json" 2>/dev/null
done

# make mnist's recipe (its cosine learning rate ends at --steps), stopped by the clock if need
# be: checkpoints every 250 steps keep it resumable.
run=$out/mnist
if [ -f "$bundle/run.tar.xz" ] && [ ! -f "$run/checkpoint.safetensors" ]; then
  mkdir -p "$run"
  unpack "$bundle/run.tar.xz" "$work/run.tar" && tar -C "$run" -xf "$work/run.tar"
  python3 scripts/checkpoint-dedup.py restore "$run/checkpoint.safetensors" "$run/checkpoint.safetensors"
fi
done_steps=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["step"])' "$run/log.jsonl" 2>/dev/null || echo 0)
[ "$done_steps" -gt 0 ] && log "resuming the MNIST run at step $done_steps"
train_limit=$((($(left) - 75 * scale) / scale))
if [ "$device" = cpu ]; then # a few steps: enough to go through every stage
  train_steps=${GPU_CHECK_TRAIN_STEPS:-$((done_steps + 10))}
  [ "$train_limit" -gt 150 ] && train_limit=150
fi
stage train "$train_limit" 75 "$cdm" train --data mnist --conditional --model cdm --base-per-class --min-snr 5 \
  --preset tiny --batch 32 --lr 4e-4 --steps "$train_steps" --sample-every 500 --checkpoint-every 250 \
  --device "$device" --out "$run"
tail -n 1 "$run/log.jsonl" > "$out/train-last.json" 2>/dev/null
if [ -f "$run/checkpoint.safetensors" ]; then
  # The whole test set (10k images), one forward pass each.
  stage nll 40 35 "$cdm" nll --ckpt "$run" --data mnist:split=test --dequantize uniform --json --device "$device"
  cp "$out/nll.out" "$out/nll.json" 2>/dev/null
  sample=("$cdm" sample --ckpt "$run" --n 100 --sampler ddim --steps 50 --clip-x0 1 --device "$device")
  [ "$device" = cpu ] && sample=("$cdm" sample --ckpt "$run" --n 10 --sampler ddim --steps 5 --clip-x0 1 --device cpu)
  stage sample-conditional 30 5 "${sample[@]}" --out "$out/conditional.png"
  stage sample-unconditional 30 0 "${sample[@]}" --unconditional --out "$out/unconditional.png"
  stage sample-guided 30 0 "${sample[@]}" --guidance 1 --out "$out/guided.png"
else
  log "no checkpoint yet: no bits/dim or samples"
fi

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
print("\n| bench | batch | rust train ms | pytorch train ms | ratio | rust sample ms | pytorch sample ms | ratio |\n|---|---|---|---|---|---|---|---|")
for size in ["unet-cdm", "unet-ddm", "cifar10-cdm", "cifar10-ddm"]:
    b = load(f"bench-{size}.json")
    if b:
        f = lambda k: f"{b[k]:.1f}" if isinstance(b.get(k), (int, float)) else "-"
        r = lambda k: f"{b[k]:.2f}" if isinstance(b.get(k), (int, float)) else "-"
        print(f"| {size} | {b.get('batch')} | {f('rust_ms_per_step')} | {f('pytorch_ms_per_step')} | {r('rust_over_pytorch')} | "
              f"{f('rust_ms_per_sample_step')} | {f('pytorch_ms_per_sample_step')} | {r('rust_over_pytorch_sampling')} |")
t = load("train-last.json")
if t:
    print(f"\nMNIST training reached step {t.get('step')} (loss {t.get('loss')})")
n = load("nll.json")
if n:
    print(f"bits/dim on the MNIST test set: {n.get('bits_per_dim_8bit')} ({n.get('bits_per_dim_8bit_convention')})")
EOF
cat "$out/summary.md" >&2
log "done in $(($(date +%s) - start))s"
