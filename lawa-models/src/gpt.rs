//! The GPT-2 language model: embeddings, blocks, final LayerNorm and the tied LM head.

use std::borrow::Borrow;

use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

use crate::block::Block;
use crate::config::LAYER_NORM_EPS;
use crate::layers::{dropout_if, LayerNorm, Param};
use crate::{GptConfig, Kernel, ModelError, Precision};

/// A GPT-2 whose variables live in a [`tch::nn::VarStore`].
///
/// Variables carry Hugging Face GPT-2 names below the path the model was built at
/// (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`, ...). The token embedding is
/// also the LM head: one variable, so an optimizer or a weight average sees it once.
#[derive(Debug)]
pub struct Gpt {
    cfg: GptConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    precision: Precision,
    norm_kernel: Kernel,
    linear_kernel: Kernel,
    device: Device,
}

impl Gpt {
    /// Builds a GPT-2 under `vs` with GPT-2's initialization: weights N(0, 0.02), the residual
    /// projections (`c_proj`) N(0, 0.02 / sqrt(2 n_layer)), biases zero, LayerNorm weights one.
    /// Draws from libtorch's global generator (seed it with [`tch::manual_seed`]).
    ///
    /// A shape whose weights alone exceed the memory the device has available is refused
    /// before anything is allocated ([`memory::ensure_fits`](crate::memory::ensure_fits)).
    pub fn new<'a>(vs: impl Borrow<Path<'a>>, cfg: &GptConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let vs = vs.borrow();
        crate::memory::ensure_fits(
            &format!("a GPT-2 of {}", cfg.describe()),
            cfg.stored_values() * 4,
            vs.device(),
        )?;
        let t = vs / "transformer";
        let c = cfg.n_embd as i64;
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let wte = (&t / "wte").var("weight", &[cfg.padded_vocab_size() as i64, c], normal);
        // Padding rows are inert (never a logit, never a gradient): zero them, as loading a
        // checkpoint does, so that a saved and reloaded model is the same model, row for row.
        let padding = (cfg.padded_vocab_size() - cfg.vocab_size) as i64;
        if padding > 0 {
            tch::no_grad(|| {
                let _ = wte.narrow(0, cfg.vocab_size as i64, padding).fill_(0.0);
            });
        }
        let wpe = (&t / "wpe").var("weight", &[cfg.block_size as i64, c], normal);
        let h = &t / "h";
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(&h / i, cfg, i))
            .collect();
        let ln_f = LayerNorm::new(&t / "ln_f", c, cfg.bias, LAYER_NORM_EPS);
        Ok(Gpt {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            precision: Precision::F32,
            norm_kernel: Kernel::Aten,
            linear_kernel: Kernel::Aten,
            device: vs.device(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The compute precision of [`Gpt::forward`] and [`CausalLm::loss`](crate::CausalLm::loss) (fp32 unless set).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the compute precision; the fp32 variables are unchanged.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The model with this compute precision (builder style).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// What computes the residual adds and the LayerNorms after them: libtorch's ops (the
    /// default), or [`lawa_ops::add_layer_norm`], which on CUDA does each add, its LayerNorm and
    /// the cast to the compute dtype in one kernel (and their backward in two). The same values
    /// up to summation order.
    pub fn set_norm_kernel(&mut self, kernel: Kernel) {
        self.norm_kernel = kernel;
    }

    /// The model with this norm kernel (builder style; see [`Gpt::set_norm_kernel`]).
    pub fn with_norm_kernel(mut self, kernel: Kernel) -> Self {
        self.norm_kernel = kernel;
        self
    }

    /// What computes the residual adds and LayerNorms (see [`Gpt::set_norm_kernel`]).
    pub fn norm_kernel(&self) -> Kernel {
        self.norm_kernel
    }

    /// What runs the blocks' linear layers: libtorch's `linear` (the default), or
    /// [`lawa_ops::linear`], the same ops with the bias gradient summed by lawa's kernel on
    /// CUDA. The same values (bit for bit off CUDA); on CUDA the bias gradients up to summation
    /// order. The LM head has no bias and always runs as libtorch's.
    pub fn set_linear_kernel(&mut self, kernel: Kernel) {
        self.linear_kernel = kernel;
    }

    /// The model with this linear kernel (builder style; see [`Gpt::set_linear_kernel`]).
    pub fn with_linear_kernel(mut self, kernel: Kernel) -> Self {
        self.linear_kernel = kernel;
        self
    }

    /// What runs the blocks' linear layers (see [`Gpt::set_linear_kernel`]).
    pub fn linear_kernel(&self) -> Kernel {
        self.linear_kernel
    }

    /// Number of parameters (see [`GptConfig::num_params`]: the tied embedding counted once,
    /// padding rows not counted; `non_embedding` leaves out the position embedding).
    pub fn num_params(&self, non_embedding: bool) -> usize {
        self.cfg.num_params(non_embedding)
    }

    /// Number of values held in the model's variables, vocabulary padding rows included.
    pub fn num_stored_values(&self) -> usize {
        self.params().iter().map(|p| p.tensor.numel()).sum()
    }

    /// Training FLOPs per token for MFU (see [`GptConfig::flops_per_token`]).
    pub fn flops_per_token(&self) -> f64 {
        self.cfg.flops_per_token()
    }

    fn check_ids(&self, idx: &Tensor, what: &str) -> Result<(i64, i64), ModelError> {
        let size = idx.size();
        let [b, t] = size[..] else {
            return Err(ModelError::BadInput(format!(
                "{what} must be a [batch, time] tensor, got shape {size:?}"
            )));
        };
        if !matches!(idx.kind(), Kind::Int64 | Kind::Int) {
            return Err(ModelError::BadInput(format!(
                "{what} must hold integer token ids, got {:?}",
                idx.kind()
            )));
        }
        if t == 0 || b == 0 {
            return Err(ModelError::BadInput(format!(
                "{what} is empty (shape {size:?})"
            )));
        }
        if t > self.cfg.block_size as i64 {
            return Err(ModelError::BadInput(format!(
                "sequence of {t} tokens is longer than the model's block size {}",
                self.cfg.block_size
            )));
        }
        Ok((b, t))
    }

    /// Next-token logits `[B, T, vocab_size]` for token ids `idx` (`[B, T]`, int64, every id
    /// below `vocab_size`, `T <= block_size`), in the compute dtype (bf16 under
    /// [`Precision::Bf16`]). `train` turns dropout on. Padding rows of the vocabulary are left
    /// out of the logits, so a softmax over them is exactly GPT-2's.
    pub fn forward(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        Ok(self.head(&self.hidden(idx, train)?))
    }

    /// The final hidden states `[B, T, n_embd]` (after the last LayerNorm, in the compute
    /// dtype): [`Gpt::forward`] without the LM head, for callers that need the logits of a few
    /// positions only.
    pub fn hidden(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let (_, t) = self.check_ids(idx, "token ids")?;
        let pos = Tensor::arange(t, (Kind::Int64, idx.device()));
        let tok = Tensor::f_embedding(&self.wte, idx, -1, false, false)?;
        let x = tok + Tensor::embedding(&self.wpe, &pos, -1, false, false);
        let mut x = dropout_if(x, self.cfg.dropout, train);
        if self.norm_kernel == Kernel::Fused {
            return self.fused_blocks(x, train);
        }
        for b in &self.blocks {
            x = b.forward(&x, train, self.precision, self.linear_kernel)?;
        }
        Ok(self.precision.cast(&self.ln_f.forward(&x)))
    }

    /// The blocks and `ln_f` from the embeddings `x`, each residual add done by the LayerNorm
    /// after it ([`Block::forward_fused`]).
    fn fused_blocks(&self, mut x: Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut pending: Option<Tensor> = None;
        for b in &self.blocks {
            let (next, h) = b.forward_fused(
                &x,
                pending.as_ref(),
                train,
                self.precision,
                self.linear_kernel,
            )?;
            x = next;
            pending = Some(h);
        }
        let kind = self.precision.compute_kind();
        Ok(self.ln_f.fused(&x, pending.as_ref(), kind)?.1)
    }

    /// The LM head: logits `[..., vocab_size]` of hidden states `[..., n_embd]`.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        let logits = self.padded_head(hidden);
        let vocab = self.cfg.vocab_size as i64;
        if self.cfg.padded_vocab_size() as i64 == vocab {
            logits
        } else {
            logits.narrow(-1, 0, vocab)
        }
    }

    /// The LM head at the embedding's padded width: logits `[..., padded_vocab_size]`, the
    /// columns past `vocab_size` those of the padding rows (zero weights).
    pub fn padded_head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear(&self.precision.cast(&self.wte), None::<Tensor>)
    }

    /// Every variable under its Hugging Face name, in Hugging Face's order.
    pub(crate) fn params(&self) -> Vec<Param> {
        let mut out = vec![
            Param {
                name: "transformer.wte.weight".into(),
                tensor: self.wte.shallow_clone(),
                transposed: false,
            },
            Param {
                name: "transformer.wpe.weight".into(),
                tensor: self.wpe.shallow_clone(),
                transposed: false,
            },
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            b.params(&format!("transformer.h.{i}"), &mut out);
        }
        self.ln_f.params("transformer.ln_f", &mut out);
        out
    }
}
