//! Compute precision of the forward pass: fp32, or bf16 compute over fp32 master weights.

use tch::{Kind, Tensor};

/// The dtype the forward pass computes in. Weights always stay fp32 in the VarStore.
///
/// [`Precision::Bf16`] does what `torch.autocast(device_type, dtype=torch.bfloat16)` does for
/// GPT-2: the inputs and weights of every matmul (linear layers, attention, LM head) are cast to
/// bf16 and the matmul runs in bf16, while LayerNorm and the softmax / cross-entropy run in fp32
/// and the residual stream stays fp32. The casts are differentiable, so gradients reach the fp32
/// master weights. (`tch::autocast` cannot be used for this: libtorch's CUDA autocast dtype is
/// fp16 and tch offers no way to choose bf16.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    F32,
    /// bf16 matmuls and attention, fp32 LayerNorm, loss and master weights.
    Bf16,
}

impl Precision {
    /// The dtype matmul inputs are cast to.
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// `t` in the compute dtype (a no-op when it already is).
    pub fn cast(self, t: &Tensor) -> Tensor {
        let kind = self.compute_kind();
        if t.kind() == kind {
            t.shallow_clone()
        } else {
            t.to_kind(kind)
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision '{other}' (expected f32 or bf16)"
            )),
        }
    }
}
