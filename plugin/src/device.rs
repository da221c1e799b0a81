//! Choosing the training device at run time: one driver for every backend compiled in.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// The devices this build understands, for help texts.
pub fn known() -> &'static str {
    if cfg!(all(feature = "tch", feature = "cuda")) {
        "cpu, tch-cpu, tch-cuda:N, cuda:N"
    } else if cfg!(feature = "tch") {
        "cpu, tch-cpu, tch-cuda:N (cuda:N needs --features cuda)"
    } else if cfg!(feature = "cuda") {
        "cpu, cuda:N (tch-* needs --features tch)"
    } else {
        "cpu (tch-cpu and tch-cuda:N need --features tch, cuda:N needs --features cuda)"
    }
}

/// The device index after `prefix` (`cuda:1` → 1).
#[cfg_attr(not(any(feature = "tch", feature = "cuda")), allow(dead_code))]
fn index_after(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.parse().ok()
}

/// `cpu` (Burn's flex backend), `tch-cpu` and `tch-cuda:N` (LibTorch, feature `tch`),
/// `cuda:N` (burn-cuda, feature `cuda`). The device is returned without autodiff.
pub fn parse(name: &str) -> Result<Device> {
    let name = name.trim();
    if name == "cpu" || name == "flex" {
        return Ok(Device::flex());
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
    Err(Error::VCycleConfig(format!(
        "unknown device `{name}`; this build knows: {}",
        known()
    )))
}
