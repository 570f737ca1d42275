//! Training throughput: tokens/s (and MFU on a known GPU) of lawa's training step beside
//! PyTorch eager and, on CUDA, `torch.compile` of the same model, batch and optimizer.

use std::time::Instant;

use anyhow::{Context, Result};
use lawa_core::data::Batch;
use lawa_core::optim::{AdamW, AdamWConfig};
use lawa_models::{Gpt, Precision};
use serde_json::{json, Value};
use tch::{nn::VarStore, Kind, Tensor};

use super::{gpu_memory_used_mib, gpu_peak_flops, profile, reference, sync, Bench};
use crate::train::gradients::{GradientPass, GradientRecipe, RecordingCheck};
use crate::train::trainer::decays;

/// A model, its optimizer and fixed random batches, ready to take steps.
pub(crate) struct StepLoop {
    pub(crate) vs: VarStore,
    gpt: Gpt,
    opt: AdamW,
    params: Vec<Tensor>,
    /// The same micro-batch, once per micro-step.
    batches: Vec<Batch>,
    gradients: GradientPass,
}

impl StepLoop {
    /// Seed-0 weights and one random micro-batch, reused for every micro-step.
    pub(crate) fn new(b: &Bench) -> Result<Self> {
        tch::manual_seed(0);
        let vs = VarStore::new(b.device);
        let gpt = Gpt::new(vs.root(), &b.cfg)?
            .with_precision(b.precision)
            .with_norm_kernel(b.norm_kernel)
            .with_linear_kernel(b.linear_kernel);
        let adamw = AdamWConfig {
            kernel: b.adamw_kernel,
            ..AdamWConfig::default()
        };
        let opt = AdamW::new(vs.variables(), adamw, decays)?;
        let params = opt.parameters();
        let shape = [b.batch_size as i64, b.block as i64];
        let vocab = b.cfg.vocab_size as i64;
        let x = Tensor::randint(vocab, shape, (Kind::Int64, b.device));
        let y = Tensor::randint(vocab, shape, (Kind::Int64, b.device));
        let accumulation = b.accumulation.max(1);
        let batches = (0..accumulation)
            .map(|_| Batch {
                x: x.shallow_clone(),
                y: y.shallow_clone(),
            })
            .collect();
        let recipe = GradientRecipe {
            accumulation,
            clip: 1.0,
            loss: b.loss,
        };
        Ok(StepLoop {
            vs,
            gpt,
            opt,
            params,
            batches,
            gradients: GradientPass::new(recipe, b.cuda_graph),
        })
    }

    /// One optimizer step over the micro-batches, as the trainer takes it.
    pub(crate) fn step(&mut self) -> Result<()> {
        let _gradients = self
            .gradients
            .run(&self.gpt, &self.params, &self.batches, |_| Ok(()))?;
        self.opt.step(6e-4)?;
        self.opt.zero_grad();
        Ok(())
    }

    /// How the recorded step compared with the same step taken eagerly, with `--cuda-graph`
    /// once recorded.
    pub(crate) fn recording_check(&self) -> Option<RecordingCheck> {
        self.gradients.recording_check()
    }

    /// Seconds per step over `steps` steps after `warmup` untimed ones.
    pub(crate) fn time_steps(&mut self, warmup: usize, steps: usize) -> Result<f64> {
        self.time_steps_with(warmup, steps, &mut |_| Ok(()))
    }

    /// As [`time_steps`](Self::time_steps), calling `after_step(n)` after the n-th step (from 1,
    /// warmup included), as a trainer calls its averagers.
    pub(crate) fn time_steps_with(
        &mut self,
        warmup: usize,
        steps: usize,
        after_step: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<f64> {
        let mut n = 0;
        let mut step = |this: &mut Self| -> Result<()> {
            this.step()?;
            n += 1;
            after_step(n)
        };
        for _ in 0..warmup {
            step(self)?;
        }
        sync(self.gpt.device());
        let start = Instant::now();
        for _ in 0..steps {
            step(self)?;
        }
        sync(self.gpt.device());
        Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
    }
}

/// Measures training throughput; prints the table and returns the figures.
pub fn run(b: &Bench) -> Result<Value> {
    let lawa = measure_lawa(b)?;
    let peak = (b.device.is_cuda() && b.precision == Precision::Bf16)
        .then(gpu_peak_flops)
        .flatten();
    let table = Table {
        flops: b.cfg.flops_per_token(),
        peak: peak.as_ref().map(|(_, p)| *p),
    };
    print_flop_count(b, table.flops);
    if let Some((name, p)) = &peak {
        println!("device: {name}, bf16 dense peak {:.0} TFLOP/s", p / 1e12);
    }
    println!(
        "{:<28} {:>12} {:>8} {:>14}",
        "implementation", "tokens/s", "MFU", "memory MiB"
    );
    table.row("lawa (Rust, tch)", lawa.tokens_per_s, lawa.memory);
    let mut out = json!({
        "model": {"n_layer": b.cfg.n_layer, "n_head": b.cfg.n_head, "n_embd": b.cfg.n_embd,
                  "vocab_size": b.cfg.vocab_size, "block_size": b.block,
                  "params": b.cfg.num_params(false)},
        "batch_size": b.batch_size, "accumulation": b.accumulation, "precision": b.precision.to_string(),
        "loss_chunk": b.loss.chunk, "loss_kernel": b.loss.kernel, "norm_kernel": b.norm_kernel,
        "linear_kernel": b.linear_kernel, "adamw_kernel": b.adamw_kernel,
        "cuda_graph": b.cuda_graph, "cuda_graph_check": lawa.graph_check,
        "device": b.device_name(), "gpu": peak.as_ref().map(|p| p.0.clone()),
        "flops_per_token": table.flops,
        "lawa": {"tokens_per_s": lawa.tokens_per_s, "mfu_percent": table.mfu(lawa.tokens_per_s),
                 "memory_mib": lawa.memory},
    });
    if let Some(p) = &lawa.profile {
        out["profile"] = json!({"lawa": p});
    }
    if b.reference {
        add_reference(b, &table, lawa.tokens_per_s, &mut out)?;
    }
    print_profiles(&out);
    Ok(out)
}

/// lawa's own figures: throughput, memory, and the optional profile and CUDA graph check.
struct LawaRun {
    tokens_per_s: f64,
    memory: Option<f64>,
    profile: Option<Value>,
    graph_check: Option<RecordingCheck>,
}

/// Times lawa's steps (and profiles them when asked).
fn measure_lawa(b: &Bench) -> Result<LawaRun> {
    let tokens = (b.batch_size * b.block * b.accumulation.max(1)) as f64;
    // The CUDA context first, so that the memory measured is the run's own.
    let _ = Tensor::zeros([1], (Kind::Float, b.device));
    let before = gpu_memory_used_mib();
    let mut steps = StepLoop::new(b)?;
    let tokens_per_s = tokens / steps.time_steps(b.warmup, b.steps)?;
    let memory = gpu_memory_used_mib().zip(before).map(|(a, z)| a - z);
    let profile = match &b.profile {
        Some((dir, n)) => Some(profile::profile_lawa(&mut steps, *n, b.device, dir)?),
        None => None,
    };
    let graph_check = steps.recording_check();
    if let Some(check) = &graph_check {
        println!("CUDA graph: the recorded step's first replay against the same step taken eagerly: {check}");
    }
    Ok(LawaRun {
        tokens_per_s,
        memory,
        profile,
        graph_check,
    })
}

/// The speed table: FLOPs per token, and the device's peak where it is known (for MFU).
struct Table {
    flops: f64,
    peak: Option<f64>,
}

impl Table {
    /// Model FLOPs utilization in percent, where the peak is known.
    fn mfu(&self, tokens_per_s: f64) -> Option<f64> {
        self.peak.map(|p| 100.0 * self.flops * tokens_per_s / p)
    }

    /// Prints one implementation's row.
    fn row(&self, name: &str, tokens_per_s: f64, memory: Option<f64>) {
        println!(
            "{:<28} {:>12.0} {:>8} {:>14}",
            name,
            tokens_per_s,
            self.mfu(tokens_per_s)
                .map_or("-".into(), |m| format!("{m:.1} %")),
            memory.map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
}

/// Prints the FLOP count MFU is taken against, written out.
fn print_flop_count(b: &Bench, flops: f64) {
    println!(
        "FLOPs per token: {flops:.4e} = 6 N + 12 L H Q T (nanoGPT's count: N = {} non-embedding \
         parameters with the padded head rows, L = {} layers, H = {} heads, Q = {} head width, \
         T = {} block)",
        b.cfg.num_params(true) + (b.cfg.padded_vocab_size() - b.cfg.vocab_size) * b.cfg.n_embd,
        b.cfg.n_layer,
        b.cfg.n_head,
        b.cfg.head_dim(),
        b.cfg.block_size
    );
}

/// Runs the PyTorch reference (eager, and `torch.compile` where it runs) and adds its rows to
/// the table and its figures to `out`.
fn add_reference(b: &Bench, table: &Table, ours: f64, out: &mut Value) -> Result<()> {
    let r = reference::run(&b.reference_config())?;
    if let Some((_, n)) = &b.profile {
        for which in ["eager", "compile"] {
            let key = format!("{which}_profile");
            if r.get(&key).is_some() {
                out["profile"][which] = profile::reference_summary(&r[&key], *n, b.device)?;
            }
        }
    }
    let eager = r["eager_tokens_per_s"].as_f64().context("eager tokens/s")?;
    let eager_mem = r["eager_memory_mib"].as_f64();
    let torch = r["torch"].as_str().unwrap_or("?");
    table.row(&format!("PyTorch {torch} eager"), eager, eager_mem);
    out["torch"] = r["torch"].clone();
    out["eager"] = json!({"tokens_per_s": eager, "mfu_percent": table.mfu(eager), "memory_mib": eager_mem,
                          "max_allocated_mib": r["eager_max_allocated_mib"]});
    out["speedup_vs_eager"] = json!(ours / eager);
    if let Some(compiled) = r["compile_tokens_per_s"].as_f64() {
        let mem = r["compile_memory_mib"].as_f64();
        table.row("PyTorch torch.compile", compiled, mem);
        println!("speedup_vs_compile={:.3}", ours / compiled);
        out["compile"] = json!({"tokens_per_s": compiled, "mfu_percent": table.mfu(compiled), "memory_mib": mem,
                                "max_allocated_mib": r["compile_max_allocated_mib"]});
        out["speedup_vs_compile"] = json!(ours / compiled);
    }
    if let Some(error) = r["compile_error"].as_str() {
        println!("torch.compile failed: {error}");
        out["compile_error"] = json!(error);
    }
    println!("speedup_vs_pytorch={:.3}", ours / eager);
    Ok(())
}

/// Prints the profiles in `out["profile"]`, lawa's first.
fn print_profiles(out: &Value) {
    let Some(profiles) = out.get("profile") else {
        return;
    };
    for (which, label) in [
        ("lawa", "lawa"),
        ("eager", "PyTorch eager"),
        ("compile", "torch.compile"),
    ] {
        if let Some(p) = profiles.get(which) {
            profile::print(label, p);
        }
    }
}
