//! Zero-shot tasks: per-request log-likelihoods equal transformers' on the same tokens (GPT-2 and
//! GPT-NeoX), metrics equal hand computations, the published layouts read, bad task files give
//! one error naming the file, line and field.

mod common;

use std::path::{Path, PathBuf};

use common::lawa;
use lawa_experiments::prepare::tokenizer::TextTokenizer;
use lawa_experiments::tasks::{encode_pair, read_examples, run_task, score, Request, TaskSpec};
use lawa_models::Model;
use serde_json::json;
use tch::{nn, Device};

fn python() -> PathBuf {
    PathBuf::from(std::env::var("LAWA_PYTHON").expect("LAWA_PYTHON"))
}

fn run_python(dir: &Path, code: &str, spec: &serde_json::Value) -> String {
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(code)
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

const REFERENCE: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
spec = json.load(open(sys.argv[1]))
m = AutoModelForCausalLM.from_pretrained(spec["dir"], dtype=torch.float32).eval()
L = spec["max_length"]
out = []
with torch.no_grad():
    for ctx, cont in spec["requests"]:
        inp = (ctx + cont)[-(L + 1):][:-1]
        logp = torch.log_softmax(m(torch.tensor([inp])).logits[0].float(), -1)
        n = len(cont)
        rows = logp[len(inp) - n:]
        ll = rows.gather(1, torch.tensor(cont).view(-1, 1)).sum().item()
        out.append([ll, bool((rows.argmax(-1) == torch.tensor(cont)).all())])
print(json.dumps(out))
"#;

/// A small GPT-2 trained for a few steps on bytes (so its predictions are not uniform), and the
/// dataset (its tokenizer is the byte tokenizer).
fn gpt2(dir: &Path) -> (PathBuf, PathBuf) {
    let data = common::sotu_subset(dir, 30, "byte");
    let yaml = format!(
        "name: t\ndata: {}\nout: {}\ndevice: cpu\nmodel: {{n_layer: 2, n_head: 2, n_embd: 32, block_size: 48}}\ntrain: {{steps: 30, batch_size: 8, block_size: 48, lr: 3.0e-3, schedule: {{kind: constant}}}}\neval: {{every: 30, windows: 2}}\n",
        data.display(),
        dir.join("run").display()
    );
    std::fs::write(dir.join("t.yaml"), yaml).unwrap();
    let o = lawa(&["train", "t.yaml"], dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir.join("run/checkpoint"), data)
}

fn requests(tokenizer: &TextTokenizer) -> Vec<Request> {
    let pairs = [
        ("The President said", " that the nation"),
        ("Congress has  ", "passed the law."),
        ("We", " will"),
        // Long enough to be cut from the left at 48 tokens.
        (
            "In the year of our Lord, the state of the Union is strong and our economy grows.",
            " Thank you.",
        ),
        ("", "Hello"),
    ];
    pairs
        .iter()
        .map(|(c, k)| encode_pair(tokenizer, c, k).unwrap())
        .collect()
}

#[test]
fn request_log_likelihoods_equal_transformers_on_gpt2_and_neox() {
    let dir = tempfile::tempdir().unwrap();
    let (gpt2_dir, _) = gpt2(dir.path());
    // A GPT-NeoX from transformers, vocabulary 257 (bytes), 48 positions.
    let neox_dir = dir.path().join("neox");
    let spec = json!({"models": [{
        "dir": neox_dir, "seed": 1, "tokens": [[1, 2]],
        "config": {"vocab_size": 257, "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                   "intermediate_size": 64, "max_position_embeddings": 48, "rotary_pct": 0.5,
                   "bos_token_id": 0, "eos_token_id": 0}
    }]});
    let spec_path = dir.path().join("neox.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../lawa-models/tests/reference/neox_reference.py");
    let o = std::process::Command::new(python())
        .arg(script)
        .arg("make-hf")
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let tokenizer = TextTokenizer::byte();
    let reqs = requests(&tokenizer);
    assert_eq!(
        reqs[1].continuation.len(),
        "  passed the law.".len(),
        "trailing spaces moved"
    );
    assert_eq!(reqs[4].context, [256], "an empty context is end-of-text");
    for model_dir in [&gpt2_dir, &neox_dir] {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::from_pretrained(vs.root(), model_dir).unwrap();
        for batch in [1, 3] {
            let ours = score(&model, &reqs, batch, 48).unwrap();
            let spec = json!({
                "dir": model_dir, "max_length": 48,
                "requests": reqs.iter().map(|r| (r.context.clone(), r.continuation.clone())).collect::<Vec<_>>(),
            });
            let theirs: Vec<(f64, bool)> =
                serde_json::from_str(&run_python(dir.path(), REFERENCE, &spec)).unwrap();
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a.loglik - b.0).abs())
                .fold(0.0, f64::max);
            println!(
                "{}: batch {batch}: max |ll diff| {worst:.2e}",
                model_dir.display()
            );
            assert!(worst <= 1e-4, "{worst}");
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.greedy == b.1));
        }
    }
}

#[test]
fn metrics_equal_hand_computations_and_the_cli_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data) = gpt2(dir.path());
    let p = dir.path();
    let task = p.join("hand.jsonl");
    let lines = [
        r#"{"context": "The President", "choices": ["said", "zzzqx"], "gold": 0}"#,
        r#"{"context": "We the", "choices": ["people", "q", "peoplepeople of the"], "gold": 2}"#,
        r#"{"contexts": ["I like the", "I like teh"], "continuation": " nation.", "gold": 1}"#,
        r#"{"context": "The state of the", "target": " Union"}"#,
        r#"{"context": "God bless", "target": " America"}"#,
    ];
    std::fs::write(&task, lines.join("\n")).unwrap();
    let spec: TaskSpec = task.to_str().unwrap().parse().unwrap();
    let tokenizer = TextTokenizer::byte();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::from_pretrained(vs.root(), &ckpt).unwrap();
    // By hand: the log-likelihood of each request, then each metric from its definition.
    let ll = |c: &str, k: &str| {
        score(&model, &[encode_pair(&tokenizer, c, k).unwrap()], 1, 48).unwrap()[0]
    };
    let pick = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
    };
    let mc = [
        (
            vec![
                ll("The President", " said").loglik,
                ll("The President", " zzzqx").loglik,
            ],
            vec![4.0, 5.0],
            0,
        ),
        (
            vec![
                ll("We the", " people").loglik,
                ll("We the", " q").loglik,
                ll("We the", " peoplepeople of the").loglik,
            ],
            vec![6.0, 1.0, 19.0],
            2,
        ),
    ];
    let wino = vec![
        ll("I like the", " nation.").loglik,
        ll("I like teh", " nation.").loglik,
    ];
    let lambada = [
        ll("The state of the", " Union"),
        ll("God bless", " America"),
    ];
    let acc: Vec<f64> = mc
        .iter()
        .map(|(l, _, g)| f64::from(pick(l) == *g))
        .chain([f64::from(pick(&wino) == 1)])
        .chain(lambada.iter().map(|s| f64::from(s.greedy)))
        .collect();
    let acc_norm: Vec<f64> = mc
        .iter()
        .map(|(l, n, g)| {
            let normed: Vec<f64> = l.iter().zip(n).map(|(a, b)| a / b).collect();
            f64::from(pick(&normed) == *g)
        })
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let se = |v: &[f64]| {
        let m = mean(v);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64 / v.len() as f64)
            .sqrt()
    };
    let ppl = (-(lambada[0].loglik + lambada[1].loglik) / 2.0).exp();
    let r = run_task(&spec, &model, &tokenizer, 4, 48).unwrap();
    assert_eq!(r.examples, 5);
    assert_eq!((r.acc, r.acc_se), (mean(&acc), se(&acc)));
    assert_eq!(
        (r.acc_norm, r.acc_norm_se),
        (Some(mean(&acc_norm)), Some(se(&acc_norm)))
    );
    // Batched with others, a request's fp32 log-probabilities move in the last bits.
    assert!((r.perplexity.unwrap() - ppl).abs() < 1e-5 * ppl);
    // Through the command line, with the dataset's tokenizer.
    let o = lawa(
        &[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--task",
            task.to_str().unwrap(),
            "--json",
        ],
        p,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json[0]["acc"].as_f64().unwrap(), r.acc);
    assert_eq!(json[0]["task"], "hand");
    // Two files of one name in different folders: reported apart, by folder.
    let copies = ["a", "b"].map(|f| {
        std::fs::create_dir_all(p.join(f)).unwrap();
        std::fs::copy(&task, p.join(f).join("hand.jsonl")).unwrap();
        p.join(f).join("hand.jsonl").to_str().unwrap().to_string()
    });
    let (c, d) = (ckpt.to_str().unwrap(), data.to_str().unwrap());
    let args = ["eval", "--checkpoint", c, "--data", d, "--json", "--task"];
    let o = lawa(
        &[&args[..], &[&copies[0], "--task", &copies[1]]].concat(),
        p,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&json[0]["task"], &json[1]["task"]),
        (&"a/hand".into(), &"b/hand".into())
    );
    assert_eq!(json[1]["acc"].as_f64().unwrap(), r.acc);
}

#[test]
fn published_layouts_read_and_bad_task_files_are_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let write = |name: &str, text: &str| {
        let path = p.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let piqa = write(
        "piqa.jsonl",
        r#"{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}"#,
    );
    let spec: TaskSpec = format!("piqa:{piqa}").parse().unwrap();
    let ex = read_examples(&spec).unwrap();
    assert_eq!(ex.len(), 1);
    let cases = [
        (
            "a.jsonl",
            "{\"context\": \"x\", \"choices\": [\"a\"], \"gold\": 0}\nnot json\n",
            "a.jsonl:2: not JSON",
        ),
        (
            "b.jsonl",
            r#"{"context": "x", "choices": ["a", "b"], "gold": 2}"#,
            "b.jsonl:1: `gold` = 2 is out of range",
        ),
        (
            "c.jsonl",
            r#"{"context": "x", "choices": [], "gold": 0}"#,
            "c.jsonl:1: `choices` is empty",
        ),
        (
            "d.jsonl",
            r#"{"context": "x", "gold": 0}"#,
            "d.jsonl:1: field `choices` is missing",
        ),
        (
            "e.jsonl",
            r#"{"goal": "x", "sol1": "a", "label": 0}"#,
            "e.jsonl:1: field `sol2` is missing",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write(name, text);
        let layout = if name == "e.jsonl" { "piqa:" } else { "" };
        let spec: TaskSpec = format!("{layout}{path}").parse().unwrap();
        let err = read_examples(&spec).unwrap_err().to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
    // A continuation longer than any window the model takes.
    let (ckpt, data) = gpt2(p);
    let long = write(
        "long.jsonl",
        &format!(
            "{{\"context\": \"x\", \"target\": \" {}\"}}",
            "y".repeat(60)
        ),
    );
    let o = lawa(
        &[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--task",
            &long,
        ],
        p,
    );
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("long.jsonl:1") && msg.contains("1 to 48"),
        "{msg}"
    );
    let o = lawa(
        &[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--task",
            "nope:x.jsonl",
        ],
        p,
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown task layout 'nope'"));
}
