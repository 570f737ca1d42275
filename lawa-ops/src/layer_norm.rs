//! A residual add and the LayerNorm after it in one op: lawa's CUDA kernels
//! (`csrc/kernels/layer_norm.cu`, compiled at run time by NVRTC), or the same arithmetic with
//! ATen ops elsewhere.

use std::os::raw::{c_char, c_int};

use tch::{Kind, Tensor};

use crate::{call, Handle, OpsError};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn lawa_add_layer_norm(
        x: Handle,
        delta: Handle,
        weight: Handle,
        bias: Handle,
        eps: f64,
        out_bf16: c_int,
        sum: *mut Handle,
        y: *mut Handle,
        error: *mut *mut c_char,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn lawa_layer_norm_emulated(
        x: Handle,
        delta: Handle,
        weight: Handle,
        bias: Handle,
        eps: f64,
        out_bf16: c_int,
        grad_sum: Handle,
        grad_y: Handle,
        in_registers: c_int,
        out: *mut Handle,
        row_groups: *mut c_int,
        error: *mut *mut c_char,
    ) -> c_int;
}

fn handle(t: Option<&Tensor>) -> Handle {
    t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as Handle)
}

/// 1 for a bf16 output, 0 for fp32, an error for any other kind.
fn out_code(out: Kind) -> Result<c_int, OpsError> {
    match out {
        Kind::BFloat16 => Ok(1),
        Kind::Float => Ok(0),
        other => Err(OpsError {
            op: "add_layer_norm",
            message: format!("the output dtype must be bf16 or fp32, got {other:?}"),
        }),
    }
}

/// The residual stream's next value and the LayerNorm of it, in one op: `sum = x + delta` (fp32,
/// when there is a `delta`) and `y = layer_norm(sum, weight, bias, eps)` rounded once to `out`
/// (bf16 or fp32: the dtype the next matmul reads). `x` is fp32 `[..., C]`, `delta` bf16 or fp32
/// of its shape, `weight` and `bias` fp32 `[C]`. Returns `(sum, y)`, `sum` `None` without a
/// delta (it would be `x`). Differentiable with respect to `x`, `delta`, `weight` and `bias`.
///
/// This is `x + delta` then `layer_norm(..).to(out)` up to the order of the mean's and
/// variance's sums. On CUDA it runs as lawa's kernels: one pass writes both outputs (where
/// the ops write the sum, read it back for the norm, then cast), and the backward pass
/// computes the input, residual, weight and bias gradients in two kernels. Elsewhere it runs
/// those ATen ops.
///
/// ```
/// use tch::{Kind, Tensor};
/// let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
/// let delta = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0]).view([2, 2]);
/// let (w, b) = (Tensor::ones([2], (Kind::Float, tch::Device::Cpu)), None);
/// let (sum, y) = lawa_ops::add_layer_norm(&x, Some(&delta), &w, b, 0.0, Kind::Float).unwrap();
/// assert_eq!(Vec::<f32>::try_from(&sum.unwrap().view([-1])).unwrap(), [2.0, 2.0, 3.0, 4.0]);
/// // Row [2, 2] has no variance (0 / sqrt(0) = NaN at eps 0); row [3, 4] normalizes to [-1, 1].
/// assert_eq!(Vec::<f32>::try_from(&y.get(1)).unwrap(), [-1.0, 1.0]);
/// ```
pub fn add_layer_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
    out: Kind,
) -> Result<(Option<Tensor>, Tensor), OpsError> {
    let code = out_code(out)?;
    let shape = x.size();
    if let Some(d) = delta.filter(|d| d.size() != shape) {
        return Err(OpsError {
            op: "add_layer_norm",
            message: format!(
                "delta must be bf16 or fp32 of x's shape {shape:?}, got {:?}",
                d.size()
            ),
        });
    }
    let width = shape.last().copied().unwrap_or(0);
    let rows = |t: &Tensor| t.reshape([-1, width]);
    let (x2, d2) = (rows(x), delta.map(rows));
    let (mut sum, mut y): (Handle, Handle) = (std::ptr::null_mut(), std::ptr::null_mut());
    call("add_layer_norm", |error| {
        // SAFETY: the tensors are live and borrowed for the call; `sum` and `y` receive new ones.
        unsafe {
            lawa_add_layer_norm(
                x2.as_ptr() as Handle,
                handle(d2.as_ref()),
                weight.as_ptr() as Handle,
                handle(bias),
                eps,
                code,
                &mut sum,
                &mut y,
                error,
            )
        }
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor` (sum only with a delta), handed over
    // once.
    let (sum, y) = unsafe {
        (
            (!sum.is_null()).then(|| Tensor::from_ptr(sum)),
            Tensor::from_ptr(y),
        )
    };
    Ok((
        sum.map(|s| s.view(shape.as_slice())),
        y.view(shape.as_slice()),
    ))
}

/// What [`add_layer_norm`]'s CUDA kernels compute, computed by their own source run on the CPU
/// (see [`emulate_cross_entropy_kernels`](crate::emulate_cross_entropy_kernels)): the forward
/// kernel on 2-D CPU tensors, then both backward kernels for the upstream gradients `grad_sum`
/// (fp32, of the sum; optional) and `grad_y` (of `y`, in `out`). With `in_registers` the
/// per-row kernels are chosen as on a GPU (those that hold a row in registers where the row
/// and the tensors allow); without, those that re-read the row run whatever the shape.
///
/// Returns `[sum, y, mean, rstd, grad_x, grad_delta, grad_weight, grad_bias]`, `sum` and
/// `grad_delta` `None` without a delta, and the groups of 4 values a lane of the forward and the
/// input gradient kernels that ran (0: those that re-read the row). For tests; slow.
#[allow(clippy::too_many_arguments)]
pub fn emulate_layer_norm_kernels(
    x: &Tensor,
    delta: Option<&Tensor>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
    out: Kind,
    grad_sum: Option<&Tensor>,
    grad_y: &Tensor,
    in_registers: bool,
) -> Result<([Option<Tensor>; 8], [u32; 2]), OpsError> {
    let code = out_code(out)?;
    let mut handles: [Handle; 8] = [std::ptr::null_mut(); 8];
    let mut groups: [c_int; 2] = [0; 2];
    call("emulated add_layer_norm kernels", |error| {
        // SAFETY: the tensors are live and borrowed for the call; `handles` receives new ones.
        unsafe {
            lawa_layer_norm_emulated(
                x.as_ptr() as Handle,
                handle(delta),
                weight.as_ptr() as Handle,
                handle(bias),
                eps,
                code,
                handle(grad_sum),
                grad_y.as_ptr() as Handle,
                c_int::from(in_registers),
                handles.as_mut_ptr(),
                groups.as_mut_ptr(),
                error,
            )
        }
    })?;
    // SAFETY: each non-null handle was allocated by the shim with `new at::Tensor` and is handed
    // over once.
    let outputs = handles.map(|h| (!h.is_null()).then(|| unsafe { Tensor::from_ptr(h) }));
    Ok((outputs, groups.map(|g| g as u32)))
}
