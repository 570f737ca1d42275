//! LAWA's gain over the raw weights (raw − LAWA validation loss): along training per learning
//! rate (`lawa_gain_vs_step`), and against the window size k and the spacing nu
//! (`gain_vs_k`, `gain_vs_nu`) at the middle and the final evaluation step.

use plotters::style::RGBColor;

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

    /// Reads this hyper-parameter, then the other one, of a configuration.
    fn picks(self) -> (Pick, Pick) {
        match self {
            Param::K => (|c| c.0, |c| c.1),
            Param::Nu => (|c| c.1, |c| c.0),
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Param::K => "k",
            Param::Nu => "ν",
        }
    }

    fn axis_label(self) -> &'static str {
        match self {
            Param::K => "LAWA window k (checkpoints)",
            Param::Nu => "LAWA spacing ν (optimizer steps)",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Param::K => "window size k",
            Param::Nu => "checkpoint spacing ν",
        }
    }
}

/// One LAWA configuration of the grid: (k, nu, label).
type Config = (u64, u64, String);

/// Reads one hyper-parameter of a [`Config`].
type Pick = fn(&Config) -> u64;

/// The LAWA configurations of a model, seen along one hyper-parameter.
struct Grid {
    param: Param,
    configs: Vec<Config>,
    /// The values of the hyper-parameter on the x axis, ascending.
    xs: Vec<u64>,
    /// The values of the other one, one line each.
    others: Vec<u64>,
}

impl Grid {
    fn new(scope: &Scope, param: Param) -> Grid {
        let configs: Vec<Config> = scope
            .sweep
            .labels(scope.model, &[Strategy::Lawa])
            .into_iter()
            .filter_map(|label| {
                let spec = scope.spec(&label)?;
                Some((spec.k?, spec.nu?, label))
            })
            .collect();
        let (x_of, other_of) = param.picks();
        let values = |pick: Pick| {
            let mut v: Vec<u64> = configs.iter().map(pick).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let (xs, others) = (values(x_of), values(other_of));
        Grid {
            param,
            configs,
            xs,
            others,
        }
    }

    /// The panel at `step`: one line per learning rate with a finished raw run (`has_raw`)
    /// and value of the other hyper-parameter.
    fn panel(&self, scope: &Scope, lrs: &[f64], has_raw: &[bool], when: &str, step: u64) -> Panel {
        let mut series = Vec::new();
        for (i, &lr) in lrs.iter().enumerate().filter(|(i, _)| has_raw[*i]) {
            for (j, &other) in self.others.iter().enumerate() {
                let color = ordered_color(i, lrs.len());
                let dash = [Dash::Solid, Dash::Dashed, Dash::Dotted][j % 3];
                series.extend(self.line(scope, lr, other, step, color, dash));
            }
        }
        Panel {
            title: Some(format!("{when} (step {step})")),
            x_label: self.param.axis_label().into(),
            y_label: GAIN.into(),
            series,
            zero_line: true,
            y_categories: None,
            y_from_x_fraction: 0.0,
            x_pad: 0.06,
        }
    }

    /// The mean gain at `step` (band: ± its standard error) against the hyper-parameter, at
    /// learning rate `lr` and value `other` of the other one; `None` where none was evaluated.
    fn line(
        &self,
        scope: &Scope,
        lr: f64,
        other: u64,
        step: u64,
        color: RGBColor,
        dash: Dash,
    ) -> Option<Series> {
        let (x_of, other_of) = self.param.picks();
        let stats: Vec<(f64, GainStat)> = self
            .xs
            .iter()
            .filter_map(|&x| {
                let (_, _, label) = self
                    .configs
                    .iter()
                    .find(|c| x_of(c) == x && other_of(c) == other)?;
                let stats = scope.sweep.gain_stats(scope.model, lr, label);
                let (_, g) = stats.into_iter().find(|(s, _)| *s == step)?;
                Some((x as f64, g))
            })
            .collect();
        if stats.is_empty() {
            return None;
        }
        let points: Vec<(f64, f64)> = stats.iter().map(|(x, g)| (*x, g.mean)).collect();
        let label = match (self.param, self.others.len()) {
            (_, 1) => format!("lr {}", format_lr(lr)),
            (Param::K, _) => format!("lr {}, ν={other}", format_lr(lr)),
            (Param::Nu, _) => format!("lr {}, k={other}", format_lr(lr)),
        };
        let mut line = Series::line(label, color, points).dashed(dash);
        line.markers = true;
        line.band = stats
            .iter()
            .map(|(x, g)| (*x, g.mean - g.se, g.mean + g.se))
            .collect();
        Some(line)
    }
}

/// `gain_vs_k` / `gain_vs_nu`: mean gain at the middle and final evaluation steps against one
/// hyper-parameter, one line per (learning rate, other hyper-parameter).
pub fn gain_vs_param(scope: &Scope, param: Param) -> Outcome {
    let base = param.base();
    let grid = Grid::new(scope, param);
    if grid.xs.len() < 2 {
        let what = param.symbol();
        return scope.skip(
            base,
            format!(
                "model {}: needs LAWA runs with at least two values of {what}",
                scope.model
            ),
        );
    }
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
    let has_raw: Vec<bool> = raws.iter().map(Option::is_some).collect();
    let panels: Vec<Panel> = [("middle of training", middle), ("end of training", last)]
        .into_iter()
        .map(|(when, step)| grid.panel(scope, &lrs, &has_raw, when, step))
        .collect();
    if panels.iter().all(|p| p.series.is_empty()) {
        return scope.skip(
            base,
            format!(
                "model {}: no LAWA evaluation at the middle or final step",
                scope.model
            ),
        );
    }
    Outcome::Drawn(Figure {
        name: scope.name(base),
        title: format!(
            "LAWA gain vs {}, model {}{} (band: ± standard error)",
            param.title(),
            scope.model,
            scope.seeds_note(false)
        ),
        panels,
    })
}
