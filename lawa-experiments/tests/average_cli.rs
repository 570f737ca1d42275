//! `lawa average` on a folder of GPT-2 checkpoints: the result is a loadable checkpoint whose
//! weights are the mean of the chosen ones; mismatched checkpoints are refused.

mod common;

use std::path::Path;

use common::lawa;
use lawa_models::{Gpt, GptConfig};
use tch::{nn::VarStore, Device, Kind};

fn save_checkpoint(dir: &Path, seed: i64, n_embd: usize) -> VarStore {
    tch::manual_seed(seed);
    let mut cfg = GptConfig::preset("tiny", 300).unwrap();
    cfg.n_layer = 1;
    cfg.n_embd = n_embd;
    cfg.block_size = 16;
    let vs = VarStore::new(Device::Cpu);
    let gpt = Gpt::new(vs.root(), &cfg).unwrap();
    gpt.save_pretrained(dir).unwrap();
    vs
}

#[test]
fn latest_checkpoints_average_into_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path().join("ckpts");
    let stores: Vec<VarStore> = [100, 200, 300]
        .iter()
        .map(|step| save_checkpoint(&ckpts.join(format!("step-{step}")), *step, 32))
        .collect();
    for step in [100, 200, 300] {
        let at = ckpts.join(format!("step-{step}"));
        lawa_experiments::vocabulary::record(&at, "byte").unwrap();
    }
    let o = lawa(
        &[
            "average", "ckpts", "--last", "2", "--every", "100", "--out", "avg",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        dir.path().join("avg/config.json").is_file(),
        "config.json copied from the newest"
    );
    let avg_config = dir.path().join("avg/config.json");
    assert_eq!(
        lawa_experiments::vocabulary::recorded(&avg_config)
            .unwrap()
            .as_deref(),
        Some("byte"),
        "the tokenizer the inputs name"
    );
    // Not into the folder of the series itself, even with --force.
    let o = lawa(
        &[
            "average", "ckpts", "--last", "2", "--out", "ckpts/", "--force",
        ],
        dir.path(),
    );
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("the folder of the checkpoints"),
        "{msg}"
    );
    assert!(!dir.path().join("ckpts/model.safetensors").exists());

    let vs = VarStore::new(Device::Cpu);
    let _avg = Gpt::from_pretrained(vs.root(), dir.path().join("avg")).unwrap();
    let (a, b) = (stores[1].variables(), stores[2].variables());
    for (name, t) in vs.variables() {
        let mean = ((a[&name].to_kind(Kind::Double) + b[&name].to_kind(Kind::Double)) / 2.0)
            .to_kind(Kind::Float);
        assert!(t.equal(&mean), "{name}: the mean of steps 200 and 300");
    }
}

/// An existing output is never replaced silently: a file or a non-empty folder needs --force,
/// a folder holding weights of another form is refused even then, and a PyTorch name is refused.
#[test]
fn an_existing_output_is_replaced_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [save_checkpoint(&dir.path().join("a"), 1, 32)];
    save_checkpoint(&dir.path().join("b"), 2, 32);
    save_checkpoint(&dir.path().join("c"), 3, 32);
    let avg = |args: &[&str]| {
        let mut all = vec!["average"];
        all.extend_from_slice(args);
        let o = lawa(&all, dir.path());
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let before = std::fs::read(dir.path().join("c/model.safetensors")).unwrap();
    let (ok, msg) = avg(&["a", "b", "--out", "c"]);
    assert!(
        !ok && msg.contains("not empty") && msg.contains("--force"),
        "{msg}"
    );
    let after = std::fs::read(dir.path().join("c/model.safetensors")).unwrap();
    assert_eq!(before, after, "the checkpoint in c untouched");
    let (ok, msg) = avg(&["a", "a", "--out", "c", "--force"]);
    assert!(ok, "{msg}");
    assert!(msg.contains("given more than once"), "{msg}");
    let vs = VarStore::new(Device::Cpu);
    let _avg = Gpt::from_pretrained(vs.root(), dir.path().join("c")).unwrap();
    for (name, t) in vs.variables() {
        assert!(
            t.equal(&stores[0].variables()[&name]),
            "{name}: replaced by a"
        );
    }
    let (ok, msg) = avg(&["a", "b", "--out", "x.safetensors"]);
    assert!(ok, "{msg}");
    let (ok, msg) = avg(&["a", "b", "--out", "x.safetensors"]);
    assert!(!ok && msg.contains("exists; pass --force"), "{msg}");
    let (ok, msg) = avg(&["a", "b", "--out", "x.safetensors", "--force"]);
    assert!(ok, "{msg}");
    std::fs::create_dir(dir.path().join("torch")).unwrap();
    std::fs::write(dir.path().join("torch/pytorch_model.bin"), b"weights").unwrap();
    let (ok, msg) = avg(&["a", "b", "--out", "torch", "--force"]);
    assert!(
        !ok && msg.contains("holds other weights (pytorch_model.bin)"),
        "{msg}"
    );
    let (ok, msg) = avg(&["a", "b", "--out", "avg.bin"]);
    assert!(!ok && msg.contains("lawa writes safetensors"), "{msg}");
    assert!(!dir.path().join("avg.bin").exists());
}

#[test]
fn mismatched_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(&dir.path().join("a"), 1, 32);
    save_checkpoint(&dir.path().join("b"), 2, 48);
    let o = lawa(
        &["average", "a", "b", "--out", "avg.safetensors"],
        dir.path(),
    );
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        msg.contains("b/model.safetensors") && msg.contains("shape"),
        "{msg}"
    );
    assert!(!dir.path().join("avg.safetensors").exists());
    // Checkpoints of one shape whose configs name different tokenizers.
    save_checkpoint(&dir.path().join("c"), 3, 32);
    lawa_experiments::vocabulary::record(&dir.path().join("a"), "byte").unwrap();
    lawa_experiments::vocabulary::record(&dir.path().join("c"), "gpt2").unwrap();
    let o = lawa(
        &["average", "a", "c", "--out", "avg.safetensors"],
        dir.path(),
    );
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("a was trained with the tokenizer byte, c with gpt2"),
        "{msg}"
    );
    assert!(!dir.path().join("avg.safetensors").exists());
    let o = lawa(&["average", "nope", "--out", "x.safetensors"], dir.path());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope: checkpoint not found"));
    let o = lawa(
        &["average", ".", "--last", "2", "--out", "x.safetensors"],
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no step-numbered checkpoints"));
}
