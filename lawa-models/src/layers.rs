//! What GPT-2 and GPT-NeoX share: LayerNorm, linear layers, the MLP, causal attention over
//! heads, dropout, and the variables' Hugging Face names.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::{Kernel, Precision};

/// A named variable of a model and how Hugging Face stores it.
pub(crate) struct Param {
    /// Hugging Face name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// The VarStore variable.
    pub tensor: Tensor,
    /// Stored transposed by Hugging Face (GPT-2's `Conv1D` weights are `[in, out]`).
    pub transposed: bool,
}

/// Adds `prefix.name` to `out`.
pub(crate) fn push(out: &mut Vec<Param>, prefix: &str, name: &str, t: &Tensor, transposed: bool) {
    out.push(Param {
        name: format!("{prefix}.{name}"),
        tensor: t.shallow_clone(),
        transposed,
    });
}

/// LayerNorm over the last dimension, always computed in fp32.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: Path, n: i64, bias: bool, eps: f64) -> Self {
        LayerNorm {
            weight: p.var("weight", &[n], Init::Const(1.0)),
            bias: bias.then(|| p.var("bias", &[n], Init::Const(0.0))),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = if x.kind() == Kind::Float {
            x.shallow_clone()
        } else {
            x.to_kind(Kind::Float)
        };
        let n = self.weight.size();
        x.layer_norm(n, Some(&self.weight), self.bias.as_ref(), self.eps, true)
    }

    /// `(x + delta, LayerNorm(x + delta))` by lawa's add + LayerNorm op
    /// ([`lawa_ops::add_layer_norm`]), the norm rounded once to `out` (the next matmul's
    /// dtype); without a delta, `(x, LayerNorm(x))`. `x` is the fp32 residual stream.
    pub fn fused(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        out: Kind,
    ) -> Result<(Tensor, Tensor), lawa_ops::OpsError> {
        let (sum, y) =
            lawa_ops::add_layer_norm(x, delta, &self.weight, self.bias.as_ref(), self.eps, out)?;
        Ok((sum.unwrap_or_else(|| x.shallow_clone()), y))
    }

    pub fn params(&self, prefix: &str, out: &mut Vec<Param>) {
        push(out, prefix, "weight", &self.weight, false);
        if let Some(b) = &self.bias {
            push(out, prefix, "bias", b, false);
        }
    }
}

/// `y = x Wᵀ + b` with `W` stored `[out, in]`, computed in the forward's precision.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Hugging Face stores the weight transposed (GPT-2's `Conv1D`).
    hf_transposed: bool,
}

impl Linear {
    pub fn new(p: Path, n_in: i64, n_out: i64, std: f64, bias: bool, hf_transposed: bool) -> Self {
        Linear {
            weight: p.var(
                "weight",
                &[n_out, n_in],
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            ),
            bias: bias.then(|| p.var("bias", &[n_out], Init::Const(0.0))),
            hf_transposed,
        }
    }

    pub fn forward(&self, x: &Tensor, precision: Precision) -> Tensor {
        let (x, w, b) = self.cast(x, precision);
        x.linear(&w, b.as_ref())
    }

    /// [`forward`](Self::forward) by `kernel`: libtorch's `linear`, or [`lawa_ops::linear`]
    /// (the same ops, the bias gradient summed by lawa's kernel on CUDA).
    pub fn forward_with(
        &self,
        x: &Tensor,
        precision: Precision,
        kernel: Kernel,
    ) -> Result<Tensor, lawa_ops::OpsError> {
        let (x, w, b) = self.cast(x, precision);
        match kernel {
            Kernel::Aten => Ok(x.linear(&w, b.as_ref())),
            Kernel::Fused => lawa_ops::linear(&x, &w, b.as_ref()),
        }
    }

    /// The input, weight and bias in the forward's precision.
    fn cast(&self, x: &Tensor, precision: Precision) -> (Tensor, Tensor, Option<Tensor>) {
        let b = self.bias.as_ref().map(|b| precision.cast(b));
        (precision.cast(x), precision.cast(&self.weight), b)
    }

    pub fn params(&self, prefix: &str, out: &mut Vec<Param>) {
        push(out, prefix, "weight", &self.weight, self.hf_transposed);
        if let Some(b) = &self.bias {
            push(out, prefix, "bias", b, false);
        }
    }
}

/// The MLP's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// GPT-2's tanh approximation (`gelu_new`).
    GeluTanh,
    /// The exact erf GELU (GPT-NeoX's `gelu`).
    Gelu,
}

/// The position-wise MLP: `proj(act(fc(x)))`, dropout on its output while training.
#[derive(Debug)]
pub(crate) struct Mlp {
    pub fc: Linear,
    pub proj: Linear,
    pub activation: Activation,
    pub dropout: f64,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor, train: bool, precision: Precision) -> Tensor {
        let h = self.fc.forward(x, precision);
        let h = self.activate(h);
        dropout_if(self.proj.forward(&h, precision), self.dropout, train)
    }

    /// [`forward`](Self::forward) with its linear layers run by `linear` (see
    /// [`Linear::forward_with`]).
    pub fn forward_with(
        &self,
        x: &Tensor,
        train: bool,
        precision: Precision,
        linear: Kernel,
    ) -> Result<Tensor, lawa_ops::OpsError> {
        let h = self.activate(self.fc.forward_with(x, precision, linear)?);
        let y = self.proj.forward_with(&h, precision, linear)?;
        Ok(dropout_if(y, self.dropout, train))
    }

    fn activate(&self, h: Tensor) -> Tensor {
        match self.activation {
            Activation::GeluTanh => h.gelu("tanh"),
            Activation::Gelu => h.gelu("none"),
        }
    }
}

/// Dropout with probability `p` while training.
pub(crate) fn dropout_if(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x
    }
}

/// Causal attention of `q`, `k`, `v` (`[B, heads, T, head_dim]`) through
/// `scaled_dot_product_attention` (flash attention on CUDA when the dtype allows), heads merged
/// back into `[B, T, heads * head_dim]`.
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    dropout: f64,
    train: bool,
) -> Tensor {
    let (b, h, t, d) = q
        .size4()
        .expect("attention inputs are [B, heads, T, head_dim]");
    let dropout = if train { dropout } else { 0.0 };
    let y =
        Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, dropout, true, scale, false);
    y.transpose(1, 2).contiguous().view([b, t, h * d])
}
