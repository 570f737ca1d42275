//! Mean next-token loss of a model over a fixed set of windows (used by training and `lawa eval`).

use anyhow::{bail, Result};
use lawa_core::data::ValidationWindows;
use lawa_models::Gpt;
use tch::Kind;

/// Mean next-token loss of `gpt` over `windows`, in batches of `batch_size`, without gradients
/// and in eval mode (no dropout). Returns the loss and the number of predictions.
pub fn evaluate(gpt: &Gpt, windows: &ValidationWindows, batch_size: usize) -> Result<(f64, u64)> {
    let _guard = tch::no_grad_guard();
    let mut total = 0.0f64;
    let mut count = 0u64;
    for batch in windows.batches(batch_size, gpt.device()) {
        let n = batch.y.numel() as u64;
        let loss = gpt.loss(&batch.x, &batch.y, false)?;
        total += loss.to_kind(Kind::Double).double_value(&[]) * n as f64;
        count += n;
    }
    if count == 0 {
        bail!("no windows to evaluate");
    }
    Ok((total / count as f64, count))
}

/// [`evaluate`]'s loss alone.
pub fn mean_loss(gpt: &Gpt, windows: &ValidationWindows, batch_size: usize) -> Result<f64> {
    Ok(evaluate(gpt, windows, batch_size)?.0)
}
