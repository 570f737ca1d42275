//! `lawa posthoc`: LAWA applied after the fact to a series of saved checkpoints, as the paper did
//! with Pythia's published ones. At each evaluated step `t` the raw checkpoint and LAWA(k, nu),
//! the mean of the checkpoints at `t, t - nu, ..., t - (k-1) nu`, are scored on the same fixed
//! windows. The mean is computed a tensor at a time into one model (peak memory: one model and a
//! couple of tensors), each checkpoint read once per window it belongs to. Results use the sweep
//! schema (`curves.csv`, `summary.csv`, `gains.csv`), so `lawa figures` draws them, plus
//! `compute_saved.csv` (steps and GPU-hours saved). Resumable: a re-run scores only what is
//! missing.

pub mod config;
pub mod series;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_core::checkpoint::{MeanOf, TensorFiles, WeightSource};
use lawa_core::data::{Dataset, Split, ValidationWindows};
use lawa_models::hf::CheckpointFiles;
use lawa_models::{Model, ModelConfig, Precision};
use tch::nn::VarStore;

use crate::prepare::tokenizer::TextTokenizer;
use crate::results::schema::{drop_torn_line, parse_rows, rows_without_header, to_csv};
use crate::results::{
    compute_saved, read_rows, seed_gains, summarize, write_rows, CurveRow, Strategy, TaskRow,
    COMPUTE_FILE, CURVES_FILE, GAINS_FILE, SUMMARY_FILE, TASKS_FILE,
};
use crate::train::evaluate::{evaluate, WindowLosses};
use crate::train::run_dir::{claim_folder, is_temporary, LOCK_FILE};
pub use config::PosthocConfig;
use series::Series;

/// The copy of the study's config in its results folder.
pub const POSTHOC_FILE: &str = "posthoc.yaml";

/// What a study did.
#[derive(Debug, Clone)]
pub struct PosthocReport {
    /// The results folder.
    pub dir: PathBuf,
    /// Evaluations made in this call.
    pub evaluated: usize,
    /// Evaluations in all.
    pub total: usize,
}

/// One evaluation: a set of weights at a step.
#[derive(Debug, Clone)]
struct Planned {
    step: u64,
    /// `None` for the raw checkpoint.
    lawa: Option<(usize, u64)>,
    /// Checkpoint steps averaged, oldest first.
    members: Vec<u64>,
}

impl Planned {
    fn label(&self) -> String {
        match self.lawa {
            None => "raw".into(),
            Some((k, nu)) => format!("lawa_k{k}_nu{nu}"),
        }
    }
}

/// Every evaluation of the study, in step order (raw first at each step).
fn plan(cfg: &PosthocConfig, series: &Series) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for &t in series.steps.keys().filter(|&&t| cfg.steps.contains(t)) {
        out.push(Planned {
            step: t,
            lawa: None,
            members: vec![t],
        });
        for &nu in &cfg.lawa.nu {
            for &k in &cfg.lawa.k {
                out.push(Planned {
                    step: t,
                    lawa: Some((k, nu)),
                    members: series.window(t, k, nu)?,
                });
            }
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no checkpoint step lies in the study's steps",
            series.dir.display()
        );
    }
    Ok(out)
}

/// The checkpoints' shared configuration: every one must describe the same model.
fn model_config(series: &Series) -> Result<ModelConfig> {
    let mut first: Option<(u64, ModelConfig)> = None;
    for (&step, dir) in &series.steps {
        let files = CheckpointFiles::locate(dir)?;
        let cfg = ModelConfig::read(&files.config)?;
        match &first {
            None => first = Some((step, cfg)),
            Some((s0, c0)) if *c0 != cfg => bail!(
                "{}: describes another model than the checkpoint of step {s0}",
                files.config.display()
            ),
            Some(_) => {}
        }
    }
    first
        .map(|(_, c)| c)
        .context("the series holds no checkpoint")
}

/// Runs the study in `path` (or continues it).
pub fn run(path: &Path) -> Result<PosthocReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let cfg = PosthocConfig::load(path)?;
    let series = Series::discover(&cfg.checkpoints)?;
    let planned = plan(&cfg, &series).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    let model_cfg = model_config(&series)?;
    let device = crate::train::config::parse_device(&cfg.device)?;
    crate::train::config::ensure_available(device)?;
    let inputs = Inputs::check(path, &cfg, &series, &model_cfg)?;
    let dir = cfg.results_dir();
    let _claim = claim_folder(
        &dir,
        POSTHOC_FILE,
        &text,
        posthoc_owns,
        "post-hoc study",
        "give the study another name",
    )?;
    let mut rows = resume(&dir, &cfg)?;
    let done: BTreeSet<(u64, String)> = rows.iter().map(|r| (r.step, r.weights.clone())).collect();
    let todo: Vec<&Planned> = planned
        .iter()
        .filter(|p| !done.contains(&(p.step, p.label())))
        .collect();
    tracing::info!(
        "post-hoc study {}: {} checkpoints, {} evaluations ({} done before), {} windows of {} tokens",
        cfg.name,
        series.steps.len(),
        planned.len(),
        planned.len() - todo.len(),
        inputs.windows.len(),
        inputs.block
    );
    let vs = VarStore::new(device);
    let mut model = Model::new(vs.root(), &model_cfg)?;
    model.set_precision(
        cfg.precision
            .parse::<Precision>()
            .map_err(anyhow::Error::msg)?,
    );
    let mut scorer = Scorer {
        cfg: &cfg,
        series: &series,
        model: &model,
        windows: &inputs.windows,
        tokenizer: inputs.tokenizer.as_ref(),
        max_length: inputs.block,
        raw: BTreeMap::new(),
    };
    rows.extend(scorer.score_all(&dir, &todo)?);
    finish(&dir, &cfg, &mut rows)?;
    Ok(PosthocReport {
        dir,
        evaluated: todo.len(),
        total: planned.len(),
    })
}

/// What the checkpoints are scored on, checked against them: the validation windows, the
/// longest input, and the tasks' tokenizer when there are tasks.
struct Inputs {
    windows: ValidationWindows,
    block: usize,
    tokenizer: Option<TextTokenizer>,
}

impl Inputs {
    /// Refuses data of another tokenizer, a block longer than the model's, a bad task file.
    fn check(
        path: &Path,
        cfg: &PosthocConfig,
        series: &Series,
        model_cfg: &ModelConfig,
    ) -> Result<Inputs> {
        let data = Dataset::open(&cfg.data)?;
        let configs = (series.steps.values())
            .map(|dir| Ok(CheckpointFiles::locate(dir)?.config))
            .collect::<Result<Vec<_>>>()?;
        let vocab = model_cfg.vocab_size();
        crate::vocabulary::ensure_checkpoints_fit(&cfg.data, data.meta(), &configs, vocab)?;
        let block = cfg.eval.block_size.unwrap_or(model_cfg.max_positions());
        if block > model_cfg.max_positions() {
            bail!(
                "{}: eval.block_size = {block} is longer than the model's {}",
                path.display(),
                model_cfg.max_positions()
            );
        }
        let windows = ValidationWindows::new(data.split(Split::Val), block, cfg.eval.windows)?;
        crate::train::evaluate::warn_if_overlapping(
            &path.display().to_string(),
            "eval.windows",
            cfg.eval.windows,
            &windows,
        );
        for t in &cfg.tasks {
            crate::tasks::format::check(&t.path)?;
        }
        let tokenizer = if cfg.tasks.is_empty() {
            None
        } else {
            Some(TextTokenizer::for_dataset(&cfg.data, data.meta())?)
        };
        Ok(Inputs {
            windows,
            block,
            tokenizer,
        })
    }
}

/// The curve rows an earlier call wrote to `dir` (none at first), with `curves.csv` (and
/// `tasks.csv` when the study has tasks) in place for this call's rows to be appended to.
fn resume(dir: &Path, cfg: &PosthocConfig) -> Result<Vec<CurveRow>> {
    let (curves_path, tasks_path) = (dir.join(CURVES_FILE), dir.join(TASKS_FILE));
    // A row cut short is dropped; its evaluation is not done, and is made again.
    drop_torn_line(&curves_path)?;
    drop_torn_line(&tasks_path)?;
    let rows = match std::fs::read(&curves_path) {
        Ok(bytes) => parse_rows(&curves_path, &bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            lawa_core::checkpoint::write_atomic(&curves_path, &to_csv::<CurveRow>(&[])?)?;
            Vec::new()
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", curves_path.display())),
    };
    if !cfg.tasks.is_empty() && !tasks_path.exists() {
        lawa_core::checkpoint::write_atomic(&tasks_path, &to_csv::<TaskRow>(&[])?)?;
    }
    Ok(rows)
}

/// Sorts the rows, writes the summaries and draws the figures.
fn finish(dir: &Path, cfg: &PosthocConfig, rows: &mut [CurveRow]) -> Result<()> {
    rows.sort_by(|a, b| {
        (a.step, a.strategy != Strategy::Raw, &a.weights).cmp(&(
            b.step,
            b.strategy != Strategy::Raw,
            &b.weights,
        ))
    });
    write_rows(&dir.join(CURVES_FILE), rows)?;
    write_rows(&dir.join(SUMMARY_FILE), &summarize(rows, &[]))?;
    write_rows(&dir.join(GAINS_FILE), &seed_gains(rows, &[]))?;
    dedupe_tasks(&dir.join(TASKS_FILE))?;
    write_rows(
        &dir.join(COMPUTE_FILE),
        &compute_saved(rows, cfg.gpu_hours_per_step),
    )?;
    let figures = crate::figures::render_all(dir).context("drawing the figures")?;
    tracing::info!(
        "post-hoc study {}: {} figure files; results in {}",
        cfg.name,
        figures.len(),
        dir.display()
    );
    Ok(())
}

/// Keeps the last row of each (step, weights, task, metric) of `tasks.csv`, sorted: a kill
/// between a step's task rows and its curve row scored them twice.
fn dedupe_tasks(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut tasks: Vec<TaskRow> = read_rows(path)?;
    tasks.reverse();
    let mut seen = BTreeSet::new();
    tasks.retain(|t| seen.insert((t.step, t.weights.clone(), t.task.clone(), t.metric.clone())));
    tasks.sort_by(|a, b| {
        (a.step, &a.weights, &a.task, &a.metric).cmp(&(b.step, &b.weights, &b.task, &b.metric))
    });
    write_rows(path, &tasks)?;
    Ok(())
}

fn append<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    file.write_all(&rows_without_header(rows)?)
        .and_then(|_| file.sync_data())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// What a post-hoc results folder holds.
fn posthoc_owns(name: &str) -> bool {
    matches!(
        name,
        POSTHOC_FILE
            | LOCK_FILE
            | CURVES_FILE
            | SUMMARY_FILE
            | GAINS_FILE
            | COMPUTE_FILE
            | TASKS_FILE
            | crate::figures::FIGURES_DIR
    ) || is_temporary(name)
}

/// Loads checkpoints (or their means) into one model and scores them.
struct Scorer<'a> {
    cfg: &'a PosthocConfig,
    series: &'a Series,
    model: &'a Model,
    windows: &'a ValidationWindows,
    /// The tokenizer of the zero-shot tasks, when there are tasks.
    tokenizer: Option<&'a TextTokenizer>,
    /// The longest input fed to the model.
    max_length: usize,
    /// The raw checkpoint's per-window losses by step, for paired errors.
    raw: BTreeMap<u64, WindowLosses>,
}

impl Scorer<'_> {
    /// Scores `todo` in order, appending each evaluation's rows to `dir`'s CSVs as it is made
    /// (task rows first: the curve row marks the evaluation done); returns the curve rows.
    fn score_all(&mut self, dir: &Path, todo: &[&Planned]) -> Result<Vec<CurveRow>> {
        let name = &self.cfg.name;
        let (curves_path, tasks_path) = (dir.join(CURVES_FILE), dir.join(TASKS_FILE));
        let bar = crate::progress::bar(todo.len() as u64, name, "evaluations");
        let started = Instant::now();
        let mut rows = Vec::with_capacity(todo.len());
        for (i, p) in todo.iter().enumerate() {
            let (row, task_rows) = self
                .score(p, started.elapsed().as_secs_f64())
                .with_context(|| format!("{} at step {}", p.label(), p.step))?;
            if !task_rows.is_empty() {
                append(&tasks_path, &task_rows)?;
            }
            append(&curves_path, std::slice::from_ref(&row))?;
            rows.push(row);
            bar.set_position(i as u64 + 1);
            if !crate::progress::interactive() && (i + 1) % 10 == 0 {
                tracing::info!("{name}: {} of {} evaluations", i + 1, todo.len());
            }
        }
        bar.finish_and_clear();
        Ok(rows)
    }

    fn open(&self, step: u64) -> Result<TensorFiles> {
        let files = CheckpointFiles::locate(&self.series.steps[&step])?;
        Ok(files.open_weights()?)
    }

    fn losses(&self, source: &dyn WeightSource) -> Result<WindowLosses> {
        self.model.load_weights(source)?;
        evaluate(self.model, self.windows, self.cfg.eval.batch_size)
    }

    /// The raw checkpoint's losses at `step` (scored once per run).
    fn raw_losses(&mut self, step: u64) -> Result<&WindowLosses> {
        if !self.raw.contains_key(&step) {
            let losses = self.losses(&self.open(step)?)?;
            self.raw.insert(step, losses);
        }
        Ok(&self.raw[&step])
    }

    fn score(&mut self, p: &Planned, wall: f64) -> Result<(CurveRow, Vec<TaskRow>)> {
        let (losses, gain_se) = match p.lawa {
            None => {
                let losses = self.losses(&self.open(p.step)?)?;
                self.raw.insert(p.step, losses.clone());
                (losses, None)
            }
            Some(_) => {
                let raw = self.raw_losses(p.step)?.clone();
                let inputs = p
                    .members
                    .iter()
                    .map(|&s| self.open(s))
                    .collect::<Result<Vec<_>>>()?;
                let mean = MeanOf::new(inputs.iter().collect())?;
                let losses = self.losses(&mean)?;
                let se = crate::results::metrics::paired_se(&raw.per_window, &losses.per_window);
                (losses, se)
            }
        };
        // The model holds these weights now: score the tasks with them.
        let mut task_results = Vec::new();
        if let Some(tokenizer) = self.tokenizer {
            for spec in &self.cfg.tasks {
                task_results.push(crate::tasks::run_task(
                    spec,
                    self.model,
                    tokenizer,
                    self.cfg.eval.batch_size,
                    self.max_length,
                )?);
            }
        }
        let (k, nu) = p
            .lawa
            .map_or((None, None), |(k, nu)| (Some(k as u64), Some(nu)));
        let row = CurveRow {
            run: self.cfg.name.clone(),
            model: self.cfg.model_label(),
            lr: self.cfg.lr,
            seed: 0,
            weights: p.label(),
            strategy: if p.lawa.is_some() {
                Strategy::Lawa
            } else {
                Strategy::Raw
            },
            k,
            nu,
            decay: None,
            start: p.lawa.map(|_| 0.0),
            every: nu,
            step: p.step,
            tokens: p.step * self.cfg.tokens_per_step,
            val_loss: losses.mean,
            val_loss_se: losses.se(),
            gain_se,
            train_loss: None,
            wall_time_s: wall,
        };
        let tasks = task_results
            .iter()
            .flat_map(|r| task_rows(&row, r))
            .collect();
        Ok((row, tasks))
    }
}

/// The rows of one task's result for the weights of `row`.
fn task_rows(row: &CurveRow, r: &crate::tasks::TaskResult) -> Vec<TaskRow> {
    let metrics = [
        Some(("acc", r.acc, Some(r.acc_se))),
        r.acc_norm.map(|v| ("acc_norm", v, r.acc_norm_se)),
        r.perplexity.map(|v| ("perplexity", v, None)),
    ];
    metrics
        .into_iter()
        .flatten()
        .map(|(metric, value, se)| TaskRow {
            run: row.run.clone(),
            model: row.model.clone(),
            lr: row.lr,
            seed: row.seed,
            weights: row.weights.clone(),
            strategy: row.strategy,
            k: row.k,
            nu: row.nu,
            decay: row.decay,
            start: row.start,
            every: row.every,
            step: row.step,
            tokens: row.tokens,
            task: r.task.clone(),
            metric: metric.into(),
            value,
            se,
            examples: r.examples as u64,
        })
        .collect()
}
