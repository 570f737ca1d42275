//! One pre-LayerNorm transformer block of GPT-2: its causal self-attention and the shared MLP.
//! Variables are created under Hugging Face GPT-2 names; linear weights keep `nn::Linear`'s
//! `[out, in]` layout (Hugging Face's `Conv1D` stores `[in, out]`).

use tch::nn::Path;
use tch::Tensor;

use crate::config::{GptConfig, LAYER_NORM_EPS};
use crate::layers::{causal_attention, dropout_if, Activation, LayerNorm, Linear, Mlp, Param};
use crate::{Kernel, Precision};

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
            c_attn: Linear::new(&p / "c_attn", c, 3 * c, 0.02, cfg.bias, true),
            c_proj: Linear::new(&p / "c_proj", c, c, proj_std, cfg.bias, true),
            n_head: cfg.n_head as i64,
            scale,
            dropout: cfg.dropout,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        train: bool,
        precision: Precision,
        linear: Kernel,
    ) -> Result<Tensor, lawa_ops::OpsError> {
        let (b, t, c) = x.size3().expect("attention input is [B, T, C]");
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward_with(x, precision, linear)?;
        let heads = |t_: &Tensor| t_.view([b, t, self.n_head, hd]).transpose(1, 2);
        let parts = qkv.split(c, 2);
        let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
        let y = causal_attention(&q, &k, &v, self.scale, self.dropout, train);
        let y = self.c_proj.forward_with(&y, precision, linear)?;
        Ok(dropout_if(y, self.dropout, train))
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
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        let mlp = &p / "mlp";
        Block {
            ln_1: LayerNorm::new(&p / "ln_1", c, cfg.bias, LAYER_NORM_EPS),
            attn: Attention::new(&p / "attn", cfg, layer_idx),
            ln_2: LayerNorm::new(&p / "ln_2", c, cfg.bias, LAYER_NORM_EPS),
            mlp: Mlp {
                fc: Linear::new(&mlp / "c_fc", c, 4 * c, 0.02, cfg.bias, true),
                proj: Linear::new(&mlp / "c_proj", 4 * c, c, proj_std, cfg.bias, true),
                activation: Activation::GeluTanh,
                dropout: cfg.dropout,
            },
        }
    }

    /// `linear`: what runs the linear layers (see [`Linear::forward_with`]).
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        precision: Precision,
        linear: Kernel,
    ) -> Result<Tensor, lawa_ops::OpsError> {
        let x = x + self
            .attn
            .forward(&self.ln_1.forward(x), train, precision, linear)?;
        let h = self
            .mlp
            .forward_with(&self.ln_2.forward(&x), train, precision, linear)?;
        Ok(x + h)
    }

    /// [`forward`](Block::forward) with each residual add done by the LayerNorm after it
    /// ([`LayerNorm::fused`]): takes the residual stream before the previous block's MLP output
    /// (`pending`) was added, and returns this block's in the same form, `(x, mlp output)`; the
    /// next block's `ln_1` (or the final `ln_f`) adds it.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        pending: Option<&Tensor>,
        train: bool,
        precision: Precision,
        linear: Kernel,
    ) -> Result<(Tensor, Tensor), lawa_ops::OpsError> {
        let kind = precision.compute_kind();
        let (x, a) = self.ln_1.fused(x, pending, kind)?;
        let attn = self.attn.forward(&a, train, precision, linear)?;
        let (x, b) = self.ln_2.fused(&x, Some(&attn), kind)?;
        Ok((x, self.mlp.forward_with(&b, train, precision, linear)?))
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
        self.mlp.fc.params(&format!("{prefix}.mlp.c_fc"), out);
        self.mlp.proj.params(&format!("{prefix}.mlp.c_proj"), out);
    }
}
