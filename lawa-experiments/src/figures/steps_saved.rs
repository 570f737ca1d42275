//! `steps_saved`: for each averager and learning rate, how many optimizer steps earlier than
//! the raw weights it reaches the raw run's final validation loss (a dot chart; averagers that
//! never reach it have no dot).

use super::plot::{format_lr, ordered_color, Figure, Panel, Series};
use super::{describe_label, Outcome, Scope};
use crate::results::metrics;
use crate::results::Strategy;

/// Steps saved per averager label at (model, lr), from the seed-mean curves.
pub fn saved_at(scope: &Scope, lr: f64, labels: &[String]) -> Vec<Option<i64>> {
    let raw = scope.sweep.mean(scope.model, lr, "raw").map(|m| m.pairs());
    labels
        .iter()
        .map(|label| {
            let raw = raw.as_ref()?;
            let avg = scope.sweep.mean(scope.model, lr, label)?.pairs();
            metrics::steps_saved(raw, &avg)
        })
        .collect()
}

/// The `steps_saved` figure of a model.
pub fn steps_saved(scope: &Scope) -> Outcome {
    const BASE: &str = "steps_saved";
    let labels = scope.sweep.labels(
        scope.model,
        &[
            Strategy::Lawa,
            Strategy::Ema,
            Strategy::EmaWarmup,
            Strategy::Swa,
        ],
    );
    if labels.is_empty() {
        return scope.skip(
            BASE,
            format!("model {}: no averaged weights evaluated", scope.model),
        );
    }
    // Top to bottom in label order: LAWA, EMA, SWA (row 0 is drawn at the bottom).
    let mut ordered = labels;
    ordered.reverse();
    let lrs = scope.lrs();
    let mut series = Vec::new();
    for (i, &lr) in lrs.iter().enumerate() {
        // Dots of different learning rates sit slightly apart within a row.
        let offset = (i as f64 - (lrs.len() as f64 - 1.0) / 2.0) * 0.5 / lrs.len() as f64;
        let points: Vec<(f64, f64)> = saved_at(scope, lr, &ordered)
            .into_iter()
            .enumerate()
            .filter_map(|(row, saved)| saved.map(|s| (s as f64, row as f64 + offset)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let mut dots = Series::line(
            format!("lr {}", format_lr(lr)),
            ordered_color(i, lrs.len()),
            points,
        );
        dots.line = false;
        dots.markers = true;
        dots.width = 4;
        series.push(dots);
    }
    if series.is_empty() {
        return scope.skip(
            BASE,
            format!(
                "model {}: no averaged weights reach the raw run's final loss",
                scope.model
            ),
        );
    }
    let x_label = match evaluation_spacing(scope, &lrs) {
        Some(n) => format!(
            "optimizer steps saved, read at evaluations {n} steps apart (no dot: never reached)"
        ),
        None => "optimizer steps saved (no dot: never reached)".into(),
    };
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Steps saved reaching the raw run's final loss, model {}{}",
            scope.model,
            scope.seeds_note(false)
        ),
        panels: vec![Panel {
            title: None,
            x_label,
            y_label: "averaged weights".into(),
            series,
            zero_line: true,
            y_categories: Some(
                ordered
                    .iter()
                    .map(|l| describe_label(scope.sweep, l))
                    .collect(),
            ),
            y_from_x_fraction: 0.0,
            x_pad: 0.05,
        }],
    })
}

/// The smallest gap between the raw weights' evaluations: the resolution of the steps saved,
/// which are read where the curves were scored.
fn evaluation_spacing(scope: &Scope, lrs: &[f64]) -> Option<u64> {
    lrs.iter()
        .filter_map(|&lr| scope.sweep.mean(scope.model, lr, "raw"))
        .flat_map(|m| {
            let steps: Vec<u64> = m.pairs().iter().map(|p| p.0).collect();
            steps.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        })
        .filter(|&gap| gap > 0)
        .min()
}
