//! LAWA's gain over the raw weights (raw − LAWA validation loss): along training per learning
//! rate (`lawa_gain_vs_step`), and against the window size k and the spacing nu
//! (`gain_vs_k`, `gain_vs_nu`) at the middle and the final evaluation step.

use super::lines::{raw_pairs, unfinished_notes, weights_lines, Look, Quantity};
use super::plot::{format_lr, ordered_color, Dash, Figure, Panel, Series};
use super::{describe_label, Outcome, Scope};
use crate::results::metrics::{middle_step, GainStat};
use crate::results::Strategy;

/// The y axis label of gain plots.
pub const GAIN: &str = "raw − LAWA validation loss (nats)";

/// `lawa_gain_vs_step`: the best LAWA configuration's gain per step, one line per learning rate.
pub fn gain_vs_step(scope: &Scope) -> Outcome {
    const BASE: &str = "lawa_gain_vs_step";
    let Some(lawa) = scope.sweep.best_lawa(scope.model) else {
        return scope.skip(
            BASE,
            format!("model {}: no LAWA weights evaluated", scope.model),
        );
    };
    let lrs = scope.lrs();
    let mut series = Vec::new();
    for (i, &lr) in lrs.iter().enumerate() {
        series.extend(weights_lines(
            scope.sweep,
            scope.model,
            lr,
            &lawa,
            Quantity::GainOverRaw,
            &Look {
                label: format!("lr {}", format_lr(lr)),
                color: ordered_color(i, lrs.len()),
                dash: Dash::Solid,
                width: 4,
            },
        ));
    }
    if series.is_empty() {
        return scope.skip(
            BASE,
            format!("model {}: no step has both raw and LAWA", scope.model),
        );
    }
    series.extend(unfinished_notes(scope.sweep, scope.model, &lrs));
    let mut panel = Panel::steps(GAIN, series);
    panel.zero_line = true;
    // The gain early in training is the point of the figure: clip only the first few steps.
    panel.y_from_x_fraction = 0.05;
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "LAWA gain over raw weights ({}), model {}{} — above 0: LAWA is better; band: ± standard error",
            describe_label(scope.sweep, &lawa),
            scope.model,
            scope.seeds_note(false)
        ),
        panels: vec![panel],
    })
}

/// The LAWA hyper-parameter on the x axis of a gain plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Window size: checkpoints averaged.
    K,
    /// Spacing between checkpoints, in steps.
    Nu,
}

impl Param {
    fn base(self) -> &'static str {
        match self {
            Param::K => "gain_vs_k",
            Param::Nu => "gain_vs_nu",
        }
    }
}

/// One LAWA configuration of the grid: (k, nu, label).
type Config = (u64, u64, String);

/// Reads one hyper-parameter of a [`Config`].
type Pick = fn(&Config) -> u64;

/// `gain_vs_k` / `gain_vs_nu`: mean gain at the middle and final evaluation steps against one
/// hyper-parameter, one line per (learning rate, other hyper-parameter).
pub fn gain_vs_param(scope: &Scope, param: Param) -> Outcome {
    let base = param.base();
    let configs: Vec<Config> = scope
        .sweep
        .labels(scope.model, &[Strategy::Lawa])
        .into_iter()
        .filter_map(|label| {
            let spec = scope.spec(&label)?;
            Some((spec.k?, spec.nu?, label))
        })
        .collect();
    let (x_of, other_of): (Pick, Pick) = match param {
        Param::K => (|c| c.0, |c| c.1),
        Param::Nu => (|c| c.1, |c| c.0),
    };
    let mut xs: Vec<u64> = configs.iter().map(x_of).collect();
    xs.sort_unstable();
    xs.dedup();
    if xs.len() < 2 {
        let what = if param == Param::K { "k" } else { "ν" };
        return scope.skip(
            base,
            format!(
                "model {}: needs LAWA runs with at least two values of {what}",
                scope.model
            ),
        );
    }
    let mut others: Vec<u64> = configs.iter().map(other_of).collect();
    others.sort_unstable();
    others.dedup();
    let lrs = scope.lrs();
    let raws: Vec<Option<Vec<(u64, f64)>>> = lrs
        .iter()
        .map(|&lr| raw_pairs(scope.sweep, scope.model, lr))
        .collect();
    let Some(longest) = raws.iter().flatten().max_by_key(|r| r.len()) else {
        return scope.skip(base, format!("model {}: no finished raw run", scope.model));
    };
    let steps: Vec<u64> = longest.iter().map(|p| p.0).collect();
    let (Some(middle), Some(&last)) = (middle_step(&steps), steps.last()) else {
        return scope.skip(base, format!("model {}: no evaluation steps", scope.model));
    };
    let dashes = [Dash::Solid, Dash::Dashed, Dash::Dotted];
    let mut panels = Vec::new();
    for (when, step) in [("middle of training", middle), ("end of training", last)] {
        let mut series = Vec::new();
        for (i, (&lr, raw)) in lrs.iter().zip(&raws).enumerate() {
            if raw.is_none() {
                continue;
            }
            for (j, &other) in others.iter().enumerate() {
                let stats: Vec<(f64, GainStat)> = xs
                    .iter()
                    .filter_map(|&x| {
                        let (_, _, label) = configs
                            .iter()
                            .find(|c| x_of(c) == x && other_of(c) == other)?;
                        let stats = scope.sweep.gain_stats(scope.model, lr, label);
                        let (_, g) = stats.into_iter().find(|(s, _)| *s == step)?;
                        Some((x as f64, g))
                    })
                    .collect();
                if stats.is_empty() {
                    continue;
                }
                let points: Vec<(f64, f64)> = stats.iter().map(|(x, g)| (*x, g.mean)).collect();
                let label = match (param, others.len()) {
                    (_, 1) => format!("lr {}", format_lr(lr)),
                    (Param::K, _) => format!("lr {}, ν={other}", format_lr(lr)),
                    (Param::Nu, _) => format!("lr {}, k={other}", format_lr(lr)),
                };
                let mut line = Series::line(label, ordered_color(i, lrs.len()), points)
                    .dashed(dashes[j % dashes.len()]);
                line.markers = true;
                line.band = stats
                    .iter()
                    .map(|(x, g)| (*x, g.mean - g.se, g.mean + g.se))
                    .collect();
                series.push(line);
            }
        }
        let x_label = match param {
            Param::K => "LAWA window k (checkpoints)",
            Param::Nu => "LAWA spacing ν (optimizer steps)",
        };
        panels.push(Panel {
            title: Some(format!("{when} (step {step})")),
            x_label: x_label.into(),
            y_label: GAIN.into(),
            series,
            zero_line: true,
            y_categories: None,
            y_from_x_fraction: 0.0,
            x_pad: 0.06,
        });
    }
    if panels.iter().all(|p| p.series.is_empty()) {
        return scope.skip(
            base,
            format!(
                "model {}: no LAWA evaluation at the middle or final step",
                scope.model
            ),
        );
    }
    let what = match param {
        Param::K => "window size k",
        Param::Nu => "checkpoint spacing ν",
    };
    Outcome::Drawn(Figure {
        name: scope.name(base),
        title: format!(
            "LAWA gain vs {what}, model {}{} (band: ± standard error)",
            scope.model,
            scope.seeds_note(false)
        ),
        panels,
    })
}
