//! The training loop, read top to bottom like nanoGPT's: [`Trainer::step`] (micro-batches,
//! clipping, AdamW, the averagers observing), [`Trainer::evaluate`] (the raw and every averaged
//! set of weights on the same windows) and [`Trainer::checkpoint`] are its paragraphs, and
//! [`train`] strings them together.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_core::averaging::{AveragerSet, Weights};
use lawa_core::data::{BatchSampler, Dataset, Split, ValidationWindows};
use lawa_core::optim::AdamW;
use lawa_models::{Gpt, GptConfig};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::checkpoint::{self, Expected, Parts, TrainerState};
use super::curves::CurvesLog;
use super::distributed::DataParallel;
use super::evaluate::{evaluate, WindowLosses};
use super::gradients::{GradientPass, Gradients};
use super::status::{self, RunOutcome, RunStatus};
use super::RunPlan;
use crate::results::metrics::paired_se;
use crate::results::{CurveRow, Strategy, StrategyColumns, CURVES_FILE};

/// Parameters that get weight decay: matmul weights only (not LayerNorms, biases or the
/// token/position embeddings, as in the authors' recipe).
pub fn decays(name: &str, t: &Tensor) -> bool {
    t.dim() == 2 && !name.contains("wte") && !name.contains("wpe")
}

/// A model of the run's architecture, precision and kernels, in a variable store of its own.
fn build_gpt(plan: &RunPlan, model_cfg: &GptConfig) -> Result<(VarStore, Gpt)> {
    let t = &plan.config.train;
    let vs = VarStore::new(plan.device);
    let gpt = Gpt::new(vs.root(), model_cfg)?
        .with_precision(plan.precision)
        .with_norm_kernel(t.norm_kernel)
        .with_linear_kernel(t.linear_kernel);
    Ok((vs, gpt))
}

/// Loads the run folder's latest checkpoint, when there is one, into the model, optimizer,
/// averagers and sampler; returns the state it recorded.
fn resume(
    plan: &RunPlan,
    data: &Dataset,
    (gpt, weights): (&Gpt, &Weights),
    optimizer: &mut AdamW,
    averagers: &mut AveragerSet,
    sampler: &mut BatchSampler,
) -> Result<Option<TrainerState>> {
    let Some(dir) = checkpoint::recover(&plan.dir)? else {
        return Ok(None);
    };
    let expect = Expected {
        steps: plan.config.train.steps,
        dataset: data.identity(),
    };
    let mut state = checkpoint::load(&dir, gpt, optimizer, averagers, weights, &expect)?;
    state.dataset = expect.dataset;
    sampler.restore(state.sampler);
    tracing::info!("{}: resuming from step {}", plan.dir.display(), state.step);
    Ok(Some(state))
}

/// The fixed windows every set of weights is scored on.
struct Windows {
    val: ValidationWindows,
    train: Option<ValidationWindows>,
    batch: usize,
}

impl Windows {
    fn new(plan: &RunPlan, data: &Dataset) -> Result<Self> {
        let (cfg, t) = (&plan.config, &plan.config.train);
        let val = ValidationWindows::new(data.split(Split::Val), t.block_size, cfg.eval.windows)?;
        let train = match cfg.eval.train_windows {
            0 => None,
            n => Some(ValidationWindows::new(
                data.split(Split::Train),
                t.block_size,
                n,
            )?),
        };
        Ok(Windows {
            val,
            train,
            batch: cfg.eval.batch_size.unwrap_or(t.batch_size),
        })
    }

    /// Warns about windows that overlap (see [`super::evaluate::warn_if_overlapping`]).
    fn warn_if_overlapping(&self, plan: &RunPlan) {
        let (run, eval) = (&plan.config.name, &plan.config.eval);
        super::evaluate::warn_if_overlapping(run, "eval.windows", eval.windows, &self.val);
        if let Some(w) = &self.train {
            let asked = eval.train_windows;
            super::evaluate::warn_if_overlapping(run, "eval.train_windows", asked, w);
        }
    }
}

/// The run's training batches and evaluation windows; an error where the data cannot give
/// them (a block longer than a split, windows that do not fit).
fn data_inputs(plan: &RunPlan, data: &Dataset) -> Result<(BatchSampler, Windows)> {
    let t = &plan.config.train;
    let sampler = BatchSampler::new(data.split(Split::Train), t.batch_size, t.block_size, t.seed)?;
    Ok((sampler, Windows::new(plan, data)?))
}

/// The run's averagers, and each one's CSV columns by label (none on a rank other than 0).
fn build_averagers(
    plan: &RunPlan,
    leader: bool,
) -> Result<(AveragerSet, HashMap<String, StrategyColumns>)> {
    let cfg = &plan.config;
    let mut averagers = AveragerSet::new();
    let mut columns = HashMap::new();
    let specs = if leader { &cfg.averagers[..] } else { &[] };
    for spec in specs {
        if plan.device.is_cuda() {
            if let Some(warning) = spec.host_copy_warning(cfg.averager_storage) {
                tracing::warn!("{}: {warning}", cfg.name);
            }
        }
        let averager = spec.build(cfg.train.steps, cfg.averager_storage)?;
        columns.insert(averager.label(), spec.columns());
        averagers.push_boxed(averager)?;
    }
    Ok((averagers, columns))
}

/// A run in progress: the model and its optimizer, the averagers, the data, and where the run
/// has got to.
pub struct Trainer<'a> {
    plan: &'a RunPlan,
    gpt: Gpt,
    weights: Weights,
    params: Vec<Tensor>,
    /// Forward, backward and clipping of each step, eager or through a CUDA graph.
    gradients: GradientPass,
    optimizer: AdamW,
    averagers: AveragerSet,
    /// The CSV columns of each averager, by label.
    columns: HashMap<String, StrategyColumns>,
    /// An evaluation copy of the model that averages are written into.
    eval_gpt: Gpt,
    eval_weights: Weights,
    sampler: BatchSampler,
    windows: Windows,
    /// The run's CSV (rank 0 only).
    curves: Option<CurvesLog>,
    /// The other ranks of a data-parallel run, and the reducer of this one's gradients.
    parallel: Option<(&'a DataParallel, lawa_dist::GradientReducer)>,
    state: TrainerState,
    session: Session,
    last_val: f64,
    /// The tokenizer of the data, recorded in every checkpoint's config.json (when its file
    /// is there to name it).
    tokenizer: Option<String>,
    // Kept alive for the models' variables.
    _stores: [VarStore; 2],
}

/// The timing of this process's part of the run.
struct Session {
    started: Instant,
    first_step: u64,
    wall_before: f64,
    /// Seconds spent in evaluations, and their number.
    evaluating: (f64, u64),
}

/// One optimizer step's numbers, read from the device once.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Gradient norm before clipping; `None` without clipping (`train.grad_clip: 0`), where
    /// it is not computed.
    pub grad_norm: Option<f64>,
    /// Learning rate used.
    pub lr: f64,
}

impl StepReport {
    /// Whether the loss and the gradient norm (where measured) are finite: a step that is not
    /// is not applied, and the run has diverged.
    pub fn is_finite(&self) -> bool {
        self.loss.is_finite() && self.grad_norm.is_none_or(f64::is_finite)
    }
}

impl<'a> Trainer<'a> {
    /// Builds the run's model, optimizer, averagers and data, resuming from the run folder's
    /// checkpoint when there is one. The folder must already be claimed for this config.
    pub fn new(plan: &'a RunPlan, data: &Dataset) -> Result<Self> {
        Self::with_ranks(plan, data, None)
    }

    /// As [`new`](Self::new), as one rank of a data-parallel run: rank 0 builds or resumes the
    /// run and every other rank takes its weights, optimizer state and position.
    pub fn with_ranks(
        plan: &'a RunPlan,
        data: &Dataset,
        parallel: Option<&'a DataParallel>,
    ) -> Result<Self> {
        let leader = parallel.is_none_or(|p| p.is_leader());
        let cfg = &plan.config;
        let t = &cfg.train;
        let model_cfg = cfg.model_config(data.meta().vocab_size as usize)?;
        let (mut sampler, windows) = data_inputs(plan, data)?;
        if leader {
            windows.warn_if_overlapping(plan);
        }
        tch::manual_seed(t.seed as i64);
        let (vs, gpt) = build_gpt(plan, &model_cfg)?;
        let (eval_vs, eval_gpt) = build_gpt(plan, &model_cfg)?;
        let weights = Weights::from_var_store(&vs);
        let eval_weights = Weights::from_var_store(&eval_vs);
        let mut optimizer = AdamW::new(vs.variables(), t.adamw, decays)?;
        let params = optimizer.parameters();
        let (mut averagers, columns) = build_averagers(plan, leader)?;
        let resumed = match leader {
            true => resume(
                plan,
                data,
                (&gpt, &weights),
                &mut optimizer,
                &mut averagers,
                &mut sampler,
            )?,
            false => None,
        };
        let resumed_step = resumed.as_ref().map(|s| s.step);
        let mut state = resumed.unwrap_or_else(|| TrainerState {
            step: 0,
            tokens: 0,
            sampler: sampler.state(),
            wall_time: 0.0,
            dataset: data.identity(),
        });
        let curves = match leader {
            true => Some(CurvesLog::open(
                &plan.dir.join(CURVES_FILE),
                resumed_step,
                plan.config.first_checkpoint_step(),
            )?),
            false => None,
        };
        if let Some(p) = parallel {
            p.take_leaders_state(&params, &mut optimizer, &mut state)?;
            sampler.restore(state.sampler);
        }
        // train_with refuses this before the run folder is touched; a direct caller too.
        ensure_graph_on_one_rank(t, parallel.is_some())?;
        let parallel = parallel.map(|p| (p, p.reducer(&params, t.allreduce_fp32)));
        Ok(Trainer {
            plan,
            gpt,
            weights,
            params,
            gradients: GradientPass::new(t.gradient_recipe(), t.cuda_graph),
            optimizer,
            averagers,
            columns,
            eval_gpt,
            eval_weights,
            sampler,
            windows,
            curves,
            parallel,
            session: Session {
                started: Instant::now(),
                first_step: state.step,
                wall_before: state.wall_time,
                evaluating: (0.0, 0),
            },
            state,
            last_val: f64::NAN,
            tokenizer: data_tokenizer(data, leader),
            _stores: [vs, eval_vs],
        })
    }

    /// Whether this process evaluates and writes: a lone run, or rank 0 of a data-parallel one.
    pub fn is_leader(&self) -> bool {
        self.parallel.as_ref().is_none_or(|(p, _)| p.is_leader())
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> u64 {
        self.state.step
    }

    /// One optimizer step: forward and backward over the micro-batches (the loss accumulated on
    /// the device), gradient clipping, then, unless the loss or the gradient norm is not finite,
    /// the AdamW update and every averager observing the new weights. The loss and norm are read
    /// from the device once.
    pub fn step(&mut self) -> Result<StepReport> {
        let t = &self.plan.config.train;
        // Dropout masks depend only on (seed, step, rank): a resumed run draws the same ones,
        // and the ranks of a data-parallel run draw different ones (rank 0's are a lone run's).
        let (part, parts) = self
            .parallel
            .as_ref()
            .map_or((0, 1), |(p, _)| (p.rank(), p.world_size()));
        let rank = part as i64;
        tch::manual_seed(
            (t.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(self.state.step as i64)
                .wrapping_add(rank.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64)),
        );
        let device = self.plan.device;
        let batches = (0..t.grad_accum)
            .map(|_| self.sampler.next_batch_share(device, part, parts))
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.gradients.records_next();
        if records {
            // The host copies of averages in host memory wait on the device from their thread.
            self.averagers.settle()?;
        }
        let parallel = &self.parallel;
        let Gradients { loss_sum, norm } = self.gradients.run(
            &self.gpt,
            &self.params,
            &batches,
            |loss_sum| match parallel {
                Some((p, reducer)) => p.average(reducer, loss_sum),
                None => Ok(()),
            },
        )?;
        if let Some(check) = self.gradients.recording_check().filter(|_| records) {
            tracing::info!(
                "{}: step {} recorded as a CUDA graph; its first replay against the same step \
                 taken eagerly: {check}",
                self.plan.config.name,
                self.state.step + 1,
            );
        }
        let read = Vec::<f64>::try_from(
            Tensor::stack(&[loss_sum / t.grad_accum as f64, norm.to_device(device)], 0)
                .to_kind(Kind::Double),
        )?;
        let lr = t.lr_at(self.state.step);
        let report = StepReport {
            loss: read[0],
            grad_norm: (t.grad_clip > 0.0).then_some(read[1]),
            lr,
        };
        if !report.is_finite() {
            return Ok(report);
        }
        self.optimizer.step(lr)?;
        self.optimizer.zero_grad();
        self.state.step += 1;
        self.state.tokens += self.plan.config.tokens_per_step();
        self.state.wall_time =
            self.session.wall_before + self.session.started.elapsed().as_secs_f64();
        self.averagers.observe(self.state.step, &self.weights)?;
        Ok(report)
    }

    /// Scores the raw weights and every averager that has an average on the run's fixed
    /// windows, appends the rows to `curves.csv`, and returns them (raw first). In a
    /// data-parallel run every rank takes part, each average sent from rank 0, and a rank other
    /// than 0 returns the raw row alone.
    pub fn evaluate(&mut self) -> Result<Vec<CurveRow>> {
        let started = Instant::now();
        let rows = self.score_all()?;
        if let Some(curves) = &mut self.curves {
            curves.write(&rows)?;
        }
        self.last_val = rows[0].val_loss;
        let (seconds, count) = self.session.evaluating;
        self.session.evaluating = (seconds + started.elapsed().as_secs_f64(), count + 1);
        Ok(rows)
    }

    /// The rows of [`evaluate`](Self::evaluate), not yet written.
    fn score_all(&self) -> Result<Vec<CurveRow>> {
        let raw = self.score(&self.gpt)?;
        let mut rows = vec![self.row("raw", StrategyColumns::default(), &raw, None)];
        // A rank other than 0 holds no averagers: `members` is empty there.
        let mut members = self.averagers.iter();
        for ready in self.ready_averagers()? {
            let averager = members.next();
            if !ready {
                continue;
            }
            if let Some(averager) = &averager {
                averager.write_average(&self.eval_weights)?;
            }
            if let Some((p, _)) = &self.parallel {
                p.take_leaders_weights(&self.eval_weights)?;
            }
            let scores = self.score(&self.eval_gpt)?;
            let Some(averager) = averager else { continue };
            let label = averager.label();
            let columns = self.columns.get(&label).copied().unwrap_or_default();
            let gain_se = paired_se(&raw.0.per_window, &scores.0.per_window);
            rows.push(self.row(&label, columns, &scores, gain_se));
        }
        Ok(rows)
    }

    /// Which of the run's averagers (in config order) have an average, as rank 0 sees it.
    fn ready_averagers(&self) -> Result<Vec<bool>> {
        let ready: Vec<bool> = match self.is_leader() {
            true => self.averagers.iter().map(|a| a.is_ready()).collect(),
            false => vec![false; self.plan.config.averagers.len()],
        };
        match &self.parallel {
            Some((p, _)) => p.agree_all(&ready),
            None => Ok(ready),
        }
    }

    /// Validation (and, when configured, training-window) losses of `model`, scored by every
    /// rank of a data-parallel run together.
    fn score(&self, model: &Gpt) -> Result<(WindowLosses, Option<f64>)> {
        let w = &self.windows;
        let losses = |windows: &ValidationWindows| match &self.parallel {
            Some((p, _)) => p.evaluate(model, windows, w.batch),
            None => evaluate(model, windows, w.batch),
        };
        let val = losses(&w.val)?;
        let train = match &w.train {
            Some(windows) => Some(losses(windows)?.mean),
            None => None,
        };
        Ok((val, train))
    }

    fn row(
        &self,
        weights: &str,
        columns: StrategyColumns,
        (val, train): &(WindowLosses, Option<f64>),
        gain_se: Option<f64>,
    ) -> CurveRow {
        let cfg = &self.plan.config;
        CurveRow {
            run: cfg.name.clone(),
            model: cfg.model.label(),
            lr: cfg.train.lr,
            seed: cfg.train.seed,
            weights: weights.to_string(),
            strategy: columns.strategy.unwrap_or(Strategy::Raw),
            k: columns.k,
            nu: columns.nu,
            decay: columns.decay,
            start: columns.start,
            every: columns.every,
            step: self.state.step,
            tokens: self.state.tokens,
            val_loss: val.mean,
            val_loss_se: val.se(),
            gain_se,
            train_loss: *train,
            wall_time_s: self.state.wall_time,
        }
    }

    /// Writes a checkpoint of the run as it is now (rank 0, after every rank has checked that
    /// all hold the same weights).
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some((p, _)) = &self.parallel {
            p.ensure_same_weights(&self.params, self.state.step)?;
        }
        if !self.is_leader() {
            return Ok(());
        }
        self.state.sampler = self.sampler.state();
        checkpoint::save(
            &self.plan.dir,
            Parts {
                gpt: &self.gpt,
                optimizer: &self.optimizer,
                averagers: &self.averagers,
                state: &self.state,
                tokenizer: self.tokenizer.as_deref(),
            },
        )
    }

    /// Keeps the model alone as a Hugging Face checkpoint in `series/step<N>/` (published whole,
    /// like a checkpoint), for `lawa posthoc`.
    pub fn save_series(&self) -> Result<()> {
        let target = self
            .plan
            .dir
            .join("series")
            .join(format!("step{}", self.state.step));
        std::fs::create_dir_all(target.parent().unwrap_or(&self.plan.dir))?;
        let staging = lawa_core::checkpoint::staging_dir(&target)?;
        checkpoint::save_model(&self.gpt, &staging, self.tokenizer.as_deref())?;
        lawa_core::checkpoint::publish_dir(&staging, &target)
            .with_context(|| format!("{}: cannot write", target.display()))
    }

    /// Tokens per second over this process's steps.
    pub fn tokens_per_second(&self) -> f64 {
        let steps = self.state.step - self.session.first_step;
        steps as f64 * self.plan.config.tokens_per_step() as f64
            / self.session.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Records how the run ended in `status.json` (rank 0 of a data-parallel run).
    pub fn finish(&self, status: RunStatus) -> Result<RunOutcome> {
        let outcome = RunOutcome {
            status,
            step: match status {
                RunStatus::Finished => self.state.step,
                RunStatus::Diverged => self.state.step + 1,
            },
            final_val_loss: self.last_val,
            tokens_per_second: match status {
                RunStatus::Finished => self.tokens_per_second(),
                RunStatus::Diverged => 0.0,
            },
            wall_time: self.session.wall_before + self.session.started.elapsed().as_secs_f64(),
        };
        if self.is_leader() {
            status::write(&self.plan.dir, &outcome)?;
        }
        Ok(outcome)
    }

    /// A progress line for logs.
    fn log_step(&self, r: &StepReport) {
        let t = &self.plan.config.train;
        tracing::info!(
            "{} step {}/{} loss {:.4} lr {:.2e}{} {:.0} tok/s",
            self.plan.config.name,
            self.state.step,
            t.steps,
            r.loss,
            r.lr,
            r.grad_norm
                .map_or(String::new(), |n| format!(" grad-norm {n:.3}")),
            self.tokens_per_second()
        );
    }
}

/// The data's tokenizer as the leader's checkpoints name it (followers save none). Training
/// needs only the token ids: a tokenizer that cannot be named (its file gone or unreadable, a
/// nanoGPT folder's assumed GPT-2) is warned about and left unnamed, never an error.
fn data_tokenizer(data: &Dataset, leader: bool) -> Option<String> {
    if !leader {
        return None;
    }
    let why = match crate::vocabulary::tokenizer_of(data.dir(), data.meta()) {
        Ok(Some(name)) => return Some(name),
        Ok(None) => "it cannot be named".to_string(),
        Err(e) => format!("{e:#}"),
    };
    tracing::warn!(
        "{}: the checkpoints will not name their tokenizer ({} tokenizer: {why}), so \
         evaluations can check only the vocabulary's size",
        data.dir().display(),
        data.meta().tokenizer
    );
    None
}

/// Refuses `train.cuda_graph` in a data-parallel run (`ranks`): the all-reduce is not recorded.
fn ensure_graph_on_one_rank(t: &super::config::TrainSpec, ranks: bool) -> Result<()> {
    if ranks && t.cuda_graph {
        bail!(
            "train.cuda_graph = true is not supported over several ranks (the gradient all-reduce \
             is not recorded): leave it out, or train on one device"
        );
    }
    Ok(())
}

/// Runs (or resumes, or skips if it already ended) the training run `plan`.
/// `on_progress(step, total)` is called after each step (for a sweep's overall progress).
pub fn train(plan: &RunPlan, on_progress: impl FnMut(u64, u64)) -> Result<RunOutcome> {
    train_with(plan, None, on_progress)
}

/// As [`train`], as one rank of a data-parallel run when `parallel` is given: rank 0 claims the
/// run folder and decides whether the run goes on; every rank trains and scores its share of
/// each evaluation; rank 0 alone writes the curves, checkpoints and records the outcome.
pub fn train_with(
    plan: &RunPlan,
    parallel: Option<&DataParallel>,
    on_progress: impl FnMut(u64, u64),
) -> Result<RunOutcome> {
    let cfg = &plan.config;
    // Everything that can be refused is checked before the run folder is touched.
    super::config::ensure_available(plan.device)?;
    let data = Dataset::open(&cfg.data)?;
    let model_cfg = cfg.model_config(data.meta().vocab_size as usize)?;
    super::memory::ensure_fits(plan, &model_cfg, parallel.map(|p| p.is_leader()))?;
    ensure_graph_on_one_rank(&cfg.train, parallel.is_some())?;
    data_inputs(plan, &data)
        .with_context(|| format!("train.block_size = {}", cfg.train.block_size))?;
    let leader = parallel.is_none_or(|p| p.is_leader());
    let (_claim, ended) = match leader {
        true => {
            let claim = super::run_dir::claim(plan)?;
            // A save a crash cut short is completed first, whether the run goes on or not.
            checkpoint::recover(&plan.dir)?;
            (Some(claim), status::read(&plan.dir)?)
        }
        false => (None, None),
    };
    let go_on = match parallel {
        Some(p) => p.agree(ended.is_none())?,
        None => ended.is_none(),
    };
    if !go_on {
        // A follower rank learns only that the run has ended; rank 0 reports how.
        let outcome = ended.unwrap_or(RunOutcome {
            status: RunStatus::Finished,
            step: cfg.train.steps,
            final_val_loss: f64::NAN,
            tokens_per_second: 0.0,
            wall_time: 0.0,
        });
        tracing::info!(
            "{}: already {:?} at step {}; nothing to do",
            plan.dir.display(),
            outcome.status,
            outcome.step
        );
        return Ok(outcome);
    }
    let mut trainer = Trainer::with_ranks(plan, &data, parallel)?;
    tracing::info!(
        "{}: {} on {:?} ({}), {} parameters, {} steps of {} tokens{}, {} averagers",
        cfg.name,
        cfg.model.label(),
        plan.device,
        plan.precision,
        trainer.gpt.num_params(true),
        cfg.train.steps,
        cfg.tokens_per_step(),
        parallel.map_or(String::new(), |p| format!(
            " over {} ranks ({:?})",
            p.world_size(),
            p.backend()
        )),
        trainer.averagers.len()
    );
    if trainer.steps_done() == 0 {
        trainer.evaluate()?;
    }
    let outcome = train_loop(&mut trainer, on_progress)?;
    if leader {
        log_session(&trainer);
    }
    Ok(outcome)
}

/// Steps until the run's end, evaluating, keeping series checkpoints and checkpointing on
/// schedule (a follower rank steps, scores its share of each evaluation and checks its weights
/// at checkpoints).
fn train_loop(trainer: &mut Trainer, mut on_progress: impl FnMut(u64, u64)) -> Result<RunOutcome> {
    let cfg = &trainer.plan.config;
    let leader = trainer.is_leader();
    let steps = cfg.train.steps;
    let bar = match leader {
        true => crate::progress::bar(steps, &cfg.name, "steps"),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_position(trainer.steps_done());
    let log_every = (steps / 20).max(1);
    let checkpoint_every = cfg.checkpoint_every();
    while trainer.steps_done() < steps {
        let report = trainer.step()?;
        let step = trainer.steps_done();
        if !report.is_finite() {
            bar.finish_and_clear();
            if leader {
                tracing::warn!(
                    "{}: diverged at step {} (loss {}{}); run stopped",
                    cfg.name,
                    step + 1,
                    report.loss,
                    report
                        .grad_norm
                        .map_or(String::new(), |n| format!(", grad norm {n}"))
                );
            }
            return trainer.finish(RunStatus::Diverged);
        }
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.3} lr {:.1e} {:.0} tok/s",
            report.loss,
            report.lr,
            trainer.tokens_per_second()
        ));
        on_progress(step, steps);
        let last = step == steps;
        if leader && !crate::progress::interactive() && (step.is_multiple_of(log_every) || last) {
            trainer.log_step(&report);
        }
        if step.is_multiple_of(cfg.eval.every) || last {
            let rows = trainer.evaluate()?;
            if leader {
                log_evaluation(&cfg.name, &rows);
            }
        }
        if leader
            && cfg
                .checkpoint
                .series_every
                .is_some_and(|n| step.is_multiple_of(n))
        {
            trainer.save_series()?;
        }
        if step.is_multiple_of(checkpoint_every) || last {
            trainer.checkpoint()?;
        }
    }
    bar.finish_and_clear();
    trainer
        .finish(RunStatus::Finished)
        .with_context(|| format!("{}: finishing", trainer.plan.dir.display()))
}

/// Where this session's time went: evaluations and, over several ranks, the gradient
/// all-reduce.
fn log_session(trainer: &Trainer) {
    let name = &trainer.plan.config.name;
    let session = trainer.session.started.elapsed().as_secs_f64().max(1e-9);
    let (seconds, count) = trainer.session.evaluating;
    tracing::info!(
        "{name}: {count} evaluations, {:.3} s each, {:.1} % of this session's {session:.1} s",
        seconds / count.max(1) as f64,
        100.0 * seconds / session,
    );
    if let Some((p, _)) = &trainer.parallel {
        let (seconds, steps) = p.reduce_seconds();
        tracing::info!(
            "{name}: gradient all-reduce {:.1} ms a step over {} ranks, {:.1} % of this session's {session:.1} s",
            1e3 * seconds / steps.max(1) as f64,
            p.world_size(),
            100.0 * seconds / session,
        );
    }
}

fn log_evaluation(name: &str, rows: &[CurveRow]) {
    if crate::progress::interactive() {
        return;
    }
    let best = rows
        .iter()
        .skip(1)
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss));
    tracing::info!(
        "{name} eval step {}: raw val {:.4}{}",
        rows[0].step,
        rows[0].val_loss,
        best.map(|b| format!(", best average {} {:.4}", b.weights, b.val_loss))
            .unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::StepReport;

    /// A step diverges on a loss not finite, or a measured gradient norm not finite; an
    /// unmeasured norm (no clipping) is not read as 0.
    #[test]
    fn a_step_is_finite_where_its_measured_numbers_are() {
        let report = |loss, grad_norm| StepReport {
            loss,
            grad_norm,
            lr: 1e-3,
        };
        assert!(report(2.5, None).is_finite());
        assert!(report(2.5, Some(0.7)).is_finite());
        assert!(!report(f64::NAN, None).is_finite());
        assert!(!report(2.5, Some(f64::INFINITY)).is_finite());
        assert!(!report(f64::INFINITY, Some(0.7)).is_finite());
    }
}
