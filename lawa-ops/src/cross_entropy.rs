//! Cross-entropy over a language model's logits in the logits' own dtype: lawa's CUDA kernels
//! (`csrc/kernels/cross_entropy.cu`, compiled at run time by NVRTC), or the same arithmetic with
//! ATen ops elsewhere.

use std::os::raw::{c_char, c_int};

use tch::Tensor;

use crate::{call, Handle, OpsError};

/// The target value whose rows count for nothing, as in `torch.nn.functional.cross_entropy`.
pub const IGNORE_INDEX: i64 = -100;

extern "C" {
    fn lawa_cross_entropy(
        logits: Handle,
        targets: Handle,
        vocab: i64,
        ignore_index: i64,
        out: *mut Handle,
        error: *mut *mut c_char,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn lawa_cross_entropy_emulated(
        logits: Handle,
        targets: Handle,
        vocab: i64,
        ignore_index: i64,
        grad: Handle,
        threads: u32,
        losses: *mut Handle,
        lse: *mut Handle,
        grad_logits: *mut Handle,
        error: *mut *mut c_char,
    ) -> c_int;
}

/// The cross-entropy of each row of `logits` (`[rows, columns]`, bf16 or fp32) against
/// `targets` (`[rows]`, int64), over the first `vocab` columns (the rest, such as GPT-2's padding
/// of 50257 to 50304, count as probability 0): `logsumexp(x[..vocab]) - x[target]`, fp32
/// `[rows]`, 0 for a target equal to [`IGNORE_INDEX`] and NaN for one outside `[0, vocab)`.
/// Differentiable with respect to `logits`; the gradient is `(softmax - onehot) * grad`, 0 in the
/// padding columns, computed in fp32 and rounded once to the logits' dtype.
///
/// This is `log_softmax(logits.float()[.., ..vocab]) + nll_loss(reduction="none")` up to the
/// order of a sum. On CUDA it runs as two kernels of lawa's own that read the logits where
/// they are: the forward pass keeps one fp32 value per row, and writes no fp32 copy of the
/// logits, no log-probabilities and no dense gradient of the loss (which the ATen path all
/// writes, each as large as the logits in fp32). Elsewhere it runs those ATen ops.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let logits = Tensor::from_slice(&[0.0f32, 0.0, 9.0, 1.0, 1.0, 9.0]).view([2, 3]);
/// let targets = Tensor::from_slice(&[1i64, lawa_ops::IGNORE_INDEX]);
/// // Over the first two columns: log(e^0 + e^0) - 0 = ln 2, and an ignored row.
/// let losses = lawa_ops::cross_entropy(&logits, &targets, 2).unwrap();
/// let got = Vec::<f32>::try_from(&losses).unwrap();
/// assert!((got[0] - std::f32::consts::LN_2).abs() < 1e-6 && got[1] == 0.0);
/// ```
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, vocab: i64) -> Result<Tensor, OpsError> {
    let mut out: Handle = std::ptr::null_mut();
    call("cross_entropy", |error| {
        // SAFETY: both tensors are live and borrowed for the call; `out` receives a new one.
        unsafe {
            lawa_cross_entropy(
                logits.as_ptr() as Handle,
                targets.as_ptr() as Handle,
                vocab,
                IGNORE_INDEX,
                &mut out,
                error,
            )
        }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, handed over once.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// What the CUDA kernels behind [`cross_entropy`] compute, computed by their own source
/// (`csrc/kernels/cross_entropy.cu`) run on the CPU: one OS thread per CUDA thread, in blocks
/// of `threads` (a multiple of 32, at most 1024; a GPU runs 512), with CUDA's barriers and warp
/// shuffles emulated. Returns the forward kernel's per-row losses and log-sum-exps, and the
/// backward kernel's gradient for the upstream gradient `grad` (`[rows]`). For testing the
/// kernels on machines without a GPU; slow (thousands of threads for a few rows).
pub fn emulate_cross_entropy_kernels(
    logits: &Tensor,
    targets: &Tensor,
    vocab: i64,
    grad: &Tensor,
    threads: u32,
) -> Result<(Tensor, Tensor, Tensor), OpsError> {
    let mut out: [Handle; 3] = [std::ptr::null_mut(); 3];
    let [losses, lse, grad_logits] = &mut out;
    call("emulated cross-entropy kernels", |error| {
        // SAFETY: the tensors are live and borrowed for the call; the three handles receive new
        // tensors.
        unsafe {
            lawa_cross_entropy_emulated(
                logits.as_ptr() as Handle,
                targets.as_ptr() as Handle,
                vocab,
                IGNORE_INDEX,
                grad.as_ptr() as Handle,
                threads,
                losses,
                lse,
                grad_logits,
                error,
            )
        }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, each handed over once.
    Ok(unsafe {
        (
            Tensor::from_ptr(out[0]),
            Tensor::from_ptr(out[1]),
            Tensor::from_ptr(out[2]),
        )
    })
}
