//! Streaming preparation at corpus scale: generates a corpus of several gigabytes (seeded text
//! from the SOTU vocabulary) three times over — a folder of `.txt` files, `.jsonl.zst` shards and
//! Parquet shards — prepares each with `lawa prepare --tokenizer gpt2` (the release binary),
//! and prints wall time, tokens/s and peak RSS side by side, checks that the three outputs are
//! identical, then times 1 and 2 tokenizing threads on the zstd shards.
//!
//! cargo build --release -p lawa-experiments --bin lawa
//! LAWA_BENCH_CORPUS_MB=2000 cargo bench -p lawa-experiments --bench prepare_stream

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Words to build documents from: every word of the SOTU corpus, so that GPT-2's BPE sees
/// realistic English tokens.
fn vocabulary() -> Result<Vec<String>> {
    let sotu = lawa_experiments::assets::sotu_dir()?;
    let mut words = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&sotu)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") {
            for w in std::fs::read_to_string(&path)?.split_whitespace() {
                words.insert(w.to_string());
            }
        }
    }
    Ok(words.into_iter().collect())
}

/// Seeded documents of 1 to 16 KB, `total` bytes in all, handed out one at a time.
fn documents(
    total: u64,
    words: &[String],
    mut each: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut written = 0u64;
    while written < total {
        let target = rng.gen_range(1_000..16_000);
        let mut doc = String::with_capacity(target + 64);
        while doc.len() < target {
            // Zipf-like: low indices are common.
            let r: f64 = rng.gen();
            let i = ((r * r * r) * words.len() as f64) as usize;
            doc.push_str(&words[i.min(words.len() - 1)]);
            doc.push(if rng.gen_ratio(1, 14) { '\n' } else { ' ' });
        }
        written += doc.len() as u64;
        each(doc)?;
    }
    Ok(())
}

/// The three forms of one corpus.
fn generate(dir: &Path, total: u64) -> Result<[PathBuf; 3]> {
    let words = vocabulary()?;
    let (txt, zst, pq) = (dir.join("txt"), dir.join("zst"), dir.join("parquet"));
    for d in [&txt, &zst, &pq] {
        std::fs::create_dir_all(d)?;
    }
    const SHARDS: u64 = 8;
    let per_shard = total / SHARDS + 1;
    let mut shard_docs: Vec<String> = Vec::new();
    let (mut shard, mut shard_bytes, mut n) = (0u64, 0u64, 0u64);
    let flush = |shard: u64, docs: &mut Vec<String>| -> Result<()> {
        let mut encoder = zstd::Encoder::new(
            std::fs::File::create(zst.join(format!("shard{shard:02}.jsonl.zst")))?,
            3,
        )?;
        for d in docs.iter() {
            writeln!(encoder, "{}", serde_json::json!({ "text": d }))?;
        }
        encoder.finish()?;
        let texts: Vec<Option<&str>> = docs.iter().map(|d| Some(d.as_str())).collect();
        lawa_experiments::prepare::parquet::write_text_column(
            &pq.join(format!("shard{shard:02}.parquet")),
            "text",
            &texts,
        )?;
        docs.clear();
        Ok(())
    };
    documents(total, &words, |doc| {
        let folder = txt.join(format!("{:04}", n / 1000));
        if n % 1000 == 0 {
            std::fs::create_dir_all(&folder)?;
        }
        std::fs::write(folder.join(format!("{n:07}.txt")), &doc)?;
        n += 1;
        shard_bytes += doc.len() as u64;
        shard_docs.push(doc);
        if shard_bytes >= per_shard {
            flush(shard, &mut shard_docs)?;
            shard += 1;
            shard_bytes = 0;
        }
        Ok(())
    })?;
    if !shard_docs.is_empty() {
        flush(shard, &mut shard_docs)?;
    }
    println!(
        "generated {n} documents, {:.2} GB of text",
        total as f64 / 1e9
    );
    Ok([txt, zst, pq])
}

/// Runs a command, returning its wall time and peak resident memory (VmHWM, polled).
fn measure(cmd: &mut Command) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting lawa")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("lawa prepare failed: {status}");
            }
            return Ok((started.elapsed(), peak));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn prepare(
    lawa: &Path,
    source: &Path,
    out: &Path,
    threads: Option<usize>,
) -> Result<(Duration, u64, u64)> {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(lawa);
    cmd.args(["prepare"])
        .arg(source)
        .arg("--out")
        .arg(out)
        .args(["--tokenizer", "gpt2"])
        .env("LAWA_LOG", "warn");
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let (wall, peak) = measure(&mut cmd)?;
    let meta = lawa_core::data::Dataset::open(out)?.meta().clone();
    Ok((wall, peak, meta.train_tokens + meta.val_tokens))
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let lawa = root.join("target/release/lawa");
    if !lawa.is_file() {
        bail!(
            "build the release binary first: cargo build --release -p lawa-experiments --bin lawa"
        );
    }
    let mb: u64 = std::env::var("LAWA_BENCH_CORPUS_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let work = root.join("target/prepare-stream");
    std::fs::create_dir_all(&work)?;
    let marker = work.join(format!("generated-{mb}mb"));
    let sources = if marker.exists() {
        [work.join("txt"), work.join("zst"), work.join("parquet")]
    } else {
        for d in ["txt", "zst", "parquet"] {
            let _ = std::fs::remove_dir_all(work.join(d));
        }
        let s = generate(&work, mb * 1_000_000)?;
        std::fs::write(&marker, "")?;
        s
    };
    println!(
        "{:<16} {:>10} {:>14} {:>12}",
        "corpus form", "wall s", "tokens/s", "peak RSS MB"
    );
    let mut outputs = Vec::new();
    for source in &sources {
        let out = work.join(format!(
            "out-{}",
            source.file_name().unwrap().to_string_lossy()
        ));
        let (wall, peak, tokens) = prepare(&lawa, source, &out, None)?;
        println!(
            "{:<16} {:>10.1} {:>14.0} {:>12.0}",
            source.file_name().unwrap().to_string_lossy(),
            wall.as_secs_f64(),
            tokens as f64 / wall.as_secs_f64(),
            peak as f64 / 1e6
        );
        outputs.push(out);
    }
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap_or_default();
    for f in ["train.bin", "val.bin"] {
        let first = read(&outputs[0], f);
        for o in &outputs[1..] {
            if read(o, f) != first {
                bail!(
                    "{}/{f} differs from {}/{f}",
                    o.display(),
                    outputs[0].display()
                );
            }
        }
    }
    println!("identical train.bin and val.bin from all three forms");
    for threads in [1, 2] {
        let out = work.join(format!("out-threads{threads}"));
        let (wall, peak, tokens) = prepare(&lawa, &sources[1], &out, Some(threads))?;
        println!(
            "zst, {threads} thread{}: {:.1} s, {:.0} tokens/s, peak RSS {:.0} MB",
            if threads == 1 { "" } else { "s" },
            wall.as_secs_f64(),
            tokens as f64 / wall.as_secs_f64(),
            peak as f64 / 1e6
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(())
}
