//! Loss-by-loss agreement of a short training run with PyTorch: lawa trains a GPT-2 from its
//! seed-0 weights on fixed random batches; the reference loads the same weights (written with
//! `save_pretrained`) into Hugging Face transformers' `GPT2LMHeadModel` and trains it on the same
//! batches with `torch.optim.AdamW` (the same parameter groups and hyperparameters),
//! `clip_grad_norm_` and, for bf16, `torch.autocast`. The losses of every step are compared.

use std::path::Path;

use anyhow::{Context, Result};
use lawa_core::optim::{clip_grad_norm, AdamW, AdamWConfig};
use lawa_models::{CausalLm, Gpt, Precision};
use serde_json::{json, Value};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::{reference, Bench};
use crate::train::trainer::decays;

/// Learning rate of the parity run (constant: the schedule is tested elsewhere).
const LR: f64 = 6e-4;

/// The largest |loss difference| the check accepts: fp32 agrees to float rounding; bf16 rounds
/// every matmul input to 8 bits of mantissa, in orders that differ between the two
/// implementations, so the runs drift apart by a few thousandths of a nat over 20 steps.
pub fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::Bf16 => 2e-2,
    }
}

/// `steps` batches `[steps, batch, block]` of random inputs, drawn on the CPU, with a rule to
/// learn as targets (each token's successor, `x + 1 mod vocab`), so the loss falls as it would
/// in training rather than hovering at `ln vocab`.
fn batches(b: &Bench) -> (Tensor, Tensor) {
    tch::manual_seed(1);
    let shape = [b.steps as i64, b.batch_size as i64, b.block as i64];
    let vocab = b.cfg.vocab_size as i64;
    let x = Tensor::randint(vocab, shape, (Kind::Int64, Device::Cpu));
    let y = (&x + 1).remainder(vocab);
    (x, y)
}

/// lawa's losses of `b.steps` steps on `x`, `y`, from `gpt`'s current weights.
fn train_losses(b: &Bench, vs: &VarStore, gpt: &Gpt, x: &Tensor, y: &Tensor) -> Result<Vec<f64>> {
    let mut opt = AdamW::new(vs.variables(), AdamWConfig::default(), decays)?;
    let params = opt.parameters();
    let mut losses = Vec::with_capacity(b.steps);
    for i in 0..b.steps as i64 {
        let loss = gpt.loss(
            &x.get(i).to_device(b.device),
            &y.get(i).to_device(b.device),
            true,
        )?;
        losses.push(loss.double_value(&[]));
        loss.backward();
        let _norm = clip_grad_norm(&params, 1.0);
        opt.step(LR)?;
        opt.zero_grad();
    }
    Ok(losses)
}

/// Runs the parity check in the folder `dir` (it holds the initial weights and the batches the
/// reference reads); prints both loss columns and returns the figures, `passed` among them.
pub fn run(b: &Bench, dir: &Path) -> Result<Value> {
    tch::manual_seed(0);
    let vs = VarStore::new(b.device);
    let gpt = Gpt::new(vs.root(), &b.cfg)?.with_precision(b.precision);
    let init = dir.join("init");
    gpt.save_pretrained(&init)?;
    let (x, y) = batches(b);
    let file = dir.join("batches.safetensors");
    Tensor::write_safetensors(&[("x", &x), ("y", &y)], &file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    let ours = train_losses(b, &vs, &gpt, &x, &y)?;
    let adamw = AdamWConfig::default();
    let mut config = b.reference_config();
    config["parity"] = json!({
        "init": init, "batches": file, "lr": LR, "beta1": adamw.beta1, "beta2": adamw.beta2,
        "eps": adamw.eps, "weight_decay": adamw.weight_decay, "clip": 1.0,
    });
    let r = reference::run(&config)?;
    let theirs: Vec<f64> =
        serde_json::from_value(r["losses"].clone()).context("the reference returned no losses")?;
    let tol = tolerance(b.precision);
    println!(
        "{:>5} {:>14} {:>14} {:>12}",
        "step", "lawa", "transformers", "|diff|"
    );
    let mut max = 0.0f64;
    for (i, (a, t)) in ours.iter().zip(&theirs).enumerate() {
        let d = (a - t).abs();
        max = max.max(if d.is_nan() { f64::INFINITY } else { d });
        println!("{:>5} {a:>14.7} {t:>14.7} {d:>12.2e}", i + 1);
    }
    let passed = ours.len() == theirs.len() && max <= tol;
    // The first step compares the same weights on the same batch (no training yet): a gap there
    // is the forward pass's, one that only grows later is the updates' rounding.
    let first = match (ours.first(), theirs.first()) {
        (Some(a), Some(t)) => (a - t).abs(),
        _ => f64::NAN,
    };
    println!(
        "parity_max_abs_diff={max:.3e} (first step {first:.3e}; tolerance {tol:.0e}, {}): {}",
        b.precision,
        if passed { "passed" } else { "FAILED" }
    );
    Ok(json!({
        "precision": b.precision.to_string(), "device": b.device_name(), "steps": b.steps,
        "batch_size": b.batch_size, "block_size": b.block, "vocab_size": b.cfg.vocab_size,
        "n_layer": b.cfg.n_layer, "n_embd": b.cfg.n_embd, "torch": r["torch"],
        "transformers": r["transformers"], "lawa": ours, "reference": theirs,
        "max_abs_diff": max, "first_step_abs_diff": first, "tolerance": tol, "passed": passed,
    }))
}
