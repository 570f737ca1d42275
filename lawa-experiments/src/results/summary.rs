//! `summary.csv` from the rows of `curves.csv`: per run and set of weights, the final and best
//! validation loss, the gain over the raw weights with its paired standard error, and the steps
//! needed to reach the raw run's final loss.

use std::collections::BTreeMap;

use super::metrics;
use super::schema::{CurveRow, SummaryRow};

/// One summary row per (run, weights) of `rows`, in order of first appearance. `diverged` lists
/// the runs that diverged. Rows with a non-finite loss are left out of the best loss and of the
/// steps to reach the raw run's final loss.
pub fn summarize(rows: &[CurveRow], diverged: &[String]) -> Vec<SummaryRow> {
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut series: BTreeMap<(&str, &str), Vec<&CurveRow>> = BTreeMap::new();
    for row in rows {
        let key = (row.run.as_str(), row.weights.as_str());
        let entry = series.entry(key).or_default();
        if entry.is_empty() {
            order.push(key);
        }
        entry.push(row);
    }
    let mut out = Vec::new();
    for key in order {
        let points = &series[&key];
        let Some(raw) = series.get(&(key.0, "raw")) else {
            continue;
        };
        let (Some(raw_last), Some(last)) = (raw.last(), points.last()) else {
            continue;
        };
        let pairs = |rows: &[&CurveRow]| -> Vec<(u64, f64)> {
            rows.iter()
                .filter(|r| r.val_loss.is_finite())
                .map(|r| (r.step, r.val_loss))
                .collect()
        };
        let (raw_pairs, own_pairs) = (pairs(raw), pairs(points));
        let at_last = raw.iter().find(|r| r.step == last.step);
        let reach = metrics::steps_to_reach(&own_pairs, raw_last.val_loss);
        out.push(SummaryRow {
            run: last.run.clone(),
            model: last.model.clone(),
            lr: last.lr,
            seed: last.seed,
            weights: last.weights.clone(),
            strategy: last.strategy,
            k: last.k,
            nu: last.nu,
            decay: last.decay,
            start: last.start,
            every: last.every,
            final_step: last.step,
            final_val_loss: last.val_loss,
            best_val_loss: own_pairs.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            gain_over_raw: at_last.map(|r| r.val_loss - last.val_loss),
            gain_se: at_last.and(last.gain_se),
            steps_to_raw_final: reach,
            steps_saved: metrics::steps_saved(&raw_pairs, &own_pairs)
                .filter(|_| raw_last.val_loss.is_finite()),
            diverged: diverged.iter().any(|d| d == key.0),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::schema::Strategy;

    fn row(w: &str, step: u64, val: f64, gain_se: Option<f64>) -> CurveRow {
        CurveRow {
            run: "r".into(),
            model: "tiny".into(),
            lr: 0.01,
            weights: w.into(),
            strategy: if w == "raw" {
                Strategy::Raw
            } else {
                Strategy::Lawa
            },
            step,
            tokens: step * 10,
            val_loss: val,
            gain_se,
            ..CurveRow::default()
        }
    }

    #[test]
    fn gains_and_steps_saved_by_hand() {
        let rows = [
            row("raw", 0, 9.0, None),
            row("raw", 10, 5.0, None),
            row("lawa_k2_nu5", 10, 4.5, Some(0.1)),
            row("raw", 20, 4.0, None),
            row("lawa_k2_nu5", 20, 3.5, Some(0.05)),
        ];
        let s = summarize(&rows, &["r".to_string()]);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].final_step, s[0].final_val_loss), (20, 4.0));
        assert_eq!(s[0].gain_over_raw, Some(0.0));
        assert_eq!(
            (s[0].steps_to_raw_final, s[0].steps_saved),
            (Some(20), Some(0))
        );
        // LAWA: 0.5 below raw at step 20, with the SE of that step; reaches raw's final 4.0 at
        // step 20 (4.5 > 4.0 at step 10).
        assert_eq!(s[1].gain_over_raw, Some(0.5));
        assert_eq!(s[1].gain_se, Some(0.05));
        assert_eq!(s[1].best_val_loss, 3.5);
        assert_eq!(
            (s[1].steps_to_raw_final, s[1].steps_saved),
            (Some(20), Some(0))
        );
        assert!(s.iter().all(|r| r.diverged));
    }
}
