#!/usr/bin/env bash
# The training-cost benchmark at the accelerator's scale (cost_benchmark --scale gpu: a GPT of
# 8 layers × 8 heads, width 512, batches of 32 × 128 bytes): the tuned protocol's baseline
# (warm-up, cosine decay to 10%) against a 2-level V-cycle with the same training FLOPs, one
# seed, one learning-rate factor per side, both runs at once on one device. Made for a GPU
# machine with no Rust toolchain and no internet: it runs the cost_benchmark binary that
# scripts/gpu-bundle.sh built for Vulkan (WGSL). The runs stop at a time limit (default 450 s);
# the report then covers the runs that finished, and the logs show how far the others got.
#
#   gpu-cost-benchmark.sh [--device wgpu|wgpu:N|wgpu:cpu|cpu] [--budget N] [--lr-factor F]
#                         [--limit SECONDS] [--tiny]
#
# --tiny tries the script where there is no GPU: the CPU-sized model (--scale small) and a
# short budget (--quick). COST_BENCHMARK overrides the binary (default bin/cost_benchmark-wgsl,
# possibly .xz, beside this script); OUT_DIR the results (default ./gpu-cost-results).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus="${CORPUS:-$here/data/rust-book.txt}"
[ -f "$corpus" ] || corpus="$here/../data/rust-book.txt"
work="${WORK_DIR:-$(mktemp -d)}"
out="${OUT_DIR:-$PWD/gpu-cost-results}"
device=wgpu
budget=16
factor=1
limit=450
tiny=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --lr-factor) factor=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --tiny) tiny=1; shift ;;
    *) echo "usage: $0 [--device wgpu|wgpu:N|wgpu:cpu|cpu] [--budget N] [--lr-factor F] [--limit S] [--tiny]" >&2; exit 2 ;;
  esac
done
[ -f "$corpus" ] || { echo "error: corpus not found: $corpus (set CORPUS)" >&2; exit 2; }
mkdir -p "$work" "$out"
[ "$device" = cpu ] || . "$here/vulkan-env.sh"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

exe="${COST_BENCHMARK:-$here/bin/cost_benchmark-wgsl}"
if [ ! -x "$exe" ] && [ -f "$exe.xz" ]; then
  xz -dc "$exe.xz" >"$work/cost_benchmark" && chmod +x "$work/cost_benchmark"
  exe="$work/cost_benchmark"
fi
[ -x "$exe" ] || { echo "error: no cost_benchmark binary at $exe (set COST_BENCHMARK)" >&2; exit 2; }

if [ "$tiny" = 1 ]; then
  size=(--scale small --quick)
else
  size=(--scale gpu)
fi
args=(--tuned --levels 2 --no-constant --seeds 1 --lr-factors "$factor" --budget "$budget"
  "${size[@]}" --device "$device" --corpus "$corpus" --out "$out" --work "$work")
echo "$exe ${args[*]}"
rc=0
# Both runs at once: a small model leaves most of a GPU idle.
timeout --kill-after 10 "$limit" "$exe" "${args[@]}" --jobs 2 || rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "time limit ${limit} s"
  if compgen -G "$out/*/runs/*.json" >/dev/null; then
    echo "reporting the runs that finished:"
    "$exe" "${args[@]}" --report-only || true
  else
    echo "no run finished"
  fi
  echo "how far each run got (its log's last lines: segment, split, batches done, seconds):"
  for log in "$work"/*/logs/*.log; do
    echo "== $(basename "$log")"
    tail -n 2 "$log"
  done
elif [ "$rc" != 0 ]; then
  echo "cost_benchmark failed (exit $rc); logs under $work" >&2
  exit "$rc"
fi
echo "results: $out; logs: $work"
