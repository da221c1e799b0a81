#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh and scripts/gpu-cost-benchmark.sh need on a machine with a
# GPU but no Rust and no internet: the train_gpt example built twice for Vulkan (WGSL shaders:
# --features wgpu; SPIR-V shaders: --features vulkan) and once for the CPU (flex), the
# cost_benchmark binary (bench/) for Vulkan (WGSL), all stripped and compressed with xz, the Vulkan
# loader libvulkan.so.1 from Debian's libvulkan1 package, the corpus and the scripts.
#
#   scripts/gpu-bundle.sh [OUT_DIR]     (default target/gpu-check; then copy OUT_DIR.tar over)
#
# Needs: cargo, strip, xz, and apt-get download (for libvulkan1; skipped with a note if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/gpu-check}"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"

build() { # BUILT NAME CARGO-ARGS...: target/release/BUILT → bin/NAME
  local built=$1 name=$2
  shift 2
  cargo build --release --locked "$@"
  cp "target/release/$built" "$out/bin/$name"
  strip "$out/bin/$name"
}
build examples/train_gpt train_gpt-cpu -p vcycle-plugin --example train_gpt
build examples/train_gpt train_gpt-wgsl -p vcycle-plugin --example train_gpt --features wgpu
build examples/train_gpt train_gpt-spirv -p vcycle-plugin --example train_gpt --features vulkan
build cost_benchmark cost_benchmark-wgsl -p vcycle-bench --features wgpu
xz -T0 -9 "$out"/bin/*

if command -v apt-get >/dev/null 2>&1 && (cd "$out/lib" && apt-get download libvulkan1 >/dev/null 2>&1); then
  deb=$(ls "$out"/lib/libvulkan1_*.deb)
  dpkg-deb -x "$deb" "$out/lib/root"
  find "$out/lib/root" -name 'libvulkan.so.1*' -exec cp -P {} "$out/lib/" \;
  rm -rf "$out/lib/root" "$deb"
else
  echo "note: could not fetch Debian's libvulkan1; the GPU machine must have libvulkan.so.1" >&2
fi
mkdir -p "$out/data"
cp data/rust-book.txt "$out/data/"
cp scripts/gpu-check.sh scripts/gpu-cost-benchmark.sh scripts/vulkan-env.sh "$out/"
tar -C "$(dirname "$out")" -cf "$out.tar" "$(basename "$out")"
du -sh "$out.tar"
echo "copy $out.tar to the GPU machine, then: tar xf $(basename "$out").tar && $(basename "$out")/gpu-check.sh"
echo "and for the training cost at scale: $(basename "$out")/gpu-cost-benchmark.sh"
