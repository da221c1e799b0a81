//! Choosing the training device at run time: one driver for every backend compiled in.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// The devices this build understands, for help texts.
pub fn known() -> String {
    let mut names = vec!["cpu"];
    let mut missing = Vec::new();
    if cfg!(feature = "wgpu") {
        names.push(if cfg!(feature = "vulkan") {
            "wgpu, wgpu:N, wgpu:cpu (Vulkan, SPIR-V)"
        } else {
            "wgpu, wgpu:N, wgpu:cpu (Vulkan, WGSL)"
        });
    } else {
        missing.push("wgpu:N needs --features wgpu or vulkan");
    }
    if cfg!(feature = "tch") {
        names.push("tch-cpu, tch-cuda:N");
    } else {
        missing.push("tch-* needs --features tch");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda:N");
    } else {
        missing.push("cuda:N needs --features cuda");
    }
    let mut text = names.join(", ");
    if !missing.is_empty() {
        text.push_str(&format!(" ({})", missing.join("; ")));
    }
    text
}

/// The device index after `prefix` (`cuda:1` → 1).
#[cfg_attr(
    not(any(feature = "tch", feature = "cuda", feature = "wgpu")),
    allow(dead_code)
)]
fn index_after(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.parse().ok()
}

/// `cpu` (Burn's flex backend); `wgpu` (the default adapter), `wgpu:N` (the N-th discrete GPU)
/// and `wgpu:cpu` (a software driver such as Mesa's lavapipe) on Vulkan (features `wgpu`,
/// `vulkan`); `tch-cpu` and `tch-cuda:N` (LibTorch, feature `tch`); `cuda:N` (burn-cuda,
/// feature `cuda`). The device is returned without autodiff.
pub fn parse(name: &str) -> Result<Device> {
    let name = name.trim();
    if name == "cpu" || name == "flex" {
        return Ok(Device::flex());
    }
    #[cfg(feature = "wgpu")]
    {
        use burn::tensor::DeviceKind;
        let kind = match name {
            "wgpu" => Some(DeviceKind::DefaultDevice),
            "wgpu:cpu" => Some(DeviceKind::Cpu),
            _ => index_after(name, "wgpu:").map(DeviceKind::DiscreteGpu),
        };
        if let Some(kind) = kind {
            return vulkan::device(name, kind);
        }
    }
    #[cfg(feature = "tch")]
    {
        if name == "tch-cpu" {
            #[allow(deprecated)]
            return Ok(Device::libtorch());
        }
        if let Some(i) = index_after(name, "tch-cuda:") {
            #[allow(deprecated)]
            return Ok(Device::libtorch_cuda(i));
        }
    }
    #[cfg(feature = "cuda")]
    {
        if let Some(i) = index_after(name, "cuda:") {
            return Ok(Device::cuda(i));
        }
    }
    Err(Error::Device {
        name: name.to_string(),
        message: format!("unknown device; this build knows: {}", known()),
    })
}

#[cfg(feature = "wgpu")]
mod vulkan {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use burn::tensor::wgpu::WgpuBackend;
    use burn::tensor::{Device, DeviceKind};

    use crate::error::{Error, Result};

    /// Devices already initialised, by kind: Burn initialises a wgpu runtime once per process
    /// and refuses a second `init` of the same adapter.
    static DEVICES: OnceLock<Mutex<HashMap<String, Device>>> = OnceLock::new();

    /// The Vulkan device of `kind`, initialised on first use. Vulkan is chosen explicitly: with
    /// no Vulkan driver this is an error, where Burn's automatic choice would quietly fall back
    /// to OpenGL.
    pub fn device(name: &str, kind: DeviceKind) -> Result<Device> {
        let key = format!("{kind:?}");
        let mut devices =
            DEVICES
                .get_or_init(Default::default)
                .lock()
                .map_err(|_| Error::Device {
                    name: name.to_string(),
                    message: "a previous initialisation panicked".into(),
                })?;
        if let Some(device) = devices.get(&key) {
            return Ok(device.clone());
        }
        let device = Device::wgpu_options()
            .device_kind(kind)
            .graphics_api(WgpuBackend::Vulkan)
            .init()
            .map_err(|e| Error::Device {
                name: name.to_string(),
                message: format!(
                    "no Vulkan adapter of this kind could be initialised ({e}); is a Vulkan \
                     driver installed (libvulkan1 and the GPU's driver, or mesa-vulkan-drivers)?"
                ),
            })?;
        devices.insert(key, device.clone());
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_devices_are_refused_with_the_known_ones() {
        let Err(e) = parse("tpu:0") else {
            panic!("tpu:0 was accepted")
        };
        let text = e.to_string();
        assert!(text.contains("tpu:0") && text.contains("cpu"), "{text}");
    }
}
