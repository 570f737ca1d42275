//! The rows of a sweep grouped into runs and curves, with seed means and how each run ended.

use std::collections::BTreeMap;

use crate::results::metrics;
use crate::results::{CurveRow, Strategy, SummaryRow};

/// One evaluation of one set of weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Optimizer step.
    pub step: u64,
    /// Validation loss (nats), finite.
    pub val: f64,
    /// Training loss (nats), when measured and finite.
    pub train: Option<f64>,
    /// Standard error of the gain over the raw weights, paired over the windows.
    pub gain_se: Option<f64>,
}

/// What a set of weights is, independent of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsSpec {
    /// `raw` or the averager's label.
    pub label: String,
    /// The averager kind.
    pub strategy: Strategy,
    /// LAWA window size.
    pub k: Option<u64>,
    /// LAWA snapshot spacing.
    pub nu: Option<u64>,
    /// EMA decay.
    pub decay: Option<f64>,
    /// Start step (or fraction of training, for SWA).
    pub start: Option<f64>,
}

/// How a run ended, as far as the CSVs tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Reached the last step of its model's longest run.
    Finished,
    /// Diverged (from summary.csv, or a non-finite loss in curves.csv).
    Diverged,
    /// Ended before the other runs of its model, with no record of divergence (e.g. still
    /// running, or diverged in a sweep without summary.csv).
    Stopped,
}

/// One training run (model, lr, seed) and the curves of all its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Model preset name.
    pub model: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// How it ended.
    pub end: RunEnd,
    /// Curves by weights label, points sorted by step.
    pub curves: BTreeMap<String, Vec<Point>>,
}

impl Run {
    /// The last step of the raw weights (0 when there is none).
    pub fn last_step(&self) -> u64 {
        self.curves
            .get("raw")
            .and_then(|c| c.last())
            .map_or(0, |p| p.step)
    }

    /// A legend suffix for runs that did not finish: "" for finished runs.
    pub fn end_note(&self) -> String {
        match self.end {
            RunEnd::Finished => String::new(),
            RunEnd::Diverged => format!(", seed {} (diverged)", self.seed),
            RunEnd::Stopped => format!(
                ", seed {} (stopped at step {})",
                self.seed,
                self.last_step()
            ),
        }
    }
}

/// The mean over seeds of one set of weights' curve, at the steps every seed has.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanCurve {
    /// Steps, ascending.
    pub steps: Vec<u64>,
    /// Mean validation loss per step.
    pub val: Vec<f64>,
    /// Smallest validation loss over seeds per step.
    pub val_min: Vec<f64>,
    /// Largest validation loss over seeds per step.
    pub val_max: Vec<f64>,
    /// Mean training loss per step, where every seed measured it.
    pub train: Vec<Option<f64>>,
    /// Number of seeds averaged.
    pub seeds: usize,
}

impl MeanCurve {
    /// The mean of `curves` (at least one) at the steps they all have.
    pub fn of(curves: &[&[Point]]) -> Option<MeanCurve> {
        let first = curves.first()?;
        let mut out = MeanCurve {
            steps: Vec::new(),
            val: Vec::new(),
            val_min: Vec::new(),
            val_max: Vec::new(),
            train: Vec::new(),
            seeds: curves.len(),
        };
        for p in first.iter() {
            let at: Vec<&Point> = curves
                .iter()
                .filter_map(|c| {
                    c.binary_search_by_key(&p.step, |q| q.step)
                        .ok()
                        .map(|i| &c[i])
                })
                .collect();
            if at.len() != curves.len() {
                continue;
            }
            let n = at.len() as f64;
            out.steps.push(p.step);
            out.val.push(at.iter().map(|q| q.val).sum::<f64>() / n);
            out.val_min
                .push(at.iter().map(|q| q.val).fold(f64::INFINITY, f64::min));
            out.val_max
                .push(at.iter().map(|q| q.val).fold(f64::NEG_INFINITY, f64::max));
            let train: Option<Vec<f64>> = at.iter().map(|q| q.train).collect();
            out.train.push(train.map(|t| t.iter().sum::<f64>() / n));
        }
        (!out.steps.is_empty()).then_some(out)
    }

    /// The curve of a single run.
    pub fn single(points: &[Point]) -> Option<MeanCurve> {
        MeanCurve::of(&[points])
    }

    /// (step, mean validation loss) pairs.
    pub fn pairs(&self) -> Vec<(u64, f64)> {
        self.steps
            .iter()
            .copied()
            .zip(self.val.iter().copied())
            .collect()
    }

    /// (step, mean train − mean validation loss) where training loss was measured.
    pub fn gap_pairs(&self) -> Vec<(u64, f64)> {
        self.steps
            .iter()
            .zip(&self.train)
            .zip(&self.val)
            .filter_map(|((s, t), v)| t.map(|t| (*s, t - v)))
            .collect()
    }
}

/// A whole sweep: its runs and the sets of weights they evaluated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sweep {
    /// Runs in order of first appearance.
    pub runs: Vec<Run>,
    /// Every set of weights seen, by label.
    pub specs: BTreeMap<String, WeightsSpec>,
}

impl Sweep {
    /// Groups rows into runs. `summary`, when given, says which runs diverged; without it a run
    /// with a non-finite loss counts as diverged, and one that ends before its model's longest
    /// run as stopped. Non-finite losses are dropped from the curves.
    pub fn from_rows(rows: &[CurveRow], summary: Option<&[SummaryRow]>) -> Sweep {
        let mut sweep = Sweep::default();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut non_finite: BTreeMap<String, bool> = BTreeMap::new();
        for row in rows {
            let id = row;
            let i = *index.entry(id.run.clone()).or_insert_with(|| {
                sweep.runs.push(Run {
                    id: id.run.clone(),
                    model: id.model.clone(),
                    lr: id.lr,
                    seed: id.seed,
                    end: RunEnd::Finished,
                    curves: BTreeMap::new(),
                });
                sweep.runs.len() - 1
            });
            sweep
                .specs
                .entry(id.weights.clone())
                .or_insert_with(|| WeightsSpec {
                    label: id.weights.clone(),
                    strategy: id.strategy,
                    k: id.k,
                    nu: id.nu,
                    decay: id.decay,
                    start: id.start,
                });
            if !row.val_loss.is_finite() {
                *non_finite.entry(id.run.clone()).or_default() = true;
                continue;
            }
            sweep.runs[i]
                .curves
                .entry(id.weights.clone())
                .or_default()
                .push(Point {
                    step: row.step,
                    val: row.val_loss,
                    train: row.train_loss.filter(|t| t.is_finite()),
                    gain_se: row.gain_se,
                });
        }
        for run in &mut sweep.runs {
            for curve in run.curves.values_mut() {
                // Keep the last row of a step written twice.
                curve.reverse();
                curve.sort_by_key(|p| p.step);
                curve.dedup_by_key(|p| p.step);
            }
        }
        let mut longest: BTreeMap<String, u64> = BTreeMap::new();
        for run in &sweep.runs {
            let last = longest.entry(run.model.clone()).or_default();
            *last = (*last).max(run.last_step());
        }
        for run in &mut sweep.runs {
            let recorded = summary.and_then(|rows| {
                let mine: Vec<&SummaryRow> = rows.iter().filter(|r| r.run == run.id).collect();
                (!mine.is_empty()).then(|| mine.iter().any(|r| r.diverged))
            });
            run.end = match recorded {
                Some(true) => RunEnd::Diverged,
                _ if non_finite.get(&run.id).copied().unwrap_or(false) => RunEnd::Diverged,
                Some(false) => RunEnd::Finished,
                None if run.last_step() < longest.get(&run.model).copied().unwrap_or(0) => {
                    RunEnd::Stopped
                }
                None => RunEnd::Finished,
            };
        }
        sweep
    }

    /// Model names in order of first appearance.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = Vec::new();
        for run in &self.runs {
            if !models.contains(&run.model) {
                models.push(run.model.clone());
            }
        }
        models
    }

    /// The learning rates of a model's runs, ascending.
    pub fn lrs(&self, model: &str) -> Vec<f64> {
        let mut lrs: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.model == model)
            .map(|r| r.lr)
            .collect();
        lrs.sort_by(f64::total_cmp);
        lrs.dedup();
        lrs
    }

    /// The runs of a model at a learning rate.
    pub fn runs_at(&self, model: &str, lr: f64) -> Vec<&Run> {
        self.runs
            .iter()
            .filter(|r| r.model == model && r.lr == lr)
            .collect()
    }

    /// Labels of the weights of `strategies` that a model's runs evaluated, ordered by
    /// strategy then parameters (k, nu, decay, start), numerically.
    pub fn labels(&self, model: &str, strategies: &[Strategy]) -> Vec<String> {
        let mut specs: Vec<&WeightsSpec> = self.specs.values().collect();
        specs.sort_by(|a, b| {
            let key = |s: &WeightsSpec| {
                (
                    s.strategy,
                    s.k.unwrap_or(0),
                    s.nu.unwrap_or(0),
                    s.decay.unwrap_or(0.0),
                    s.start.unwrap_or(0.0),
                )
            };
            let (ka, kb) = (key(a), key(b));
            (ka.0, ka.1, ka.2)
                .cmp(&(kb.0, kb.1, kb.2))
                .then(ka.3.total_cmp(&kb.3))
                .then(ka.4.total_cmp(&kb.4))
                .then(a.label.cmp(&b.label))
        });
        specs
            .into_iter()
            .filter(|s| strategies.contains(&s.strategy))
            .filter(|s| {
                self.runs
                    .iter()
                    .any(|r| r.model == model && r.curves.contains_key(&s.label))
            })
            .map(|s| s.label.clone())
            .collect()
    }

    /// The seed mean of a set of weights over the finished runs of (model, lr).
    pub fn mean(&self, model: &str, lr: f64, label: &str) -> Option<MeanCurve> {
        let curves: Vec<&[Point]> = self
            .runs_at(model, lr)
            .into_iter()
            .filter(|r| r.end == RunEnd::Finished)
            .filter_map(|r| r.curves.get(label).map(Vec::as_slice))
            .collect();
        MeanCurve::of(&curves)
    }

    /// The gain of `label` over the raw weights at each step, summarized over the finished runs
    /// of (model, lr) (see [`metrics::seed_gain`]), at the steps every one of them has both.
    pub fn gain_stats(&self, model: &str, lr: f64, label: &str) -> Vec<(u64, metrics::GainStat)> {
        let runs: Vec<&Run> = self
            .runs_at(model, lr)
            .into_iter()
            .filter(|r| r.end == RunEnd::Finished)
            .collect();
        let Some(first) = runs.first().and_then(|r| r.curves.get(label)) else {
            return Vec::new();
        };
        let at = |run: &Run, name: &str, step: u64| -> Option<Point> {
            let curve = run.curves.get(name)?;
            let i = curve.binary_search_by_key(&step, |p| p.step).ok()?;
            Some(curve[i])
        };
        first
            .iter()
            .filter_map(|p| {
                let per_seed: Option<Vec<(f64, Option<f64>)>> = runs
                    .iter()
                    .map(|r| {
                        let (raw, avg) = (at(r, "raw", p.step)?, at(r, label, p.step)?);
                        Some((raw.val - avg.val, avg.gain_se))
                    })
                    .collect();
                Some((p.step, metrics::seed_gain(&per_seed?)?))
            })
            .collect()
    }

    /// The runs of (model, lr) that did not finish, each drawn on its own.
    pub fn unfinished(&self, model: &str, lr: f64) -> Vec<&Run> {
        self.runs_at(model, lr)
            .into_iter()
            .filter(|r| r.end != RunEnd::Finished)
            .collect()
    }

    /// The LAWA configuration with the largest mean final gain over the raw weights across a
    /// model's finished runs (all its runs when none finished).
    pub fn best_lawa(&self, model: &str) -> Option<String> {
        let runs: Vec<&Run> = self.runs.iter().filter(|r| r.model == model).collect();
        let finished: Vec<&Run> = runs
            .iter()
            .copied()
            .filter(|r| r.end == RunEnd::Finished)
            .collect();
        let runs = if finished.is_empty() { runs } else { finished };
        let gains: Vec<(String, f64)> = self
            .labels(model, &[Strategy::Lawa])
            .into_iter()
            .flat_map(|label| {
                let gains: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| {
                        let raw = pairs(r.curves.get("raw")?);
                        let avg = pairs(r.curves.get(&label)?);
                        metrics::final_gain(&raw, &avg)
                    })
                    .collect();
                gains.into_iter().map(move |g| (label.clone(), g))
            })
            .collect();
        metrics::best_by_mean(&gains)
    }
}

/// (step, validation loss) pairs of a curve.
pub fn pairs(points: &[Point]) -> Vec<(u64, f64)> {
    points.iter().map(|p| (p.step, p.val)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, seed: u64, weights: &str, step: u64, val: f64) -> CurveRow {
        let strategy = if weights == "raw" {
            Strategy::Raw
        } else {
            Strategy::Lawa
        };
        CurveRow {
            run: run.into(),
            model: "tiny".into(),
            lr: 0.01,
            seed,
            weights: weights.into(),
            strategy,
            step,
            tokens: step * 10,
            val_loss: val,
            train_loss: Some(val - 0.5),
            ..CurveRow::default()
        }
    }

    #[test]
    fn seed_mean_min_max_and_ends() {
        let rows = vec![
            row("a", 0, "raw", 0, 10.0),
            row("a", 0, "raw", 10, 4.0),
            row("a", 0, "raw", 20, 3.0),
            row("b", 1, "raw", 0, 10.0),
            row("b", 1, "raw", 10, 6.0),
            row("b", 1, "raw", 20, 5.0),
            row("c", 2, "raw", 0, 10.0),
            row("c", 2, "raw", 10, 9.0),
            row("d", 3, "raw", 0, 10.0),
            row("d", 3, "raw", 10, f64::NAN),
        ];
        let sweep = Sweep::from_rows(&rows, None);
        let ends: Vec<RunEnd> = sweep.runs.iter().map(|r| r.end).collect();
        assert_eq!(
            ends,
            [
                RunEnd::Finished,
                RunEnd::Finished,
                RunEnd::Stopped,
                RunEnd::Diverged
            ]
        );
        let mean = sweep.mean("tiny", 0.01, "raw").unwrap();
        assert_eq!(mean.steps, [0, 10, 20]);
        assert_eq!(mean.val, [10.0, 5.0, 4.0]);
        assert_eq!(mean.val_min, [10.0, 4.0, 3.0]);
        assert_eq!(mean.val_max, [10.0, 6.0, 5.0]);
        assert_eq!(mean.gap_pairs()[1], (10, -0.5));
        assert_eq!(mean.seeds, 2);
        assert_eq!(sweep.unfinished("tiny", 0.01).len(), 2);
    }

    #[test]
    fn best_lawa_by_mean_final_gain() {
        let rows = vec![
            row("a", 0, "raw", 10, 4.0),
            row("a", 0, "lawa_a", 10, 3.5),
            row("a", 0, "lawa_b", 10, 3.8),
            row("b", 1, "raw", 10, 4.0),
            row("b", 1, "lawa_a", 10, 4.1),
            row("b", 1, "lawa_b", 10, 3.7),
        ];
        // Mean gains: a = (0.5 - 0.1) / 2 = 0.2, b = (0.2 + 0.3) / 2 = 0.25.
        let sweep = Sweep::from_rows(&rows, None);
        assert_eq!(sweep.best_lawa("tiny").as_deref(), Some("lawa_b"));
    }
}
