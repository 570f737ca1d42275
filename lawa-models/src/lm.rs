//! What every language model here is: [`CausalLm`] (logits, the loss, per-window losses), and
//! [`Model`], a GPT-2 or a GPT-NeoX chosen from a checkpoint's `config.json`, for the callers
//! that score, sample or average checkpoints of either.

use std::borrow::Borrow;
use std::path::Path as FsPath;

use lawa_core::checkpoint::WeightSource;
use serde_json::Value;
use tch::nn::Path;
use tch::{Device, Kind, Tensor};

use crate::hf::CheckpointFiles;
use crate::neox::{GptNeoX, NeoxConfig};
use crate::{Gpt, GptConfig, Kernel, ModelError, Precision};

/// A causal language model: next-token logits from token ids, and the losses computed from
/// them (one definition for every architecture: log-softmax and negative log-likelihood in
/// fp32).
pub trait CausalLm {
    /// The final hidden states `[B, T, width]` for token ids `[B, T]` (after the last
    /// LayerNorm, in the compute dtype); `train` turns dropout on.
    fn hidden(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError>;

    /// Logits `[..., vocab]` of hidden states `[..., width]`.
    fn head(&self, hidden: &Tensor) -> Tensor;

    /// Logits `[..., padded]` of hidden states, `padded >= vocab`: the head's matmul at the
    /// width its weights are stored (GPT-2 pads 50257 to a multiple of 64 for speed); the
    /// columns past [`vocab_size`](CausalLm::vocab_size) are not logits of any token. Defaults
    /// to [`head`](CausalLm::head).
    fn padded_head(&self, hidden: &Tensor) -> Tensor {
        self.head(hidden)
    }

    /// Log-probabilities (fp32) of the next token for hidden states `[n, width]`: `[n, padded]`,
    /// the padding columns at `-inf` (probability 0). Computing over the padded width keeps the
    /// logits contiguous, so that the softmax reads them as they are: narrowing them first made
    /// every micro-batch copy the whole logits tensor twice more (10 % of a GPT-2 small step on
    /// an H200). Equal to the log-softmax of the narrowed logits up to summation order.
    fn head_log_probs(&self, hidden: &Tensor) -> Tensor {
        let logits = self.padded_head(hidden);
        let padded = logits.size().last().copied().unwrap_or(0);
        let vocab = self.vocab_size() as i64;
        if padded <= vocab {
            return logits.log_softmax(-1, Kind::Float);
        }
        // The fp32 copy the softmax reads anyway (contiguous, so one vectorized cast), with the
        // padding overwritten outside autograd: the cast saves nothing for its backward, and
        // the softmax's gradient there is 0 whatever the inputs were. (Adding a -inf mask
        // instead ran as one slow broadcast kernel: 15 ms of a step on an H200, against 9 ms
        // for the cast.) In fp32 the cast is the logits themselves; the matmul that made them
        // does not keep them for its backward either.
        let logits = logits.to_kind(Kind::Float);
        tch::no_grad(|| {
            let _ = logits
                .narrow(-1, vocab, padded - vocab)
                .fill_(f64::NEG_INFINITY);
        });
        logits.log_softmax(-1, Kind::Float)
    }

    /// Next-token logits `[B, T, vocab]` for token ids `[B, T]`; `train` turns dropout on.
    fn forward(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        Ok(self.head(&self.hidden(idx, train)?))
    }

    /// The longest sequence the model takes.
    fn max_positions(&self) -> usize;

    /// Width of the logits.
    fn vocab_size(&self) -> usize;

    /// The device the variables live on.
    fn device(&self) -> Device;

    /// Mean next-token cross-entropy (a scalar, fp32) of predicting `targets` (`[B, T]`) from
    /// `idx` (`[B, T]`). The softmax and loss run in fp32 whatever the compute precision.
    fn loss(&self, idx: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let (logp, targets) = self.log_probs(idx, targets, train)?;
        Ok(logp.f_nll_loss(&targets, None::<Tensor>, tch::Reduction::Mean, -100)?)
    }

    /// For evaluation (no dropout): the mean next-token loss over the batch, computed exactly as
    /// [`CausalLm::loss`] computes it, and the mean loss of each window (`[B]`), both fp32.
    fn window_losses(
        &self,
        idx: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (b, t) = (idx.size()[0], idx.size()[1]);
        let (logp, targets) = self.log_probs(idx, targets, false)?;
        let mean = logp.f_nll_loss(&targets, None::<Tensor>, tch::Reduction::Mean, -100)?;
        let per_token = logp.f_nll_loss(&targets, None::<Tensor>, tch::Reduction::None, -100)?;
        let per_window = per_token.view([b, t]).f_mean_dim(1, false, Kind::Float)?;
        Ok((mean, per_window))
    }

    /// One micro-batch of a step of `accumulation` micro-batches: forward and backward of the
    /// mean next-token loss divided by `accumulation`, computed as `plan` says (the whole
    /// micro-batch at once or `chunk` tokens at a time, with libtorch's ops or lawa's
    /// cross-entropy kernels). Returns the loss (fp32, unscaled, detached).
    fn loss_backward(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        train: bool,
        accumulation: usize,
        plan: LossPlan,
    ) -> Result<Tensor, ModelError> {
        let scale = 1.0 / accumulation as f64;
        match (plan.chunk, plan.kernel) {
            (Some(chunk), kernel) => {
                self.chunked_loss_backward(idx, targets, train, scale, chunk, kernel)
            }
            (None, Kernel::Aten) => {
                let loss = self.loss(idx, targets, train)?;
                (&loss * scale).backward();
                Ok(loss.detach())
            }
            (None, Kernel::Fused) => {
                let (flat, targets) = flat_hidden(self, idx, targets, train)?;
                let loss = self.summed_loss(&flat, &targets, Kernel::Fused)? / counted(&targets);
                (&loss * scale).backward();
                Ok(loss.detach())
            }
        }
    }

    /// The summed next-token loss (fp32, a scalar) of hidden states `[n, width]` against
    /// targets `[n]` (int64), by `kernel`.
    fn summed_loss(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
        kernel: Kernel,
    ) -> Result<Tensor, ModelError> {
        match kernel {
            Kernel::Aten => Ok(self.head_log_probs(hidden).f_nll_loss(
                targets,
                None::<Tensor>,
                tch::Reduction::Sum,
                lawa_ops::IGNORE_INDEX,
            )?),
            Kernel::Fused => {
                let logits = self.padded_head(hidden);
                let vocab = self.vocab_size() as i64;
                let rows = lawa_ops::cross_entropy(&logits, targets, vocab)?;
                Ok(rows.f_sum(Kind::Float)?)
            }
        }
    }

    /// Forward and backward of the mean next-token loss times `scale` (1 / the accumulation
    /// steps), with the LM head and the loss run `chunk` tokens at a time by `kernel`, so that
    /// the logits of one chunk only exist at once (with a 50K vocabulary, the fp32 logits of a
    /// whole batch and their gradient are the largest tensors of a step). The gradients
    /// accumulate into the variables as `(self.loss(..) * scale).backward()` puts them there, up
    /// to summation order. Returns the loss (fp32, unscaled, detached).
    fn chunked_loss_backward(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        train: bool,
        scale: f64,
        chunk: usize,
        kernel: Kernel,
    ) -> Result<Tensor, ModelError> {
        let (flat, targets) = flat_hidden(self, idx, targets, train)?;
        let n = flat.size()[0];
        // The head's input as a leaf: each chunk's backward stops there (and reaches the head's
        // weights directly); the rest of the model gets the gathered gradient afterwards.
        let leaf = flat.detach().set_requires_grad(true);
        let mut total = Tensor::zeros([], (Kind::Float, idx.device()));
        let count = counted(&targets);
        let chunk = chunk.max(1) as i64;
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let sum = self.summed_loss(
                &leaf.narrow(0, start, len),
                &targets.narrow(0, start, len),
                kernel,
            )?;
            (&sum * scale / &count).backward();
            total += sum.detach();
        }
        // d/dflat of sum(flat * g) is g, exactly.
        (flat * leaf.grad()).sum(Kind::Float).backward();
        Ok(total / count)
    }

    /// Log-probabilities `[B T, padded]` (fp32, see
    /// [`head_log_probs`](CausalLm::head_log_probs)) and the flattened int64 targets.
    fn log_probs(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (flat, targets) = flat_hidden(self, idx, targets, train)?;
        Ok((self.head_log_probs(&flat), targets))
    }
}

/// The final hidden states of token ids `[B, T]` flattened to `[B T, width]`, and the targets
/// (`[B, T]`, checked against the ids) flattened to int64 `[B T]`.
fn flat_hidden<L: CausalLm + ?Sized>(
    lm: &L,
    idx: &Tensor,
    targets: &Tensor,
    train: bool,
) -> Result<(Tensor, Tensor), ModelError> {
    let (b, t) = check_targets(idx, targets)?;
    let hidden = lm.hidden(idx, train)?;
    let width = hidden.size()[2];
    Ok((
        hidden.reshape([b * t, width]),
        targets.reshape([b * t]).to_kind(Kind::Int64),
    ))
}

/// The targets that count towards a mean loss (those not equal to
/// [`IGNORE_INDEX`](lawa_ops::IGNORE_INDEX)), as an fp32 scalar on their device: what
/// `nll_loss`'s mean divides by.
fn counted(targets: &Tensor) -> Tensor {
    targets.ne(lawa_ops::IGNORE_INDEX).sum(Kind::Float)
}

/// `(batch, time)` of token ids `[B, T]` with targets of the same shape.
fn check_targets(idx: &Tensor, targets: &Tensor) -> Result<(i64, i64), ModelError> {
    let size = idx.size();
    let [b, t] = size[..] else {
        return Err(ModelError::BadInput(format!(
            "token ids must be a [batch, time] tensor, got shape {size:?}"
        )));
    };
    if targets.size() != [b, t] {
        return Err(ModelError::BadInput(format!(
            "targets have shape {:?}, token ids [{b}, {t}]",
            targets.size()
        )));
    }
    Ok((b, t))
}

/// How a training step computes its loss over the logits (`train.loss_chunk`,
/// `train.loss_kernel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossPlan {
    /// Run the LM head and the loss this many tokens at a time [default: the whole
    /// micro-batch at once].
    pub chunk: Option<usize>,
    /// What computes the softmax and the loss: libtorch's `log_softmax` and `nll_loss` over
    /// the logits cast to fp32 (as PyTorch eager), or [`lawa_ops::cross_entropy`], whose CUDA
    /// kernels read the logits in their own dtype and write no fp32 copy of them, of the
    /// log-probabilities or of their gradient.
    pub kernel: Kernel,
}

impl CausalLm for Gpt {
    fn hidden(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        Gpt::hidden(self, idx, train)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        Gpt::head(self, hidden)
    }

    fn padded_head(&self, hidden: &Tensor) -> Tensor {
        Gpt::padded_head(self, hidden)
    }

    fn max_positions(&self) -> usize {
        self.config().block_size
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn device(&self) -> Device {
        Gpt::device(self)
    }
}

impl CausalLm for GptNeoX {
    fn hidden(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        GptNeoX::hidden(self, idx, train)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        GptNeoX::head(self, hidden)
    }

    fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn device(&self) -> Device {
        GptNeoX::device(self)
    }
}

/// The configuration of a model of either architecture.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// A GPT-2.
    Gpt2(GptConfig),
    /// A GPT-NeoX (Pythia).
    GptNeoX(NeoxConfig),
}

impl ModelConfig {
    /// Reads a checkpoint's `config.json`, the architecture chosen by its `model_type`
    /// (`gpt2`, the default, or `gpt_neox`).
    pub fn read(path: &FsPath) -> Result<Self, ModelError> {
        let obj = crate::config_json::read_object(path)?;
        match obj.get("model_type").and_then(Value::as_str) {
            Some("gpt_neox") => Ok(ModelConfig::GptNeoX(crate::neox::read_config(path)?)),
            None | Some("gpt2") => Ok(ModelConfig::Gpt2(crate::hf::read_config(path)?)),
            Some(other) => Err(ModelError::BadConfigFile {
                path: path.to_owned(),
                message: format!(
                    "model_type = \"{other}\": lawa reads GPT-2 (\"gpt2\") and GPT-NeoX (\"gpt_neox\") checkpoints"
                ),
            }),
        }
    }

    /// Values the model holds.
    pub fn stored_values(&self) -> u128 {
        match self {
            ModelConfig::Gpt2(c) => c.stored_values(),
            ModelConfig::GptNeoX(c) => c.stored_values(),
        }
    }

    /// The longest sequence.
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.block_size,
            ModelConfig::GptNeoX(c) => c.max_position_embeddings,
        }
    }

    /// Width of the logits.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::GptNeoX(c) => c.vocab_size,
        }
    }
}

/// A GPT-2 or a GPT-NeoX.
#[derive(Debug)]
pub enum Model {
    /// A GPT-2.
    Gpt2(Gpt),
    /// A GPT-NeoX (Pythia).
    GptNeoX(GptNeoX),
}

impl Model {
    /// Builds the model `config` describes under `vs` (freshly initialized).
    pub fn new<'a>(vs: impl Borrow<Path<'a>>, config: &ModelConfig) -> Result<Model, ModelError> {
        Ok(match config {
            ModelConfig::Gpt2(c) => Model::Gpt2(Gpt::new(vs, c)?),
            ModelConfig::GptNeoX(c) => Model::GptNeoX(GptNeoX::new(vs, c)?),
        })
    }

    /// Builds the model a checkpoint describes (folder or weights file with `config.json`
    /// beside it; single, sharded, safetensors or `.bin`) and loads its weights.
    pub fn from_pretrained<'a>(
        vs: impl Borrow<Path<'a>>,
        checkpoint: impl AsRef<FsPath>,
    ) -> Result<Model, ModelError> {
        let files = CheckpointFiles::locate(checkpoint.as_ref())?;
        let config = ModelConfig::read(&files.config)?;
        let model = Model::new(vs, &config)?;
        model.load_weights(&files.open_weights()?)?;
        Ok(model)
    }

    /// Loads weights from `source` (a checkpoint, or the mean of several).
    pub fn load_weights(&self, source: &dyn WeightSource) -> Result<(), ModelError> {
        match self {
            Model::Gpt2(m) => m.load_weights(source),
            Model::GptNeoX(m) => m.load_weights(source),
        }
    }

    /// The compute precision of the forward pass (weights stay fp32).
    pub fn set_precision(&mut self, precision: Precision) {
        match self {
            Model::Gpt2(m) => m.set_precision(precision),
            Model::GptNeoX(m) => m.set_precision(precision),
        }
    }

    /// The model as a [`CausalLm`].
    pub fn lm(&self) -> &dyn CausalLm {
        match self {
            Model::Gpt2(m) => m,
            Model::GptNeoX(m) => m,
        }
    }

    /// Saves the model as a Hugging Face checkpoint folder.
    pub fn save_pretrained(&self, dir: impl AsRef<FsPath>) -> Result<(), ModelError> {
        match self {
            Model::Gpt2(m) => m.save_pretrained(dir),
            Model::GptNeoX(m) => m.save_pretrained(dir),
        }
    }
}

impl CausalLm for Model {
    fn hidden(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.lm().hidden(idx, train)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.lm().head(hidden)
    }

    fn padded_head(&self, hidden: &Tensor) -> Tensor {
        self.lm().padded_head(hidden)
    }

    fn forward(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.lm().forward(idx, train)
    }

    fn max_positions(&self) -> usize {
        self.lm().max_positions()
    }

    fn vocab_size(&self) -> usize {
        self.lm().vocab_size()
    }

    fn device(&self) -> Device {
        self.lm().device()
    }
}
