//! The shape and options of a GPT-2: [`GptConfig`], its presets and its parameter arithmetic.

use serde::{Deserialize, Serialize};

use crate::checks;
use crate::ModelError;

/// Default multiple the vocabulary is padded to (nanoGPT pads 50,257 to 50,304).
pub const DEFAULT_VOCAB_MULTIPLE: usize = 64;

/// LayerNorm epsilon of every GPT-2 (Hugging Face `layer_norm_epsilon`).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// The most values a model may hold (10 trillion): far beyond any model lawa trains, and small
/// enough that no shape or size computed from a config overflows.
pub const MAX_VALUES: u128 = 10_000_000_000_000;

/// The names accepted by [`GptConfig::preset`].
pub const PRESETS: [&str; 4] = ["tiny", "small", "medium", "large"];

fn default_true() -> bool {
    true
}

fn default_vocab_multiple() -> usize {
    DEFAULT_VOCAB_MULTIPLE
}

/// The shape and options of a GPT-2.
///
/// Deserializing rejects unknown fields (a misspelt option is an error, not a silent default);
/// `bias`, `dropout`, `scale_attn_by_inverse_layer_idx` and `vocab_multiple` may be left out.
/// Call [`GptConfig::validate`] on a configuration that came from a user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Longest sequence the model takes (rows of the position embedding).
    pub block_size: usize,
    /// Number of token ids the model predicts (the tokenizer's vocabulary).
    pub vocab_size: usize,
    /// Biases in the linear layers and LayerNorms (GPT-2 has them).
    #[serde(default = "default_true")]
    pub bias: bool,
    /// Dropout probability on embeddings, attention weights and residual branches while training.
    #[serde(default)]
    pub dropout: f64,
    /// Also divide the attention logits of block `i` by `i + 1` (Hugging Face's GPT-2 option of
    /// the same name).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// The embedding matrix gets [`GptConfig::padded_vocab_size`] rows, `vocab_size` rounded up
    /// to a multiple of this (faster matmuls); 1 disables padding. Padding rows are inert: they
    /// never produce a logit and never receive a gradient.
    #[serde(default = "default_vocab_multiple")]
    pub vocab_multiple: usize,
}

impl GptConfig {
    /// A named preset for a vocabulary of `vocab_size` tokens, with biases, no dropout and a
    /// vocabulary padded to a multiple of 64:
    ///
    /// | preset   | layers | heads | width | block |
    /// |----------|-------:|------:|------:|------:|
    /// | `tiny`   |      4 |     4 |   256 |   256 |
    /// | `small`  |     12 |    12 |   768 |  1024 |
    /// | `medium` |     24 |    16 |  1024 |  1024 |
    /// | `large`  |     36 |    20 |  1280 |  1024 |
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        let (n_layer, n_head, n_embd, block_size) = match name {
            "tiny" => (4, 4, 256, 256),
            "small" => (12, 12, 768, 1024),
            "medium" => (24, 16, 1024, 1024),
            "large" => (36, 20, 1280, 1024),
            other => {
                return Err(ModelError::UnknownPreset {
                    name: other.to_string(),
                })
            }
        };
        let cfg = GptConfig {
            n_layer,
            n_head,
            n_embd,
            block_size,
            vocab_size,
            bias: true,
            dropout: 0.0,
            scale_attn_by_inverse_layer_idx: false,
            vocab_multiple: DEFAULT_VOCAB_MULTIPLE,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the model can be built: non-zero sizes, `n_head` divides `n_embd`, a dropout
    /// probability in `[0, 1)`.
    pub fn validate(&self) -> Result<(), ModelError> {
        checks::sizes(&[
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
            ("vocab_multiple", self.vocab_multiple),
        ])?;
        checks::multiple(("n_embd", self.n_embd), ("n_head", self.n_head))?;
        checks::dropouts(&[("dropout", self.dropout)])?;
        checks::stored_values(
            self.stored_values(),
            ("n_embd", self.n_embd),
            &format!(
                "with n_layer = {}, vocab_size = {} and block_size = {}, ",
                self.n_layer, self.vocab_size, self.block_size
            ),
        )?;
        Ok(())
    }

    /// Values the model's variables hold (vocabulary padding rows included), computed without
    /// overflow whatever the shape.
    pub fn stored_values(&self) -> u128 {
        let c = self.n_embd as u128;
        let vocab = (self.vocab_size as u128).div_ceil(self.vocab_multiple.max(1) as u128)
            * self.vocab_multiple.max(1) as u128;
        let per_layer = 12 * c * c + 11 * c;
        vocab * c + self.block_size as u128 * c + self.n_layer as u128 * per_layer + 2 * c
    }

    /// A short description of the shape for messages: `4 layers x 256 wide, vocab 4096`.
    pub fn describe(&self) -> String {
        format!(
            "{} layers x {} wide, vocab {}",
            self.n_layer, self.n_embd, self.vocab_size
        )
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Rows of the token embedding: `vocab_size` rounded up to a multiple of `vocab_multiple`.
    pub fn padded_vocab_size(&self) -> usize {
        let m = self.vocab_multiple.max(1);
        self.vocab_size.div_ceil(m) * m
    }

    /// Parameters of one transformer block.
    pub fn params_per_layer(&self) -> usize {
        let c = self.n_embd;
        let weights = 12 * c * c; // c_attn 3c², attn c_proj c², mlp c_fc 4c², mlp c_proj 4c²
        let ln = 2 * c; // ln_1 and ln_2 weights
        let biases = if self.bias {
            3 * c + c + 4 * c + c + 2 * c
        } else {
            0
        };
        weights + ln + biases
    }

    /// Number of parameters, computed from the shape without building the model.
    ///
    /// The tied token embedding / LM head counts once, with `vocab_size` rows (padding rows are
    /// inert and not counted), so a GPT-2 with biases and vocabulary 50,257 gives Hugging Face's
    /// numbers. With `non_embedding`, the position embedding is left out, as nanoGPT's
    /// `get_num_params` does (the token embedding stays: it is also the LM head).
    pub fn num_params(&self, non_embedding: bool) -> usize {
        let c = self.n_embd;
        let ln_f = if self.bias { 2 * c } else { c };
        let wpe = if non_embedding {
            0
        } else {
            self.block_size * c
        };
        self.vocab_size * c + wpe + self.n_layer * self.params_per_layer() + ln_f
    }

    /// Training FLOPs per token, as nanoGPT's `estimate_mfu` counts them: `6 N + 12 L H Q T`,
    /// with `N` the non-embedding parameters *including* the padded LM-head rows (that is the
    /// matmul that runs), `L` layers, `H` heads, `Q` head width and `T` the block size.
    pub fn flops_per_token(&self) -> f64 {
        let padding = (self.padded_vocab_size() - self.vocab_size) * self.n_embd;
        let n = (self.num_params(true) + padding) as f64;
        let attention =
            12.0 * (self.n_layer * self.n_head * self.head_dim() * self.block_size) as f64;
        6.0 * n + attention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_hugging_face_gpt2_parameter_counts() {
        let count = |name| GptConfig::preset(name, 50_257).unwrap().num_params(false);
        assert_eq!(count("small"), 124_439_808);
        assert_eq!(count("medium"), 354_823_168);
        assert_eq!(count("large"), 774_030_080);
        let small = GptConfig::preset("small", 50_257).unwrap();
        assert_eq!(small.padded_vocab_size(), 50_304);
        assert_eq!(small.num_params(true), 124_439_808 - 1024 * 768);
    }

    #[test]
    fn flops_per_token_follow_nanogpt() {
        let small = GptConfig::preset("small", 50_257).unwrap();
        // nanoGPT (padded vocab 50,304): N = 124,475,904 - 786,432 = 123,689,472.
        let n = 123_689_472.0;
        let expected = 6.0 * n + 12.0 * 12.0 * 12.0 * 64.0 * 1024.0;
        assert_eq!(small.flops_per_token(), expected);
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = GptConfig::preset("tiny", 300).unwrap();
        cfg.n_embd = 36;
        cfg.n_head = 5;
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(
            msg.contains("n_embd = 36") && msg.contains("n_head = 5"),
            "{msg}"
        );
        let mut cfg = GptConfig::preset("tiny", 300).unwrap();
        cfg.n_layer = 0;
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("n_layer = 0"), "{msg}");
        let mut cfg = GptConfig::preset("tiny", 300).unwrap();
        cfg.dropout = 1.0;
        assert!(cfg.validate().unwrap_err().to_string().contains("dropout"));
        let msg = GptConfig::preset("huge", 300).unwrap_err().to_string();
        assert!(msg.contains("'huge'"), "{msg}");
    }

    #[test]
    fn deserializing_rejects_unknown_fields_and_fills_defaults() {
        let cfg: GptConfig = serde_json::from_str(
            r#"{"n_layer": 2, "n_head": 2, "n_embd": 8, "block_size": 4, "vocab_size": 10}"#,
        )
        .unwrap();
        assert!(cfg.bias);
        assert_eq!(cfg.vocab_multiple, 64);
        assert_eq!(cfg.padded_vocab_size(), 64);
        let err = serde_json::from_str::<GptConfig>(
            r#"{"n_layer": 2, "n_head": 2, "n_embd": 8, "block_size": 4, "vocab_size": 10, "biass": false}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("biass"), "{err}");
    }
}
