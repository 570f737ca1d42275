//! The model itself: variable names and tying, parameter counts, initialization, precision,
//! dropout and the errors of bad input.

use lawa_models::{CausalLm, Gpt, GptConfig, Kernel, LossPlan, Precision};
use tch::{nn, Device, Kind, Tensor};

fn tiny(vocab: usize) -> GptConfig {
    GptConfig::preset("tiny", vocab).unwrap()
}

fn ids(b: i64, t: i64, vocab: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(vocab, [b, t], (Kind::Int64, Device::Cpu))
}

#[test]
fn variables_have_hugging_face_names_and_the_lm_head_is_the_token_embedding() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _gpt = Gpt::new(vs.root(), &tiny(300)).unwrap();
    let vars = vs.variables();
    // wte, wpe, 4 blocks of 12 (2 LayerNorms x 2, 4 linears x 2), ln_f weight and bias.
    assert_eq!(vars.len(), 2 + 4 * 12 + 2);
    assert_eq!(vars["transformer.wte.weight"].size(), [320, 256]);
    assert_eq!(vars["transformer.wpe.weight"].size(), [256, 256]);
    assert_eq!(
        vars["transformer.h.0.attn.c_attn.weight"].size(),
        [768, 256]
    );
    assert_eq!(
        vars["transformer.h.3.mlp.c_proj.weight"].size(),
        [256, 1024]
    );
    assert_eq!(vars["transformer.h.3.mlp.c_fc.bias"].size(), [1024]);
    assert_eq!(vars["transformer.h.0.ln_1.weight"].size(), [256]);
    assert_eq!(vars["transformer.ln_f.bias"].size(), [256]);
    assert!(vars.keys().all(|k| !k.contains("lm_head")));

    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = GptConfig {
        bias: false,
        ..tiny(300)
    };
    let _gpt = Gpt::new(vs.root(), &cfg).unwrap();
    let vars = vs.variables();
    assert_eq!(vars.len(), 2 + 4 * 6 + 1);
    assert!(vars.keys().all(|k| !k.ends_with(".bias")));
}

#[test]
fn instantiated_parameter_counts_match_the_analytic_ones() {
    for cfg in [
        tiny(300),
        GptConfig {
            bias: false,
            ..tiny(257)
        },
        GptConfig::preset("small", 50_257).unwrap(),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let gpt = tch::no_grad(|| Gpt::new(vs.root(), &cfg)).unwrap();
        let stored: usize = vs.variables().values().map(Tensor::numel).sum();
        assert_eq!(stored, gpt.num_stored_values());
        let padding = (cfg.padded_vocab_size() - cfg.vocab_size) * cfg.n_embd;
        assert_eq!(stored - padding, gpt.num_params(false), "{cfg:?}");
        assert_eq!(
            gpt.num_params(false) - gpt.num_params(true),
            cfg.block_size * cfg.n_embd
        );
    }
    assert_eq!(
        GptConfig::preset("small", 50_257)
            .unwrap()
            .num_params(false),
        124_439_808
    );
}

#[test]
fn initialization_follows_gpt2() {
    let cfg = GptConfig {
        n_layer: 8,
        ..tiny(512)
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _gpt = Gpt::new(vs.root(), &cfg).unwrap();
    let vars = vs.variables();
    let std = |name: &str| vars[name].std(true).double_value(&[]);
    let mean = |name: &str| vars[name].mean(Kind::Float).double_value(&[]);
    let near = |a: f64, b: f64| (a - b).abs() < 0.03 * b;
    for name in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.7.mlp.c_fc.weight",
    ] {
        assert!(near(std(name), 0.02), "{name}: std {}", std(name));
        assert!(mean(name).abs() < 1e-3);
    }
    let proj = 0.02 / (2.0f64 * 8.0).sqrt();
    for name in [
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.5.mlp.c_proj.weight",
    ] {
        assert!(near(std(name), proj), "{name}: std {}", std(name));
    }
    for (name, t) in &vars {
        if name.ends_with(".bias") {
            assert_eq!(t.abs().max().double_value(&[]), 0.0, "{name}");
        }
        if name.contains("ln_") && name.ends_with(".weight") {
            assert_eq!(t.min().double_value(&[]), 1.0, "{name}");
            assert_eq!(t.max().double_value(&[]), 1.0, "{name}");
        }
    }
}

#[test]
fn loss_is_cross_entropy_over_the_real_vocabulary_and_padding_gets_no_gradient() {
    let cfg = tiny(300); // padded to 320
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(vs.root(), &cfg).unwrap();
    let x = ids(2, 64, 300, 2);
    let y = ids(2, 64, 300, 3);
    let logits = gpt.forward(&x, false).unwrap();
    assert_eq!(logits.size(), [2, 64, 300]);
    let loss = gpt.loss(&x, &y, false).unwrap();
    assert_eq!(loss.size(), Vec::<i64>::new());
    let by_hand = logits
        .reshape([-1, 300])
        .log_softmax(-1, Kind::Double)
        .gather(1, &y.reshape([-1, 1]), false)
        .mean(Kind::Double)
        .neg()
        .double_value(&[]);
    let value = loss.double_value(&[]);
    assert!((value - by_hand).abs() < 1e-5, "{value} vs {by_hand}");
    // Small initial weights: nearly uniform predictions.
    assert!((value - 300f64.ln()).abs() < 0.1, "initial loss {value}");
    loss.backward();
    let grad = vs.variables()["transformer.wte.weight"].grad();
    assert!(grad.narrow(0, 0, 300).abs().max().double_value(&[]) > 0.0);
    assert_eq!(grad.narrow(0, 300, 20).abs().max().double_value(&[]), 0.0);
}

/// Every variable's gradient, copied, in name order.
fn gradients(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut named: Vec<_> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.iter().map(|(_, t)| t.grad().copy()).collect()
}

/// Logits, loss and every variable's gradient (sorted by name) of `gpt` on the batch `(x, y)`,
/// the gradients zeroed first.
fn logits_loss_gradients(
    gpt: &Gpt,
    vs: &nn::VarStore,
    x: &Tensor,
    y: &Tensor,
) -> (Tensor, f64, Vec<Tensor>) {
    vs.variables().values_mut().for_each(|t| t.zero_grad());
    let logits = gpt.forward(x, false).unwrap();
    let loss = gpt.loss(x, y, false).unwrap();
    loss.backward();
    (logits, loss.double_value(&[]), gradients(vs))
}

/// The loss runs its softmax over the head's padded width (padding columns at -inf, so that the
/// logits stay contiguous); against the softmax of the narrowed logits (the path before), in
/// fp32 and bf16: the same loss and gradients up to summation order.
#[test]
fn padded_log_probs_give_the_narrowed_softmax_loss_and_gradients() {
    for precision in [Precision::F32, Precision::Bf16] {
        tch::manual_seed(6);
        let vs = nn::VarStore::new(Device::Cpu);
        let gpt = Gpt::new(vs.root(), &tiny(300))
            .unwrap()
            .with_precision(precision);
        let (x, y) = (ids(2, 24, 300, 7), ids(2, 24, 300, 8));
        let hidden = gpt.hidden(&x, false).unwrap().reshape([48, -1]);
        let logp = gpt.head_log_probs(&hidden);
        assert_eq!(logp.size(), [48, 320]);
        assert_eq!(
            logp.narrow(1, 300, 20).max().double_value(&[]),
            f64::NEG_INFINITY
        );
        let narrowed = gpt
            .head(&hidden)
            .log_softmax(-1, Kind::Float)
            .f_nll_loss(&y.reshape([48]), None::<Tensor>, tch::Reduction::Mean, -100)
            .unwrap();
        narrowed.backward();
        let want = gradients(&vs);
        vs.variables().values_mut().for_each(|t| t.zero_grad());
        let loss = gpt.loss(&x, &y, false).unwrap();
        loss.backward();
        let got = gradients(&vs);
        let (a, b) = (narrowed.double_value(&[]), loss.double_value(&[]));
        assert!((a - b).abs() <= 1e-6 * a, "{precision}: {a} vs {b}");
        for (w, g) in want.iter().zip(&got) {
            let diff = (w - g).abs().max().double_value(&[]);
            let scale = w.abs().max().double_value(&[]).max(1e-12);
            assert!(
                diff <= 1e-5 * scale,
                "{precision}: gradient {diff} of {scale}"
            );
        }
    }
}

#[test]
fn bf16_path_runs_on_cpu_close_to_f32_and_trains_fp32_master_weights() {
    let cfg = tiny(300);
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut gpt = Gpt::new(vs.root(), &cfg).unwrap();
    let x = ids(2, 32, 300, 5);
    let y = ids(2, 32, 300, 6);
    let f32_logits = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
    let f32_loss = tch::no_grad(|| gpt.loss(&x, &y, false)).unwrap();
    gpt.set_precision(Precision::Bf16);
    let bf16_logits = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
    assert_eq!(bf16_logits.kind(), Kind::BFloat16);
    assert_eq!(f32_logits.kind(), Kind::Float);
    let scale = f32_logits.abs().max().double_value(&[]);
    let diff = (bf16_logits.to_kind(Kind::Float) - &f32_logits)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff > 0.0, "bf16 must actually round");
    assert!(diff < 0.05 * scale, "bf16 {diff} vs scale {scale}");
    let loss = gpt.loss(&x, &y, false).unwrap();
    assert_eq!(loss.kind(), Kind::Float);
    let gap = (loss.double_value(&[]) - f32_loss.double_value(&[])).abs();
    assert!(gap < 0.02, "loss gap {gap}");
    loss.backward();
    for (name, t) in vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name}");
        assert_eq!(t.grad().kind(), Kind::Float, "{name}");
        assert!(
            t.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0,
            "{name}"
        );
    }
}

#[test]
fn bf16_matmuls_really_run_in_bf16_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: CUDA is not available");
        return;
    }
    let cfg = tiny(300);
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cuda(0));
    let gpt = Gpt::new(vs.root(), &cfg).unwrap();
    let x = ids(2, 128, 300, 8).to(Device::Cuda(0));
    let f32_logits = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
    let gpt = gpt.with_precision(Precision::Bf16);
    let logits = tch::no_grad(|| gpt.forward(&x, false)).unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    assert_eq!(logits.device(), Device::Cuda(0));
    let diff = (logits.to_kind(Kind::Float) - &f32_logits)
        .abs()
        .max()
        .double_value(&[]);
    let scale = f32_logits.abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.05 * scale, "{diff} vs {scale}");
    let loss = gpt.loss(&x, &x, true).unwrap();
    assert_eq!(loss.kind(), Kind::Float);
    loss.backward();
    assert_eq!(
        vs.variables()["transformer.h.0.attn.c_attn.weight"]
            .grad()
            .kind(),
        Kind::Float
    );
}

#[test]
fn dropout_applies_only_in_training() {
    let cfg = GptConfig {
        dropout: 0.2,
        ..tiny(300)
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(vs.root(), &cfg).unwrap();
    let x = ids(1, 16, 300, 9);
    tch::no_grad(|| {
        let a = gpt.forward(&x, false).unwrap();
        let b = gpt.forward(&x, false).unwrap();
        assert!(a.equal(&b));
        let c = gpt.forward(&x, true).unwrap();
        assert!((c - &a).abs().max().double_value(&[]) > 1e-3);
    });
}

#[test]
fn forward_rejects_bad_input_with_clear_errors() {
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(vs.root(), &tiny(300)).unwrap();
    let msg = gpt
        .forward(&ids(1, 257, 300, 0), false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("257 tokens") && msg.contains("block size 256"),
        "{msg}"
    );
    let msg = gpt
        .forward(&Tensor::from_slice(&[1i64, 2]), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[batch, time]"), "{msg}");
    let msg = gpt
        .forward(&Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("integer"), "{msg}");
    let msg = gpt
        .loss(&ids(1, 8, 300, 0), &ids(1, 7, 300, 0), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("targets"), "{msg}");
}

#[test]
fn vocabulary_padding_rows_start_at_zero_like_a_reloaded_model() {
    tch::manual_seed(3);
    let cfg = lawa_models::GptConfig::preset("tiny", 257).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _gpt = lawa_models::Gpt::new(vs.root(), &cfg).unwrap();
    let wte = &vs.variables()["transformer.wte.weight"];
    assert_eq!(wte.size()[0], 320);
    let pad = wte.narrow(0, 257, 63);
    assert_eq!(pad.abs().sum(tch::Kind::Double).double_value(&[]), 0.0);
    let real = wte.narrow(0, 0, 257);
    assert!(
        real.std(true).double_value(&[]) > 0.015,
        "real rows keep N(0, 0.02)"
    );
}

/// Every way of computing a training loss (chunked: head and softmax a few tokens at a time,
/// with a chunk that does not divide the tokens; lawa's cross-entropy op, whole and chunked)
/// against the plain one on the same model and batch, in fp32 and bf16: the loss and every
/// variable's gradient, under gradient accumulation of 2, with a few targets ignored (-100):
/// each plan's mean is over the others, as `nll_loss`'s.
#[test]
fn every_loss_plan_gives_the_plain_loss_and_gradients() {
    let plans = [
        LossPlan {
            chunk: Some(7),
            kernel: Kernel::Aten,
        },
        LossPlan {
            chunk: None,
            kernel: Kernel::Fused,
        },
        LossPlan {
            chunk: Some(7),
            kernel: Kernel::Fused,
        },
    ];
    for precision in [Precision::F32, Precision::Bf16] {
        let vs = nn::VarStore::new(Device::Cpu);
        let gpt = Gpt::new(vs.root(), &tiny(300))
            .unwrap()
            .with_precision(precision);
        let (x, y) = (ids(3, 20, 300, 4), ids(3, 20, 300, 5));
        let _ = y.get(1).narrow(0, 2, 5).fill_(-100);
        let plain = gpt.loss(&x, &y, false).unwrap();
        (&plain * 0.5).backward();
        let want = gradients(&vs);
        let scale = want
            .iter()
            .map(|g| g.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        for plan in plans {
            vs.variables().values_mut().for_each(|t| t.zero_grad());
            let loss = gpt.loss_backward(&x, &y, false, 2, plan).unwrap();
            let got = gradients(&vs);
            let loss_diff = (plain.double_value(&[]) - loss.double_value(&[])).abs();
            let grad_diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs().max().double_value(&[]))
                .fold(0.0, f64::max);
            println!("{precision} {plan:?}: loss {loss_diff:.1e} apart, gradients {grad_diff:.1e} (largest {scale:.1e})");
            let tolerance = if precision == Precision::F32 {
                1e-6
            } else {
                2e-2
            };
            let plain_loss = plain.double_value(&[]);
            assert!(
                loss_diff < tolerance * plain_loss,
                "{precision} {plan:?} loss {loss_diff} of {plain_loss}"
            );
            assert!(
                grad_diff < tolerance * scale,
                "{precision} {plan:?} gradients {grad_diff} of {scale}"
            );
            assert!(!loss.requires_grad());
        }
    }
}

/// GPT-2 with lawa's add + LayerNorm op (`Kernel::Fused`) against libtorch's ops on the same
/// weights and batch, in fp32 and bf16: logits, loss and every variable's gradient.
#[test]
fn fused_norms_give_the_plain_logits_loss_and_gradients() {
    for precision in [Precision::F32, Precision::Bf16] {
        tch::manual_seed(9);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut gpt = Gpt::new(vs.root(), &tiny(300))
            .unwrap()
            .with_precision(precision);
        let (x, y) = (ids(2, 16, 300, 4), ids(2, 16, 300, 5));
        let mut run = |kernel| {
            gpt.set_norm_kernel(kernel);
            logits_loss_gradients(&gpt, &vs, &x, &y)
        };
        let (want_logits, want_loss, want) = run(Kernel::Aten);
        let (logits, loss, got) = run(Kernel::Fused);
        let tolerance = if precision == Precision::F32 {
            1e-5
        } else {
            2e-2
        };
        let logit_diff = (&logits - &want_logits).abs().max().double_value(&[]);
        assert!(logit_diff < tolerance, "{precision} logits {logit_diff}");
        assert!(
            (loss - want_loss).abs() < tolerance * want_loss,
            "{precision} loss {loss} vs {want_loss}"
        );
        let scale = want
            .iter()
            .map(|g| g.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        for (g, w) in got.iter().zip(&want) {
            let d = (g - w).abs().max().double_value(&[]);
            assert!(d < tolerance * scale, "{precision} gradient {d} of {scale}");
        }
        println!(
            "{precision}: logits {logit_diff:.1e}, loss {:.1e} apart",
            (loss - want_loss).abs()
        );
    }
}

/// GPT-2 with `lawa_ops::linear` (`Kernel::Fused`) against libtorch's `linear`, on the same
/// weights and batch, in fp32 and bf16, with either norm kernel: off CUDA the op runs the very
/// ops `linear` and its autograd run, so logits, loss and every gradient are equal bit for bit.
#[test]
fn fused_linear_layers_give_the_plain_logits_loss_and_gradients_bit_for_bit_off_cuda() {
    for precision in [Precision::F32, Precision::Bf16] {
        for norm in [Kernel::Aten, Kernel::Fused] {
            tch::manual_seed(10);
            let vs = nn::VarStore::new(Device::Cpu);
            let mut gpt = Gpt::new(vs.root(), &tiny(300))
                .unwrap()
                .with_precision(precision)
                .with_norm_kernel(norm);
            let (x, y) = (ids(2, 16, 300, 6), ids(2, 16, 300, 7));
            let mut run = |kernel| {
                gpt.set_linear_kernel(kernel);
                logits_loss_gradients(&gpt, &vs, &x, &y)
            };
            let (want_logits, want_loss, want) = run(Kernel::Aten);
            let profiler = lawa_ops::Profiler::start(false).unwrap();
            let (logits, loss, got) = run(Kernel::Fused);
            let events = profiler.stop(None).unwrap();
            // The op was taken: its backward ran for each of the 4 linear layers of each block,
            // and addmm's own backward never did.
            let ran = |name: &str| events.iter().filter(|e| e.name == name).count();
            let ours = "torch::autograd::CppNode<(anonymous namespace)::Linear>";
            assert_eq!(ran(ours), 4 * tiny(300).n_layer, "{precision} {norm:?}");
            assert_eq!(ran("AddmmBackward0"), 0, "{precision} {norm:?}");
            assert!(logits.equal(&want_logits), "{precision} {norm:?} logits");
            assert_eq!(loss, want_loss, "{precision} {norm:?} loss");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g.equal(w), "{precision} {norm:?} gradient {i}");
            }
        }
    }
}

#[test]
fn configs_that_cannot_be_built_are_refused_naming_the_field_and_the_rule() {
    let refused = |result: Result<(), lawa_models::ModelError>, needles: &[&str]| {
        let msg = result.unwrap_err().to_string();
        for needle in needles {
            assert!(msg.contains(needle), "{needle:?} not in: {msg}");
        }
    };
    let gpt = tiny(300);
    assert!(gpt.validate().is_ok());
    refused(
        GptConfig {
            n_head: 0,
            ..gpt.clone()
        }
        .validate(),
        &["n_head", "at least 1"],
    );
    refused(
        GptConfig {
            n_head: 3,
            ..gpt.clone()
        }
        .validate(),
        &["n_embd", "256", "multiple of n_head = 3"],
    );
    refused(
        GptConfig {
            dropout: 1.0,
            ..gpt.clone()
        }
        .validate(),
        &["dropout", "[0, 1)"],
    );
    refused(
        GptConfig {
            n_embd: 1 << 24,
            n_head: 1,
            ..gpt.clone()
        }
        .validate(),
        &[
            "n_embd",
            "with n_layer = 4",
            "values; lawa builds models of at most 1e13",
        ],
    );

    let neox = lawa_models::NeoxConfig {
        vocab_size: 300,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 256,
        max_position_embeddings: 128,
        rotary_pct: 0.25,
        rotary_emb_base: 10000.0,
        layer_norm_eps: 1e-5,
        use_parallel_residual: true,
        attention_bias: true,
        hidden_dropout: 0.0,
        attention_dropout: 0.0,
    };
    assert!(neox.validate().is_ok());
    let with = |f: &dyn Fn(&mut lawa_models::NeoxConfig)| {
        let mut c = neox.clone();
        f(&mut c);
        c.validate()
    };
    refused(
        with(&|c| c.intermediate_size = 0),
        &["intermediate_size", "at least 1"],
    );
    refused(
        with(&|c| c.num_attention_heads = 5),
        &["hidden_size", "multiple of num_attention_heads = 5"],
    );
    refused(with(&|c| c.rotary_pct = 1.5), &["rotary_pct", "[0, 1]"]);
    // Head size 5: all 5 dimensions rotary, rounded up to 3 pairs, one more than there is.
    refused(
        with(&|c| {
            c.hidden_size = 10;
            c.num_attention_heads = 2;
            c.rotary_pct = 1.0;
        }),
        &["rotary_pct", "rotates 6 dimensions of the head's 5"],
    );
    refused(
        with(&|c| c.rotary_emb_base = 0.0),
        &["rotary_emb_base", "positive"],
    );
    refused(
        with(&|c| c.attention_dropout = -0.1),
        &["attention_dropout", "[0, 1)"],
    );
    refused(
        with(&|c| c.vocab_size = 1 << 40),
        &["hidden_size", "the model would hold", "at most 1e13"],
    );
}
