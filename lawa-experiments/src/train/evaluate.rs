//! Scoring a model on a fixed set of windows (used by training and `lawa eval`): the mean
//! next-token loss, and each window's mean loss so that two sets of weights scored on the same
//! windows can be compared pair by pair.

use anyhow::{bail, Result};
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

/// The losses of `model` on `windows`, in batches of `batch_size`, without gradients and in eval
/// mode. Reads each batch's numbers once, after its forward pass.
pub fn evaluate(
    model: &dyn CausalLm,
    windows: &ValidationWindows,
    batch_size: usize,
) -> Result<WindowLosses> {
    let _guard = tch::no_grad_guard();
    let mut total = 0.0f64;
    let mut tokens = 0u64;
    let mut per_window = Vec::with_capacity(windows.len());
    for batch in windows.batches(batch_size, model.device()) {
        let batch = batch?;
        let n = batch.y.numel() as u64;
        let (mean, windows) = model.window_losses(&batch.x, &batch.y)?;
        total += mean.to_kind(Kind::Double).double_value(&[]) * n as f64;
        per_window.extend(Vec::<f64>::try_from(windows.to_kind(Kind::Double))?);
        tokens += n;
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
