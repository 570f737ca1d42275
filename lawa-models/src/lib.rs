//! # lawa-models
//!
//! Two architectures on tch, each numerically the model of Hugging Face transformers:
//!
//! - [`Gpt`], GPT-2 (`GPT2LMHeadModel`): pre-LayerNorm blocks, tanh GELU, learned positions, a
//!   token embedding tied to the LM head, GPT-2's initialization; named presets
//!   ([`GptConfig::preset`]): `tiny` (4 layers, 4 heads, 256 wide; a CPU demo size), `small`
//!   (124M), `medium` (355M), `large` (774M), or any shape. This is the model lawa trains.
//! - [`GptNeoX`], GPT-NeoX (`GPTNeoXForCausalLM`, the Pythia models): partial rotary
//!   embeddings, a fused per-head query/key/value, parallel or sequential residual, exact GELU,
//!   an untied output embedding.
//!
//! They share their layers (LayerNorm, linear, MLP, causal attention through
//! `scaled_dot_product_attention`, flash attention on CUDA), the loss ([`CausalLm`]), sampling
//! ([`mod@generate`]) and an optional bf16 compute path over fp32 master weights ([`Precision`]).
//! [`Model`] picks the architecture from a checkpoint's `config.json`. Checkpoints are Hugging
//! Face folders both ways: `config.json` beside `model.safetensors`, safetensors shards with an
//! index, or `pytorch_model.bin` (single or sharded; read as data, never executed).
//!
//! ```no_run
//! use lawa_models::{CausalLm, Gpt, GptConfig, Precision};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! # fn main() -> Result<(), lawa_models::ModelError> {
//! tch::manual_seed(1337);
//! let cfg = GptConfig::preset("tiny", 4096)?;
//! let vs = nn::VarStore::new(Device::cuda_if_available());
//! let mut gpt = Gpt::new(vs.root(), &cfg)?;
//! println!("{} parameters, {:.2e} FLOPs per token", gpt.num_params(true), gpt.flops_per_token());
//!
//! let x = Tensor::randint(4096, [8, 256], (Kind::Int64, vs.device()));
//! let y = Tensor::randint(4096, [8, 256], (Kind::Int64, vs.device()));
//! gpt.set_precision(Precision::Bf16);
//! let loss = gpt.loss(&x, &y, true)?; // scalar, fp32
//! loss.backward(); // gradients land on the fp32 variables in `vs`
//!
//! gpt.save_pretrained("runs/tiny")?; // transformers.GPT2LMHeadModel.from_pretrained("runs/tiny")
//! let vs2 = nn::VarStore::new(Device::Cpu);
//! let again = Gpt::from_pretrained(vs2.root(), "runs/tiny")?;
//! let logits = again.forward(&x.to(Device::Cpu), false)?; // [8, 256, 4096]
//! # Ok(()) }
//! ```

mod block;
mod checks;
pub mod config;
mod config_json;
mod error;
pub mod generate;
mod gpt;
pub mod hf;
mod kernel;
mod layers;
mod lm;
pub mod memory;
pub mod neox;
mod precision;

pub use config::GptConfig;
pub use error::ModelError;
pub use generate::{generate, Sampling};
pub use gpt::Gpt;
pub use kernel::Kernel;
pub use lm::{CausalLm, LossPlan, Model, ModelConfig};
pub use neox::{GptNeoX, NeoxConfig};
pub use precision::Precision;
