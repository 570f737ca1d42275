//! The averagers' cost as a fraction of a training step: EMA every step, a LAWA snapshot every
//! `nu` steps (amortized), writing a LAWA average into an evaluation model, each with the
//! averager's storage on the training device and in host memory (`averager_storage: cpu`);
//! beside PyTorch's `AveragedModel` EMA update on the same model. Also an AdamW step with each
//! of its kernels (single-tensor, `_foreach_`, fused).

use std::time::Instant;

use anyhow::{Context, Result};
use lawa_core::averaging::{Averager, AveragerSet, Ema, Lawa, Storage, Weights};
use lawa_core::optim::{AdamW, AdamWConfig, AdamWKernel};
use lawa_models::Gpt;
use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::train::StepLoop;
use super::{reference, sync, Bench};

/// Spacing of the LAWA snapshots measured.
const NU: u64 = 50;
/// Timed calls per measurement.
const CALLS: u64 = 50;

/// Seconds per `observe` of `set`, after three untimed calls; `step_of(i)` is the i-th step.
fn time_observe(
    set: &mut AveragerSet,
    weights: &Weights,
    step_of: &dyn Fn(u64) -> u64,
    device: tch::Device,
) -> Result<f64> {
    for i in 1..=3 {
        set.observe(step_of(i), weights)?;
    }
    sync(device);
    let start = Instant::now();
    for i in 4..4 + CALLS {
        set.observe(step_of(i), weights)?;
    }
    set.settle()?;
    sync(device);
    Ok(start.elapsed().as_secs_f64() / CALLS as f64)
}

/// Seconds per AdamW step with `kernel` over the variables of `vs` (gradients of ones), after
/// three untimed steps.
fn time_adamw(vs: &VarStore, kernel: AdamWKernel, device: tch::Device) -> Result<f64> {
    let config = AdamWConfig {
        kernel,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(vs.variables(), config, crate::train::trainer::decays)?;
    let _guard = tch::no_grad_guard();
    for p in opt.parameters() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.fill_(1e-3);
        }
    }
    for _ in 0..3 {
        opt.step(1e-4)?;
    }
    sync(device);
    let start = Instant::now();
    for _ in 0..CALLS {
        opt.step(1e-4)?;
    }
    sync(device);
    Ok(start.elapsed().as_secs_f64() / CALLS as f64)
}

/// One set holding one averager.
fn set_of(averager: impl Averager + 'static) -> Result<AveragerSet> {
    let mut set = AveragerSet::new();
    set.push(averager)?;
    Ok(set)
}

/// Rounds of [`added_to_a_step`], each timing the steps alone and then with the averager.
const ROUNDS: usize = 3;

/// An averager measured inside training: its name in the table, and how to build it for a
/// storage.
struct InTraining<'a> {
    what: String,
    make: &'a dyn Fn(Storage) -> Result<AveragerSet>,
}

/// What an averager observing every step adds to a step as a trainer sees it, for each
/// storage: steps with the averager (the last update waited for) less the steps alone just
/// before, the median over [`ROUNDS`] rounds (the range goes into the JSON). In host memory of
/// a GPU's weights the copies run on the GPU's stream and the rest on a host thread beside the
/// next step, so only the copies should show.
fn added_to_a_step(
    steps: &mut StepLoop,
    b: &Bench,
    weights: &Weights,
    averager: &InTraining,
    row: &dyn Fn(String, f64) -> Value,
) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    let per_round = (b.warmup + b.steps) as u64;
    for storage in [Storage::Training, Storage::Cpu] {
        let on = format!("{storage:?}").to_lowercase();
        let mut set = (averager.make)(storage)?;
        let mut observed = 0;
        let mut added = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let alone = steps.time_steps(b.warmup, b.steps)?;
            let with = steps.time_steps_with(b.warmup, b.steps, &mut |n| {
                observed += 1;
                set.observe(observed, weights)?;
                if n == per_round {
                    set.settle()?;
                }
                Ok(())
            })?;
            added.push(with - alone);
        }
        added.sort_by(f64::total_cmp);
        let mut r = row(
            format!("{}, added to a step, median ({on})", averager.what),
            added[ROUNDS / 2],
        );
        r["range_ms"] = json!([added[0] * 1e3, added[ROUNDS - 1] * 1e3]);
        r["rounds"] = json!(ROUNDS);
        rows.push(r);
    }
    Ok(rows)
}

/// The largest difference between an averager kept in host memory and the same kept on the
/// training device, both fed every step of `steps` training steps (the optimizer rewriting the
/// weights in place right after each update, while a host-memory update may still be
/// running): an error above 1e-6. On a GPU this checks the host updates' copies and
/// background thread on the device; on the CPU the two are the same update.
fn host_equals_device(
    steps: &mut StepLoop,
    b: &Bench,
    (weights, target): (&Weights, &Weights),
    averager: &InTraining,
) -> Result<f64> {
    let mut host = (averager.make)(Storage::Cpu)?;
    let mut device = (averager.make)(Storage::Training)?;
    steps.time_steps_with(0, b.steps.max(3), &mut |n| {
        host.observe(n, weights)?;
        device.observe(n, weights)?;
        Ok(())
    })?;
    let written = |set: &AveragerSet| -> Result<Vec<Tensor>> {
        for a in set.iter() {
            a.write_average(target)?;
        }
        Ok(target
            .iter()
            .map(|(_, t)| t.to_kind(Kind::Double))
            .collect())
    };
    let (h, d) = (written(&host)?, written(&device)?);
    let mut worst = 0.0f64;
    for (x, y) in h.iter().zip(&d) {
        let diff = (x - y).abs().max().double_value(&[]);
        worst = if diff.is_nan() {
            f64::INFINITY
        } else {
            worst.max(diff)
        };
    }
    let what = &averager.what;
    println!("{what} in host memory vs on the device, largest difference: {worst:.3e}");
    anyhow::ensure!(
        worst <= 1e-6,
        "{what} kept in host memory differs from the same on the device by {worst:e}"
    );
    Ok(worst)
}

/// Measures the averagers; prints the table and returns the figures.
pub fn run(b: &Bench) -> Result<Value> {
    let mut steps = StepLoop::new(b)?;
    let step_s = steps.time_steps(b.warmup, b.steps)?;
    let weights = Weights::from_var_store(&steps.vs);
    let eval_vs = VarStore::new(b.device);
    let _eval = Gpt::new(eval_vs.root(), &b.cfg)?;
    let target = Weights::from_var_store(&eval_vs);
    let pct = |x: f64| 100.0 * x / step_s;
    println!("training step: {:.2} ms", step_s * 1e3);
    println!("{:<64} {:>10} {:>12}", "operation", "ms", "% of a step");
    let row = |what: String, s: f64| {
        println!("{what:<64} {:>10.3} {:>12.3}", s * 1e3, pct(s));
        json!({"operation": what, "ms": s * 1e3, "percent_of_step": pct(s)})
    };
    let mut rows = Vec::new();
    let mut ema_every_step = 0.0;
    for storage in [Storage::Training, Storage::Cpu] {
        let on = format!("{storage:?}").to_lowercase();
        let mut ema = set_of(Ema::new(0.99)?.storage(storage))?;
        let ema_s = time_observe(&mut ema, &weights, &|i| i, b.device)?;
        if storage == Storage::Training {
            ema_every_step = ema_s;
        }
        rows.push(row(format!("EMA update, every step ({on})"), ema_s));
        let mut lawa = set_of(Lawa::new(5, NU)?.storage(storage))?;
        let snap_s = time_observe(&mut lawa, &weights, &|i| i * NU, b.device)?;
        rows.push(row(
            format!("LAWA snapshot, every nu = {NU} steps ({on})"),
            snap_s,
        ));
        rows.push(row(
            format!("LAWA per step, amortized over nu = {NU} ({on})"),
            snap_s / NU as f64,
        ));
        let start = Instant::now();
        for a in lawa.iter() {
            for _ in 0..10 {
                a.write_average(&target)?;
            }
        }
        sync(b.device);
        let write_s = start.elapsed().as_secs_f64() / 10.0;
        rows.push(row(
            format!("LAWA k = 5 average into the eval model ({on})"),
            write_s,
        ));
    }
    // A few snapshots a round, and at least one in `host_equals_device`'s steps.
    let per_round = (b.warmup + b.steps) as u64;
    let lawa_nu = (per_round / 3).clamp(1, b.steps.max(3) as u64);
    let ema = InTraining {
        what: "EMA every step".into(),
        make: &|storage| set_of(Ema::new(0.99)?.storage(storage)),
    };
    let lawa = InTraining {
        what: format!("LAWA snapshot every {lawa_nu} steps"),
        make: &|storage| set_of(Lawa::new(3, lawa_nu)?.storage(storage)),
    };
    for averager in [&ema, &lawa] {
        rows.extend(added_to_a_step(&mut steps, b, &weights, averager, &row)?);
    }
    let host_vs_device_ema = host_equals_device(&mut steps, b, (&weights, &target), &ema)?;
    let host_vs_device_lawa = host_equals_device(&mut steps, b, (&weights, &target), &lawa)?;
    for kernel in [
        AdamWKernel::Single,
        AdamWKernel::Foreach,
        AdamWKernel::Fused,
    ] {
        let s = time_adamw(&steps.vs, kernel, b.device)?;
        rows.push(row(
            format!(
                "AdamW step, {} kernel",
                format!("{kernel:?}").to_lowercase()
            ),
            s,
        ));
    }
    let mut out = json!({"step_ms": step_s * 1e3, "rows": rows,
                         "ema_percent_of_step": pct(ema_every_step),
                         "host_vs_device_ema_max_difference": host_vs_device_ema,
                         "host_vs_device_lawa_max_difference": host_vs_device_lawa});
    if !b.reference {
        return Ok(out);
    }
    let mut config = b.reference_config();
    config["averaging"] = json!(true);
    let r = reference::run(&config)?;
    let torch_ema = r["ema_update_s"].as_f64().context("ema_update_s")?;
    let torch_row = row(
        "PyTorch AveragedModel EMA update_parameters".into(),
        torch_ema,
    );
    println!("ema_speedup_vs_pytorch={:.3}", torch_ema / ema_every_step);
    out["pytorch"] = torch_row;
    out["ema_speedup_vs_pytorch"] = json!(torch_ema / ema_every_step);
    Ok(out)
}
