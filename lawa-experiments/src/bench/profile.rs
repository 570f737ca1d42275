//! Where a training step's time goes: a few steps of lawa and of the PyTorch reference under
//! the same profiler (libtorch's Kineto), summed the same way. On CUDA the table lists kernels,
//! with how much of the wall time the device was busy (the rest is the device waiting for the
//! host); on the CPU it lists operators, timed inclusively (a caller's time holds its callees').

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lawa_ops::{busy_ns, parse_events, totals_by_name, EventDevice, ProfiledEvent, Profiler};
use serde_json::{json, Value};
use tch::Device;

use super::sync;
use super::train::StepLoop;

/// Rows of each implementation's table.
const TOP: usize = 12;

/// Profiles `n` steps of lawa's loop, writes the events to `dir/lawa.tsv` and returns the
/// summary.
pub(crate) fn profile_lawa(
    steps: &mut StepLoop,
    n: usize,
    device: Device,
    dir: &Path,
) -> Result<Value> {
    sync(device);
    let profiler = Profiler::start(device.is_cuda())?;
    let started = Instant::now();
    for _ in 0..n {
        steps.step()?;
    }
    sync(device);
    let wall = started.elapsed().as_secs_f64();
    let events = profiler.stop(None)?;
    let path = dir.join("lawa.tsv");
    let lines: Vec<String> = events.iter().map(ProfiledEvent::line).collect();
    std::fs::write(&path, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(summary(&events, device, n, wall, &path))
}

/// The summary of the reference's profile `r` (`{events, wall_s}`), read from its events file.
pub(crate) fn reference_summary(r: &Value, n: usize, device: Device) -> Result<Value> {
    let path = r["events"]
        .as_str()
        .context("the reference's profile names no events file")?;
    let wall = r["wall_s"]
        .as_f64()
        .context("the reference's profile has no wall time")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let events = parse_events(&text)?;
    Ok(summary(&events, device, n, wall, Path::new(path)))
}

/// Per step: the wall time, the time the device (the CPU's operators on the CPU) was busy, and
/// the largest events by name.
fn summary(events: &[ProfiledEvent], device: Device, n: usize, wall_s: f64, path: &Path) -> Value {
    let on = if device.is_cuda() {
        EventDevice::Cuda
    } else {
        EventDevice::Cpu
    };
    let steps = n.max(1) as f64;
    let per_step = |ns: u64| ns as f64 / 1e6 / steps;
    let wall_ms = wall_s * 1e3 / steps;
    let busy_ms = per_step(busy_ns(events, on));
    let top: Vec<Value> = totals_by_name(events, on)
        .into_iter()
        .take(TOP)
        .map(|(name, ns, calls)| {
            json!({"name": name, "ms_per_step": per_step(ns),
                   "calls_per_step": calls as f64 / steps})
        })
        .collect();
    json!({"steps": n, "wall_ms_per_step": wall_ms, "busy_ms_per_step": busy_ms,
           "busy_percent": 100.0 * busy_ms / wall_ms, "events": path,
           "device": if device.is_cuda() { "cuda kernels" } else { "cpu operators (inclusive)" },
           "top": top})
}

/// Prints one implementation's summary.
pub(crate) fn print(name: &str, s: &Value) {
    println!(
        "{name}: {:.2} ms a step, {} busy {:.2} ms ({:.1} %)",
        s["wall_ms_per_step"].as_f64().unwrap_or(f64::NAN),
        s["device"].as_str().unwrap_or("?"),
        s["busy_ms_per_step"].as_f64().unwrap_or(f64::NAN),
        s["busy_percent"].as_f64().unwrap_or(f64::NAN),
    );
    println!("  {:>10} {:>8}  name", "ms/step", "calls");
    for row in s["top"].as_array().into_iter().flatten() {
        let name = row["name"].as_str().unwrap_or("?");
        println!(
            "  {:>10.3} {:>8.1}  {}",
            row["ms_per_step"].as_f64().unwrap_or(f64::NAN),
            row["calls_per_step"].as_f64().unwrap_or(f64::NAN),
            name.chars().take(110).collect::<String>()
        );
    }
}
