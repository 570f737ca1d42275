//! `gains.csv`: the gain of every set of weights over the raw weights, summarized over seeds, at
//! every evaluation step: the numbers behind "LAWA helps by x ± e nats at the high learning rate".
//! Computed with [`metrics::seed_gain`], as the figures' bands are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::{self, GainStat};
use super::schema::{CurveRow, Strategy};

/// File name of the seed summary of gains.
pub const GAINS_FILE: &str = "gains.csv";

/// One row of `gains.csv`: one set of weights at one step of one (model, lr), over its seeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GainRow {
    /// Model name.
    pub model: String,
    /// Peak learning rate.
    pub lr: f64,
    /// The averager's label.
    pub weights: String,
    /// The averager kind.
    pub strategy: Strategy,
    /// LAWA window size.
    pub k: Option<u64>,
    /// LAWA snapshot spacing in steps.
    pub nu: Option<u64>,
    /// EMA decay.
    pub decay: Option<f64>,
    /// First step averaged.
    pub start: Option<f64>,
    /// Steps between updates.
    pub every: Option<u64>,
    /// Optimizer step.
    pub step: u64,
    /// Seeds summarized (runs that did not diverge and have this step).
    pub seeds: usize,
    /// Mean gain (raw − these weights, validation loss, nats) over the seeds.
    pub gain: f64,
    /// Standard error of `gain` (seed spread and window sampling; see [`GainStat`]).
    pub gain_se: f64,
    /// Standard deviation of the gain over seeds (empty with one seed).
    pub gain_sd_seeds: Option<f64>,
    /// Mean paired standard error over the evaluation windows.
    pub gain_se_windows: Option<f64>,
    /// Smallest gain of a seed.
    pub gain_min: f64,
    /// Largest gain of a seed.
    pub gain_max: f64,
}

/// The gains of `rows` (a sweep's curves) summarized over seeds, for every (model, lr, weights,
/// step) of the runs not in `diverged`, in a fixed order.
pub fn seed_gains(rows: &[CurveRow], diverged: &[String]) -> Vec<GainRow> {
    let kept: Vec<&CurveRow> = rows
        .iter()
        .filter(|r| !diverged.contains(&r.run) && r.val_loss.is_finite())
        .collect();
    let mut raw: BTreeMap<(&str, u64), f64> = BTreeMap::new();
    for r in kept.iter().filter(|r| r.strategy == Strategy::Raw) {
        raw.insert((r.run.as_str(), r.step), r.val_loss);
    }
    // (model, lr bits, weights, step) -> (the first row, per-seed gains and their window SEs)
    type Key<'a> = (&'a str, u64, &'a str, u64);
    type Group<'a> = (&'a CurveRow, Vec<(f64, Option<f64>)>);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for r in kept.iter().filter(|r| r.strategy != Strategy::Raw) {
        let Some(raw_val) = raw.get(&(r.run.as_str(), r.step)) else {
            continue;
        };
        let key = (r.model.as_str(), r.lr.to_bits(), r.weights.as_str(), r.step);
        groups
            .entry(key)
            .or_insert_with(|| (r, Vec::new()))
            .1
            .push((raw_val - r.val_loss, r.gain_se));
    }
    groups
        .into_values()
        .filter_map(|(r, per_seed)| {
            let g: GainStat = metrics::seed_gain(&per_seed)?;
            Some(GainRow {
                model: r.model.clone(),
                lr: r.lr,
                weights: r.weights.clone(),
                strategy: r.strategy,
                k: r.k,
                nu: r.nu,
                decay: r.decay,
                start: r.start,
                every: r.every,
                step: r.step,
                seeds: g.seeds,
                gain: g.mean,
                gain_se: g.se,
                gain_sd_seeds: g.sd_seeds,
                gain_se_windows: g.se_windows,
                gain_min: g.min,
                gain_max: g.max,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, seed: u64, weights: &str, step: u64, val: f64, se: Option<f64>) -> CurveRow {
        CurveRow {
            run: run.into(),
            model: "tiny".into(),
            lr: 0.01,
            seed,
            weights: weights.into(),
            strategy: if weights == "raw" {
                Strategy::Raw
            } else {
                Strategy::Lawa
            },
            step,
            val_loss: val,
            gain_se: se,
            ..CurveRow::default()
        }
    }

    #[test]
    fn gains_by_hand_over_two_seeds_without_the_diverged_one() {
        let rows = [
            row("a", 0, "raw", 10, 5.0, None),
            row("a", 0, "lawa", 10, 4.9, Some(0.03)),
            row("b", 1, "raw", 10, 5.2, None),
            row("b", 1, "lawa", 10, 4.9, Some(0.05)),
            row("c", 2, "raw", 10, 9.0, None),
            row("c", 2, "lawa", 10, 1.0, Some(0.05)),
        ];
        let g = seed_gains(&rows, &["c".to_string()]);
        assert_eq!(g.len(), 1);
        // Gains 0.1 and 0.3: mean 0.2, sd 0.1414, windows 0.04; SE = sqrt(0.02 / 2 + 0.0016).
        assert_eq!(g[0].seeds, 2);
        assert!((g[0].gain - 0.2).abs() < 1e-12);
        assert!((g[0].gain_se - (0.01f64 + 0.0016).sqrt()).abs() < 1e-12);
        assert!((g[0].gain_min - 0.1).abs() < 1e-12 && (g[0].gain_max - 0.3).abs() < 1e-12);
    }
}
