//! `compute_saved.csv`: for a post-hoc study, how many training steps (and GPU-hours) each
//! averaged checkpoint saves: LAWA at step `t` has the loss the raw run reaches only at a later
//! step `t'`, found by linear interpolation along the raw curve; the saving is `t' − t`.

use serde::{Deserialize, Serialize};

use super::schema::{CurveRow, Strategy};

/// File name of the compute savings of a post-hoc study.
pub const COMPUTE_FILE: &str = "compute_saved.csv";

/// One row of `compute_saved.csv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComputeRow {
    /// Model name.
    pub model: String,
    /// The averager's label.
    pub weights: String,
    /// The averager kind.
    pub strategy: Strategy,
    /// LAWA window size.
    pub k: Option<u64>,
    /// LAWA spacing in steps.
    pub nu: Option<u64>,
    /// The step evaluated.
    pub step: u64,
    /// Validation loss of the averaged weights at that step.
    pub val_loss: f64,
    /// The (interpolated) step at which the raw run first reaches that loss; empty when it
    /// never does within the series.
    pub raw_step: Option<f64>,
    /// `raw_step − step` (negative: averaging is behind).
    pub steps_saved: Option<f64>,
    /// `steps_saved × gpu_hours_per_step`, when the study gives that cost.
    pub gpu_hours_saved: Option<f64>,
}

/// The first (interpolated) step at which `raw` (steps ascending) reaches `loss` or below, at or
/// after `from`; None when it never does.
pub fn step_reaching(raw: &[(u64, f64)], loss: f64, from: u64) -> Option<f64> {
    let after: Vec<(u64, f64)> = raw.iter().copied().filter(|&(s, _)| s >= from).collect();
    let (&(s0, v0), rest) = after.split_first()?;
    if v0 <= loss {
        return Some(s0 as f64);
    }
    let mut prev = (s0, v0);
    for &(s, v) in rest {
        if v <= loss {
            let frac = (prev.1 - loss) / (prev.1 - v);
            return Some(prev.0 as f64 + frac * (s - prev.0) as f64);
        }
        prev = (s, v);
    }
    None
}

/// The step at which the raw run has the loss `loss` of averaged weights taken at `step`: when
/// the raw run is still above it at `step` (its last point at or before `step`), the first later
/// step that reaches it (averaging is ahead); otherwise the first step of the whole run that
/// reached it, at or before `step` (averaging is behind or level).
fn raw_step_for(raw: &[(u64, f64)], loss: f64, step: u64) -> Option<f64> {
    let raw_now = raw.iter().rev().find(|&&(s, _)| s <= step).map(|p| p.1);
    match raw_now {
        Some(v) if v <= loss => step_reaching(raw, loss, 0).map(|s| s.min(step as f64)),
        _ => step_reaching(raw, loss, step),
    }
}

/// The compute each averaged set of weights of `rows` (one post-hoc study) saves at each step.
pub fn compute_saved(rows: &[CurveRow], gpu_hours_per_step: Option<f64>) -> Vec<ComputeRow> {
    let mut raw: Vec<(u64, f64)> = rows
        .iter()
        .filter(|r| r.strategy == Strategy::Raw && r.val_loss.is_finite())
        .map(|r| (r.step, r.val_loss))
        .collect();
    raw.sort_by_key(|p| p.0);
    rows.iter()
        .filter(|r| r.strategy != Strategy::Raw && r.val_loss.is_finite())
        .map(|r| {
            let raw_step = raw_step_for(&raw, r.val_loss, r.step);
            let steps_saved = raw_step.map(|s| s - r.step as f64);
            ComputeRow {
                model: r.model.clone(),
                weights: r.weights.clone(),
                strategy: r.strategy,
                k: r.k,
                nu: r.nu,
                step: r.step,
                val_loss: r.val_loss,
                raw_step,
                steps_saved,
                gpu_hours_saved: steps_saved.zip(gpu_hours_per_step).map(|(s, g)| s * g),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolated_steps_saved_by_hand() {
        let raw = [(1000, 4.0), (2000, 3.5), (3000, 3.3), (4000, 3.2)];
        // 3.4 lies 0.5 of the way from 3.5 (step 2000) to 3.3 (step 3000): step 2500.
        assert_eq!(step_reaching(&raw, 3.4, 1000), Some(2500.0));
        assert_eq!(step_reaching(&raw, 3.6, 2000), Some(2000.0));
        assert_eq!(step_reaching(&raw, 3.0, 1000), None);
        let row = |w: &str, step, val| CurveRow {
            model: "m".into(),
            weights: w.into(),
            strategy: if w == "raw" {
                Strategy::Raw
            } else {
                Strategy::Lawa
            },
            step,
            val_loss: val,
            ..CurveRow::default()
        };
        let rows: Vec<CurveRow> = raw
            .iter()
            .map(|&(s, v)| row("raw", s, v))
            .chain([row("lawa", 2000, 3.4), row("lawa", 3000, 3.6)])
            .collect();
        let c = compute_saved(&rows, Some(0.01));
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].raw_step, c[0].steps_saved),
            (Some(2500.0), Some(500.0))
        );
        assert!((c[0].gpu_hours_saved.unwrap() - 5.0).abs() < 1e-12);
        // Behind the raw run: raw had 3.6 between steps 1000 and 2000 (at 1800).
        assert!(
            (c[1].steps_saved.unwrap() + 1200.0).abs() < 1e-9,
            "{:?}",
            c[1]
        );
    }
}
