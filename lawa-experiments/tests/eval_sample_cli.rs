//! `lawa eval` and `lawa sample` through the real binary: eval equals transformers' loss on the
//! same windows, sampling is seeded, and bad input gives one clear error.

#[path = "../../lawa-models/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use lawa_core::data::{DatasetMeta, SplitMethod};
use lawa_models::{Gpt, GptConfig};
use serde_json::json;
use tch::{nn, Device};

fn lawa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(args)
        .env("LAWA_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must fail and returns its one-line message.
fn fails(args: &[&str]) -> String {
    let o = lawa(args);
    let msg = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected failure: {args:?}\n{msg}");
    assert!(msg.starts_with("error: "), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one clear message: {msg}");
    assert!(o.stdout.is_empty());
    msg
}

/// A byte-tokenized dataset with pseudo-random text-like ids.
fn dataset(dir: &Path, train: usize, val: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let ids = |n: usize, seed: u64| -> Vec<u8> {
        common::tokens(1, n, 257, seed)[0]
            .iter()
            .flat_map(|&id| (id as u16).to_le_bytes())
            .collect()
    };
    std::fs::write(dir.join("train.bin"), ids(train, 1)).unwrap();
    std::fs::write(dir.join("val.bin"), ids(val, 2)).unwrap();
    DatasetMeta {
        tokenizer: "byte".into(),
        tokenizer_file: None,
        vocab_size: 257,
        eot_token: Some(256),
        train_tokens: train as u64,
        val_tokens: val as u64,
        train_documents: 1,
        val_documents: 1,
        split: SplitMethod::Position,
        val_fraction: 0.1,
        source: "test".into(),
        ..DatasetMeta::nanogpt_gpt2(0, 0)
    }
    .save(dir)
    .unwrap();
}

/// A random model with large weights (so predictions differ from window to window), saved.
fn checkpoint(dir: &Path, vocab: usize, block: usize) {
    let cfg = GptConfig {
        n_layer: 2,
        n_head: 3,
        n_embd: 36,
        block_size: block,
        vocab_size: vocab,
        bias: true,
        dropout: 0.1,
        scale_attn_by_inverse_layer_idx: false,
        vocab_multiple: 64,
    };
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(vs.root(), &cfg).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if !name.contains(".ln_") {
                t.copy_(&(t.randn_like() * 0.1));
            }
        }
    });
    gpt.save_pretrained(dir).unwrap();
}

#[test]
fn eval_equals_the_loss_transformers_computes_on_the_same_windows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = dir.path().join("model");
    dataset(&data, 500, 1000);
    checkpoint(&model, 257, 64);
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());

    let o = lawa(&[
        "eval",
        "--checkpoint",
        m,
        "--data",
        d,
        "--block-size",
        "32",
        "--batch-size",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // (1000 - 1) / 32 = 31 windows; the last partial one is dropped.
    assert_eq!(ours["windows"], 31);
    assert_eq!(ours["tokens"], 31 * 32);
    assert_eq!(ours["split"], "val");

    let reference = common::run_reference(
        "eval",
        &json!({
            "checkpoint": model, "bin": data.join("val.bin"), "block_size": 32, "batch_size": 5,
        }),
        dir.path(),
    );
    let theirs: serde_json::Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(theirs["windows"], 31);
    let (a, b) = (
        ours["loss"].as_f64().unwrap(),
        theirs["loss"].as_f64().unwrap(),
    );
    eprintln!(
        "lawa eval {a} vs transformers {b}: |diff| {:.2e}",
        (a - b).abs()
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    assert!(
        (a - 257f64.ln()).abs() > 0.05,
        "a non-trivial model: loss {a}"
    );
    let ppl = ours["perplexity"].as_f64().unwrap();
    assert!((ppl - a.exp()).abs() < 1e-9 * ppl);

    // Deterministic, and the same in text form; the default block size is the model's.
    let o = lawa(&[
        "eval",
        "--checkpoint",
        m,
        "--data",
        d,
        "--block-size",
        "32",
        "--batch-size",
        "5",
    ]);
    assert!(o.status.success());
    assert!(
        stdout(&o).starts_with(&format!("val loss {a:.4} ± "))
            && stdout(&o).contains("(perplexity"),
        "{}",
        stdout(&o)
    );
    let o = lawa(&[
        "eval",
        "--checkpoint",
        m,
        "--data",
        d,
        "--split",
        "train",
        "--json",
    ]);
    let train: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (train["block_size"].clone(), train["windows"].clone()),
        (json!(64), json!(7))
    );
}

#[test]
fn eval_rejects_another_vocabulary_a_longer_block_and_a_broken_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = dir.path().join("model");
    dataset(&data, 300, 300);
    checkpoint(&model, 200, 16);
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let msg = fails(&["eval", "--checkpoint", m, "--data", d]);
    assert!(
        msg.contains("vocabulary of 257 tokens (byte), more than the model's 200"),
        "{msg}"
    );
    // A smaller vocabulary than the model's is another tokenizer's too (unless padding).
    checkpoint(&model, 300, 16);
    let msg = fails(&["eval", "--checkpoint", m, "--data", d]);
    assert!(
        msg.contains("257 tokens (byte), not the model's 300") && msg.contains("tokenizer"),
        "{msg}"
    );

    checkpoint(&model, 257, 16);
    let msg = fails(&["eval", "--checkpoint", m, "--data", d, "--block-size", "17"]);
    assert!(
        msg.contains("--block-size 17") && msg.contains("16"),
        "{msg}"
    );

    let weights = model.join("model.safetensors");
    let mut named = tch::Tensor::read_safetensors(&weights).unwrap();
    named.retain(|(n, _)| n != "transformer.h.0.ln_2.bias");
    tch::Tensor::write_safetensors(&named, &weights).unwrap();
    let msg = fails(&["eval", "--checkpoint", m, "--data", d]);
    assert!(
        msg.contains("tensor transformer.h.0.ln_2.bias is missing"),
        "{msg}"
    );
}

/// A dataset of `dataset`'s ids said to come from a byte-level BPE trained on `text`.
fn bpe_dataset(dir: &Path, text: &str) -> String {
    use lawa_experiments::prepare::tokenizer::TextTokenizer;
    dataset(dir, 300, 300);
    let lines: Vec<String> = (0..50).map(|i| format!("{text} {i}")).collect();
    let tokenizer = TextTokenizer::train_bpe(300, lines.iter().map(String::as_str)).unwrap();
    let mut meta = DatasetMeta::load(&dir.join("meta.json")).unwrap();
    meta.tokenizer = "bpe:300".into();
    meta.vocab_size = tokenizer.vocab_size();
    meta.tokenizer_file = tokenizer.save_into(dir).unwrap();
    meta.save(dir).unwrap();
    dir.to_str().unwrap().to_owned()
}

/// A checkpoint lawa wrote names its tokenizer: data or a tokenizer of another, even of the
/// same spec and size, is refused by eval and sample; the model's own is taken, and is the
/// default when ready-made; a checkpoint naming none (not lawa's) is held to the sizes alone.
#[test]
fn a_recorded_tokenizer_refuses_another_of_the_same_size() {
    use lawa_experiments::vocabulary;
    let dir = tempfile::tempdir().unwrap();
    let (bytes, model) = (dir.path().join("bytes"), dir.path().join("model"));
    dataset(&bytes, 300, 300);
    let ours = bpe_dataset(
        &dir.path().join("ours"),
        "the quick brown fox jumps over the lazy dog",
    );
    let theirs = bpe_dataset(
        &dir.path().join("theirs"),
        "we hold these truths to be self evident",
    );
    // A padded embedding (320) fits every one of them by size.
    checkpoint(&model, 320, 16);
    let (b, m) = (bytes.to_str().unwrap(), model.to_str().unwrap());
    let succeeds = |args: &[&str]| {
        let o = lawa(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    for d in [b, &ours, &theirs] {
        succeeds(&["eval", "--checkpoint", m, "--data", d]);
    }
    let meta = |d: &str| DatasetMeta::load(&Path::new(d).join("meta.json")).unwrap();
    let name = |d: &str| {
        vocabulary::tokenizer_of(Path::new(d), &meta(d))
            .unwrap()
            .unwrap()
    };
    let (our_name, their_name) = (name(&ours), name(&theirs));
    assert!(
        our_name.starts_with("bpe:300 vocab:") && our_name.len() == 30,
        "{our_name}"
    );
    assert_ne!(our_name, their_name);

    vocabulary::record(&model, &our_name).unwrap();
    succeeds(&["eval", "--checkpoint", m, "--data", &ours]);
    // The trained tokenizer's own file, given as a ready-made one: the same vocabulary.
    let own_file = meta(&ours).tokenizer_file.unwrap();
    let own_file = Path::new(&ours).join(own_file);
    let own = own_file.to_str().unwrap();
    succeeds(&[
        "sample",
        "--checkpoint",
        m,
        "--tokenizer",
        own,
        "--prompt",
        "the",
    ]);
    succeeds(&[
        "sample",
        "--checkpoint",
        m,
        "--data",
        &ours,
        "--prompt",
        "the",
    ]);
    let msg = fails(&["eval", "--checkpoint", m, "--data", &theirs]);
    assert!(
        msg.contains(&format!(
            "uses the tokenizer {their_name}, but the model was trained on data made with {our_name}"
        )),
        "{msg}"
    );
    let msg = fails(&["eval", "--checkpoint", m, "--data", b]);
    assert!(msg.contains("uses the tokenizer byte, but"), "{msg}");
    let msg = fails(&[
        "sample",
        "--checkpoint",
        m,
        "--data",
        &theirs,
        "--prompt",
        "a",
    ]);
    assert!(msg.contains(&format!("made with {our_name}")), "{msg}");
    let msg = fails(&[
        "sample",
        "--checkpoint",
        m,
        "--tokenizer",
        "byte",
        "--prompt",
        "a",
    ]);
    assert!(
        msg.contains("--tokenizer byte uses the tokenizer byte, but"),
        "{msg}"
    );
    // With no tokenizer given, a trained one cannot be guessed; bpe:N names its way out.
    let msg = fails(&["sample", "--checkpoint", m, "--prompt", "a"]);
    assert!(
        msg.contains(&format!(
            "trained with the tokenizer {our_name}: pass --data"
        )),
        "{msg}"
    );
    let msg = fails(&[
        "sample",
        "--checkpoint",
        m,
        "--tokenizer",
        "bpe:300",
        "--prompt",
        "a",
    ]);
    assert!(
        msg.contains("a trained tokenizer is stored with its dataset"),
        "{msg}"
    );

    // A ready-made tokenizer the checkpoint names is the default, for sample and tasks.
    vocabulary::record(&model, "byte").unwrap();
    succeeds(&[
        "sample",
        "--checkpoint",
        m,
        "--prompt",
        "ab",
        "--tokens",
        "4",
    ]);
    let task = dir.path().join("task.jsonl");
    std::fs::write(
        &task,
        "{\"context\": \"ab\", \"choices\": [\" c\", \" d\"], \"gold\": 0}\n",
    )
    .unwrap();
    let t = task.to_str().unwrap();
    succeeds(&["eval", "--checkpoint", m, "--task", t]);
    let msg = fails(&[
        "eval",
        "--checkpoint",
        m,
        "--task",
        t,
        "--tokenizer",
        "bpe:300",
    ]);
    assert!(
        msg.contains("a trained tokenizer is stored with its dataset"),
        "{msg}"
    );
    let msg = fails(&["eval", "--checkpoint", m, "--data", &ours]);
    assert!(msg.contains("made with byte"), "{msg}");
}

#[test]
fn sample_is_seeded_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    checkpoint(&model, 257, 32);
    let m = model.to_str().unwrap();
    let run = |seed: &str| {
        let o = lawa(&[
            "sample",
            "--checkpoint",
            m,
            "--tokenizer",
            "byte",
            "--prompt",
            "Hello",
            "--tokens",
            "40",
            "--seed",
            seed,
            "--temperature",
            "1.0",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    };
    let a = run("1");
    assert!(a.starts_with("Hello"), "{a}");
    assert!(a.len() > "Hello".len() + 10, "{a:?}");
    assert_eq!(a, run("1"));
    assert_ne!(a, run("2"));

    // Greedy decoding does not depend on the seed.
    let greedy = |seed: &str| {
        let o = lawa(&[
            "sample",
            "--checkpoint",
            m,
            "--tokenizer",
            "byte",
            "--tokens",
            "10",
            "--seed",
            seed,
            "--temperature",
            "0",
        ]);
        assert!(o.status.success());
        stdout(&o)
    };
    assert_eq!(greedy("1"), greedy("2"));

    // The dataset's tokenizer.
    let data = dir.path().join("data");
    dataset(&data, 100, 100);
    let o = lawa(&[
        "sample",
        "--checkpoint",
        m,
        "--data",
        data.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--tokens",
        "40",
        "--seed",
        "1",
        "--temperature",
        "1.0",
    ]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), a);
}

#[test]
fn sample_crops_a_long_prompt_and_rejects_a_tokenizer_larger_than_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    checkpoint(&model, 257, 16);
    let m = model.to_str().unwrap();
    // A prompt longer than the block: the model is given its last 16 tokens, said.
    let sample = |prompt: &str| {
        let args = [
            "sample",
            "--checkpoint",
            m,
            "--tokenizer",
            "byte",
            "--tokens",
            "8",
        ];
        let o = lawa(&[&args[..], &["--prompt", prompt]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (stdout(&o), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (long, said) = sample(&format!("{}{}", "y".repeat(24), "x".repeat(16)));
    let (short, _) = sample(&"x".repeat(16));
    assert!(
        said.contains("--prompt is 40 tokens long, more than the model's block size 16"),
        "{said}"
    );
    assert!(
        long.starts_with(&"y".repeat(24)),
        "the whole prompt is printed: {long}"
    );
    assert_eq!(long[40..], short[16..], "the same continuation");
    let msg = fails(&["sample", "--checkpoint", m, "--tokenizer", "gpt2"]);
    assert!(
        msg.contains("tokenizer gpt2 has 50257 tokens, more than the model's vocab_size 257"),
        "{msg}"
    );
    let msg = fails(&["sample", "--checkpoint", m, "--tokenizer", "bpe:300"]);
    assert!(msg.contains("--data"), "{msg}");
}
