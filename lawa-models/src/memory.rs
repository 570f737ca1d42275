//! Refusing, with the figure, what a device cannot hold: a model of a billion-wide layer asks
//! for terabytes, and libtorch would abort (or the machine swap) long before an error.

use tch::Device;

use crate::ModelError;

/// Bytes of memory a new allocation on `device` can use: the host's `MemAvailable` for the CPU;
/// `None` where it cannot be told (CUDA: libtorch's allocator decides, and tch exposes no
/// free-memory query).
pub fn available_bytes(device: Device) -> Option<u64> {
    if device != Device::Cpu {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `needed` bytes for `what` on `device` when they exceed what it has available, with
/// both figures in the message.
pub fn ensure_fits(what: &str, needed: u128, device: Device) -> Result<(), ModelError> {
    match available_bytes(device) {
        Some(available) if needed > available as u128 => Err(ModelError::TooLarge {
            what: what.to_string(),
            needed_gb: needed as f64 / 1e9,
            available_gb: available as f64 / 1e9,
        }),
        _ => Ok(()),
    }
}
