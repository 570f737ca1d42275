//! Benchmarks, each measured beside a PyTorch reference run in the same invocation on the same
//! device: training throughput ([`train`]), the averagers' cost per step ([`averaging`]),
//! zero-shot scoring ([`tasks`]) and the loss-by-loss agreement of a short training run with
//! Hugging Face transformers ([`parity`]). Each prints a table and returns its figures as JSON
//! (`lawa bench --json`), which the GPU check (`scripts/gpu-check.sh`) gathers into one report.

pub mod averaging;
pub mod parity;
pub mod profile;
pub mod reference;
pub mod tasks;
pub mod train;

use std::process::Command;

use lawa_models::{GptConfig, Precision};
use tch::Device;

/// What one benchmark runs: the model shape, device, precision and step counts.
#[derive(Debug, Clone)]
pub struct Bench {
    /// The model.
    pub cfg: GptConfig,
    /// Where it runs.
    pub device: Device,
    /// fp32 or bf16 compute.
    pub precision: Precision,
    /// Tokens per sequence.
    pub block: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Requests scored by the tasks benchmark.
    pub requests: usize,
    /// Whether the reference also times `torch.compile` (CUDA only).
    pub compile: bool,
    /// Whether to run the PyTorch reference at all.
    pub reference: bool,
    /// How lawa's AdamW computes its step.
    pub adamw_kernel: lawa_core::optim::AdamWKernel,
    /// How lawa's training loss is computed (chunked or not, ATen or lawa's kernels).
    pub loss: lawa_models::LossPlan,
    /// What computes GPT-2's residual adds and LayerNorms.
    pub norm_kernel: lawa_models::Kernel,
    /// What computes GPT-2's linear layers (their bias gradients).
    pub linear_kernel: lawa_models::Kernel,
    /// Whether lawa's steps replay a CUDA graph after a few eager ones (`train.cuda_graph`).
    pub cuda_graph: bool,
    /// With a folder, `bench train` also profiles `profile_steps` steps of lawa and of the
    /// reference and writes their events there.
    pub profile: Option<(std::path::PathBuf, usize)>,
}

impl Bench {
    /// The device as the reference script names it.
    pub(crate) fn device_name(&self) -> &'static str {
        if self.device.is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
    }

    /// The fields of the reference script's config that every benchmark shares.
    pub(crate) fn reference_config(&self) -> serde_json::Value {
        serde_json::json!({
            "n_layer": self.cfg.n_layer, "n_head": self.cfg.n_head, "n_embd": self.cfg.n_embd,
            "block_size": self.block, "vocab_size": self.cfg.vocab_size,
            "batch_size": self.batch_size, "accumulation": self.accumulation,
            "steps": self.steps, "warmup": self.warmup, "device": self.device_name(),
            "precision": self.precision.to_string(),
            "compile": self.compile && self.device.is_cuda(),
            "profile_dir": self.profile.as_ref().map(|p| &p.0),
            "profile_steps": self.profile.as_ref().map_or(0, |p| p.1),
        })
    }
}

/// Waits for the device's queued work.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Device memory in use on GPU 0 in MiB, as `nvidia-smi` reports it (None without one).
pub fn gpu_memory_used_mib() -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The GPU's name and its dense bf16 peak in FLOP/s, for MFU, from the name `nvidia-smi`
/// reports (None when unknown).
pub fn gpu_peak_flops() -> Option<(String, f64)> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_string();
    let peak = if name.contains("H100") && name.contains("PCIe") {
        756e12
    } else if name.contains("H100") || name.contains("H200") || name.contains("GH200") {
        989e12
    } else if name.contains("A100") {
        312e12
    } else {
        return None;
    };
    Some((name, peak))
}
