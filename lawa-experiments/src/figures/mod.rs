//! The paper's figures, regenerated from a sweep's CSVs alone (no training, no libtorch):
//! `render_all` reads `curves.csv` (and `summary.csv` when present) and writes every figure the
//! data allows into `figures/`, as PNG and SVG. Figures that cannot be drawn from a partial
//! sweep are skipped with one log line each.

pub mod baselines;
pub mod gain;
pub mod gap;
pub mod lines;
pub mod loss;
pub mod plot;
pub mod posthoc;
pub mod steps_saved;
pub mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::results::{
    read_rows, ComputeRow, CurveRow, Strategy, SummaryRow, TaskRow, COMPUTE_FILE, CURVES_FILE,
    SUMMARY_FILE, TASKS_FILE,
};
use plot::Figure;
use sweep::{Sweep, WeightsSpec};

/// The folder, inside a results folder, that figures are written to.
pub const FIGURES_DIR: &str = "figures";

/// What building one figure gave: the figure, or why it cannot be drawn from this sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A figure to render.
    Drawn(Figure),
    /// Not drawable: the file name it would have had, and why.
    Skipped {
        /// File name without extension.
        name: String,
        /// One line saying why.
        reason: String,
    },
}

/// The part of a sweep one set of figures is about: one model, with how its files are named.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The sweep.
    pub sweep: &'a Sweep,
    /// The model the figures show.
    pub model: &'a str,
    /// Whether the sweep has several models (file names then end in `_<model>`).
    pub several_models: bool,
}

impl Scope<'_> {
    /// The file name of figure `base` for this model.
    pub fn name(&self, base: &str) -> String {
        if self.several_models {
            format!("{base}_{}", self.model)
        } else {
            base.to_owned()
        }
    }

    /// A skipped figure.
    pub fn skip(&self, base: &str, reason: impl Into<String>) -> Outcome {
        Outcome::Skipped {
            name: self.name(base),
            reason: reason.into(),
        }
    }

    /// The model's learning rates, ascending.
    pub fn lrs(&self) -> Vec<f64> {
        self.sweep.lrs(self.model)
    }

    /// The spec of a set of weights.
    pub fn spec(&self, label: &str) -> Option<&WeightsSpec> {
        self.sweep.specs.get(label)
    }

    /// A note for titles when several seeds are averaged (`band`: the figure shades min–max).
    pub fn seeds_note(&self, band: bool) -> String {
        let most = self
            .lrs()
            .iter()
            .filter_map(|&lr| self.sweep.mean(self.model, lr, "raw").map(|m| m.seeds))
            .max()
            .unwrap_or(1);
        if most > 1 && band {
            format!(", mean of {most} seeds (band: min–max)")
        } else if most > 1 {
            format!(", mean of {most} seeds")
        } else {
            String::new()
        }
    }
}

/// A set of weights described for a legend: "LAWA k=5, ν=50", "EMA 0.99 (warm-up)",
/// "SWA from 75%", "raw".
pub fn describe(spec: &WeightsSpec) -> String {
    let num = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_else(|| "?".into());
    let int = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    match spec.strategy {
        Strategy::Raw => "raw".into(),
        Strategy::Lawa => format!("LAWA k={}, ν={}", int(spec.k), int(spec.nu)),
        Strategy::Ema => format!("EMA {}", num(spec.decay)),
        Strategy::EmaWarmup => format!("EMA {} (warm-up)", num(spec.decay)),
        Strategy::Swa => match spec.start {
            Some(f) if f > 0.0 && f < 1.0 => format!("SWA from {}%", (f * 100.0).round()),
            Some(s) => format!("SWA from step {s}"),
            None => "SWA".into(),
        },
    }
}

/// The legend text of a label, falling back to the label itself.
pub fn describe_label(sweep: &Sweep, label: &str) -> String {
    sweep
        .specs
        .get(label)
        .map(describe)
        .unwrap_or_else(|| label.to_owned())
}

/// Every figure the sweep allows, and a reason for each one it does not.
pub fn build_all(sweep: &Sweep) -> Vec<Outcome> {
    let models = sweep.models();
    let mut out = Vec::new();
    for model in &models {
        let scope = Scope {
            sweep,
            model,
            several_models: models.len() > 1,
        };
        out.push(loss::raw_vs_lawa(&scope));
        out.push(loss::lr_comparison(&scope));
        out.push(gain::gain_vs_step(&scope));
        out.push(gain::gain_vs_param(&scope, gain::Param::K));
        out.push(gain::gain_vs_param(&scope, gain::Param::Nu));
        out.extend(baselines::baselines(&scope));
        out.push(steps_saved::steps_saved(&scope));
        out.push(gap::generalization_gap(&scope));
    }
    out
}

/// Reads `<results_dir>/curves.csv` (and `summary.csv` when present) and writes every figure
/// it allows into `<results_dir>/figures/` as PNG and SVG; returns the files written. Input
/// errors name the file, line and column, and leave nothing written.
pub fn render_all(results_dir: &Path) -> Result<Vec<PathBuf>> {
    if !results_dir.is_dir() {
        bail!("{}: results folder not found", results_dir.display());
    }
    let curves_path = results_dir.join(CURVES_FILE);
    if !curves_path.is_file() {
        bail!(
            "{}: not found (a sweep's results folder holds {CURVES_FILE})",
            curves_path.display()
        );
    }
    let rows: Vec<CurveRow> = read_rows(&curves_path)?;
    let summary_path = results_dir.join(SUMMARY_FILE);
    let summary: Option<Vec<SummaryRow>> = if summary_path.exists() {
        Some(read_rows(&summary_path)?)
    } else {
        None
    };
    let sweep = Sweep::from_rows(&rows, summary.as_deref());
    let compute_path = results_dir.join(COMPUTE_FILE);
    let mut outcomes = build_all(&sweep);
    if compute_path.exists() {
        let compute: Vec<ComputeRow> = read_rows(&compute_path)?;
        for model in sweep.models() {
            let scope = Scope {
                sweep: &sweep,
                model: &model,
                several_models: sweep.models().len() > 1,
            };
            outcomes.push(posthoc::perplexity(&scope));
            outcomes.push(posthoc::compute_saved(&scope, &compute));
        }
    }
    let tasks_path = results_dir.join(TASKS_FILE);
    if tasks_path.exists() {
        let tasks: Vec<TaskRow> = read_rows(&tasks_path)?;
        for model in sweep.models() {
            let scope = Scope {
                sweep: &sweep,
                model: &model,
                several_models: sweep.models().len() > 1,
            };
            outcomes.push(posthoc::task_accuracy(&scope, &tasks));
        }
    }
    let mut figures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Drawn(figure) => figures.push(figure),
            Outcome::Skipped { name, reason } => tracing::info!("skipping {name}: {reason}"),
        }
    }
    let dir = results_dir.join(FIGURES_DIR);
    if figures.is_empty() {
        tracing::warn!(
            "{}: no figure can be drawn from {} rows",
            curves_path.display(),
            rows.len()
        );
        if dir.is_dir() {
            remove_stale(&dir, &[])?;
        }
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut written = Vec::new();
    for figure in &figures {
        for path in plot::render(figure, &dir)? {
            tracing::info!("wrote {}", path.display());
            written.push(path);
        }
    }
    remove_stale(&dir, &written)?;
    Ok(written)
}

/// Removes the figure files (PNG, SVG) in `dir` that this drawing did not write: figures the
/// results no longer allow must not stay beside the new ones.
fn remove_stale(dir: &Path, written: &[PathBuf]) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        let figure = path.extension().is_some_and(|e| e == "png" || e == "svg");
        if figure && !written.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove a stale figure", path.display()))?;
            tracing::info!(
                "removed {}, which these results no longer give",
                path.display()
            );
        }
    }
    Ok(())
}

/// Learning rates with their rank and the count, `(lr, index, count)`: the form the per-lr
/// colour scale takes.
pub fn ranked(lrs: &[f64]) -> Vec<(f64, usize, usize)> {
    lrs.iter()
        .enumerate()
        .map(|(i, &lr)| (lr, i, lrs.len()))
        .collect()
}
