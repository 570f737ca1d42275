//! A linear layer whose backward pass computes the bias gradient with lawa's CUDA kernel
//! (`csrc/kernels/bias_grad.cu`, compiled at run time by NVRTC); libtorch's own ops for the rest,
//! and everywhere off CUDA.

use std::os::raw::{c_char, c_int, c_longlong};

use tch::Tensor;

use crate::{call, Handle, OpsError};

extern "C" {
    fn lawa_linear(
        x: Handle,
        weight: Handle,
        bias: Handle,
        y: *mut Handle,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_bias_grad_emulated(
        grad: Handle,
        rows_per_chunk: c_longlong,
        partial: *mut Handle,
        error: *mut *mut c_char,
    ) -> c_int;
}

/// `y = x Wᵀ + b` over the last dimension of `x` (`[..., in]`; `weight` `[out, in]`, `bias`
/// `[out]`), differentiable with respect to all three: `x.linear(weight, bias)`, with the bias
/// gradient (the column sums of the output's gradient) computed by lawa's kernel on CUDA.
///
/// The forward pass and the gradients of `x` and `weight` are the ops `linear` and its autograd
/// run over rows (`addmm`, then `mm` twice), so off CUDA the result and every gradient equal
/// `linear`'s bit for bit. On CUDA the bias gradient is summed in fp32 per chunk of 128 rows,
/// 16 bytes read at a time, and rounded once to the bias's dtype: the same value up to the
/// order of the sums.
///
/// ```
/// use tch::{Kind, Tensor};
/// let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]).set_requires_grad(true);
/// let w = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 1.0]).view([2, 2]);
/// let b = Tensor::from_slice(&[0.5f32, -0.5]).set_requires_grad(true);
/// let y = lawa_ops::linear(&x, &w, Some(&b))?;
/// assert_eq!(Vec::<f32>::try_from(&y.view([-1]))?, [1.5, 2.5, 3.5, 6.5]);
/// y.sum(Kind::Float).backward();
/// assert_eq!(Vec::<f32>::try_from(&b.grad())?, [2.0, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, OpsError> {
    let torch = |e: tch::TchError| OpsError {
        op: "linear",
        message: e.to_string(),
    };
    let mut shape = x.size();
    let Some(&width) = shape.last() else {
        return Err(OpsError {
            op: "linear",
            message: "x must have at least one dimension".into(),
        });
    };
    let rows = x.f_reshape([-1, width]).map_err(torch)?;
    let mut y: Handle = std::ptr::null_mut();
    call("linear", |error| {
        // SAFETY: the tensors are live and borrowed for the call; `y` receives a new one.
        unsafe {
            lawa_linear(
                rows.as_ptr() as Handle,
                weight.as_ptr() as Handle,
                bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as Handle),
                &mut y,
                error,
            )
        }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, handed over once.
    let y = unsafe { Tensor::from_ptr(y) };
    if let Some(last) = shape.last_mut() {
        *last = y.size()[1];
    }
    y.f_view(shape.as_slice()).map_err(torch)
}

/// What [`linear`]'s bias-gradient kernel computes, computed by its own CUDA source run on the
/// CPU (see [`emulate_cross_entropy_kernels`](crate::emulate_cross_entropy_kernels)): the
/// partial column sums `[chunks, cols]` (fp32) of `grad` (a CPU bf16 or fp32 `[rows, cols]`)
/// by chunks of `rows_per_chunk` rows, whose sum over chunks is the bias gradient. For tests;
/// slow.
pub fn emulate_bias_grad_kernel(grad: &Tensor, rows_per_chunk: i64) -> Result<Tensor, OpsError> {
    let mut partial: Handle = std::ptr::null_mut();
    call("emulated bias-gradient kernel", |error| {
        // SAFETY: `grad` is live and borrowed for the call; `partial` receives a new tensor.
        unsafe {
            lawa_bias_grad_emulated(grad.as_ptr() as Handle, rows_per_chunk, &mut partial, error)
        }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, handed over once.
    Ok(unsafe { Tensor::from_ptr(partial) })
}
