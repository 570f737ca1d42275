//! GPT-NeoX through the command line: `lawa eval` of a transformers-saved GPT-NeoX equals
//! transformers' loss, from safetensors and `pytorch_model.bin` alike; `lawa average` and
//! `lawa sample` take NeoX checkpoints in every file form.

mod common;

use std::path::{Path, PathBuf};

use common::lawa;
use serde_json::json;

fn python() -> PathBuf {
    PathBuf::from(std::env::var("LAWA_PYTHON").expect("LAWA_PYTHON"))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../lawa-models/tests/reference/neox_reference.py")
}

fn reference(command: &str, spec: &serde_json::Value, dir: &Path) -> String {
    let spec_path = dir.join(format!("{command}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg(script())
        .arg(command)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn eval_loss(checkpoint: &Path, data: &Path, cwd: &Path) -> f64 {
    let o = lawa(
        &[
            "eval",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--block-size",
            "32",
            "--batch-size",
            "4",
            "--json",
        ],
        cwd,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    report["loss"].as_f64().unwrap()
}

#[test]
fn neox_checkpoints_through_eval_average_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let data = common::sotu_subset(p, 40, "byte");
    let model = p.join("neox");
    let spec = json!({"models": [{
        "dir": model, "seed": 3, "tokens": [[1, 2, 3]],
        "config": {"vocab_size": 257, "hidden_size": 48, "num_attention_heads": 4,
                   "num_hidden_layers": 2, "intermediate_size": 96, "max_position_embeddings": 32,
                   "rotary_pct": 0.5, "use_parallel_residual": false,
                   "bos_token_id": 0, "eos_token_id": 0}
    }]});
    reference("make-hf", &spec, p);
    let out = reference(
        "eval",
        &json!({"checkpoint": model, "bin": data.join("val.bin"), "block_size": 32, "batch_size": 4}),
        p,
    );
    let theirs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let theirs = theirs["loss"].as_f64().unwrap();
    let ours = eval_loss(&model, &data, p);
    println!(
        "lawa eval {ours} vs transformers {theirs}: {:e}",
        (ours - theirs).abs()
    );
    assert!((ours - theirs).abs() <= 1e-6, "{ours} vs {theirs}");
    assert_eq!(
        eval_loss(&model.join("bin"), &data, p),
        ours,
        "pytorch_model.bin"
    );
    assert_eq!(
        eval_loss(&model.join("sharded-bin"), &data, p),
        ours,
        "sharded .bin"
    );

    // The mean of the same weights in two file forms is those weights.
    let o = lawa(
        &[
            "average",
            model.join("bin").to_str().unwrap(),
            model.join("sharded-bin").to_str().unwrap(),
            "--out",
            "avg",
        ],
        p,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(eval_loss(&p.join("avg"), &data, p), ours, "averaged");
    // Pythia's layout, buffers and all: averaged without them.
    let o = lawa(
        &[
            "average",
            model.join("pythia").to_str().unwrap(),
            model.join("pythia").to_str().unwrap(),
            "--out",
            "avg-pythia",
        ],
        p,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = lawa(
        &[
            "sample",
            "--checkpoint",
            p.join("avg-pythia").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--prompt",
            "The ",
            "--tokens",
            "8",
        ],
        p,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("The "));
}
