//! `lawa posthoc`: LAWA over a saved checkpoint series equals the online LAWA of the run that
//! saved it; bad studies are refused before anything is written; a re-run scores nothing twice.

mod common;

use std::path::{Path, PathBuf};

use common::lawa;
use lawa_experiments::results::{read_rows, ComputeRow, CurveRow, TaskRow};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A small GPT-2 run at a high learning rate that evaluates LAWA(3, 4) online and keeps a
/// checkpoint every 4 steps.
fn trained_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = common::sotu_subset(dir, 20, "byte");
    let run = dir.join("run");
    let yaml = format!(
        r#"name: online
data: {}
out: {}
device: cpu
model: {{n_layer: 2, n_head: 2, n_embd: 32, block_size: 32}}
train: {{steps: 40, batch_size: 8, block_size: 32, lr: 1.0e-2, schedule: {{kind: constant, warmup: 4}}, seed: 5}}
eval: {{every: 8, windows: 12, batch_size: 4}}
checkpoint: {{every: 8, series_every: 4}}
averagers:
  - {{kind: lawa, k: 3, nu: 4}}
  - {{kind: lawa, k: 2, nu: 8}}
"#,
        data.display(),
        run.display()
    );
    write(dir, "run.yaml", &yaml);
    let o = lawa(&["train", "run.yaml"], dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (data, run)
}

fn study(dir: &Path, data: &Path, run: &Path, extra: &str) -> String {
    format!(
        "name: study\ncheckpoints: {}\ndata: {}\nresults: {}\nlr: 1.0e-2\neval: {{windows: 12, block_size: 32, batch_size: 4}}\nlawa: {{k: [3, 2], nu: [4, 8]}}\nsteps: {{every: 8}}\ngpu_hours_per_step: 0.5\ndevice: cpu\n{extra}",
        run.join("series").display(),
        data.display(),
        dir.join("results").display()
    )
}

#[test]
fn post_hoc_lawa_equals_the_online_lawa_of_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = trained_run(dir.path());
    let series: Vec<_> = std::fs::read_dir(run.join("series")).unwrap().collect();
    assert_eq!(series.len(), 10, "steps 4, 8, ..., 40");
    // Each checkpoint names the tokenizer of its data.
    for config in [run.join("series/step4"), run.join("checkpoint")] {
        let text = std::fs::read_to_string(config.join("config.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["lawa_tokenizer"], "byte", "{}", config.display());
    }
    let task = write(
        dir.path(),
        "hand.jsonl",
        "{\"context\": \"The President\", \"choices\": [\" said\", \" zzzqx\"], \"gold\": 0}\n\
         {\"context\": \"We the\", \"choices\": [\" people\", \" q\"], \"gold\": 0}\n\
         {\"context\": \"The state of the\", \"target\": \" Union\"}\n",
    );
    write(
        dir.path(),
        "study.yaml",
        &study(
            dir.path(),
            &data,
            &run,
            &format!("tasks: [{}]\n", task.display()),
        ),
    );
    let o = lawa(&["posthoc", "study.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = dir.path().join("results/study");
    let online: Vec<CurveRow> = read_rows(&run.join("curves.csv")).unwrap();
    let posthoc: Vec<CurveRow> = read_rows(&results.join("curves.csv")).unwrap();
    let mut compared = 0;
    let mut worst: f64 = 0.0;
    for p in &posthoc {
        let Some(o) = online
            .iter()
            .find(|o| o.step == p.step && o.weights == p.weights)
        else {
            continue;
        };
        worst = worst.max((p.val_loss - o.val_loss).abs());
        compared += 1;
    }
    println!("post hoc vs online: {compared} evaluations, largest difference {worst:e}");
    // Steps 8..40 every 8: raw, lawa_k3_nu4 and lawa_k2_nu8 online (k2 nu4 and k3 nu8 are
    // post hoc only).
    assert_eq!(compared, 5 * 3);
    assert_eq!(
        worst, 0.0,
        "the same weights on the same windows, bit for bit"
    );
    // The paired error is there for averaged rows, and the figures of a post-hoc study.
    assert!(posthoc
        .iter()
        .filter(|r| r.weights != "raw")
        .all(|r| r.gain_se.is_some()));
    let compute: Vec<ComputeRow> = read_rows(&results.join("compute_saved.csv")).unwrap();
    assert_eq!(compute.len(), 5 * 4);
    for c in compute.iter().filter(|c| c.steps_saved.is_some()) {
        assert_eq!(c.gpu_hours_saved, c.steps_saved.map(|s| s * 0.5));
    }
    for f in [
        "posthoc_perplexity",
        "compute_saved",
        "lawa_gain_vs_step",
        "loss_raw_vs_lawa",
    ] {
        assert!(results.join(format!("figures/{f}.png")).is_file(), "{f}");
    }
    // Tasks: every evaluated weights scored (acc, acc_norm and LAMBADA's perplexity); the raw
    // rows equal `lawa eval --task` on the same checkpoint.
    let tasks: Vec<TaskRow> = read_rows(&results.join("tasks.csv")).unwrap();
    assert_eq!(tasks.len(), posthoc.len() * 3);
    for step in [8, 40] {
        let o = lawa(
            &[
                "eval",
                "--checkpoint",
                run.join(format!("series/step{step}")).to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--task",
                task.to_str().unwrap(),
                "--batch-size",
                "4",
                "--json",
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let raw = |metric: &str| {
            tasks
                .iter()
                .find(|t| t.step == step && t.weights == "raw" && t.metric == metric)
                .unwrap()
                .value
        };
        assert_eq!(raw("acc"), json[0]["acc"].as_f64().unwrap());
        assert_eq!(raw("perplexity"), json[0]["perplexity"].as_f64().unwrap());
    }
    assert!(results.join("figures/task_accuracy.png").is_file());
    // A re-run has nothing left to score.
    let before = std::fs::read(results.join("curves.csv")).unwrap();
    let o = lawa(&["posthoc", "study.yaml"], dir.path());
    assert!(o.status.success());
    assert_eq!(std::fs::read(results.join("curves.csv")).unwrap(), before);
}

#[test]
fn bad_studies_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = trained_run(dir.path());
    let good = study(dir.path(), &data, &run, "");
    // The same corpus in another tokenizer's ids.
    let o = lawa(
        &[
            "prepare",
            "corpus",
            "--out",
            "bpe",
            "--tokenizer",
            "bpe:300",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bpe = dir.path().join("bpe");
    let cases = [
        (
            good.replace(&data.display().to_string(), &bpe.display().to_string()),
            "but the model was trained on data made with byte",
        ),
        (good.replace("k: [3, 2]", "k: [0]"), "lawa.k = 0"),
        (
            good.replace("nu: [4, 8]", "nu: [6]"),
            "needs the checkpoint of step 10",
        ),
        (good.replace("/series", "/nowhere"), "nowhere"),
        (
            good.replace("gpu_hours_per_step: 0.5", "gpu_hours_per_step: -1"),
            "gpu_hours_per_step",
        ),
        (
            good.replace("block_size: 32", "block_size: 64"),
            "longer than the model's 32",
        ),
        (good.replace("device: cpu", "device: cuda:3"), "cuda:3"),
        (good + "windows: 3\n", "windows"),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let file = format!("bad{i}.yaml");
        write(dir.path(), &file, yaml);
        let o = lawa(&["posthoc", &file], dir.path());
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} accepted");
        assert!(msg.contains(needle), "case {i}: {msg}");
        assert_eq!(msg.trim().lines().count(), 1, "case {i}: {msg}");
        assert!(
            !dir.path().join("results").exists(),
            "case {i} wrote results"
        );
    }
}
