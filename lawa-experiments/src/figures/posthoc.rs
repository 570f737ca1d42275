//! The figures of a post-hoc study (drawn when `compute_saved.csv` is present): validation
//! perplexity along training, raw against every LAWA configuration (`posthoc_perplexity`), and
//! the training compute each saves, in GPU-hours when the study gives a step's cost, else in
//! steps (`compute_saved`); with zero-shot tasks (`tasks.csv`), accuracy along training
//! (`task_accuracy`).

use std::collections::BTreeMap;

use super::plot::{category_color, Dash, Figure, Panel, Series};
use super::{describe_label, Outcome, Scope};
use crate::results::{ComputeRow, Strategy, TaskRow};

/// `posthoc_perplexity`: exp(validation loss) of the raw checkpoints and each LAWA average.
pub fn perplexity(scope: &Scope) -> Outcome {
    const BASE: &str = "posthoc_perplexity";
    let Some(&lr) = scope.lrs().first() else {
        return scope.skip(BASE, "no runs");
    };
    let mut series = Vec::new();
    let mut labels = vec!["raw".to_string()];
    labels.extend(scope.sweep.labels(scope.model, &[Strategy::Lawa]));
    for (i, label) in labels.iter().enumerate() {
        let Some(mean) = scope.sweep.mean(scope.model, lr, label) else {
            continue;
        };
        let points: Vec<(f64, f64)> = mean
            .pairs()
            .into_iter()
            .map(|(s, v)| (s as f64, v.exp()))
            .collect();
        let (color, dash, width) = if label == "raw" {
            (plotters::style::RGBColor(40, 40, 40), Dash::Solid, 6)
        } else {
            (category_color(i), Dash::Dashed, 4)
        };
        let mut s = Series::line(describe_label(scope.sweep, label), color, points).dashed(dash);
        s.width = width;
        s.markers = true;
        series.push(s);
    }
    if series.len() < 2 {
        return scope.skip(
            BASE,
            "needs the raw checkpoints and at least one LAWA average",
        );
    }
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Post-hoc LAWA on the checkpoints of {}: validation perplexity along training",
            scope.model
        ),
        panels: vec![Panel::steps("validation perplexity", series)],
    })
}

/// `compute_saved`: training compute each LAWA configuration saves at each step.
pub fn compute_saved(scope: &Scope, rows: &[ComputeRow]) -> Outcome {
    const BASE: &str = "compute_saved";
    let gpu = rows.iter().any(|r| r.gpu_hours_saved.is_some());
    let mut by_label: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.model == scope.model) {
        let value = if gpu {
            r.gpu_hours_saved
        } else {
            r.steps_saved
        };
        if let Some(v) = value {
            by_label
                .entry(&r.weights)
                .or_default()
                .push((r.step as f64, v));
        }
    }
    if by_label.is_empty() {
        return scope.skip(BASE, "no LAWA average reaches a loss the raw run reaches");
    }
    let series: Vec<Series> = by_label
        .into_iter()
        .enumerate()
        .map(|(i, (label, mut points))| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut s = Series::line(
                describe_label(scope.sweep, label),
                category_color(i + 1),
                points,
            );
            s.markers = true;
            s
        })
        .collect();
    let mut panel = Panel::steps(
        if gpu {
            "GPU-hours saved (raw run's hours to reach the same loss)"
        } else {
            "training steps saved (raw run's steps to reach the same loss)"
        },
        series,
    );
    panel.zero_line = true;
    panel.y_from_x_fraction = 0.0;
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Compute saved by post-hoc LAWA, {} — above 0: the average is ahead of the raw run",
            scope.model
        ),
        panels: vec![panel],
    })
}

/// `task_accuracy`: zero-shot accuracy along training, the raw weights against each LAWA
/// average, one panel per task (band: ± standard error over examples).
pub fn task_accuracy(scope: &Scope, rows: &[TaskRow]) -> Outcome {
    const BASE: &str = "task_accuracy";
    let mine: Vec<&TaskRow> = rows
        .iter()
        .filter(|r| r.model == scope.model && r.metric == "acc")
        .collect();
    let mut tasks: Vec<&str> = mine.iter().map(|r| r.task.as_str()).collect();
    tasks.sort_unstable();
    tasks.dedup();
    if tasks.is_empty() {
        return scope.skip(BASE, "no task accuracy measured");
    }
    let panels = tasks
        .iter()
        .map(|&task| {
            let mut by_weights: BTreeMap<&str, Vec<&TaskRow>> = BTreeMap::new();
            for r in mine.iter().filter(|r| r.task == task) {
                by_weights.entry(&r.weights).or_default().push(r);
            }
            let series = by_weights
                .into_iter()
                .enumerate()
                .map(|(i, (label, mut points))| {
                    points.sort_by_key(|r| r.step);
                    let raw = label == "raw";
                    let color = if raw {
                        plotters::style::RGBColor(40, 40, 40)
                    } else {
                        category_color(i + 1)
                    };
                    let mut s = Series::line(
                        describe_label(scope.sweep, label),
                        color,
                        points.iter().map(|r| (r.step as f64, r.value)).collect(),
                    )
                    .dashed(if raw { Dash::Solid } else { Dash::Dashed });
                    s.markers = true;
                    s.band = points
                        .iter()
                        .map(|r| {
                            let se = r.se.unwrap_or(0.0);
                            (r.step as f64, r.value - se, r.value + se)
                        })
                        .collect();
                    s
                })
                .collect();
            let mut panel = Panel::steps("accuracy", series);
            panel.title = Some(task.to_string());
            panel.y_from_x_fraction = 0.0;
            panel
        })
        .collect();
    Outcome::Drawn(Figure {
        name: scope.name(BASE),
        title: format!(
            "Zero-shot accuracy along training, {}: raw vs post-hoc LAWA (band: ± standard error)",
            scope.model
        ),
        panels,
    })
}
