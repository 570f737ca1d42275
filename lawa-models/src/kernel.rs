//! Which implementation runs an op that lawa has CUDA kernels of its own for.

/// Which implementation runs an op that lawa has CUDA kernels of its own for: the training loss
/// ([`LossPlan::kernel`](crate::LossPlan), `train.loss_kernel`), GPT-2's residual adds with
/// the LayerNorms after them ([`Gpt::set_norm_kernel`](crate::Gpt::set_norm_kernel),
/// `train.norm_kernel`) and its linear layers' bias gradients
/// ([`Gpt::set_linear_kernel`](crate::Gpt::set_linear_kernel), `train.linear_kernel`). The
/// two give the same values and gradients up to summation order (and, in bf16, a value rounded
/// to the neighbouring bf16 where that order tips it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// libtorch's ops, as PyTorch eager runs the model.
    #[default]
    Aten,
    /// lawa's kernels ([`lawa_ops::cross_entropy`], [`lawa_ops::add_layer_norm`],
    /// [`lawa_ops::linear`]): on CUDA,
    /// compiled by NVRTC on first use; on the CPU the same arithmetic with libtorch's ops (and
    /// slower than `aten` there).
    Fused,
}

impl Kernel {
    /// Whether this is the default (`aten`), for leaving it out of written configs.
    pub fn is_default(&self) -> bool {
        *self == Kernel::default()
    }
}
