//! `lawa train` end to end on small real data: exact resume after SIGKILL, learning, divergence,
//! and bad configs refused with the field named.

mod common;

use common::lawa;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lawa_experiments::train::{train, RunConfig, RunStatus};

/// A small byte-level dataset from 40 SOTU addresses (real English), prepared with lawa.
fn small_dataset(dir: &Path) -> PathBuf {
    common::sotu_subset(dir, 6, "byte")
}

fn run_yaml(data: &Path, out: &Path, steps: u64, extra: &str) -> String {
    format!(
        r#"name: t
data: {data}
out: {out}
device: cpu
model: {{n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, dropout: 0.1}}
train:
  steps: {steps}
  batch_size: 8
  block_size: 32
  grad_accum: 2
  lr: 3.0e-3
  schedule: {{kind: cosine, warmup: 5, min_lr: 3.0e-4}}
  seed: 7
eval: {{every: 10, windows: 16, train_windows: 8}}
checkpoint: {{every: 10}}
averagers:
  - {{kind: lawa, k: 3, nu: 4}}
  - {{kind: lawa, k: 2, nu: 8}}
  - {{kind: ema, decay: 0.9, warmup: true}}
  - {{kind: swa, start: 0.5, every: 3}}
{extra}"#,
        data = data.display(),
        out = out.display()
    )
}

/// curves.csv without the wall-time column (the only one that differs between runs).
fn curves_without_time(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("curves.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn killed_run_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    std::fs::write(
        dir.path().join("a.yaml"),
        run_yaml(&data, &straight, 60, ""),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.yaml"), run_yaml(&data, &killed, 60, "")).unwrap();
    let o = lawa(&["train", "a.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Kill the second run with SIGKILL once it has written a checkpoint past step 20.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(["train", "b.yaml"])
        .current_dir(dir.path())
        .env("LAWA_LOG", "warn")
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let state =
            std::fs::read_to_string(killed.join("checkpoint/trainer.json")).unwrap_or_default();
        let step: u64 = serde_json::from_str::<serde_json::Value>(&state)
            .ok()
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if step >= 20 || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("status.json").exists(),
        "killed before the end"
    );
    let rows_at_kill = curves_without_time(&killed).len();
    // As if the kill had come inside an append: a row cut short, without its newline. It was
    // being written after the last checkpoint, so it is dropped and made again.
    let mut text = std::fs::read_to_string(killed.join("curves.csv")).unwrap();
    let last = text.lines().last().unwrap().to_string();
    // Its step (column 12) moved past the checkpoint, the line cut in its 14th field.
    let mut fields: Vec<String> = last.split(',').map(String::from).collect();
    fields[11] = (fields[11].parse::<u64>().unwrap() + 10).to_string();
    let row = fields.join(",");
    let cut = row.match_indices(',').nth(12).unwrap().0 + 3;
    text.push_str(&row[..cut]);
    std::fs::write(killed.join("curves.csv"), text).unwrap();

    let o = lawa(&["train", "b.yaml"], dir.path());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{msg}");
    assert!(
        msg.contains("has no newline (a write cut short by a kill)"),
        "{msg}"
    );
    let a = curves_without_time(&straight);
    let b = curves_without_time(&killed);
    assert!(rows_at_kill < b.len(), "the resumed run added rows");
    assert_eq!(
        a.len(),
        1 + 1 + 6 * 5 - 2,
        "header, step 0, 6 evals x (raw + ready averagers)"
    );
    assert_eq!(
        a, b,
        "same losses, bit for bit, and no row lost or duplicated"
    );
    let models = [
        "model.safetensors",
        "optimizer.safetensors",
        "averagers.safetensors",
    ];
    for f in models {
        let read = |run: &Path| {
            let mut v = tch::Tensor::read_safetensors(run.join("checkpoint").join(f)).unwrap();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let (x, y) = (read(&straight), read(&killed));
        let names =
            |v: &[(String, tch::Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&x), names(&y), "{f}: same tensors");
        for ((n, a), (_, b)) in x.iter().zip(&y) {
            assert!(a.equal(b), "{f}: {n} differs");
        }
    }
    // A finished run is not redone.
    let before = std::fs::read(killed.join("curves.csv")).unwrap();
    let o = lawa(&["train", "b.yaml"], dir.path());
    assert!(o.status.success());
    assert_eq!(std::fs::read(killed.join("curves.csv")).unwrap(), before);
}

#[test]
fn small_model_learns_well_below_the_unigram_entropy_within_a_cpu_minute() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 6, "bpe:1024");
    let ds = lawa_core::data::Dataset::open(&data).unwrap();
    let train_split = ds.split(lawa_core::data::Split::Train);
    let mut counts = vec![0f64; ds.meta().vocab_size as usize];
    let mut ids = Vec::new();
    train_split
        .read_i64(0, train_split.len() as usize, &mut ids)
        .unwrap();
    for id in ids {
        counts[id as usize] += 1.0;
    }
    let n: f64 = counts.iter().sum();
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0.0)
        .map(|c| -(c / n) * (c / n).ln())
        .sum();
    let yaml = format!(
        r#"name: learn
data: {}
out: {}
device: cpu
model: {{n_layer: 4, n_head: 4, n_embd: 128, block_size: 64}}
train: {{steps: 250, batch_size: 16, block_size: 64, lr: 2.0e-3, schedule: {{kind: cosine, warmup: 20, min_lr: 2.0e-4}}, seed: 1}}
eval: {{every: 250, windows: 64}}
"#,
        data.display(),
        dir.path().join("run").display()
    );
    let cfg: RunConfig = serde_yaml::from_str(&yaml).unwrap();
    let start = Instant::now();
    let outcome = train(&cfg.plan().unwrap(), |_, _| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "unigram entropy {entropy:.3} nats; val loss {:.3} after {secs:.0} s",
        outcome.final_val_loss
    );
    assert_eq!(outcome.status, RunStatus::Finished);
    // The budget is fixed work, not wall time: 250 steps of 1,024 tokens, about 15 s of this
    // 2-core CPU when alone (no timing assertion: tests share the machine).
    // "Well below": a perplexity at most half the unigram model's.
    assert!(
        outcome.final_val_loss < entropy - std::f64::consts::LN_2,
        "val loss {} not well below the unigram entropy {entropy}",
        outcome.final_val_loss
    );
}

#[test]
fn a_diverging_run_ends_cleanly_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let out = dir.path().join("run");
    // lr 1e6 without clipping: the loss overflows within a few steps.
    let yaml = run_yaml(&data, &out, 60, "")
        .replace("lr: 3.0e-3", "lr: 1.0e6\n  grad_clip: 0")
        .replace("min_lr: 3.0e-4", "min_lr: 1.0");
    let plan = serde_yaml::from_str::<RunConfig>(&yaml)
        .unwrap()
        .plan()
        .unwrap();
    let outcome = train(&plan, |_, _| {}).unwrap();
    assert_eq!(outcome.status, RunStatus::Diverged);
    assert!(outcome.step < 60);
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["status"], "diverged");
    // Running it again does not retry.
    assert_eq!(train(&plan, |_, _| {}).unwrap().status, RunStatus::Diverged);
    // The command says so in one line, and fails: it did not train the model asked for.
    std::fs::write(dir.path().join("d.yaml"), &yaml).unwrap();
    let o = lawa(&["train", "d.yaml"], dir.path());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{msg}");
    let line = msg.lines().last().unwrap_or_default();
    assert!(
        line.contains(&format!("diverged at step {}", outcome.step)) && line.contains("curves.csv"),
        "{msg}"
    );
}

#[test]
fn bad_configs_are_refused_with_the_field_named_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let out = dir.path().join("run");
    let good = run_yaml(&data, &out, 60, "");
    let cases = [
        (
            good.replace("  seed: 7", "  seed: 7\n  learning_rate: 1"),
            "learning_rate",
        ),
        (good.replace("lr: 3.0e-3", "lr: fast"), "train.lr"),
        (good.replace("lr: 3.0e-3", "lr: -1.0"), "train.lr = -1"),
        (good.replace("warmup: 5", "warmup: 500"), "warmup = 500"),
        (
            good.replace("every: 10, windows", "every: 0, windows"),
            "eval.every = 0",
        ),
        (
            good.replace("batch_size: 8", "batch_size: 0"),
            "train.batch_size = 0",
        ),
        (
            run_yaml(&data, &out, u64::MAX, ""),
            "train.steps = 18446744073709551615 is invalid",
        ),
        (
            good.replace("block_size: 32\n  grad", "block_size: 0\n  grad"),
            "train.block_size = 0",
        ),
        (
            good.replace("grad_accum: 2", "grad_accum: 0"),
            "train.grad_accum = 0",
        ),
        (
            good.replace("k: 3, nu: 4", "k: 0, nu: 4"),
            "averagers[0]: lawa: k = 0",
        ),
        (good.replace("decay: 0.9,", "decay: 1.5,"), "decay = 1.5"),
        (
            good.replace("{kind: lawa, k: 2, nu: 8}", "{kind: lawa, k: 3, nu: 4}"),
            "duplicate",
        ),
        (
            good.replace("block_size: 32\n  grad", "block_size: 64\n  grad"),
            "longer than the model's block size",
        ),
        (
            good.replace(&data.display().to_string(), "/nonexistent/data"),
            "/nonexistent/data",
        ),
        (
            good.replace("  seed: 7", "  seed: 7\n  cuda_graph: true"),
            "train.cuda_graph = true is not supported with model.dropout = 0.1",
        ),
        (
            good.replace("  seed: 7", "  seed: 7\n  cuda_graph: true")
                .replace("dropout: 0.1", "dropout: 0.0"),
            "train.cuda_graph = true needs a CUDA device; this run's device is Cpu",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let o = lawa(&["train", file.to_str().unwrap()], dir.path());
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} accepted");
        assert!(msg.contains(needle), "case {i}: {msg}");
        assert!(
            msg.contains(&format!("bad{i}.yaml")) || needle.contains("nonexistent"),
            "names the file: {msg}"
        );
        assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
        assert!(!out.exists(), "case {i} wrote into the run folder");
    }
    // A validation split shorter than a block: refused before the run folder is made, so the
    // config pointed back at good data then runs in it.
    let short = dir.path().join("short");
    std::fs::create_dir(&short).unwrap();
    for f in ["train.bin", "meta.json"] {
        std::fs::copy(data.join(f), short.join(f)).unwrap();
    }
    let val = std::fs::read(data.join("val.bin")).unwrap();
    std::fs::write(short.join("val.bin"), &val[..40]).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(short.join("meta.json")).unwrap()).unwrap();
    meta["val_tokens"] = 20.into();
    std::fs::write(short.join("meta.json"), meta.to_string()).unwrap();
    std::fs::write(
        dir.path().join("short.yaml"),
        run_yaml(&short, &out, 20, ""),
    )
    .unwrap();
    let o = lawa(&["train", "short.yaml"], dir.path());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{msg}");
    assert!(
        msg.contains("train.block_size = 32: ") && msg.contains("needs at least 33 tokens"),
        "{msg}"
    );
    assert!(!out.exists(), "the refused run wrote into its folder");
    // A run folder made by another config is refused, its files untouched.
    std::fs::write(dir.path().join("good.yaml"), run_yaml(&data, &out, 20, "")).unwrap();
    assert!(lawa(&["train", "good.yaml"], dir.path()).status.success());
    let before = std::fs::read(out.join("curves.csv")).unwrap();
    std::fs::write(dir.path().join("other.yaml"), run_yaml(&data, &out, 30, "")).unwrap();
    let o = lawa(&["train", "other.yaml"], dir.path());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different config"));
    assert_eq!(std::fs::read(out.join("curves.csv")).unwrap(), before);
    // A checkpoint of another model shape is refused, not overwritten.
    let ckpt = std::fs::read(out.join("checkpoint/model.safetensors")).unwrap();
    std::fs::remove_file(out.join("status.json")).unwrap();
    std::fs::remove_file(out.join("run.yaml")).unwrap();
    std::fs::write(
        dir.path().join("wide.yaml"),
        run_yaml(&data, &out, 20, "").replace("n_embd: 32", "n_embd: 48"),
    )
    .unwrap();
    let o = lawa(&["train", "wide.yaml"], dir.path());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("another model shape"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint/model.safetensors")).unwrap(),
        ckpt
    );
}

/// `out` naming the default folder (`runs/NAME`), however written, is the same config as no
/// `out`, whichever the run was started with: the run is found finished rather than refused.
#[test]
fn out_naming_the_default_folder_is_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let with_out = run_yaml(&data, Path::new("runs/t"), 10, "");
    let without = with_out.replace("out: runs/t\n", "");
    let dotted = with_out.replace("out: runs/t", "out: ./runs/t/");
    assert_ne!(with_out, without);
    for (order, configs) in [
        [&without, &with_out, &dotted],
        [&dotted, &without, &with_out],
    ]
    .into_iter()
    .enumerate()
    {
        let cwd = dir.path().join(format!("order{order}"));
        std::fs::create_dir(&cwd).unwrap();
        let curves = cwd.join("runs/t/curves.csv");
        for (i, yaml) in configs.into_iter().enumerate() {
            std::fs::write(cwd.join("run.yaml"), yaml).unwrap();
            let before = std::fs::read(&curves).ok();
            let o = lawa(&["train", "run.yaml"], &cwd);
            let msg = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "order {order}, case {i}: {msg}");
            if i > 0 {
                assert_eq!(
                    std::fs::read(&curves).ok(),
                    before,
                    "case {i} trained again"
                );
            }
        }
        // Another folder is another run.
        let elsewhere = with_out.replace("out: runs/t", "out: runs/u");
        std::fs::write(cwd.join("run.yaml"), elsewhere).unwrap();
        assert!(lawa(&["train", "run.yaml"], &cwd).status.success());
        assert!(cwd.join("runs/u/curves.csv").is_file());
    }
}

/// Checkpoints name the data's trained tokenizer; when its file is gone the run still trains
/// (it needs only the ids), warns once, and its checkpoints name none.
#[test]
fn checkpoints_name_a_trained_tokenizer_and_train_without_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 20, "bpe:300");
    let recorded = |run: &Path| {
        let config = run.join("checkpoint/config.json");
        lawa_experiments::vocabulary::recorded(&config).unwrap()
    };
    let named = dir.path().join("named");
    std::fs::write(dir.path().join("a.yaml"), run_yaml(&data, &named, 10, "")).unwrap();
    let o = lawa(&["train", "a.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let name = recorded(&named).unwrap();
    assert!(name.starts_with("bpe:300 vocab:"), "{name}");

    std::fs::remove_file(data.join("tokenizer.json")).unwrap();
    let unnamed = dir.path().join("unnamed");
    std::fs::write(dir.path().join("b.yaml"), run_yaml(&data, &unnamed, 10, "")).unwrap();
    let o = lawa(&["train", "b.yaml"], dir.path());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{msg}");
    assert_eq!(
        msg.matches("the checkpoints will not name their tokenizer")
            .count(),
        1,
        "{msg}"
    );
    assert_eq!(recorded(&unnamed), None);
}
