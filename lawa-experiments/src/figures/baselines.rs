//! `baselines`: raw weights, the best LAWA configuration, every EMA decay and every SWA start
//! (early / late) on one chart, for the highest learning rate (`baselines`) and for each other
//! learning rate of the sweep (`baselines_lr<lr>`).

use plotters::style::{RGBColor, BLACK};

use super::lines::{unfinished_notes, weights_lines, Look, Quantity};
use super::loss::VAL_LOSS;
use super::plot::{category_color, format_lr, Dash, Figure, Panel};
use super::{describe_label, Outcome, Scope};
use crate::results::Strategy;

/// The steps at which an SWA start begins, for ordering early before late: a fraction of
/// training is taken of `last_step`.
fn swa_start_step(start: Option<f64>, last_step: u64) -> f64 {
    match start {
        Some(f) if f > 0.0 && f < 1.0 => f * last_step as f64,
        Some(s) => s,
        None => 0.0,
    }
}

/// The labels and looks of the averagers drawn against raw: best LAWA, EMAs, SWAs.
fn averager_looks(scope: &Scope, lawa: Option<&str>) -> Vec<(String, Look)> {
    let sweep = scope.sweep;
    let mut looks = Vec::new();
    if let Some(lawa) = lawa {
        looks.push((
            lawa.to_owned(),
            Look {
                label: describe_label(sweep, lawa),
                color: RGBColor(31, 119, 180),
                dash: Dash::Solid,
                width: 6,
            },
        ));
    }
    let emas = sweep.labels(scope.model, &[Strategy::Ema, Strategy::EmaWarmup]);
    let last_step = sweep
        .runs
        .iter()
        .filter(|r| r.model == scope.model)
        .map(|r| r.last_step())
        .max()
        .unwrap_or(0);
    let mut swas = sweep.labels(scope.model, &[Strategy::Swa]);
    swas.sort_by(|a, b| {
        let start = |l: &str| swa_start_step(scope.spec(l).and_then(|s| s.start), last_step);
        start(a).total_cmp(&start(b))
    });
    let mut color = 1;
    for label in &emas {
        looks.push((
            label.clone(),
            Look {
                label: describe_label(sweep, label),
                color: category_color(color),
                dash: Dash::Dashed,
                width: 4,
            },
        ));
        color += 1;
    }
    for (i, label) in swas.iter().enumerate() {
        let when = match (i, swas.len()) {
            (_, 1) => "",
            (0, _) => " (early)",
            (i, n) if i + 1 == n => " (late)",
            _ => "",
        };
        looks.push((
            label.clone(),
            Look {
                label: format!("{}{when}", describe_label(sweep, label)),
                color: category_color(color),
                dash: Dash::Dotted,
                width: 6,
            },
        ));
        color += 1;
    }
    looks
}

/// The baselines figures of a model: the highest learning rate, then each other one.
pub fn baselines(scope: &Scope) -> Vec<Outcome> {
    const BASE: &str = "baselines";
    let sweep = scope.sweep;
    let has_baseline = !sweep
        .labels(
            scope.model,
            &[Strategy::Ema, Strategy::EmaWarmup, Strategy::Swa],
        )
        .is_empty();
    if !has_baseline {
        return vec![scope.skip(
            BASE,
            format!("model {}: no EMA or SWA weights evaluated", scope.model),
        )];
    }
    let lawa = sweep.best_lawa(scope.model);
    let looks = averager_looks(scope, lawa.as_deref());
    let lrs = scope.lrs();
    let Some(&highest) = lrs.last() else {
        return vec![scope.skip(BASE, "no runs")];
    };
    let mut wanted = vec![(highest, scope.name(BASE))];
    if lrs.len() > 1 {
        wanted.extend(
            lrs.iter()
                .filter(|&&lr| lr != highest)
                .map(|&lr| (lr, format!("{}_lr{}", scope.name(BASE), format_lr(lr)))),
        );
    }
    wanted
        .into_iter()
        .map(|(lr, name)| {
            let mut series = weights_lines(
                sweep,
                scope.model,
                lr,
                "raw",
                Quantity::ValLoss,
                &Look {
                    label: "raw".into(),
                    color: BLACK,
                    dash: Dash::Solid,
                    width: 4,
                },
            );
            for (label, look) in &looks {
                series.extend(weights_lines(
                    sweep,
                    scope.model,
                    lr,
                    label,
                    Quantity::ValLoss,
                    look,
                ));
            }
            if series.is_empty() {
                return Outcome::Skipped {
                    name,
                    reason: format!("lr {}: no curves", format_lr(lr)),
                };
            }
            series.extend(unfinished_notes(sweep, scope.model, &[lr]));
            Outcome::Drawn(Figure {
                name,
                title: format!(
                    "LAWA vs EMA and SWA, model {}, lr {}{}",
                    scope.model,
                    format_lr(lr),
                    scope.seeds_note(true)
                ),
                panels: vec![Panel::steps(VAL_LOSS, series)],
            })
        })
        .collect()
}
