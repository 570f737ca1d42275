//! Mean next-token loss of a model over a fixed set of windows.

use anyhow::Result;
use lawa_core::data::ValidationWindows;
use lawa_models::Gpt;

/// The mean loss of `gpt` over `windows` (every window has the same number of tokens, so this
/// is the mean over all their tokens), in evaluation mode, without gradients.
pub fn mean_loss(gpt: &Gpt, windows: &ValidationWindows, batch_size: usize) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let mut total = 0.0;
    for batch in windows.batches(batch_size, gpt.device()) {
        let rows = batch.x.size()[0] as f64;
        total += gpt.loss(&batch.x, &batch.y, false)?.double_value(&[]) * rows;
    }
    Ok(total / windows.len() as f64)
}
