//! `generalization_gap`: training minus validation loss against step, raw weights (solid) and
//! the best LAWA configuration (dashed), one colour per learning rate. Drawn only when the sweep
//! measured training loss.

use super::lines::{unfinished_notes, Quantity};
use super::loss::raw_and_lawa_series;
use super::plot::{Figure, Panel};
use super::{describe_label, Outcome, Scope};

/// The `generalization_gap` figure of a model.
pub fn generalization_gap(scope: &Scope) -> Outcome {
    const BASE: &str = "generalization_gap";
    let Some(lawa) = scope.sweep.best_lawa(scope.model) else {
        return scope.skip(
            BASE,
            format!("model {}: no LAWA weights evaluated", scope.model),
        );
    };
    let lrs = scope.lrs();
    let ranked = super::ranked(&lrs);
    let mut series = raw_and_lawa_series(scope, &ranked, &lawa, Quantity::Gap);
    if series.is_empty() {
        return scope.skip(
            BASE,
            format!("model {}: train_loss not recorded", scope.model),
        );
    }
    series.extend(unfinished_notes(scope.sweep, scope.model, &lrs));
    let mut panel = Panel::steps("train − validation loss (nats)", series);
    panel.zero_line = true;
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Generalization gap, raw vs {}, model {}{}",
            describe_label(scope.sweep, &lawa),
            scope.model,
            scope.seeds_note(false)
        ),
        panels: vec![panel],
    })
}
