//! The training loop: AdamW steps on the raw weights, every averager observing after each step,
//! periodic evaluation of the raw and averaged weights on the same windows, checkpoints that
//! resume exactly, and a clean stop on divergence.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_core::averaging::{AveragerSet, Weights};
use lawa_core::data::{BatchSampler, Dataset, Split, ValidationWindows};
use lawa_core::optim::{clip_grad_norm, AdamW};
use lawa_models::Gpt;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use super::checkpoint::{self, TrainerState};
use super::curves::{strategy_columns, CurvesWriter, Row};
use super::evaluate::mean_loss;
use super::RunConfig;

/// File written into the run folder when a run ends (finished or diverged).
pub const STATUS_FILE: &str = "status.json";
/// The copy of the run's config in its folder.
pub const CONFIG_FILE: &str = "run.yaml";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// All steps done.
    Finished,
    /// A non-finite loss or gradient norm stopped it.
    Diverged,
}

/// The end of a run, as saved in `status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// Finished or diverged.
    pub status: RunStatus,
    /// Steps done (for a diverged run: the step whose loss was not finite).
    pub step: u64,
    /// Last validation loss of the raw weights (NaN if never evaluated).
    pub final_val_loss: f64,
    /// Training throughput of the last session, tokens per second.
    pub tokens_per_second: f64,
    /// Seconds of training in all.
    pub wall_time: f64,
}

/// Parameters that get weight decay: matmul weights only (not LayerNorms, biases or the
/// token/position embeddings, as in the authors' recipe).
pub fn decays(name: &str, t: &tch::Tensor) -> bool {
    t.dim() == 2 && !name.contains("wte") && !name.contains("wpe")
}

fn model_label(cfg: &RunConfig) -> String {
    cfg.model.preset.clone().unwrap_or_else(|| "custom".into())
}

/// Prepares the run folder: a copy of the config, refusing a folder made by another config.
fn claim_run_dir(cfg: &RunConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join(CONFIG_FILE);
    let ours = serde_yaml::to_string(cfg)?;
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing != ours {
            bail!(
                "{}: the run folder holds a run of a different config; choose another `out`/`name` or delete the folder",
                dir.display()
            );
        }
        return Ok(());
    }
    lawa_core::fsutil::write_atomic(&path, ours.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

fn write_status(dir: &Path, outcome: &RunOutcome) -> Result<()> {
    let json = serde_json::to_vec_pretty(outcome)?;
    lawa_core::fsutil::write_atomic(&dir.join(STATUS_FILE), &json)
        .with_context(|| format!("{}: cannot write {STATUS_FILE}", dir.display()))
}

/// The outcome of a run that already ended, if its folder says so.
pub fn finished_outcome(dir: &Path) -> Option<RunOutcome> {
    let text = std::fs::read(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Runs (or resumes, or skips if already ended) the training run `cfg`.
/// `on_progress(step, total)` is called after each step (for a sweep's overall progress).
pub fn train(cfg: &RunConfig, mut on_progress: impl FnMut(u64, u64)) -> Result<RunOutcome> {
    cfg.validate()?;
    let dir = cfg.out_dir();
    let data = Dataset::open(&cfg.data)?;
    let t = &cfg.train;
    let model_cfg = cfg.model_config(data.meta().vocab_size as usize)?;
    let device = cfg.device()?;
    let precision = cfg.precision()?;
    let mut sampler =
        BatchSampler::new(data.split(Split::Train), t.batch_size, t.block_size, t.seed)?;
    let val_windows =
        ValidationWindows::new(data.split(Split::Val), t.block_size, cfg.eval.windows)?;
    let train_windows = match cfg.eval.train_windows {
        0 => None,
        n => Some(ValidationWindows::new(
            data.split(Split::Train),
            t.block_size,
            n,
        )?),
    };
    let eval_batch = cfg.eval.batch_size.unwrap_or(t.batch_size);
    // Everything that can be refused has been checked: only now is the run folder touched.
    claim_run_dir(cfg, &dir)?;
    if let Some(outcome) = finished_outcome(&dir) {
        tracing::info!(
            "{}: already {:?} at step {}; nothing to do",
            dir.display(),
            outcome.status,
            outcome.step
        );
        return Ok(outcome);
    }

    tch::manual_seed(t.seed as i64);
    let vs = VarStore::new(device);
    let gpt = Gpt::new(vs.root(), &model_cfg)?.with_precision(precision);
    let eval_vs = VarStore::new(device);
    let eval_gpt = Gpt::new(eval_vs.root(), &model_cfg)?.with_precision(precision);
    let weights = Weights::from_var_store(&vs);
    let eval_weights = Weights::from_var_store(&eval_vs);
    let mut optimizer = AdamW::new(vs.variables(), t.adamw, decays)?;
    let params = optimizer.parameters();
    let mut averagers = AveragerSet::new(cfg.averager_storage);
    let mut specs = Vec::new();
    for spec in &cfg.averagers {
        averagers.push(spec.build(Some(t.steps))?)?;
        specs.push(spec.clone());
    }

    let mut state = TrainerState {
        step: 0,
        tokens: 0,
        sampler: sampler.state(),
        wall_time: 0.0,
    };
    if let Some(ckpt) = checkpoint::find(&dir) {
        state = checkpoint::load(&ckpt, &gpt, &mut optimizer, &mut averagers, &weights)?;
        sampler.restore(state.sampler);
        tracing::info!("{}: resuming from step {}", dir.display(), state.step);
    }
    let mut curves = CurvesWriter::open(&dir.join("curves.csv"), state.step)?;
    let run_columns = format!("{},{},{},{}", cfg.name, model_label(cfg), t.lr, t.seed);
    let tokens_per_step = cfg.tokens_per_step();
    let checkpoint_every = cfg.checkpoint.every.unwrap_or(cfg.eval.every);
    tracing::info!(
        "{}: {} on {:?} ({}), {} parameters, {} steps of {} tokens, {} averagers",
        cfg.name,
        model_label(cfg),
        device,
        precision,
        gpt.num_params(true),
        t.steps,
        tokens_per_step,
        averagers.len()
    );

    let session_start = Instant::now();
    let wall_at_start = state.wall_time;
    let session_first_step = state.step;
    let mut last_val = f64::NAN;
    let evaluate =
        |step: u64, tokens: u64, wall: f64, averagers: &AveragerSet| -> Result<Vec<Row>> {
            let mut rows = Vec::new();
            let row = |weights: String, strategy, model: &Gpt| -> Result<Row> {
                Ok(Row {
                    run_columns: run_columns.clone(),
                    weights,
                    strategy,
                    step,
                    tokens,
                    val_loss: mean_loss(model, &val_windows, eval_batch)?,
                    train_loss: match &train_windows {
                        Some(w) => Some(mean_loss(model, w, eval_batch)?),
                        None => None,
                    },
                    wall_time: wall,
                })
            };
            rows.push(row("raw".into(), strategy_columns(None), &gpt)?);
            for (averager, spec) in averagers.iter().zip(&specs) {
                if averager.is_ready() {
                    averager.write_average(&eval_weights)?;
                    rows.push(row(
                        averager.label(),
                        strategy_columns(Some(spec)),
                        &eval_gpt,
                    )?);
                }
            }
            Ok(rows)
        };
    if state.step == 0 {
        let rows = evaluate(0, 0, 0.0, &averagers)?;
        last_val = rows[0].val_loss;
        curves.write(&rows)?;
    }

    let bar = crate::progress::bar(t.steps, &cfg.name, "steps");
    bar.set_position(state.step);
    let log_every = (t.steps / 20).max(1);
    while state.step < t.steps {
        // Dropout masks depend only on (seed, step): a resumed run draws the same ones.
        tch::manual_seed(
            (t.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(state.step as i64),
        );
        let mut loss_sum = 0.0;
        for _ in 0..t.grad_accum {
            let batch = sampler.next_batch(device);
            let loss = gpt.loss(&batch.x, &batch.y, true)?;
            (&loss / t.grad_accum as f64).backward();
            loss_sum += loss.double_value(&[]);
        }
        let loss = loss_sum / t.grad_accum as f64;
        let norm = if t.grad_clip > 0.0 {
            clip_grad_norm(&params, t.grad_clip)
        } else {
            0.0
        };
        if !loss.is_finite() || !norm.is_finite() {
            bar.finish_and_clear();
            let outcome = RunOutcome {
                status: RunStatus::Diverged,
                step: state.step + 1,
                final_val_loss: last_val,
                tokens_per_second: 0.0,
                wall_time: wall_at_start + session_start.elapsed().as_secs_f64(),
            };
            tracing::warn!(
                "{}: diverged at step {} (loss {loss}, grad norm {norm}); run stopped",
                cfg.name,
                outcome.step
            );
            write_status(&dir, &outcome)?;
            return Ok(outcome);
        }
        let lr = t.schedule.lr(state.step, t.lr, t.steps);
        optimizer.step(lr);
        optimizer.zero_grad();
        state.step += 1;
        state.tokens += tokens_per_step;
        averagers.observe(state.step, &weights)?;

        let elapsed = session_start.elapsed().as_secs_f64();
        let tok_s =
            (state.step - session_first_step) as f64 * tokens_per_step as f64 / elapsed.max(1e-9);
        bar.set_position(state.step);
        bar.set_message(format!("loss {loss:.3} lr {lr:.1e} {:.0} tok/s", tok_s));
        on_progress(state.step, t.steps);
        if !crate::progress::interactive()
            && (state.step.is_multiple_of(log_every) || state.step == t.steps)
        {
            tracing::info!(
                "{} step {}/{} loss {loss:.4} lr {lr:.2e} grad-norm {norm:.3} {tok_s:.0} tok/s",
                cfg.name,
                state.step,
                t.steps
            );
        }
        state.wall_time = wall_at_start + elapsed;
        if state.step.is_multiple_of(cfg.eval.every) || state.step == t.steps {
            let rows = evaluate(state.step, state.tokens, state.wall_time, &averagers)?;
            last_val = rows[0].val_loss;
            if !crate::progress::interactive() {
                let best = rows
                    .iter()
                    .skip(1)
                    .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss));
                tracing::info!(
                    "{} eval step {}: raw val {:.4}{}",
                    cfg.name,
                    state.step,
                    last_val,
                    best.map(|b| format!(", best average {} {:.4}", b.weights, b.val_loss))
                        .unwrap_or_default()
                );
            }
            curves.write(&rows)?;
        }
        if state.step.is_multiple_of(checkpoint_every) || state.step == t.steps {
            state.sampler = sampler.state();
            checkpoint::save(&dir, &gpt, &optimizer, &averagers, &state)?;
        }
    }
    bar.finish_and_clear();
    let elapsed = session_start.elapsed().as_secs_f64();
    let outcome = RunOutcome {
        status: RunStatus::Finished,
        step: state.step,
        final_val_loss: last_val,
        tokens_per_second: (state.step - session_first_step) as f64 * tokens_per_step as f64
            / elapsed.max(1e-9),
        wall_time: state.wall_time,
    };
    write_status(&dir, &outcome)?;
    Ok(outcome)
}
