#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a machine with a GPU but no Rust and no internet:
# the train_gpt example built twice for Vulkan (WGSL shaders: --features wgpu; SPIR-V shaders:
# --features vulkan) and once for the CPU (flex), stripped and compressed with xz, the Vulkan
# loader libvulkan.so.1 from Debian's libvulkan1 package, the corpus and the check script.
#
#   scripts/gpu-bundle.sh [OUT_DIR]     (default target/gpu-check; then copy OUT_DIR.tar over)
#
# Needs: cargo, strip, xz, and apt-get download (for libvulkan1; skipped with a note if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/gpu-check}"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"

build() { # NAME FEATURES...
  local name=$1
  shift
  cargo build --release --locked -p vcycle-plugin --example train_gpt "$@"
  cp target/release/examples/train_gpt "$out/bin/$name"
  strip "$out/bin/$name"
}
build train_gpt-cpu
build train_gpt-wgsl --features wgpu
build train_gpt-spirv --features vulkan
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
cp scripts/gpu-check.sh "$out/"
tar -C "$(dirname "$out")" -cf "$out.tar" "$(basename "$out")"
du -sh "$out.tar"
echo "copy $out.tar to the GPU machine, then: tar xf $(basename "$out").tar && $(basename "$out")/gpu-check.sh"
