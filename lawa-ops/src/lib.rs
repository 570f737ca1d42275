//! libtorch operations that tch does not expose, reached through a small C++ shim (`csrc/`)
//! compiled against the headers torch-sys uses: AdamW over all parameters at once with the
//! multi-tensor `_foreach_` ops or with `_fused_adamw_`, a multi-tensor lerp (an EMA update), and
//! pinning host memory without the warnings tch's `pin_memory` triggers in libtorch 2.11, copies
//! from a GPU into host memory that leave the host free ([`copy_async`]), and
//! libtorch's profiler ([`Profiler`]), to compare a step of lawa with one of PyTorch kernel by kernel,
//! and CUDA graphs ([`CudaGraph`]), to replay a step's kernels with one launch.
//! On CUDA each is a handful of kernels for the whole model instead of several per tensor.
//! And kernels of lawa's own, compiled at run time by NVRTC: [`cross_entropy`] over a language
//! model's logits in their own dtype, [`add_layer_norm`], a residual add with the LayerNorm
//! after it, and [`linear`], whose backward pass sums the bias gradient in one kernel.
//!
//! ```
//! use tch::{Kind, Tensor};
//! let ema = vec![Tensor::zeros([3], (Kind::Float, tch::Device::Cpu))];
//! let weights = vec![Tensor::ones([3], (Kind::Float, tch::Device::Cpu))];
//! lawa_ops::foreach_lerp_(&ema, &weights, 0.25).unwrap();
//! assert_eq!(Vec::<f32>::try_from(&ema[0]).unwrap(), [0.25, 0.25, 0.25]);
//! ```

use std::os::raw::{c_char, c_int};

use tch::Tensor;

mod cross_entropy;
mod cuda_graph;
mod host_copy;
mod kernels;
mod layer_norm;
mod linear;
mod profiler;

pub use cross_entropy::{cross_entropy, emulate_cross_entropy_kernels, IGNORE_INDEX};
pub use cuda_graph::{cuda_graphs_built, CudaGraph};
pub use host_copy::{copy_async, PendingCopies};
pub use kernels::{compile_kernels, KernelSource};
pub use layer_norm::{add_layer_norm, emulate_layer_norm_kernels};
pub use linear::{emulate_bias_grad_kernel, linear};
pub use profiler::{busy_ns, parse_events, totals_by_name, EventDevice, ProfiledEvent, Profiler};

/// A libtorch error from one of the operations (a shape, dtype or device mismatch...).
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct OpsError {
    /// The operation.
    pub op: &'static str,
    /// libtorch's message, first line.
    pub message: String,
}

/// The scalars of one AdamW step, computed once by the caller so that every implementation
/// uses the same ones.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// `1 - lr * weight_decay`, what decayed parameters are multiplied by first.
    pub decay_factor: f64,
    /// `-lr / (1 - beta1^t)`.
    pub step_size: f64,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f64,
}

type Handle = *mut torch_sys::C_tensor;

extern "C" {
    fn lawa_foreach_adamw(
        params: *const Handle,
        grads: *const Handle,
        exp_avgs: *const Handle,
        exp_avg_sqs: *const Handle,
        decay: *const c_int,
        count: c_int,
        scalars: *const AdamWScalars,
        error: *mut *mut c_char,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn lawa_fused_adamw(
        params: *const Handle,
        grads: *const Handle,
        exp_avgs: *const Handle,
        exp_avg_sqs: *const Handle,
        count: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        step: f64,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_foreach_lerp(
        selves: *const Handle,
        ends: *const Handle,
        count: c_int,
        weight: f64,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_pin_memory(tensor: Handle, out: *mut Handle, error: *mut *mut c_char) -> c_int;
    fn lawa_empty_pinned(bytes: i64, out: *mut Handle, error: *mut *mut c_char) -> c_int;
    fn lawa_foreach_clip_grad_norm(
        grads: *const Handle,
        count: c_int,
        max_norm: f64,
        total: *mut Handle,
        error: *mut *mut c_char,
    ) -> c_int;
}

fn handles(tensors: &[Tensor]) -> Vec<Handle> {
    tensors.iter().map(|t| t.as_ptr() as Handle).collect()
}

/// Checks that every list has `n` tensors.
fn same_lengths(op: &'static str, lengths: &[usize]) -> Result<(), OpsError> {
    if lengths.windows(2).all(|w| w[0] == w[1]) {
        Ok(())
    } else {
        Err(OpsError {
            op,
            message: format!("tensor lists of different lengths {lengths:?}"),
        })
    }
}

fn call(op: &'static str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), OpsError> {
    let mut error: *mut c_char = std::ptr::null_mut();
    if f(&mut error) == 0 {
        return Ok(());
    }
    // SAFETY: the shim's message, allocated by lawa_guarded and not used again.
    let message = unsafe { lawa_cxx::take_error(error) };
    Err(OpsError { op, message })
}

/// One AdamW step over every parameter with libtorch's `_foreach_` ops, in the order of
/// `torch.optim.AdamW(foreach=True)`: decayed parameters scaled by `decay_factor`, then
/// `m = lerp(m, g, 1 - beta1)`, `v = beta2 v + (1 - beta2) g g`,
/// `p += step_size m / (sqrt(v) / bias_correction2_sqrt + eps)`. On the CPU libtorch runs these
/// tensor by tensor, with the arithmetic of the single-tensor ops (bit for bit).
pub fn foreach_adamw_step(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    decay: &[bool],
    scalars: &AdamWScalars,
) -> Result<(), OpsError> {
    let op = "_foreach_ AdamW";
    same_lengths(
        op,
        &[
            params.len(),
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len(),
            decay.len(),
        ],
    )?;
    let (p, g, m, v) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
    );
    let decay: Vec<c_int> = decay.iter().map(|&d| c_int::from(d)).collect();
    call(op, |error| {
        // SAFETY: every handle is a live tensor borrowed for the call; lengths checked above.
        unsafe {
            lawa_foreach_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                decay.as_ptr(),
                p.len() as c_int,
                scalars,
                error,
            )
        }
    })
}

/// One AdamW step with libtorch's fused kernel, `torch.optim.AdamW(fused=True)`'s: one pass
/// over each tensor. `step` is the step number after this update (1 for the first). Its
/// arithmetic differs from the unfused ops by rounding (measured: up to 1 ulp per step on CPU).
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw_step(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    lr: f64,
    (beta1, beta2): (f64, f64),
    weight_decay: f64,
    eps: f64,
    step: u64,
) -> Result<(), OpsError> {
    let op = "_fused_adamw_";
    same_lengths(
        op,
        &[params.len(), grads.len(), exp_avgs.len(), exp_avg_sqs.len()],
    )?;
    let (p, g, m, v) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
    );
    call(op, |error| {
        // SAFETY: every handle is a live tensor borrowed for the call; lengths checked above.
        unsafe {
            lawa_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                p.len() as c_int,
                lr,
                beta1,
                beta2,
                weight_decay,
                eps,
                step as f64,
                error,
            )
        }
    })
}

/// `selves[i] = lerp(selves[i], ends[i], weight)` for every `i`, with `_foreach_lerp_`.
pub fn foreach_lerp_(selves: &[Tensor], ends: &[Tensor], weight: f64) -> Result<(), OpsError> {
    let op = "_foreach_lerp_";
    same_lengths(op, &[selves.len(), ends.len()])?;
    let (a, b) = (handles(selves), handles(ends));
    call(op, |error| {
        // SAFETY: every handle is a live tensor borrowed for the call; lengths checked above.
        unsafe { lawa_foreach_lerp(a.as_ptr(), b.as_ptr(), a.len() as c_int, weight, error) }
    })
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does on CUDA: `_foreach_norm`, the norm of the norms, then
/// `_foreach_mul_` by `min(1, max_norm / (norm + 1e-6))`, a few kernels for all gradients and
/// nothing read back to the host. Returns the norm before clipping (a 0-dim fp32 tensor on the
/// gradients' device). An error for an empty list.
pub fn foreach_clip_grad_norm_(grads: &[Tensor], max_norm: f64) -> Result<Tensor, OpsError> {
    let g = handles(grads);
    let mut total: Handle = std::ptr::null_mut();
    call("_foreach_ clip_grad_norm", |error| {
        // SAFETY: every handle is a live tensor borrowed for the call; `total` receives a new one.
        unsafe {
            lawa_foreach_clip_grad_norm(g.as_ptr(), g.len() as c_int, max_norm, &mut total, error)
        }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, handed over once.
    Ok(unsafe { Tensor::from_ptr(total) })
}

/// A copy of the host tensor `t` in pinned (page-locked) memory, from which a copy to the GPU
/// can run asynchronously. Unlike tch's `pin_memory(device)` it passes no device, which
/// libtorch 2.11 deprecates with two warnings on every call. An error where no GPU is present.
pub fn pin_memory(t: &Tensor) -> Result<Tensor, OpsError> {
    let mut out: Handle = std::ptr::null_mut();
    call("pin_memory", |error| {
        // SAFETY: `t` is a live tensor borrowed for the call; `out` receives a new one.
        unsafe { lawa_pin_memory(t.as_ptr() as Handle, &mut out, error) }
    })?;
    // SAFETY: the shim allocated `out` with `new at::Tensor`, as torch-sys does for the
    // tensors tch owns (and frees with `delete`); it is handed over once.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `bytes` uninitialized bytes (a uint8 host tensor) of pinned memory, allocated as such: what
/// [`pin_memory`] of an empty tensor gives, without the pageable buffer and the copy. (libtorch's
/// pinned-memory allocator rounds the allocation up to a power of two.) An error where no GPU
/// is present.
pub fn empty_pinned(bytes: i64) -> Result<Tensor, OpsError> {
    let mut out: Handle = std::ptr::null_mut();
    call("empty_pinned", |error| {
        // SAFETY: `out` receives a new tensor.
        unsafe { lawa_empty_pinned(bytes, &mut out, error) }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, handed over once.
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Cuda, Device, Kind};

    /// The multi-tensor clip against the per-tensor arithmetic (torch's CPU path), clipping and
    /// not clipping.
    #[test]
    fn foreach_clipping_equals_the_per_tensor_arithmetic() {
        for max_norm in [0.5f64, 0.3, 1e3] {
            tch::manual_seed(3);
            let grads: Vec<Tensor> = [vec![7, 5], vec![11], vec![3, 4, 2]]
                .iter()
                .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)))
                .collect();
            let copies: Vec<Tensor> = grads.iter().map(|g| g.copy()).collect();
            let norms: Vec<Tensor> = copies.iter().map(|g| g.norm()).collect();
            let want = Tensor::stack(&norms, 0).norm();
            let coef = ((&want + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
            let total = foreach_clip_grad_norm_(&grads, max_norm).unwrap();
            assert_eq!(total.size(), Vec::<i64>::new());
            assert_eq!(total, want);
            for (g, c) in grads.iter().zip(&copies) {
                assert_eq!(*g, c * &coef);
            }
            let clipped =
                Tensor::stack(&grads.iter().map(|g| g.norm()).collect::<Vec<_>>(), 0).norm();
            let expected = want.double_value(&[]).min(max_norm);
            assert!((clipped.double_value(&[]) - expected).abs() < 1e-5 * expected);
        }
        assert!(foreach_clip_grad_norm_(&[], 1.0).is_err());
    }

    #[test]
    fn pinned_copies_equal_their_source_or_the_error_says_why() {
        let t = Tensor::arange(12, (Kind::Int64, Device::Cpu)).reshape([3, 4]);
        match pin_memory(&t) {
            Ok(pinned) => {
                assert!(Cuda::is_available(), "pinning succeeded without a GPU");
                assert_eq!(pinned, t);
                assert_eq!(pinned.device(), Device::Cpu);
                let on_gpu = pinned.to_device_(Device::Cuda(0), Kind::Int64, true, false);
                assert_eq!(on_gpu.to(Device::Cpu), t);
            }
            Err(e) => {
                assert!(!Cuda::is_available(), "pinning failed with a GPU: {e}");
                assert_eq!(e.op, "pin_memory");
                assert!(!e.message.is_empty());
                eprintln!("no GPU here: only the refusal was tested ({e})");
            }
        }
        match empty_pinned(1000) {
            Ok(pinned) => {
                assert!(Cuda::is_available(), "pinning succeeded without a GPU");
                assert_eq!((pinned.size(), pinned.kind()), (vec![1000], Kind::Uint8));
                assert_eq!(pinned.device(), Device::Cpu);
            }
            Err(e) => {
                assert!(!Cuda::is_available(), "pinning failed with a GPU: {e}");
                assert_eq!(e.op, "empty_pinned");
                assert!(!e.message.is_empty());
            }
        }
    }
}
