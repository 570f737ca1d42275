//! Plot series from a sweep's curves: the seed mean of finished runs (losses with a min–max
//! band over seeds; gains with a band of ± their standard error), and one thin line per run that
//! diverged or stopped, explained by one legend entry per such run.

use plotters::style::RGBColor;

use super::plot::{format_lr, Dash, Series};
use super::sweep::{MeanCurve, Point, Sweep};
use crate::results::metrics;

/// Which quantity of a curve to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// Validation loss.
    ValLoss,
    /// Training loss minus validation loss (where training loss was measured).
    Gap,
    /// Raw validation loss minus this set of weights' validation loss.
    GainOverRaw,
}

/// How the lines of one set of weights look.
#[derive(Debug, Clone)]
pub struct Look {
    /// Legend text of the seed-mean line.
    pub label: String,
    /// Colour.
    pub color: RGBColor,
    /// Stroke pattern.
    pub dash: Dash,
    /// Stroke width of the mean line.
    pub width: u32,
}

fn to_f64(points: &[(u64, f64)]) -> Vec<(f64, f64)> {
    points.iter().map(|&(s, v)| (s as f64, v)).collect()
}

fn quantity(q: Quantity, curve: &MeanCurve, raw: Option<&MeanCurve>) -> Vec<(u64, f64)> {
    match q {
        Quantity::ValLoss => curve.pairs(),
        Quantity::Gap => curve.gap_pairs(),
        Quantity::GainOverRaw => raw
            .map(|r| metrics::gain_series(&r.pairs(), &curve.pairs()))
            .unwrap_or_default(),
    }
}

/// The series of weights `label` at (model, lr): the seed mean over finished runs, then each
/// unfinished run on its own (thin, kept out of the y range, without a legend entry of its
/// own: add [`unfinished_notes`]).
pub fn weights_lines(
    sweep: &Sweep,
    model: &str,
    lr: f64,
    label: &str,
    q: Quantity,
    look: &Look,
) -> Vec<Series> {
    let mut out = Vec::new();
    if q == Quantity::GainOverRaw {
        out.extend(gain_line(sweep, model, lr, label, look));
    } else if let Some(mean) = sweep.mean(model, lr, label) {
        let raw = sweep.mean(model, lr, "raw");
        let points = quantity(q, &mean, raw.as_ref());
        if !points.is_empty() {
            let mut series =
                Series::line(look.label.clone(), look.color, to_f64(&points)).dashed(look.dash);
            series.width = look.width;
            if mean.seeds > 1 && q == Quantity::ValLoss {
                series.band = mean
                    .steps
                    .iter()
                    .zip(mean.val_min.iter().zip(&mean.val_max))
                    .map(|(&s, (&lo, &hi))| (s as f64, lo, hi))
                    .collect();
            }
            out.push(series);
        }
    }
    for run in sweep.unfinished(model, lr) {
        let Some(curve) = run.curves.get(label).and_then(|c| MeanCurve::single(c)) else {
            continue;
        };
        let raw = run
            .curves
            .get("raw")
            .and_then(|c: &Vec<Point>| MeanCurve::single(c));
        let points = quantity(q, &curve, raw.as_ref());
        if points.is_empty() {
            continue;
        }
        let mut series = Series::line("", look.color, to_f64(&points)).dashed(look.dash);
        series.width = 1;
        series.outlier = true;
        out.push(series);
    }
    out
}

/// The mean gain over seeds of `label` at (model, lr), with a band of ± its standard error
/// (seed spread and window sampling, [`metrics::seed_gain`]).
fn gain_line(sweep: &Sweep, model: &str, lr: f64, label: &str, look: &Look) -> Option<Series> {
    let stats = sweep.gain_stats(model, lr, label);
    if stats.is_empty() {
        return None;
    }
    let points: Vec<(f64, f64)> = stats.iter().map(|(s, g)| (*s as f64, g.mean)).collect();
    let mut series = Series::line(look.label.clone(), look.color, points).dashed(look.dash);
    series.width = look.width;
    series.band = stats
        .iter()
        .map(|(s, g)| (*s as f64, g.mean - g.se, g.mean + g.se))
        .collect();
    Some(series)
}

/// The raw validation-loss pairs of the seed mean at (model, lr).
pub fn raw_pairs(sweep: &Sweep, model: &str, lr: f64) -> Option<Vec<(u64, f64)>> {
    sweep.mean(model, lr, "raw").map(|m| m.pairs())
}

/// Legend-only entries, one per run of (model, one of `lrs`) that diverged or stopped: "thin
/// lines: lr 6e-3, seed 1 (diverged)".
pub fn unfinished_notes(sweep: &Sweep, model: &str, lrs: &[f64]) -> Vec<Series> {
    lrs.iter()
        .flat_map(|&lr| sweep.unfinished(model, lr))
        .map(|run| {
            let mut note = Series::line(
                format!("thin lines: lr {}{}", format_lr(run.lr), run.end_note()),
                RGBColor(110, 110, 110),
                Vec::new(),
            );
            note.width = 1;
            note
        })
        .collect()
}
