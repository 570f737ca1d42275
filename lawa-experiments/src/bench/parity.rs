//! Loss-by-loss agreement of a short training run with PyTorch: lawa trains a GPT-2 from its
//! seed-0 weights on fixed random batches; the reference loads the same weights (written with
//! `save_pretrained`) into Hugging Face transformers' `GPT2LMHeadModel` and trains it on the same
//! batches with `torch.optim.AdamW` (the same parameter groups and hyperparameters),
//! `clip_grad_norm_` and, for bf16, `torch.autocast`. The losses of every step are compared.
//!
//! In bf16 two correct implementations drift apart within a few steps: AdamW's first updates
//! are close to `lr * sign(g)`, so a gradient that rounds to the other sign moves a weight by
//! twice the learning rate, and the runs' differences grow from there. On a GPU even fp32 runs
//! are not repeatable to the last bit (the memory-efficient attention's backward, among others,
//! adds in an order that varies from run to run). So the reference trains four times more (see
//! [`VARIANTS`]): the same way, with its linear layers' weights laid out as lawa's are, so laid
//! out and with lawa's padded LM head, and with the math attention kernel instead of its fastest
//! one. lawa's difference is judged against the largest of those spreads as well as against a
//! fixed tolerance; at the first step, before any update, the fixed one alone.

use std::path::Path;

use anyhow::{Context, Result};
use lawa_core::data::Batch;
use lawa_core::optim::{AdamW, AdamWConfig};
use lawa_models::{Gpt, Precision};
use serde_json::{json, Value};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::{reference, Bench};
use crate::train::gradients::{GradientPass, GradientRecipe, RecordingCheck};
use crate::train::trainer::decays;

/// Learning rate of the parity run (constant: the schedule is tested elsewhere).
const LR: f64 = 6e-4;

/// The fixed part of the largest |loss difference| the check accepts: fp32 agrees to float
/// rounding; bf16 rounds every matmul input to 8 bits of mantissa, in orders that differ
/// between implementations, and the runs drift apart (the check accepts up to twice the
/// reference's own spread when that is larger; see the module's note).
pub fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::Bf16 => 2e-2,
    }
}

/// The largest |loss difference| accepted at the first step, where both sides hold the same
/// weights and see the same batch, so only the forward pass's rounding differs.
pub fn first_step_tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::Bf16 => 1e-3,
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

/// lawa's losses of `b.steps` steps on `x`, `y`, from `gpt`'s current weights, and with
/// `--cuda-graph` how the recorded step compared with the same step taken eagerly.
fn train_losses(
    b: &Bench,
    vs: &VarStore,
    gpt: &Gpt,
    x: &Tensor,
    y: &Tensor,
) -> Result<(Vec<f64>, Option<RecordingCheck>)> {
    let mut opt = AdamW::new(vs.variables(), AdamWConfig::default(), decays)?;
    let params = opt.parameters();
    let recipe = GradientRecipe {
        accumulation: 1,
        clip: 1.0,
        loss: b.loss,
    };
    let mut gradients = GradientPass::new(recipe, b.cuda_graph);
    let mut losses = Vec::with_capacity(b.steps);
    for i in 0..b.steps as i64 {
        let batch = Batch {
            x: x.get(i).to_device(b.device),
            y: y.get(i).to_device(b.device),
        };
        let step = gradients.run(gpt, &params, &[batch], |_| Ok(()))?;
        losses.push(step.loss_sum.double_value(&[]));
        opt.step(LR)?;
        opt.zero_grad();
    }
    Ok((losses, gradients.recording_check()))
}

/// Runs the parity check in the folder `dir` (it holds the initial weights and the batches the
/// reference reads); prints both loss columns and returns the figures, `passed` among them.
pub fn run(b: &Bench, dir: &Path) -> Result<Value> {
    tch::manual_seed(0);
    let vs = VarStore::new(b.device);
    let gpt = Gpt::new(vs.root(), &b.cfg)?
        .with_precision(b.precision)
        .with_norm_kernel(b.norm_kernel)
        .with_linear_kernel(b.linear_kernel);
    let init = dir.join("init");
    gpt.save_pretrained(&init)?;
    let (x, y) = batches(b);
    let file = dir.join("batches.safetensors");
    Tensor::write_safetensors(&[("x", &x), ("y", &y)], &file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    let (ours, graph_check) = train_losses(b, &vs, &gpt, &x, &y)?;
    let adamw = AdamWConfig::default();
    let mut config = b.reference_config();
    config["parity"] = json!({
        "init": init, "batches": file, "lr": LR, "beta1": adamw.beta1, "beta2": adamw.beta2,
        "eps": adamw.eps, "weight_decay": adamw.weight_decay, "clip": 1.0,
    });
    let r = reference::run(&config)?;
    let theirs: Vec<f64> =
        serde_json::from_value(r["losses"].clone()).context("the reference returned no losses")?;
    let variants = variants(&r, &theirs);
    let floor = variants.iter().map(|v| v.spread).reduce(f64::max);
    let tol = widened_tolerance(tolerance(b.precision), floor);
    print_losses(&ours, &theirs, &variants);
    let max = max_abs_diff(&ours, &theirs);
    // The first step compares the same weights on the same batch (no training yet): a gap there
    // is the forward pass's, one that only grows later is the updates' rounding.
    let first = match (ours.first(), theirs.first()) {
        (Some(a), Some(t)) => (a - t).abs(),
        _ => f64::NAN,
    };
    let first_tol = first_step_tolerance(b.precision);
    let passed = ours.len() == theirs.len() && max <= tol && first <= first_tol;
    let spread = floor.map_or(String::new(), |f| {
        let each: Vec<String> = variants
            .iter()
            .map(|v| format!("{} {:.3e}", v.label, v.spread))
            .collect();
        format!(
            "; transformers vs itself: {}, so the tolerance is the larger of {:.0e} and twice \
             {f:.3e} (at most ten times {1:.0e}; a spread that is not finite widens nothing)",
            each.join(", "),
            tolerance(b.precision)
        )
    });
    println!(
        "parity_max_abs_diff={max:.3e} (tolerance {tol:.2e}; first step {first:.3e}, tolerance \
         {first_tol:.0e}; {}{spread}): {}",
        b.precision,
        if passed { "passed" } else { "FAILED" }
    );
    let mut figures = json!({
        "precision": b.precision.to_string(), "device": b.device_name(), "steps": b.steps,
        "batch_size": b.batch_size, "block_size": b.block, "vocab_size": b.cfg.vocab_size,
        "n_layer": b.cfg.n_layer, "n_embd": b.cfg.n_embd, "torch": r["torch"],
        "transformers": r["transformers"], "lawa": ours, "reference": theirs,
        "max_abs_diff": max, "first_step_abs_diff": first, "tolerance": tol,
        "first_step_tolerance": first_tol, "reference_spread": floor, "passed": passed,
        "cuda_graph": b.cuda_graph, "cuda_graph_check": graph_check,
    });
    for v in &variants {
        figures[format!("reference_{}", v.key)] = json!(v.losses);
        figures[format!("reference_spread_{}", v.key)] = json!(v.spread);
    }
    Ok(figures)
}

/// The reference's variants (`bench_gpt.py`'s `losses_<key>`), each another valid rounding of
/// the same training: (key, label). Run again: on a GPU some kernels add in an order that
/// varies between runs. Linear layout: transformers' Conv1D holds each weight as [in, out],
/// lawa (and `torch.nn.Linear`) as [out, in], so the weight gradients' matmuls round in
/// another order; this variant also clips the gradients in lawa's order of parameters (by
/// name), and on the CPU lawa equals it bit for bit at every step in both precisions, where in
/// bf16 transformers' own layout differs from the second step. Padded head: that layout, and the
/// token embedding (the tied LM head) with lawa's rows of padding, so the head's matmuls have
/// lawa's shapes. Math attention: scaled dot-product attention's reference kernel instead of
/// its fastest one.
pub const VARIANTS: [(&str, &str); 4] = [
    ("again", "again"),
    ("linear_layout", "nn.Linear"),
    ("padded_head", "+ padded"),
    ("math_attention", "math attn"),
];

/// One variant's losses and its largest difference from the reference's own.
struct Variant {
    key: &'static str,
    label: &'static str,
    losses: Vec<f64>,
    spread: f64,
}

/// The variants the reference returned, each with its spread.
fn variants(r: &Value, theirs: &[f64]) -> Vec<Variant> {
    VARIANTS
        .iter()
        .filter_map(|&(key, label)| {
            let losses: Vec<f64> =
                serde_json::from_value(r[format!("losses_{key}")].clone()).ok()?;
            let spread = max_abs_diff(theirs, &losses);
            Some(Variant {
                key,
                label,
                losses,
                spread,
            })
        })
        .collect()
}

/// The tolerance `fixed`, widened to twice the reference's own spread where that is larger, up to
/// ten times `fixed`: a reference that drifts without bound (or goes NaN) cannot make any
/// difference pass.
fn widened_tolerance(fixed: f64, spread: Option<f64>) -> f64 {
    match spread {
        Some(s) if s.is_finite() => fixed.max(2.0 * s).min(10.0 * fixed),
        _ => fixed,
    }
}

/// The largest |a - b| over the steps both have (infinite where a loss is NaN).
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .map(|d| if d.is_nan() { f64::INFINITY } else { d })
        .fold(0.0, f64::max)
}

/// Both loss columns, with their difference, and the reference's variants beside them.
fn print_losses(ours: &[f64], theirs: &[f64], variants: &[Variant]) {
    let heads: String = variants
        .iter()
        .map(|v| format!(" {:>14}", v.label))
        .collect();
    println!(
        "{:>5} {:>14} {:>14} {:>12}{heads}",
        "step", "lawa", "transformers", "|diff|"
    );
    for (i, (a, t)) in ours.iter().zip(theirs).enumerate() {
        let d = (a - t).abs();
        let extra: String = variants
            .iter()
            .map(|v| {
                v.losses
                    .get(i)
                    .map_or(" -".into(), |x| format!(" {x:>14.7}"))
            })
            .collect();
        println!("{:>5} {a:>14.7} {t:>14.7} {d:>12.2e}{extra}", i + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_widens_the_tolerance_within_bounds() {
        assert_eq!(widened_tolerance(2e-2, None), 2e-2);
        assert_eq!(widened_tolerance(2e-2, Some(5e-3)), 2e-2);
        assert_eq!(widened_tolerance(2e-2, Some(8.4e-2)), 2.0 * 8.4e-2);
        assert_eq!(widened_tolerance(2e-2, Some(0.5)), 0.2);
        assert_eq!(widened_tolerance(2e-2, Some(f64::INFINITY)), 2e-2);
        assert_eq!(widened_tolerance(2e-2, Some(f64::NAN)), 2e-2);
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, f64::NAN]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[1.0, 2.0, 9.0], &[1.5, 2.25]), 0.5);
    }
}
