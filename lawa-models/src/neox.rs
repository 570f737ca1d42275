//! GPT-NeoX (the Pythia models), numerically the model of Hugging Face transformers'
//! `GPTNeoXForCausalLM`: rotary embeddings on the first `rotary_pct` of each head (GPT-NeoX's
//! "rotate half" form), a fused query/key/value projection laid out head by head, parallel or
//! sequential residual, exact GELU, an untied output embedding, and Hugging Face's config and
//! weight names both ways.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::path::{Path as FsPath, PathBuf};

use lawa_core::checkpoint::WeightSource;
use serde_json::Value;
use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

use crate::checks;
use crate::layers::{
    causal_attention, dropout_if, push, Activation, LayerNorm, Linear, Mlp, Param,
};
use crate::{ModelError, Precision};

/// The shape and options of a GPT-NeoX, as its `config.json` gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct NeoxConfig {
    /// Rows of the input and output embeddings (Pythia pads the tokenizer's ~50,277 to 50,304).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Fraction of each head's dimensions rotated (Pythia: 0.25).
    pub rotary_pct: f64,
    /// Base of the rotary frequencies (Pythia: 10000).
    pub rotary_emb_base: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `x + attn(ln1(x)) + mlp(ln2(x))` (Pythia) instead of two residual steps.
    pub use_parallel_residual: bool,
    /// Biases on the query/key/value and output projections.
    pub attention_bias: bool,
    /// Dropout on the residual branches while training.
    pub hidden_dropout: f64,
    /// Dropout on the attention weights while training.
    pub attention_dropout: f64,
}

impl NeoxConfig {
    /// Width of one head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Dimensions of each head that are rotated: `int(head_size * rotary_pct)`.
    pub fn rotary_ndims(&self) -> usize {
        (self.head_size() as f64 * self.rotary_pct) as usize
    }

    /// Values the model's variables hold, computed without overflow.
    pub fn stored_values(&self) -> u128 {
        let (h, i, v) = (
            self.hidden_size as u128,
            self.intermediate_size as u128,
            self.vocab_size as u128,
        );
        let per_layer = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h);
        2 * v * h + self.num_hidden_layers as u128 * per_layer + 2 * h
    }

    /// A short description for messages: `6 layers x 512 wide, vocab 50304`.
    pub fn describe(&self) -> String {
        format!(
            "{} layers x {} wide, vocab {}",
            self.num_hidden_layers, self.hidden_size, self.vocab_size
        )
    }

    /// Checks that the model can be built.
    pub fn validate(&self) -> Result<(), ModelError> {
        checks::sizes(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        checks::multiple(
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
        )?;
        if !(0.0..=1.0).contains(&self.rotary_pct) {
            return Err(checks::bad(
                "rotary_pct",
                self.rotary_pct,
                "must be in [0, 1]",
            ));
        }
        let rotated = self.rotary_ndims().div_ceil(2) * 2;
        if rotated > self.head_size() {
            // An odd count rotates one more dimension (as transformers does): there must be one.
            return Err(checks::bad(
                "rotary_pct",
                self.rotary_pct,
                format!(
                    "rotates {rotated} dimensions of the head's {} (its {} rotary dimensions, \
                     rounded up to pairs)",
                    self.head_size(),
                    self.rotary_ndims()
                ),
            ));
        }
        if !(self.rotary_emb_base > 0.0 && self.rotary_emb_base.is_finite()) {
            return Err(checks::bad(
                "rotary_emb_base",
                self.rotary_emb_base,
                "must be positive",
            ));
        }
        checks::dropouts(&[
            ("hidden_dropout", self.hidden_dropout),
            ("attention_dropout", self.attention_dropout),
        ])?;
        checks::stored_values(self.stored_values(), ("hidden_size", self.hidden_size), "")?;
        Ok(())
    }
}

/// Reads a GPT-NeoX `config.json` in any of the forms transformers has written: Pythia's
/// (`rotary_pct`, `rotary_emb_base`), and transformers 5's (`rope_parameters`), which wins when
/// both are there, as in transformers. Options lawa does not implement (another activation,
/// scaled rotary embeddings, tied embeddings) are errors naming the field.
pub fn read_config(path: &FsPath) -> Result<NeoxConfig, ModelError> {
    let fields = crate::config_json::ConfigFields::read(path)?;
    let bad = |message: String| fields.bad(message);
    let size = |field: &str| fields.required_strict(field);
    let number = |v: Option<&Value>, field: &str, default: f64| fields.number_at(v, field, default);
    let flag = |field: &str, default: bool| fields.flag(field, default);
    let rope = fields.get("rope_parameters").and_then(Value::as_object);
    let rope_type = rope
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .or_else(|| fields.get("rope_scaling").and_then(|s| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(bad(format!(
            "rope type {rope_type:?}: lawa's GPT-NeoX has the plain rotary embedding (\"default\")"
        )));
    }
    let rotary_pct = match rope.and_then(|r| r.get("partial_rotary_factor")) {
        Some(v) => number(Some(v), "rope_parameters.partial_rotary_factor", 0.25)?,
        None => fields.number("rotary_pct", 0.25)?,
    };
    let rotary_emb_base = match rope.and_then(|r| r.get("rope_theta")) {
        Some(v) => number(Some(v), "rope_parameters.rope_theta", 10_000.0)?,
        None => fields.number("rotary_emb_base", 10_000.0)?,
    };
    if let Some(act) = fields.text("hidden_act") {
        if act != "gelu" {
            return Err(bad(format!(
                "hidden_act = \"{act}\": lawa's GPT-NeoX uses the exact GELU (\"gelu\")"
            )));
        }
    }
    if flag("tie_word_embeddings", false)? {
        return Err(bad(
            "tie_word_embeddings = true: lawa's GPT-NeoX has a separate output embedding, as Pythia".into(),
        ));
    }
    let hidden_size = size("hidden_size")?;
    let cfg = NeoxConfig {
        vocab_size: size("vocab_size")?,
        hidden_size,
        num_hidden_layers: size("num_hidden_layers")?,
        num_attention_heads: size("num_attention_heads")?,
        intermediate_size: fields
            .whole_number("intermediate_size")?
            .unwrap_or(4 * hidden_size),
        max_position_embeddings: size("max_position_embeddings")?,
        rotary_pct,
        rotary_emb_base,
        layer_norm_eps: fields.number("layer_norm_eps", 1e-5)?,
        use_parallel_residual: flag("use_parallel_residual", true)?,
        attention_bias: flag("attention_bias", true)?,
        hidden_dropout: fields.number("hidden_dropout", 0.0)?,
        attention_dropout: fields.number("attention_dropout", 0.0)?,
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// The `config.json` lawa writes for a GPT-NeoX: transformers 5's keys (`rope_parameters`) and
/// Pythia's (`rotary_pct`, `rotary_emb_base`), so that old and new loaders read it alike.
pub fn config_json(cfg: &NeoxConfig) -> String {
    let json = serde_json::json!({
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": "gelu",
        "layer_norm_eps": cfg.layer_norm_eps,
        "use_parallel_residual": cfg.use_parallel_residual,
        "attention_bias": cfg.attention_bias,
        "hidden_dropout": cfg.hidden_dropout,
        "attention_dropout": cfg.attention_dropout,
        "tie_word_embeddings": false,
        "rotary_pct": cfg.rotary_pct,
        "rotary_emb_base": cfg.rotary_emb_base,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rotary_emb_base,
            "partial_rotary_factor": cfg.rotary_pct,
        },
        "bos_token_id": 0,
        "eos_token_id": 0,
        "dtype": "float32",
    });
    // Built from numbers and strings: serde_json cannot fail on it.
    serde_json::to_string_pretty(&json).expect("config.json serializes") + "\n"
}

/// GPT-NeoX's rotary embedding: `inv_freq = 1 / base^(arange(0, d, 2) / d)` over the first
/// `d = rotary_ndims` dimensions of each head, cos and sin computed in fp32 from positions and
/// cast to the compute dtype, applied in the "rotate half" form.
#[derive(Debug)]
struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    fn new(cfg: &NeoxConfig, device: Device) -> Self {
        let d = cfg.rotary_ndims() as i64;
        let inv_freq = if d == 0 {
            Tensor::zeros([0], (Kind::Float, Device::Cpu))
        } else {
            // transformers: 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float) / d))
            let exponents = Tensor::arange_start_step(0, d, 2, (Kind::Float, Device::Cpu)) / d;
            Tensor::pow_scalar(cfg.rotary_emb_base, &exponents).reciprocal()
        };
        Rotary {
            inv_freq: inv_freq.to_device(device),
        }
    }

    /// Rotated width (`2 * ceil(d / 2)`).
    fn width(&self) -> i64 {
        2 * self.inv_freq.size()[0]
    }

    /// cos and sin `[1, 1, T, width]` for positions `0..t`, in `kind`.
    fn cos_sin(&self, t: i64, kind: Kind) -> (Tensor, Tensor) {
        let pos = Tensor::arange(t, (Kind::Int64, self.inv_freq.device())).unsqueeze(0);
        let freqs = pos.unsqueeze(-1).to_kind(Kind::Float) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos().unsqueeze(1).to_kind(kind);
        let sin = emb.sin().unsqueeze(1).to_kind(kind);
        (cos, sin)
    }

    /// `x` (`[B, heads, T, head_size]`) with its first `width` dimensions rotated.
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let r = self.width();
        if r == 0 {
            return x.shallow_clone();
        }
        let hs = x.size()[3];
        let rot = x.narrow(3, 0, r);
        let half = r / 2;
        let rotated_half = Tensor::cat(
            &[&(-rot.narrow(3, half, half)), &rot.narrow(3, 0, half)],
            -1,
        );
        let embedded = (&rot * cos) + (rotated_half * sin);
        if r == hs {
            embedded
        } else {
            Tensor::cat(&[&embedded, &x.narrow(3, r, hs - r)], -1)
        }
    }
}

/// Causal self-attention with the fused projection laid out head by head:
/// `query_key_value` output viewed as `[B, T, heads, 3 * head_size]` is `[q_h | k_h | v_h]`.
#[derive(Debug)]
struct Attention {
    query_key_value: Linear,
    dense: Linear,
    heads: i64,
    head_size: i64,
    dropout: f64,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cos_sin: &(Tensor, Tensor),
        train: bool,
        precision: Precision,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [B, T, C]");
        let qkv = self
            .query_key_value
            .forward(x, precision)
            .view([b, t, self.heads, 3 * self.head_size])
            .transpose(1, 2);
        let parts = qkv.chunk(3, -1);
        let q = rotary.apply(&parts[0], &cos_sin.0, &cos_sin.1);
        let k = rotary.apply(&parts[1], &cos_sin.0, &cos_sin.1);
        // transformers' `head_size ** -0.5`, the same libm pow.
        let scale = (self.head_size as f64).powf(-0.5);
        let y = causal_attention(&q, &k, &parts[2], scale, self.dropout, train);
        self.dense.forward(&y, precision)
    }
}

/// One GPT-NeoX layer.
#[derive(Debug)]
struct Block {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    attention: Attention,
    mlp: Mlp,
    parallel: bool,
    dropout: f64,
}

impl Block {
    fn new(p: Path, cfg: &NeoxConfig) -> Self {
        let (h, i) = (cfg.hidden_size as i64, cfg.intermediate_size as i64);
        let eps = cfg.layer_norm_eps;
        let att = &p / "attention";
        let mlp = &p / "mlp";
        Block {
            input_layernorm: LayerNorm::new(&p / "input_layernorm", h, true, eps),
            post_attention_layernorm: LayerNorm::new(&p / "post_attention_layernorm", h, true, eps),
            attention: Attention {
                query_key_value: Linear::new(
                    &att / "query_key_value",
                    h,
                    3 * h,
                    0.02,
                    cfg.attention_bias,
                    false,
                ),
                dense: Linear::new(&att / "dense", h, h, 0.02, cfg.attention_bias, false),
                heads: cfg.num_attention_heads as i64,
                head_size: cfg.head_size() as i64,
                dropout: cfg.attention_dropout,
            },
            mlp: Mlp {
                fc: Linear::new(&mlp / "dense_h_to_4h", h, i, 0.02, true, false),
                proj: Linear::new(&mlp / "dense_4h_to_h", i, h, 0.02, true, false),
                activation: Activation::Gelu,
                dropout: cfg.hidden_dropout,
            },
            parallel: cfg.use_parallel_residual,
            dropout: cfg.hidden_dropout,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cos_sin: &(Tensor, Tensor),
        train: bool,
        precision: Precision,
    ) -> Tensor {
        let attn = self.attention.forward(
            &self.input_layernorm.forward(x),
            rotary,
            cos_sin,
            train,
            precision,
        );
        let attn = dropout_if(attn.to_kind(Kind::Float), self.dropout, train);
        if self.parallel {
            let mlp = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(x), train, precision)
                .to_kind(Kind::Float);
            mlp + attn + x
        } else {
            let attn = attn + x;
            let mlp = self
                .mlp
                .forward(
                    &self.post_attention_layernorm.forward(&attn),
                    train,
                    precision,
                )
                .to_kind(Kind::Float);
            mlp + attn
        }
    }

    fn params(&self, prefix: &str, out: &mut Vec<Param>) {
        self.input_layernorm
            .params(&format!("{prefix}.input_layernorm"), out);
        self.post_attention_layernorm
            .params(&format!("{prefix}.post_attention_layernorm"), out);
        self.attention
            .query_key_value
            .params(&format!("{prefix}.attention.query_key_value"), out);
        self.attention
            .dense
            .params(&format!("{prefix}.attention.dense"), out);
        self.mlp
            .fc
            .params(&format!("{prefix}.mlp.dense_h_to_4h"), out);
        self.mlp
            .proj
            .params(&format!("{prefix}.mlp.dense_4h_to_h"), out);
    }
}

/// A GPT-NeoX whose variables live in a [`tch::nn::VarStore`] under Hugging Face's names
/// (`gpt_neox.embed_in.weight`, `gpt_neox.layers.0.attention.query_key_value.weight`, ...,
/// `embed_out.weight`).
#[derive(Debug)]
pub struct GptNeoX {
    cfg: NeoxConfig,
    embed_in: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: LayerNorm,
    embed_out: Tensor,
    rotary: Rotary,
    precision: Precision,
    device: Device,
}

/// Checkpoint tensors transformers ignores: the causal-mask and rotary buffers old Pythia
/// checkpoints hold.
pub fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".attention.bias")
        || name.ends_with(".attention.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

impl GptNeoX {
    /// Builds a GPT-NeoX under `vs` with transformers' initialization (weights N(0, 0.02),
    /// biases 0, LayerNorms 1 and 0), refusing a shape larger than the device's memory.
    pub fn new<'a>(vs: impl Borrow<Path<'a>>, cfg: &NeoxConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let vs = vs.borrow();
        crate::memory::ensure_fits(
            &format!("a GPT-NeoX of {}", cfg.describe()),
            cfg.stored_values() * 4,
            vs.device(),
        )?;
        let root = vs / "gpt_neox";
        let (v, h) = (cfg.vocab_size as i64, cfg.hidden_size as i64);
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embed_in = (&root / "embed_in").var("weight", &[v, h], normal);
        let layers = &root / "layers";
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(&layers / i, cfg))
            .collect();
        let final_layer_norm =
            LayerNorm::new(&root / "final_layer_norm", h, true, cfg.layer_norm_eps);
        let embed_out = (vs / "embed_out").var("weight", &[v, h], normal);
        Ok(GptNeoX {
            cfg: cfg.clone(),
            embed_in,
            blocks,
            final_layer_norm,
            embed_out,
            rotary: Rotary::new(cfg, vs.device()),
            precision: Precision::F32,
            device: vs.device(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NeoxConfig {
        &self.cfg
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Sets the compute precision (weights stay fp32).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Next-token logits `[B, T, vocab_size]` for token ids `idx` (`[B, T]`, `T` at most
    /// `max_position_embeddings`).
    pub fn forward(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        Ok(self.head(&self.hidden(idx, train)?))
    }

    /// The final hidden states `[B, T, hidden_size]` (after the final LayerNorm, in the
    /// compute dtype): [`GptNeoX::forward`] without the output projection.
    pub fn hidden(&self, idx: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let size = idx.size();
        let [_, t] = size[..] else {
            return Err(ModelError::BadInput(format!(
                "token ids must be a [batch, time] tensor, got shape {size:?}"
            )));
        };
        if t == 0 || t > self.cfg.max_position_embeddings as i64 {
            return Err(ModelError::BadInput(format!(
                "sequence of {t} tokens: the model takes 1 to {}",
                self.cfg.max_position_embeddings
            )));
        }
        let mut x = dropout_if(
            Tensor::f_embedding(&self.embed_in, idx, -1, false, false)?,
            self.cfg.hidden_dropout,
            train,
        );
        let cos_sin = self.rotary.cos_sin(t, self.precision.compute_kind());
        for b in &self.blocks {
            x = b.forward(&x, &self.rotary, &cos_sin, train, self.precision);
        }
        Ok(self.precision.cast(&self.final_layer_norm.forward(&x)))
    }

    /// The output projection: logits `[..., vocab_size]` of hidden states `[..., hidden_size]`.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear(&self.precision.cast(&self.embed_out), None::<Tensor>)
    }

    /// Every variable under its Hugging Face name.
    pub(crate) fn params(&self) -> Vec<Param> {
        let mut out = Vec::new();
        push(
            &mut out,
            "gpt_neox.embed_in",
            "weight",
            &self.embed_in,
            false,
        );
        for (i, b) in self.blocks.iter().enumerate() {
            b.params(&format!("gpt_neox.layers.{i}"), &mut out);
        }
        self.final_layer_norm
            .params("gpt_neox.final_layer_norm", &mut out);
        push(&mut out, "embed_out", "weight", &self.embed_out, false);
        out
    }

    /// Loads Hugging Face GPT-NeoX weights from `source` (a checkpoint, or the mean of several):
    /// every tensor of this shape must be there, with its shape; `lm_head.weight` is read as
    /// `embed_out.weight`; the buffers of old checkpoints are skipped; fp16/bf16 are widened.
    pub fn load_weights(&self, source: &dyn WeightSource) -> Result<(), ModelError> {
        let path = PathBuf::from(source.describe());
        let params = self.params();
        let mut seen = HashSet::new();
        let _guard = tch::no_grad_guard();
        for entry in source.entries() {
            if is_ignored_buffer(&entry.name) {
                continue;
            }
            let name = if entry.name == "lm_head.weight" {
                "embed_out.weight"
            } else {
                entry.name.as_str()
            };
            let Some(param) = params.iter().find(|p| p.name == name) else {
                return Err(ModelError::UnexpectedTensor {
                    path: path.clone(),
                    name: entry.name.clone(),
                    hint: format!("not part of a GPT-NeoX of {}", self.cfg.describe()),
                });
            };
            if !entry.dtype.is_float() {
                return Err(ModelError::BadTensor {
                    path: path.clone(),
                    name: entry.name.clone(),
                    reason: format!("dtype {} is not a floating-point type", entry.dtype.name()),
                });
            }
            if entry.shape_i64() != param.tensor.size() {
                return Err(ModelError::ShapeMismatch {
                    path: path.clone(),
                    name: entry.name.clone(),
                    expected: param.tensor.size(),
                    actual: entry.shape_i64(),
                });
            }
            if !seen.insert(name.to_string()) {
                return Err(ModelError::BadTensor {
                    path: path.clone(),
                    name: entry.name.clone(),
                    reason: "given twice (as embed_out.weight and lm_head.weight)".into(),
                });
            }
            param
                .tensor
                .shallow_clone()
                .f_copy_(&source.read(&entry.name)?)?;
        }
        if let Some(missing) = params.iter().find(|p| !seen.contains(&p.name)) {
            return Err(ModelError::MissingTensor {
                path,
                name: missing.name.clone(),
            });
        }
        Ok(())
    }

    /// Saves the model as a Hugging Face GPT-NeoX checkpoint in `dir`: `config.json` and
    /// `model.safetensors` (fp32), each written atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<FsPath>) -> Result<(), ModelError> {
        let _guard = tch::no_grad_guard();
        let tensors: Vec<(String, Tensor)> = self
            .params()
            .into_iter()
            .map(|p| (p.name, p.tensor.to_device(Device::Cpu).contiguous()))
            .collect();
        crate::hf::write_pretrained(dir.as_ref(), &tensors, &config_json(&self.cfg))
    }
}
