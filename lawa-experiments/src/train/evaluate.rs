//! Scoring a model on a fixed set of windows (used by training and `lawa eval`): the mean
//! next-token loss, and each window's mean loss so that two sets of weights scored on the same
//! windows can be compared pair by pair.
//!
//! The windows are scored batch by batch ([`score_share`]) and the batches' numbers combined in
//! window order ([`combine`]), so a data-parallel evaluation, where each rank scores some of the
//! batches, gives the very numbers of one process scoring them all.

use anyhow::{bail, Context, Result};
use lawa_core::data::ValidationWindows;
use lawa_models::CausalLm;
use tch::Kind;

/// A model's losses on a set of windows.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLosses {
    /// Mean next-token loss over every predicted token.
    pub mean: f64,
    /// Each window's mean loss, in window order.
    pub per_window: Vec<f64>,
    /// Number of predictions.
    pub tokens: u64,
}

impl WindowLosses {
    /// Standard error of the mean loss over windows (None with one window).
    pub fn se(&self) -> Option<f64> {
        crate::results::metrics::mean_and_se(&self.per_window).map(|(_, se)| se)
    }
}

/// One batch of windows scored: its mean loss, its predictions, each window's mean loss.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScore {
    /// Mean next-token loss over the batch's predictions.
    pub mean: f64,
    /// Number of predictions in the batch.
    pub tokens: u64,
    /// Each window's mean loss, in window order.
    pub per_window: Vec<f64>,
}

/// Warns, naming `field` (`eval.windows`, `eval.train_windows`), when the `asked` number of
/// windows overlap (`windows` holds them, fewer where the split has fewer distinct starts): the
/// losses are then not independent, and their standard errors (and the paired gains' spread)
/// come out too small.
pub fn warn_if_overlapping(name: &str, field: &str, asked: usize, windows: &ValidationWindows) {
    if let Some(fit) = windows.overlap() {
        let taken = match windows.len() {
            n if n < asked => format!(" (the split has {n} distinct ones, and those are scored)"),
            _ => String::new(),
        };
        tracing::warn!(
            "{name}: {field} = {asked} asks for {asked} windows of {} tokens{taken}, but the \
             split holds {fit} side by side: they overlap, their losses are not independent, \
             and the standard errors understate the spread; ask for {fit} or fewer",
            windows.block_size()
        );
    }
}

/// The losses of `model` on `windows`, in batches of `batch_size`, without gradients and in eval
/// mode. Reads each batch's numbers once, after its forward pass.
pub fn evaluate(
    model: &dyn CausalLm,
    windows: &ValidationWindows,
    batch_size: usize,
) -> Result<WindowLosses> {
    let scores = score_share(model, windows, batch_size, 0, 1)?;
    combine(scores.into_iter().map(|(_, score)| score))
}

/// Scores part `part` of `parts` of the batches of `windows` (see
/// [`ValidationWindows::batches_share`]), each with its batch index.
pub fn score_share(
    model: &dyn CausalLm,
    windows: &ValidationWindows,
    batch_size: usize,
    part: usize,
    parts: usize,
) -> Result<Vec<(usize, BatchScore)>> {
    let _guard = tch::no_grad_guard();
    let mut scores = Vec::new();
    for (index, batch) in windows.batches_share(batch_size, model.device(), part, parts) {
        let batch = batch?;
        let score = crate::torch_panic::catch(|| {
            let (mean, per_window) = model.window_losses(&batch.x, &batch.y)?;
            Ok(BatchScore {
                mean: mean.to_kind(Kind::Double).double_value(&[]),
                tokens: batch.y.numel() as u64,
                per_window: Vec::<f64>::try_from(per_window.to_kind(Kind::Double))?,
            })
        })
        .with_context(|| {
            let size = batch.x.size();
            format!(
                "scoring {} windows of {} tokens at once; if memory ran out, lower the \
                 evaluation batch size (eval.batch_size, or `lawa eval --batch-size`)",
                size[0],
                size.get(1).copied().unwrap_or(0)
            )
        })?;
        scores.push((index, score));
    }
    Ok(scores)
}

/// The losses over every window from all the batches' scores, given in batch order (the mean
/// is summed in that order, whoever scored each batch).
pub fn combine(batches: impl IntoIterator<Item = BatchScore>) -> Result<WindowLosses> {
    let mut total = 0.0f64;
    let mut tokens = 0u64;
    let mut per_window = Vec::new();
    for batch in batches {
        total += batch.mean * batch.tokens as f64;
        tokens += batch.tokens;
        per_window.extend(batch.per_window);
    }
    if tokens == 0 {
        bail!("no windows to evaluate");
    }
    Ok(WindowLosses {
        mean: total / tokens as f64,
        per_window,
        tokens,
    })
}
