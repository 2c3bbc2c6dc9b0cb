# What scripts/gpu-check.sh and scripts/gpu-cifar.sh share, sourced by both on a GPU host that
# has PyTorch (2.11.0+cu130) in python3's site-packages but no Rust and no network. The caller
# sets default_out (OUT's default under the repository), budget (seconds in all) and out_arg
# (its first argument, if any). This file then:
# - points the loader at the host's own torch/lib and nvidia/*/lib (bench's reference=yes), or
#   keeps the libtorch the binaries were built with (reference=no);
# - unpacks gpu-bundle/ (`make gpu-bundle`) into a scratch folder $work: $cdm, $work/gpu-tests,
#   the CUDA extension library (CDM_CUDA_LIBRARY: NCCL, CUDA graphs), MNIST as the per-user cache the binary reads
#   (XDG_CACHE_HOME), the bundle's system libraries where the host lacks them;
# - writes OUT/host.txt, OUT/nvidia-smi.txt, OUT/device.json, and runs the rest on the CPU
#   (device=cpu, every limit ×4) where CUDA cannot be used or GPU_CHECK_DEVICE=cpu asks;
# - defines log, left, unpack and stage (each stage time-boxed, its exit code and seconds in
#   OUT/stages.txt; GPU_CHECK_SKIP="a b" skips the stages whose names start so).
set -uo pipefail
export NO_COLOR=1 # plain log lines in OUT
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${out_arg:-${OUT:-$root/$default_out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bundle=${GPU_BUNDLE:-$root/gpu-bundle}
scale=1 # stage limits are for the GPU; a CPU dry run gets several times as long
device=${GPU_CHECK_DEVICE:-cuda}
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
if [ -f "$bundle/libcdm_cuda.so.xz" ]; then
  unpack "$bundle/libcdm_cuda.so.xz" "$work/libcdm_cuda.so" && export CDM_CUDA_LIBRARY=$work/libcdm_cuda.so
else
  log "the bundle has no libcdm_cuda.so: ranks on the GPU use Gloo, and no call is replayed from a CUDA graph"
fi
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

stage device 60 60 "$cdm" device --device auto
cp "$out/device.out" "$out/device.json" 2>/dev/null
if [ "$device" = cuda ] && ! grep -q '"device":"cuda:0"' "$out/device.json"; then
  log "no usable GPU ($(cat "$out/device.err")); running the CPU parts only"
  device=cpu
fi
if [ "$device" = cpu ]; then
  scale=4
  budget=$((budget * scale))
fi
