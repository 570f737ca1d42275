use tch::{Kind, Tensor};

use super::OptimError;

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (coefficient `max_norm / (norm + 1e-6)`, capped at 1),
/// and with its arithmetic: on a GPU all gradients at once with the multi-tensor `_foreach_` ops
/// (a few kernels instead of two per tensor), on the CPU tensor by tensor (where libtorch's
/// `_foreach_` ops compute the same, tensor by tensor). Returns the norm before
/// clipping, as a scalar fp32 tensor on the parameters' device (reading it waits for the
/// device: do it once per step, with the loss). Parameters without a gradient are ignored;
/// with none, the norm is 0.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Tensor, OptimError> {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        let Some(first) = grads.first() else {
            let device = params.first().map_or(tch::Device::Cpu, |p| p.device());
            return Ok(Tensor::zeros([], (Kind::Float, device)));
        };
        let on_gpu = first.device().is_cuda();
        if on_gpu && grads.iter().all(|g| g.device() == first.device()) {
            return Ok(lawa_ops::foreach_clip_grad_norm_(&grads, max_norm)?);
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).norm())
            .collect();
        let total = Tensor::stack(&norms, 0).norm();
        // Python's `max_norm / t` is `t.reciprocal() * max_norm` (Tensor.__rtruediv__).
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for g in &grads {
            let _ = g.shallow_clone().g_mul_(&coef.to_device(g.device()));
        }
        Ok(total)
    })
}
