//! lawa's GPT-2 against Hugging Face transformers' `GPT2LMHeadModel`: random models moved in both
//! directions through Hugging Face checkpoints give the same logits (fp32, CPU).

mod common;

use common::{max_abs_diff, read_logits, run_reference, tensor, tokens};
use lawa_models::{Gpt, GptConfig};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Random GPT2LMHeadModels saved by transformers load into lawa with equal logits, also when the
/// file looks like the real `gpt2` checkpoint (no `transformer.` prefix, mask buffers,
/// an explicit `lm_head.weight`).
#[test]
fn transformers_checkpoints_load_into_lawa_with_equal_logits() {
    let scratch = tempfile::tempdir().unwrap();
    // (n_layer, n_head, n_embd, n_positions, vocab, scale_attn_by_inverse_layer_idx, batch, time)
    let shapes = [
        (2, 3, 36, 16, 101, false, 2, 16),
        (3, 2, 32, 24, 64, true, 2, 20),
        (1, 4, 48, 8, 50, true, 3, 8),
    ];
    let models: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(l, h, c, p, v, scale, b, t))| {
            json!({
                "dir": scratch.path().join(format!("hf{i}")),
                "seed": i,
                "tokens": tokens(b, t, v, i as u64),
                "config": {
                    "n_layer": l, "n_head": h, "n_embd": c, "n_positions": p, "vocab_size": v,
                    "scale_attn_by_inverse_layer_idx": scale,
                    "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                    // Large weights, so attention is far from uniform and its scaling matters.
                    "initializer_range": 0.2,
                },
            })
        })
        .collect();
    run_reference("make-hf", &json!({ "models": models }), scratch.path());

    for (i, &(l, h, c, p, v, scale, b, t)) in shapes.iter().enumerate() {
        let dir = scratch.path().join(format!("hf{i}"));
        let vs = nn::VarStore::new(Device::Cpu);
        let gpt = Gpt::from_pretrained(vs.root(), &dir).unwrap();
        let cfg = gpt.config();
        assert_eq!(
            (
                cfg.n_layer,
                cfg.n_head,
                cfg.n_embd,
                cfg.block_size,
                cfg.vocab_size
            ),
            (l, h, c, p, v)
        );
        assert_eq!(cfg.scale_attn_by_inverse_layer_idx, scale);
        assert!(cfg.bias);
        assert_eq!(cfg.dropout, 0.0);
        let ids = tensor(&tokens(b, t, v, i as u64));
        let ours = tch::no_grad(|| gpt.forward(&ids, false)).unwrap();
        let theirs = read_logits(&dir.join("hf_logits.safetensors"));
        let diff = max_abs_diff(&ours, &theirs);
        eprintln!("HF -> lawa, model {i} ({l}x{h}x{c}, scale {scale}): max |diff| = {diff:.2e}");
        assert!(diff <= TOLERANCE, "model {i}: max |diff| {diff}");
        // Not a trivially small comparison: the logits vary.
        assert!(theirs.std(true).double_value(&[]) > 0.1);

        if i == 0 {
            // The layout of the real `gpt2` repository's model.safetensors.
            let real = scratch.path().join("real-layout");
            std::fs::create_dir_all(&real).unwrap();
            std::fs::copy(dir.join("config.json"), real.join("config.json")).unwrap();
            let mut named: Vec<(String, Tensor)> =
                Tensor::read_safetensors(dir.join("model.safetensors"))
                    .unwrap()
                    .into_iter()
                    .map(|(n, t)| (n.trim_start_matches("transformer.").to_string(), t))
                    .collect();
            let wte = named
                .iter()
                .find(|(n, _)| n == "wte.weight")
                .unwrap()
                .1
                .copy();
            named.push(("lm_head.weight".into(), wte));
            for layer in 0..l {
                let mask = Tensor::ones([p as i64, p as i64], (Kind::Float, Device::Cpu))
                    .tril(0)
                    .view([1, 1, p as i64, p as i64]);
                named.push((format!("h.{layer}.attn.bias"), mask));
                named.push((format!("h.{layer}.attn.masked_bias"), Tensor::from(-1e4f32)));
            }
            Tensor::write_safetensors(&named, real.join("model.safetensors")).unwrap();
            let vs = nn::VarStore::new(Device::Cpu);
            let gpt = Gpt::from_pretrained(vs.root(), real.join("model.safetensors")).unwrap();
            let ours = tch::no_grad(|| gpt.forward(&ids, false)).unwrap();
            let diff = max_abs_diff(&ours, &theirs);
            eprintln!("HF (real gpt2 layout) -> lawa: max |diff| = {diff:.2e}");
            assert!(diff <= TOLERANCE);
        }
    }
}

/// Random lawa models (with and without biases, odd widths, padded vocabularies, layer-index
/// scaling on and off) saved by lawa load into transformers with equal logits.
#[test]
fn lawa_checkpoints_load_into_transformers_with_equal_logits() {
    let scratch = tempfile::tempdir().unwrap();
    let configs = [
        // n_embd 36 with 3 heads; vocab 101 padded to 128.
        (2, 3, 36, 16, 101, true, false, 64),
        // Bias-free (exported as zero biases), scaled by layer index.
        (3, 2, 32, 24, 64, false, true, 64),
        // Bias-free, no vocabulary padding.
        (1, 4, 48, 8, 50, false, false, 1),
        // Head width 6, vocab of the byte tokenizer.
        (2, 6, 36, 12, 257, true, true, 64),
    ];
    let mut expected = Vec::new();
    let mut models = Vec::new();
    for (i, &(l, h, c, block, v, bias, scale, multiple)) in configs.iter().enumerate() {
        let cfg = GptConfig {
            n_layer: l,
            n_head: h,
            n_embd: c,
            block_size: block,
            vocab_size: v,
            bias,
            dropout: 0.0,
            scale_attn_by_inverse_layer_idx: scale,
            vocab_multiple: multiple,
        };
        tch::manual_seed(100 + i as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let gpt = Gpt::new(vs.root(), &cfg).unwrap();
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.contains(".ln_") {
                    t.copy_(&(t.randn_like() * 0.1 + 1.0));
                } else if name.ends_with(".bias") {
                    t.copy_(&(t.randn_like() * 0.1));
                } else {
                    // Large weights, so attention is far from uniform and its scaling matters.
                    t.copy_(&(t.randn_like() * 0.2));
                }
            }
        });
        let dir = scratch.path().join(format!("lawa{i}"));
        gpt.save_pretrained(&dir).unwrap();
        let toks = tokens(2, block, v, 7 + i as u64);
        let logits = tch::no_grad(|| gpt.forward(&tensor(&toks), false)).unwrap();
        assert_eq!(logits.size(), [2, block as i64, v as i64]);
        expected.push((cfg, logits));
        models.push(json!({ "dir": dir, "tokens": toks }));
    }
    run_reference("logits", &json!({ "models": models }), scratch.path());
    for (i, (cfg, ours)) in expected.iter().enumerate() {
        let theirs = read_logits(
            &scratch
                .path()
                .join(format!("lawa{i}/hf_logits.safetensors")),
        );
        let diff = max_abs_diff(ours, &theirs);
        eprintln!(
            "lawa -> HF, model {i} ({}x{}x{}, bias {}, scale {}): max |diff| = {diff:.2e}",
            cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.bias, cfg.scale_attn_by_inverse_layer_idx
        );
        assert!(diff <= TOLERANCE, "model {i}: max |diff| {diff}");
        assert!(theirs.std(true).double_value(&[]) > 0.01);
    }
}
