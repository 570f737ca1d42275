//! Checkpoints in Hugging Face's GPT-2 format: `config.json` (a `GPT2Config`) beside
//! `model.safetensors` (tensors under `GPT2LMHeadModel` names, `Conv1D` weights as `[in, out]`).
//!
//! `transformers.GPT2LMHeadModel.from_pretrained(dir)` loads what [`Gpt::save_pretrained`]
//! writes, and [`Gpt::from_pretrained`] loads a GPT-2 saved by transformers (a local copy of the
//! real `gpt2` weights included: names with or without the `transformer.` prefix, an
//! `lm_head.weight` equal to the token embedding or absent, `attn.bias` / `attn.masked_bias`
//! buffers ignored).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path as FsPath, PathBuf};

use lawa_core::checkpoint::{TensorFiles, WeightSource};
use serde::Serialize;
use tch::nn::Path;
use tch::{Kind, Tensor};

use crate::config::{DEFAULT_VOCAB_MULTIPLE, LAYER_NORM_EPS};
use crate::layers::Param;
use crate::{Gpt, GptConfig, ModelError};

/// File name of the model description inside a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The two parts of a checkpoint: its `config.json` and its weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The `config.json`.
    pub config: PathBuf,
    /// The weights: a `.safetensors` or `.bin` file, or the checkpoint folder (whose weights
    /// may be one file or shards with an index; see [`TensorFiles`]).
    pub weights: PathBuf,
}

impl CheckpointFiles {
    /// Finds the parts of a checkpoint given as a folder (holding `config.json` and its
    /// weights) or as a weights file (`.safetensors` or `.bin`, with `config.json` beside it).
    pub fn locate(path: &FsPath) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::BadCheckpointPath {
            path: path.to_owned(),
            reason,
        };
        let (dir, weights) = if path.is_dir() {
            let known = [
                "model.safetensors",
                "model.safetensors.index.json",
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
            ];
            if !known.iter().any(|f| path.join(f).is_file()) {
                return Err(bad(format!(
                    "folder holds no weights ({})",
                    known.join(", ")
                )));
            }
            (path.to_owned(), path.to_owned())
        } else if path.is_file() {
            let known = ["safetensors", "bin"];
            if path
                .extension()
                .is_none_or(|e| !known.iter().any(|k| e == *k))
            {
                return Err(bad(
                    "expected a checkpoint folder, a .safetensors file or a .bin file".into(),
                ));
            }
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            (dir, path.to_owned())
        } else {
            return Err(bad("no such checkpoint folder or file".into()));
        };
        let config = dir.join(CONFIG_FILE);
        if !config.is_file() {
            return Err(ModelError::BadCheckpointPath {
                path: config,
                reason: format!(
                    "file not found; a checkpoint needs {CONFIG_FILE} beside its weights"
                ),
            });
        }
        Ok(CheckpointFiles { config, weights })
    }

    /// Opens the weights.
    pub fn open_weights(&self) -> Result<TensorFiles, ModelError> {
        let files = TensorFiles::open(&self.weights)?;
        files.verify()?;
        Ok(files)
    }
}

/// Reads a Hugging Face GPT-2 `config.json` as a [`GptConfig`].
///
/// Besides `GPT2Config`'s fields it reads lawa's own `lawa_bias`, `lawa_dropout` and
/// `lawa_vocab_multiple` when present. Options lawa does not implement (another activation or
/// LayerNorm epsilon, `n_inner` other than 4 n_embd, unscaled attention, cross-attention) are
/// errors naming the field.
pub fn read_config(path: &FsPath) -> Result<GptConfig, ModelError> {
    let fields = crate::config_json::ConfigFields::read(path)?;
    let bad = |message: String| fields.bad(message);
    let size = |field: &str| fields.size(field);
    let required = |field: &str| fields.required(field);
    let float = |field: &str, default: f64| fields.number(field, default);
    let flag = |field: &str, default: bool| fields.flag(field, default);

    if let Some(model_type) = fields.get("model_type") {
        if model_type != "gpt2" {
            return Err(bad(format!(
                "model_type = {model_type}: lawa reads GPT-2 checkpoints (\"gpt2\")"
            )));
        }
    }
    let n_layer = required("n_layer")?;
    let n_head = required("n_head")?;
    let n_embd = required("n_embd")?;
    let vocab_size = required("vocab_size")?;
    let block_size = match size("n_positions")? {
        Some(n) => n,
        None => required("n_ctx")?,
    };
    if let Some(act) = fields.text("activation_function") {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(bad(format!(
                "activation_function = \"{act}\": lawa's GPT-2 uses the tanh GELU (\"gelu_new\")"
            )));
        }
    }
    let eps = float("layer_norm_epsilon", LAYER_NORM_EPS)?;
    if (eps - LAYER_NORM_EPS).abs() > 1e-12 {
        return Err(bad(format!(
            "layer_norm_epsilon = {eps}: lawa's GPT-2 uses {LAYER_NORM_EPS}"
        )));
    }
    if let Some(inner) = size("n_inner")? {
        if inner != 4 * n_embd {
            return Err(bad(format!(
                "n_inner = {inner}: lawa's GPT-2 MLP is 4 n_embd = {} wide",
                4 * n_embd
            )));
        }
    }
    if !flag("scale_attn_weights", true)? {
        return Err(bad(
            "scale_attn_weights = false: lawa always scales attention by 1/sqrt(head_dim)".into(),
        ));
    }
    if flag("add_cross_attention", false)? {
        return Err(bad(
            "add_cross_attention = true: lawa's GPT-2 has no cross-attention".into(),
        ));
    }
    let dropout = match fields.get("lawa_dropout") {
        Some(_) => float("lawa_dropout", 0.0)?,
        None => {
            let rates = [
                float("resid_pdrop", 0.1)?,
                float("embd_pdrop", 0.1)?,
                float("attn_pdrop", 0.1)?,
            ];
            if rates.iter().any(|&r| r != rates[0]) {
                return Err(bad(format!(
                    "resid_pdrop = {}, embd_pdrop = {}, attn_pdrop = {}: lawa uses one dropout rate for all three",
                    rates[0], rates[1], rates[2]
                )));
            }
            rates[0]
        }
    };
    let cfg = GptConfig {
        n_layer,
        n_head,
        n_embd,
        block_size,
        vocab_size,
        bias: flag("lawa_bias", true)?,
        dropout,
        scale_attn_by_inverse_layer_idx: flag("scale_attn_by_inverse_layer_idx", false)?,
        vocab_multiple: size("lawa_vocab_multiple")?.unwrap_or(DEFAULT_VOCAB_MULTIPLE),
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// The `config.json` lawa writes: `GPT2Config` fields plus lawa's own.
#[derive(Serialize)]
struct HfConfigOut<'a> {
    model_type: &'a str,
    architectures: [&'a str; 1],
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_positions: usize,
    n_ctx: usize,
    n_inner: Option<usize>,
    vocab_size: usize,
    layer_norm_epsilon: f64,
    activation_function: &'a str,
    scale_attn_weights: bool,
    scale_attn_by_inverse_layer_idx: bool,
    reorder_and_upcast_attn: bool,
    resid_pdrop: f64,
    embd_pdrop: f64,
    attn_pdrop: f64,
    initializer_range: f64,
    tie_word_embeddings: bool,
    use_cache: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    dtype: &'a str,
    lawa_bias: bool,
    lawa_dropout: f64,
    lawa_vocab_multiple: usize,
}

/// The `config.json` text for `cfg`.
pub fn config_json(cfg: &GptConfig) -> String {
    let out = HfConfigOut {
        model_type: "gpt2",
        architectures: ["GPT2LMHeadModel"],
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        n_positions: cfg.block_size,
        n_ctx: cfg.block_size,
        n_inner: None,
        vocab_size: cfg.vocab_size,
        layer_norm_epsilon: LAYER_NORM_EPS,
        activation_function: "gelu_new",
        scale_attn_weights: true,
        scale_attn_by_inverse_layer_idx: cfg.scale_attn_by_inverse_layer_idx,
        reorder_and_upcast_attn: false,
        resid_pdrop: cfg.dropout,
        embd_pdrop: cfg.dropout,
        attn_pdrop: cfg.dropout,
        initializer_range: 0.02,
        tie_word_embeddings: true,
        use_cache: true,
        bos_token_id: None,
        eos_token_id: None,
        dtype: "float32",
        lawa_bias: cfg.bias,
        lawa_dropout: cfg.dropout,
        lawa_vocab_multiple: cfg.vocab_multiple,
    };
    // A struct of strings, numbers and booleans: serde_json cannot fail on it.
    let text = serde_json::to_string_pretty(&out).expect("config.json serializes");
    text + "\n"
}

/// Where a checkpoint tensor goes in the model.
struct Slot {
    /// The model's variable, or `None` for a bias a bias-free model lacks (must be zero).
    target: Option<Tensor>,
    /// Transposed between the file (`[in, out]`) and the model (`[out, in]`).
    conv1d: bool,
    /// Shape in the file.
    hf_shape: Vec<i64>,
}

/// Every tensor of a Hugging Face `GPT2LMHeadModel` with this shape, by name without the
/// `transformer.` prefix, mapped to the model's variables.
fn slots(gpt: &Gpt) -> BTreeMap<String, Slot> {
    let cfg = gpt.config();
    let mut slots = BTreeMap::new();
    let params = gpt.params();
    for Param {
        name,
        tensor,
        transposed: conv1d,
    } in params
    {
        let mut hf_shape = tensor.size();
        if conv1d {
            hf_shape.reverse();
        }
        if name == "transformer.wte.weight" {
            hf_shape[0] = cfg.vocab_size as i64;
        }
        let key = name.trim_start_matches("transformer.").to_string();
        slots.insert(
            key,
            Slot {
                target: Some(tensor),
                conv1d,
                hf_shape,
            },
        );
    }
    if !cfg.bias {
        // The biases Hugging Face's GPT-2 always has: zero for a bias-free model.
        let c = cfg.n_embd as i64;
        let mut biases = vec![("ln_f.bias".to_string(), c)];
        for i in 0..cfg.n_layer {
            for (name, width) in [
                ("ln_1", c),
                ("attn.c_attn", 3 * c),
                ("attn.c_proj", c),
                ("ln_2", c),
                ("mlp.c_fc", 4 * c),
                ("mlp.c_proj", c),
            ] {
                biases.push((format!("h.{i}.{name}.bias"), width));
            }
        }
        for (key, width) in biases {
            slots.insert(
                key,
                Slot {
                    target: None,
                    conv1d: false,
                    hf_shape: vec![width],
                },
            );
        }
    }
    slots
}

/// Whether `name` (without `transformer.`) is one of the attention-mask buffers older
/// transformers versions saved: `h.<i>.attn.bias` or `h.<i>.attn.masked_bias`.
fn is_mask_buffer(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("h.") else {
        return false;
    };
    let Some((layer, tail)) = rest.split_once('.') else {
        return false;
    };
    layer.bytes().all(|b| b.is_ascii_digit()) && (tail == "attn.bias" || tail == "attn.masked_bias")
}

impl Gpt {
    /// Builds the model a checkpoint describes under `vs` and loads its weights.
    ///
    /// `checkpoint` is a folder with `config.json` and its weights (`model.safetensors`, shards
    /// with an index, or `pytorch_model.bin`), or a weights file with `config.json` beside it.
    /// Every tensor is checked against the configuration: a missing, mis-shaped or unexpected
    /// tensor is an error naming it.
    pub fn from_pretrained<'a>(
        vs: impl Borrow<Path<'a>>,
        checkpoint: impl AsRef<FsPath>,
    ) -> Result<Gpt, ModelError> {
        let files = CheckpointFiles::locate(checkpoint.as_ref())?;
        let cfg = read_config(&files.config)?;
        let gpt = Gpt::new(vs, &cfg)?;
        gpt.load_weights(&files.open_weights()?)?;
        Ok(gpt)
    }

    /// Loads Hugging Face GPT-2 weights from a checkpoint file or folder into this model's
    /// variables (see [`Gpt::load_weights`]).
    pub fn load_hf_weights(&self, weights: &FsPath) -> Result<(), ModelError> {
        let files = TensorFiles::open(weights)?;
        files.verify()?;
        self.load_weights(&files)
    }

    /// Loads Hugging Face GPT-2 weights from `source` (a checkpoint, or the mean of several)
    /// into this model's variables.
    ///
    /// The source must hold exactly this shape's tensors (see the module docs for the names and
    /// buffers that are tolerated). Half-precision tensors are widened to fp32. For a model
    /// without biases the source's biases, if present, must be zero. Vocabulary padding rows are
    /// zeroed.
    pub fn load_weights(&self, source: &dyn WeightSource) -> Result<(), ModelError> {
        let file = PathBuf::from(source.describe());
        let cfg = self.config();
        let slots = slots(self);
        let mut seen = HashSet::new();
        let mut lm_head = None;
        let _guard = tch::no_grad_guard();
        let bad_tensor = |name: &str, reason: String| ModelError::BadTensor {
            path: file.clone(),
            name: name.to_string(),
            reason,
        };
        let read = |info: &lawa_core::checkpoint::TensorEntry| {
            if !info.dtype.is_float() {
                return Err(bad_tensor(
                    &info.name,
                    format!("dtype {} is not a floating-point type", info.dtype.name()),
                ));
            }
            Ok::<_, ModelError>(source.read(&info.name)?)
        };
        // Sorted by name: the first problem reported is deterministic.
        for info in source.entries() {
            let name = info.name.clone();
            let key = name.strip_prefix("transformer.").unwrap_or(&name);
            if is_mask_buffer(key) {
                continue;
            }
            if key == "lm_head.weight" {
                lm_head = Some((name.clone(), read(info)?));
                continue;
            }
            let Some(slot) = slots.get(key) else {
                let hint = match key.strip_prefix("h.").and_then(|r| r.split_once('.')) {
                    Some((layer, _)) if layer.parse::<usize>().is_ok_and(|l| l >= cfg.n_layer) => {
                        format!("config.json gives n_layer = {}", cfg.n_layer)
                    }
                    _ => "not part of a GPT-2".to_string(),
                };
                return Err(ModelError::UnexpectedTensor {
                    path: file.clone(),
                    name: name.clone(),
                    hint,
                });
            };
            let actual = info.shape_i64();
            if actual != slot.hf_shape {
                return Err(ModelError::ShapeMismatch {
                    path: file.clone(),
                    name: name.clone(),
                    expected: slot.hf_shape.clone(),
                    actual,
                });
            }
            let value = read(info)?;
            seen.insert(key.to_string());
            match &slot.target {
                None => {
                    if value.f_abs()?.f_max()?.f_double_value(&[])? != 0.0 {
                        return Err(bad_tensor(
                            &name,
                            "holds non-zero values, but config.json says lawa_bias = false".into(),
                        ));
                    }
                }
                Some(target) => {
                    let value = if slot.conv1d { value.tr() } else { value };
                    let mut dst = if key == "wte.weight" {
                        target.narrow(0, 0, cfg.vocab_size as i64)
                    } else {
                        target.shallow_clone()
                    };
                    dst.f_copy_(&value)?;
                }
            }
        }
        for (key, slot) in &slots {
            if slot.target.is_some() && !seen.contains(key) {
                return Err(ModelError::MissingTensor {
                    path: file.clone(),
                    name: format!("transformer.{key}"),
                });
            }
        }
        self.check_lm_head(lm_head, &file)
    }

    /// Zeroes the vocabulary padding rows and checks that an `lm_head.weight` the checkpoint
    /// holds is the token embedding (lawa ties them).
    fn check_lm_head(
        &self,
        lm_head: Option<(String, Tensor)>,
        file: &FsPath,
    ) -> Result<(), ModelError> {
        let cfg = self.config();
        let wte = self
            .params()
            .into_iter()
            .next()
            .map(|p| p.tensor)
            .ok_or_else(|| ModelError::BadTensor {
                path: file.to_owned(),
                name: "transformer.wte.weight".into(),
                reason: "absent".into(),
            })?;
        let vocab = cfg.vocab_size as i64;
        let padding = cfg.padded_vocab_size() as i64 - vocab;
        if padding > 0 {
            let _ = wte.narrow(0, vocab, padding).f_zero_()?;
        }
        if let Some((name, head)) = lm_head {
            let expected = vec![vocab, cfg.n_embd as i64];
            if head.size() != expected {
                return Err(ModelError::ShapeMismatch {
                    path: file.to_owned(),
                    name,
                    expected,
                    actual: head.size(),
                });
            }
            let tied = wte.narrow(0, 0, vocab).to_device(tch::Device::Cpu);
            if !head.equal(&tied) {
                return Err(ModelError::BadTensor {
                    path: file.to_owned(),
                    name,
                    reason: "differs from transformer.wte.weight; lawa ties the LM head to the token embedding".into(),
                });
            }
        }
        Ok(())
    }

    /// Saves the model as a Hugging Face GPT-2 checkpoint in `dir` (created if needed):
    /// `config.json` and `model.safetensors` (fp32, `Conv1D` layout, no `lm_head.weight` since it
    /// is tied, zero biases for a bias-free model, vocabulary padding rows left out). Each file is
    /// written atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<FsPath>) -> Result<(), ModelError> {
        let cfg = self.config();
        let _guard = tch::no_grad_guard();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (key, slot) in slots(self) {
            let value = match slot.target {
                Some(t) => {
                    let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float);
                    let t = if key == "wte.weight" {
                        t.narrow(0, 0, cfg.vocab_size as i64)
                    } else if slot.conv1d {
                        t.tr()
                    } else {
                        t
                    };
                    t.contiguous()
                }
                None => Tensor::zeros(slot.hf_shape.as_slice(), (Kind::Float, tch::Device::Cpu)),
            };
            tensors.push((format!("transformer.{key}"), value));
        }
        write_pretrained(dir.as_ref(), &tensors, &config_json(cfg))
    }
}

/// Writes a Hugging Face checkpoint folder `dir` (created if needed): `model.safetensors` from
/// `tensors` (metadata `format: pt`, a checksum), then `config.json`, each streamed into a
/// temporary file that is renamed over the final one.
pub(crate) fn write_pretrained(
    dir: &FsPath,
    tensors: &[(String, Tensor)],
    config_json: &str,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|error| ModelError::Io {
        path: dir.to_owned(),
        error,
    })?;
    lawa_core::checkpoint::write_safetensors(&dir.join(WEIGHTS_FILE), tensors)?;
    let config = dir.join(CONFIG_FILE);
    lawa_core::checkpoint::write_atomic(&config, config_json.as_bytes()).map_err(|error| {
        ModelError::Io {
            path: config,
            error,
        }
    })
}
