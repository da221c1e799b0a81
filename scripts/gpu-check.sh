#!/usr/bin/env bash
# Trains the example GPT through a full V-cycle (coalesce, train small, grow back) on a Vulkan
# GPU with the WGSL and the SPIR-V builds of Burn's wgpu backend, and on the CPU backend
# (flex) for comparison; prints tokens per second of every segment and the time of every
# boundary (export from the device, transform, reload onto it). Made for a GPU machine with
# no Rust toolchain and no internet: it runs the binaries scripts/gpu-bundle.sh built
# elsewhere. At most 7 minutes: each run has its own time limit (60 s on the CPU, 100 s per
# GPU run), after which what it finished is still reported.
#
#   gpu-check.sh [--device wgpu|wgpu:N|wgpu:cpu] [--only cpu|wgsl|spirv] [--quick]
#
# Run from the bundle directory (bin/, lib/, data/ beside this script) or from a checkout
# with BIN_DIR pointing at the binaries (train_gpt-cpu, train_gpt-wgsl, train_gpt-spirv, each
# possibly .xz); a missing binary is reported and skipped. --device wgpu:cpu runs on Mesa's
# software Vulkan (lavapipe), where the SPIR-V build is skipped: it crashes lavapipe.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin_dir="${BIN_DIR:-$here/bin}"
corpus="${CORPUS:-$here/data/rust-book.txt}"
[ -f "$corpus" ] || corpus="$here/../data/rust-book.txt"
work="${WORK_DIR:-$(mktemp -d)}"
mkdir -p "$work"
device=wgpu
only=""
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: $0 [--device wgpu|wgpu:N|wgpu:cpu] [--only cpu|wgsl|spirv] [--quick]" >&2; exit 2 ;;
  esac
done
[ -f "$corpus" ] || { echo "error: corpus not found: $corpus (set CORPUS)" >&2; exit 2; }

# The Vulkan loader and the NVIDIA driver's manifest (VK_ICD_FILENAMES), unless --device wgpu:cpu.
. "$here/vulkan-env.sh"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

binary() { # NAME: the path of an unpacked binary, or nothing
  local plain="$bin_dir/$1"
  if [ -x "$plain" ]; then
    echo "$plain"
  elif [ -f "$plain.xz" ]; then
    xz -dc "$plain.xz" >"$work/$1" && chmod +x "$work/$1" && echo "$work/$1"
  fi
}

# --quick is a functional check (a software driver, a debug build): no time limits to speak of.
limit_cpu=60
limit_gpu=100
if [ "$quick" = 1 ]; then
  limit_cpu=900
  limit_gpu=900
  small=(--down-steps 4 --bottom-steps 8 --up-steps 4)
  large=(--down-steps 2 --bottom-steps 4 --up-steps 2 --layers 4 --heads 4 --hidden 128)
  cpu_steps=(--down-steps 2 --bottom-steps 4 --up-steps 2)
else
  small=(--down-steps 100 --bottom-steps 600 --up-steps 300)
  large=(--down-steps 50 --bottom-steps 200 --up-steps 100 --layers 8 --heads 8 --hidden 512)
  cpu_steps=(--down-steps 10 --bottom-steps 40 --up-steps 20)
fi

summary="$work/summary.txt"
: >"$summary"
run() { # LABEL BINARY LIMIT_S ARGS...
  local label=$1 exe=$2 limit=$3
  shift 3
  echo
  echo "== $label"
  local log="$work/$label.log" rc=0
  timeout "$limit" "$exe" --fresh --run-dir "$work/run-$label" --corpus "$corpus" "$@" >"$log" 2>&1 || rc=$?
  grep -v '^\s*$' "$log" | tail -n 14
  {
    echo "== $label (exit $rc$([ "$rc" = 124 ] && echo ", time limit ${limit} s"))"
    if grep -q '^  segment ' "$log"; then
      sed -n '/^  segment /,/^final model/p' "$log" | grep -v '^final model'
    else
      grep '^boundary ' "$log" || echo "  (no boundary reached)"
    fi
  } >>"$summary"
}

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
if want cpu; then
  exe=$(binary train_gpt-cpu)
  if [ -n "$exe" ]; then run cpu "$exe" "$limit_cpu" --device cpu "${cpu_steps[@]}"
  else echo "skipped cpu: no train_gpt-cpu in $bin_dir" | tee -a "$summary"; fi
fi
for build in wgsl spirv; do
  want "$build" || continue
  if [ "$build" = spirv ] && [ "$device" = wgpu:cpu ]; then
    echo "skipped spirv: the SPIR-V build crashes Mesa's lavapipe" | tee -a "$summary"
    continue
  fi
  exe=$(binary "train_gpt-$build")
  if [ -z "$exe" ]; then
    echo "skipped $build: no train_gpt-$build in $bin_dir" | tee -a "$summary"
    continue
  fi
  run "$build-4L-w128" "$exe" "$limit_gpu" --device "$device" "${small[@]}"
  run "$build-8L-w512" "$exe" "$limit_gpu" --device "$device" "${large[@]}"
done

echo
echo "Summary (train s: the segment's launch, Burn's validation at its end included;"
echo "boundary s: export from the device, transform, reload onto it):"
cat "$summary"
echo "logs: $work"
