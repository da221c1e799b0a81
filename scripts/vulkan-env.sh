# Sourced by the GPU scripts (gpu-check.sh, gpu-cost-benchmark.sh) with $here (the bundle or
# scripts directory), $work (a scratch directory) and $device set: makes Burn's wgpu backend
# find a Vulkan loader and, on an NVIDIA machine, the driver's Vulkan ICD.
# The Vulkan loader: the system's, else the one in the bundle.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
  if [ -e "$here/lib/libvulkan.so.1" ]; then
    export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "error: no libvulkan.so.1 on this machine or in $here/lib (Debian package libvulkan1)" >&2
    exit 2
  fi
fi
# The NVIDIA driver's Vulkan ICD: containers often ship the driver library without its JSON
# manifest, so write one that points the loader at it.
if [ -z "${VK_ICD_FILENAMES:-}" ] && [ "$device" != wgpu:cpu ]; then
  manifest=$(ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -n 1 || true)
  if [ -z "$manifest" ]; then
    driver=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia\.so\.0 /{print $NF; exit}')
    if [ -n "$driver" ]; then
      manifest="$work/nvidia_icd.json"
      printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' "$driver" >"$manifest"
    fi
  fi
  if [ -n "$manifest" ]; then
    export VK_ICD_FILENAMES="$manifest"
    echo "Vulkan driver manifest: $manifest"
  fi
fi
