//! Validation loss against step, raw weights against the best LAWA configuration: per learning
//! rate (`loss_raw_vs_lawa`), and the lowest against the highest learning rate (`lr_comparison`,
//! the paper's 6e-4 vs 6e-3 figure).

use super::lines::{unfinished_notes, weights_lines, Look, Quantity};
use super::plot::{format_lr, ordered_color, Dash, Figure, Panel};
use super::{describe_label, Outcome, Scope};

/// The y axis label of loss curves.
pub const VAL_LOSS: &str = "validation loss (nats)";

/// Raw (solid) and LAWA (dashed) lines of `quantity` for each learning rate, coloured by rank.
pub(crate) fn raw_and_lawa_series(
    scope: &Scope,
    lrs: &[(f64, usize, usize)],
    lawa: &str,
    quantity: Quantity,
) -> Vec<super::plot::Series> {
    let lawa_name = describe_label(scope.sweep, lawa);
    let mut series = Vec::new();
    for &(lr, rank, of) in lrs {
        let color = ordered_color(rank, of);
        let lr_text = format_lr(lr);
        series.extend(weights_lines(
            scope.sweep,
            scope.model,
            lr,
            "raw",
            quantity,
            &Look {
                label: format!("raw, lr {lr_text}"),
                color,
                dash: Dash::Solid,
                width: 4,
            },
        ));
        series.extend(weights_lines(
            scope.sweep,
            scope.model,
            lr,
            lawa,
            quantity,
            &Look {
                label: format!("{lawa_name}, lr {lr_text}"),
                color,
                dash: Dash::Dashed,
                width: 4,
            },
        ));
    }
    series
}

/// `loss_raw_vs_lawa`: one line pair per learning rate for the model.
pub fn raw_vs_lawa(scope: &Scope) -> Outcome {
    const BASE: &str = "loss_raw_vs_lawa";
    let Some(lawa) = scope.sweep.best_lawa(scope.model) else {
        return scope.skip(
            BASE,
            format!("model {}: no LAWA weights evaluated", scope.model),
        );
    };
    let lrs = scope.lrs();
    let ranked = super::ranked(&lrs);
    let mut series = raw_and_lawa_series(scope, &ranked, &lawa, Quantity::ValLoss);
    if series.is_empty() {
        return scope.skip(BASE, format!("model {}: no curves to draw", scope.model));
    }
    series.extend(unfinished_notes(scope.sweep, scope.model, &lrs));
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Raw vs LAWA ({}), model {}{}",
            describe_label(scope.sweep, &lawa),
            scope.model,
            scope.seeds_note(true)
        ),
        panels: vec![Panel::steps(VAL_LOSS, series)],
    })
}

/// `lr_comparison`: the lowest and highest learning rates, each with and without LAWA.
pub fn lr_comparison(scope: &Scope) -> Outcome {
    const BASE: &str = "lr_comparison";
    let lrs = scope.lrs();
    let (Some(&low), Some(&high)) = (lrs.first(), lrs.last()) else {
        return scope.skip(BASE, "no runs");
    };
    if lrs.len() < 2 {
        return scope.skip(
            BASE,
            format!("model {}: needs at least two learning rates", scope.model),
        );
    }
    let Some(lawa) = scope.sweep.best_lawa(scope.model) else {
        return scope.skip(
            BASE,
            format!("model {}: no LAWA weights evaluated", scope.model),
        );
    };
    let mut series = raw_and_lawa_series(
        scope,
        &[(low, 0, 2), (high, 1, 2)],
        &lawa,
        Quantity::ValLoss,
    );
    series.extend(unfinished_notes(scope.sweep, scope.model, &[low, high]));
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Low vs high learning rate, with and without LAWA, model {}{}",
            scope.model,
            scope.seeds_note(true)
        ),
        panels: vec![Panel::steps(VAL_LOSS, series)],
    })
}
