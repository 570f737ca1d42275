//! One pre-LayerNorm transformer block of GPT-2 and its parts: LayerNorm, linear layers, causal
//! self-attention and the MLP. Variables are created under Hugging Face GPT-2 names; linear
//! weights keep `nn::Linear`'s `[out, in]` layout (Hugging Face's `Conv1D` stores `[in, out]`).

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::config::{GptConfig, LAYER_NORM_EPS};
use crate::Precision;

/// A named variable of the model and how Hugging Face stores it.
pub(crate) struct Param {
    /// Hugging Face name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// The VarStore variable.
    pub tensor: Tensor,
    /// A `Conv1D` weight: Hugging Face stores the transpose of lawa's `[out, in]`.
    pub conv1d: bool,
}

/// LayerNorm over the last dimension, always computed in fp32.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl LayerNorm {
    fn new(p: Path, n: i64, bias: bool) -> Self {
        LayerNorm {
            weight: p.var("weight", &[n], Init::Const(1.0)),
            bias: bias.then(|| p.var("bias", &[n], Init::Const(0.0))),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = if x.kind() == Kind::Float {
            x.shallow_clone()
        } else {
            x.to_kind(Kind::Float)
        };
        let n = self.weight.size();
        x.layer_norm(
            n,
            Some(&self.weight),
            self.bias.as_ref(),
            LAYER_NORM_EPS,
            true,
        )
    }

    fn params(&self, prefix: &str, out: &mut Vec<Param>) {
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
}

impl Linear {
    fn new(p: Path, n_in: i64, n_out: i64, std: f64, bias: bool) -> Self {
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
        }
    }

    pub fn forward(&self, x: &Tensor, precision: Precision) -> Tensor {
        let x = precision.cast(x);
        let w = precision.cast(&self.weight);
        let b = self.bias.as_ref().map(|b| precision.cast(b));
        x.linear(&w, b.as_ref())
    }

    fn params(&self, prefix: &str, out: &mut Vec<Param>) {
        push(out, prefix, "weight", &self.weight, true);
        if let Some(b) = &self.bias {
            push(out, prefix, "bias", b, false);
        }
    }
}

fn push(out: &mut Vec<Param>, prefix: &str, name: &str, t: &Tensor, conv1d: bool) {
    out.push(Param {
        name: format!("{prefix}.{name}"),
        tensor: t.shallow_clone(),
        conv1d,
    });
}

/// Causal multi-head self-attention through `scaled_dot_product_attention` (flash attention on
/// CUDA when the dtype allows).
#[derive(Debug)]
pub(crate) struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: i64,
    scale: f64,
    dropout: f64,
}

impl Attention {
    fn new(p: Path, cfg: &GptConfig, layer_idx: usize) -> Self {
        let c = cfg.n_embd as i64;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        let mut scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Attention {
            c_attn: Linear::new(&p / "c_attn", c, 3 * c, 0.02, cfg.bias),
            c_proj: Linear::new(&p / "c_proj", c, c, proj_std, cfg.bias),
            n_head: cfg.n_head as i64,
            scale,
            dropout: cfg.dropout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, precision: Precision) -> Tensor {
        let (b, t, c) = x.size3().expect("attention input is [B, T, C]");
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(x, precision);
        let heads = |t_: &Tensor| t_.view([b, t, self.n_head, hd]).transpose(1, 2);
        let parts = qkv.split(c, 2);
        let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
        let dropout = if train { self.dropout } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            dropout,
            true,
            self.scale,
            false,
        );
        let y = y.transpose(1, 2).contiguous().view([b, t, c]);
        dropout_if(self.c_proj.forward(&y, precision), self.dropout, train)
    }
}

/// The position-wise MLP: `c_fc` (4× wider), tanh-approximated GELU, `c_proj`.
#[derive(Debug)]
pub(crate) struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    dropout: f64,
}

impl Mlp {
    fn new(p: Path, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd as i64;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Mlp {
            c_fc: Linear::new(&p / "c_fc", c, 4 * c, 0.02, cfg.bias),
            c_proj: Linear::new(&p / "c_proj", 4 * c, c, proj_std, cfg.bias),
            dropout: cfg.dropout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, precision: Precision) -> Tensor {
        let h = self.c_fc.forward(x, precision).gelu("tanh");
        dropout_if(self.c_proj.forward(&h, precision), self.dropout, train)
    }
}

pub(crate) fn dropout_if(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x
    }
}

/// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`. The residual stream stays fp32.
#[derive(Debug)]
pub(crate) struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(p: Path, cfg: &GptConfig, layer_idx: usize) -> Self {
        let c = cfg.n_embd as i64;
        Block {
            ln_1: LayerNorm::new(&p / "ln_1", c, cfg.bias),
            attn: Attention::new(&p / "attn", cfg, layer_idx),
            ln_2: LayerNorm::new(&p / "ln_2", c, cfg.bias),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool, precision: Precision) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), train, precision);
        let h = self.mlp.forward(&self.ln_2.forward(&x), train, precision);
        x + h
    }

    /// The block's variables under Hugging Face names starting with `prefix`.
    pub fn params(&self, prefix: &str, out: &mut Vec<Param>) {
        self.ln_1.params(&format!("{prefix}.ln_1"), out);
        self.attn
            .c_attn
            .params(&format!("{prefix}.attn.c_attn"), out);
        self.attn
            .c_proj
            .params(&format!("{prefix}.attn.c_proj"), out);
        self.ln_2.params(&format!("{prefix}.ln_2"), out);
        self.mlp.c_fc.params(&format!("{prefix}.mlp.c_fc"), out);
        self.mlp.c_proj.params(&format!("{prefix}.mlp.c_proj"), out);
    }
}

/// Creates the final LayerNorm (used by the top-level model).
pub(crate) fn layer_norm(p: Path, n: i64, bias: bool) -> LayerNorm {
    LayerNorm::new(p, n, bias)
}

/// The final LayerNorm's variables under `prefix`.
pub(crate) fn layer_norm_params(ln: &LayerNorm, prefix: &str, out: &mut Vec<Param>) {
    ln.params(prefix, out);
}
