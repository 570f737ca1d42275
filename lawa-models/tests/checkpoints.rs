//! Hugging Face checkpoints written and read by lawa alone: exact round trips, and every kind of
//! bad checkpoint giving one error that names the tensor, field or value.

use std::path::Path;

use lawa_models::hf::{read_config, CheckpointFiles, CONFIG_FILE, WEIGHTS_FILE};
use lawa_models::{Gpt, GptConfig, ModelError};
use tch::{nn, Device, Kind, Tensor};

fn small_cfg(bias: bool) -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 3,
        n_embd: 36,
        block_size: 16,
        vocab_size: 101,
        bias,
        dropout: 0.0,
        scale_attn_by_inverse_layer_idx: true,
        vocab_multiple: 64,
    }
}

/// Saves a random model of `cfg` into `dir` and returns its logits on fixed ids.
fn saved(cfg: &GptConfig, dir: &Path) -> (Tensor, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(vs.root(), cfg).unwrap();
    gpt.save_pretrained(dir).unwrap();
    let x = Tensor::arange(32, (Kind::Int64, Device::Cpu))
        .remainder(cfg.vocab_size as i64)
        .reshape([2, 16]);
    let logits = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
    (x, logits)
}

fn load(path: &Path) -> Result<Gpt, ModelError> {
    let vs = nn::VarStore::new(Device::Cpu);
    Gpt::from_pretrained(vs.root(), path)
}

fn load_err(path: &Path) -> String {
    load(path).unwrap_err().to_string()
}

fn tensors(dir: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(dir.join(WEIGHTS_FILE)).unwrap()
}

fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut named = tensors(dir);
    edit(&mut named);
    Tensor::write_safetensors(&named, dir.join(WEIGHTS_FILE)).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join(CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn save_then_load_round_trips_exactly_with_and_without_biases() {
    for bias in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg(bias);
        let (x, logits) = saved(&cfg, dir.path());
        let gpt = load(dir.path()).unwrap();
        assert_eq!(gpt.config(), &cfg);
        let again = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
        assert!(again.equal(&logits), "bias {bias}");
        // The .safetensors file path works too.
        let gpt = load(&dir.path().join(WEIGHTS_FILE)).unwrap();
        assert!(tch::no_grad(|| gpt.forward(&x, false))
            .unwrap()
            .equal(&logits));

        let named = tensors(dir.path());
        // HF GPT-2 names and Conv1D layout; the tied head is not stored; zero biases if bias-free.
        let get = |n: &str| &named.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(get("transformer.wte.weight").size(), [101, 36]);
        assert_eq!(get("transformer.h.0.attn.c_attn.weight").size(), [36, 108]);
        assert_eq!(get("transformer.h.1.mlp.c_proj.weight").size(), [144, 36]);
        let c_fc_bias = get("transformer.h.1.mlp.c_fc.bias");
        assert_eq!(c_fc_bias.size(), [144]);
        assert!(named.iter().all(|(k, _)| !k.contains("lm_head")));
        assert_eq!(named.len(), 2 + 2 * 12 + 2);
        if !bias {
            assert_eq!(c_fc_bias.abs().max().double_value(&[]), 0.0);
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], "gpt2");
        assert_eq!(config["architectures"][0], "GPT2LMHeadModel");
        assert_eq!(config["n_positions"], 16);
        assert_eq!(config["activation_function"], "gelu_new");
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(config["lawa_bias"], bias);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let _ = saved(&small_cfg(true), dir.path());
    rewrite(dir.path(), |named| {
        named.retain(|(n, _)| n != "transformer.h.1.mlp.c_fc.weight")
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tensor transformer.h.1.mlp.c_fc.weight is missing"),
        "{msg}"
    );
    assert!(msg.contains(WEIGHTS_FILE), "{msg}");
}

#[test]
fn mis_shaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let _ = saved(&small_cfg(true), dir.path());
    rewrite(dir.path(), |named| {
        for (n, t) in named.iter_mut() {
            if n == "transformer.h.0.attn.c_attn.weight" {
                *t = Tensor::zeros([108, 36], (Kind::Float, Device::Cpu)); // lawa's layout, not HF's
            }
        }
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tensor transformer.h.0.attn.c_attn.weight has shape [108, 36], but config.json implies [36, 108]"),
        "{msg}"
    );
}

#[test]
fn config_that_disagrees_with_the_tensors_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let _ = saved(&small_cfg(true), dir.path());
    // Width.
    edit_config(dir.path(), |c| {
        c.insert("n_embd".into(), 48.into());
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("has shape [") && msg.contains("config.json implies"),
        "{msg}"
    );
    // Vocabulary.
    edit_config(dir.path(), |c| {
        c.insert("n_embd".into(), 36.into());
        c.insert("vocab_size".into(), 100.into());
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains(
            "tensor transformer.wte.weight has shape [101, 36], but config.json implies [100, 36]"
        ),
        "{msg}"
    );
    // More layers than stored.
    edit_config(dir.path(), |c| {
        c.insert("vocab_size".into(), 101.into());
        c.insert("n_layer".into(), 3.into());
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tensor transformer.h.2.") && msg.contains("missing"),
        "{msg}"
    );
    // Fewer layers than stored.
    edit_config(dir.path(), |c| {
        c.insert("n_layer".into(), 1.into());
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("unexpected tensor transformer.h.1.") && msg.contains("n_layer = 1"),
        "{msg}"
    );
    // Block size.
    edit_config(dir.path(), |c| {
        c.insert("n_layer".into(), 2.into());
        c.insert("n_positions".into(), 32.into());
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("transformer.wpe.weight has shape [16, 36]"),
        "{msg}"
    );
}

#[test]
fn config_fields_lawa_cannot_honour_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let _ = saved(&small_cfg(true), dir.path());
    let config = dir.path().join(CONFIG_FILE);
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "activation_function",
            "relu".into(),
            "activation_function = \"relu\"",
        ),
        (
            "layer_norm_epsilon",
            1e-6.into(),
            "layer_norm_epsilon = 0.000001",
        ),
        ("n_head", 5.into(), "n_embd = 36"),
        ("n_inner", 100.into(), "n_inner = 100"),
        ("model_type", "llama".into(), "model_type = \"llama\""),
        ("n_layer", "two".into(), "n_layer = \"two\""),
    ];
    let original = std::fs::read_to_string(&config).unwrap();
    for (field, value, expected) in cases {
        std::fs::write(&config, &original).unwrap();
        edit_config(dir.path(), |c| {
            c.insert(field.into(), value.clone());
        });
        let msg = read_config(&config).unwrap_err().to_string();
        assert!(msg.contains(expected), "{field}: {msg}");
        assert!(msg.contains("config.json"), "{msg}");
    }
    std::fs::write(&config, &original).unwrap();
    edit_config(dir.path(), |c| {
        c.remove("n_embd");
    });
    let msg = read_config(&config).unwrap_err().to_string();
    assert!(msg.contains("field n_embd is missing"), "{msg}");
    std::fs::write(&config, "{not json").unwrap();
    let msg = read_config(&config).unwrap_err().to_string();
    assert!(msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn bias_values_and_an_untied_head_that_lawa_would_drop_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let _ = saved(&small_cfg(false), dir.path());
    rewrite(dir.path(), |named| {
        for (n, t) in named.iter_mut() {
            if n == "transformer.h.0.mlp.c_fc.bias" {
                *t = Tensor::ones([144], (Kind::Float, Device::Cpu));
            }
        }
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("transformer.h.0.mlp.c_fc.bias") && msg.contains("lawa_bias = false"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let _ = saved(&small_cfg(true), dir.path());
    rewrite(dir.path(), |named| {
        named.push((
            "lm_head.weight".into(),
            Tensor::ones([101, 36], (Kind::Float, Device::Cpu)),
        ))
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("lm_head.weight") && msg.contains("differs from transformer.wte.weight"),
        "{msg}"
    );
    // An equal head is fine.
    rewrite(dir.path(), |named| {
        named.retain(|(n, _)| n != "lm_head.weight");
        let wte = named
            .iter()
            .find(|(n, _)| n == "transformer.wte.weight")
            .unwrap()
            .1
            .copy();
        named.push(("lm_head.weight".into(), wte));
    });
    load(dir.path()).unwrap();
    // An integer tensor is not a weight.
    rewrite(dir.path(), |named| {
        for (n, t) in named.iter_mut() {
            if n == "transformer.ln_f.weight" {
                *t = t.to_kind(Kind::Int64);
            }
        }
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("transformer.ln_f.weight") && msg.contains("I64"),
        "{msg}"
    );
}

#[test]
fn bad_paths_and_corrupt_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(&dir.path().join("nope"));
    assert!(
        msg.contains("nope") && msg.contains("no such checkpoint"),
        "{msg}"
    );
    let msg = load_err(dir.path());
    assert!(msg.contains("holds no weights (model.safetensors"), "{msg}");

    let _ = saved(&small_cfg(true), dir.path());
    let weights = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("not a valid checkpoint file"), "{msg}");

    let other = tempfile::tempdir().unwrap();
    let lone = other.path().join("w.safetensors");
    std::fs::write(&lone, &bytes).unwrap();
    let msg = load_err(&lone);
    assert!(
        msg.contains("config.json") && msg.contains("file not found"),
        "{msg}"
    );
    let files = CheckpointFiles::locate(&weights).unwrap();
    assert_eq!(files.config, dir.path().join(CONFIG_FILE));
}

#[test]
fn half_precision_checkpoints_are_widened_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let (x, logits) = saved(&small_cfg(true), dir.path());
    rewrite(dir.path(), |named| {
        for (_, t) in named.iter_mut() {
            *t = t.to_kind(Kind::BFloat16);
        }
    });
    let gpt = load(dir.path()).unwrap();
    let wte = &tensors(dir.path())[0];
    assert_eq!(wte.1.kind(), Kind::BFloat16);
    let again = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
    assert_eq!(again.kind(), Kind::Float);
    let diff = (again - &logits).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.05, "{diff}");
}
