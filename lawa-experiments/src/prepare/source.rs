//! A corpus as a stream of documents, read one at a time whatever its size: `.txt` files (one
//! document each), JSON Lines (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`; one document per line) and
//! Parquet files (one document per row), alone or in a folder searched recursively in path
//! order. Compressed input is decompressed as it is read, never unpacked to disk. A document
//! that cannot be read names its file and line (or row); with `skip_bad` it is counted and
//! skipped instead.
//!
//! Crates: `flate2` (gzip) and `zstd` (both already in the tree through tch), and `parquet`
//! (Apache Arrow's Rust implementation, without Arrow itself: its row API reads one column).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// How a file's documents are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A text file: one document.
    Txt,
    /// JSON Lines, one object with a text field per line, maybe compressed.
    Jsonl(Compression),
    /// A Parquet file with a text column.
    Parquet,
}

/// The compression of a JSON Lines file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain text.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

impl Format {
    /// The format of a file, from its name; `None` for files a corpus folder does not read.
    pub fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        Some(if name.ends_with(".txt") {
            Format::Txt
        } else if name.ends_with(".jsonl") {
            Format::Jsonl(Compression::None)
        } else if name.ends_with(".jsonl.gz") {
            Format::Jsonl(Compression::Gzip)
        } else if name.ends_with(".jsonl.zst") {
            Format::Jsonl(Compression::Zstd)
        } else if name.ends_with(".parquet") {
            Format::Parquet
        } else {
            return None;
        })
    }
}

/// One file of a corpus.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// Its path relative to the corpus folder (empty for a corpus that is one file).
    pub relative: String,
    /// How its documents are stored.
    pub format: Format,
    /// Its size on disk.
    pub bytes: u64,
}

/// The files of a corpus: the file itself, or every readable file of a folder, recursively,
/// sorted by path. Symbolic links to folders are followed once: a folder reached again (a
/// link loop, or two links to one folder) is not read twice.
pub fn list_files(source: &Path) -> Result<Vec<SourceFile>> {
    let meta = std::fs::metadata(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("{}: corpus not found", source.display())
        } else {
            anyhow::anyhow!("{}: {e}", source.display())
        }
    })?;
    if !meta.is_dir() {
        let format = Format::of(source).unwrap_or(Format::Txt);
        return Ok(vec![SourceFile {
            path: source.to_owned(),
            relative: String::new(),
            format,
            bytes: meta.len(),
        }]);
    }
    let mut paths = Vec::new();
    let mut seen = HashSet::new();
    collect(source, &mut paths, &mut seen)?;
    paths.sort();
    if paths.is_empty() {
        bail!(
            "{}: folder holds no corpus files (.txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet)",
            source.display()
        );
    }
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?
                .len();
            let relative = path
                .strip_prefix(source)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let format = Format::of(&path).unwrap_or(Format::Txt);
            Ok(SourceFile {
                path,
                relative,
                format,
                bytes,
            })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    let real =
        std::fs::canonicalize(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
    if !seen.insert(real) {
        tracing::warn!(
            "{}: a folder already read (a link loop?); skipped",
            dir.display()
        );
        return Ok(());
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .path();
        if path.is_dir() {
            collect(&path, out, seen)?;
        } else if Format::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// A fingerprint of the corpus that costs no reading: every file's relative path, size and
/// modification time. Equal fingerprints mean an earlier preparation can be reused as is.
pub fn fingerprint(files: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for f in files {
        let modified = std::fs::metadata(&f.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(format!("{}\0{}\0{modified}\n", f.relative, f.bytes));
    }
    crate::assets::hex(&hasher.finalize())
}

/// One document of a corpus.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from (`file`, `file:line` or `file:row N`).
    pub name: String,
    /// Its text.
    pub text: String,
}

/// How documents are read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The field (JSON Lines) or column (Parquet) holding the text.
    pub text_field: String,
    /// Skip documents that cannot be read instead of stopping.
    pub skip_bad: bool,
}

/// What reading a corpus found besides its documents.
#[derive(Debug, Clone, Default)]
pub struct ReadStats {
    /// sha256 over every file's relative path and bytes, in order (the bytes on disk, before
    /// decompression).
    pub sha256: String,
    /// Documents skipped as unreadable (only with `skip_bad`).
    pub skipped: u64,
}

/// Reads the documents of `files`, in order, calling `each` with every document that holds
/// some non-blank text. `bytes_read` counts the bytes read from disk, for progress.
pub fn read_documents(
    files: &[SourceFile],
    options: &ReadOptions,
    bytes_read: &Arc<AtomicU64>,
    mut each: impl FnMut(Document) -> Result<()>,
) -> Result<ReadStats> {
    let mut hasher = Sha256::new();
    let mut skipped = 0u64;
    let several = files.len() > 1 || !files[0].relative.is_empty();
    for file in files {
        if several {
            hasher.update(file.relative.as_bytes());
            hasher.update([0]);
        }
        let mut emit = |doc: Document| -> Result<()> {
            if doc.text.trim().is_empty() {
                return Ok(());
            }
            each(doc)
        };
        let mut bad = |problem: anyhow::Error| -> Result<()> {
            if options.skip_bad {
                tracing::warn!("skipped: {problem:#}");
                skipped += 1;
                Ok(())
            } else {
                Err(problem.context("stopping (pass --skip-bad to skip unreadable documents)"))
            }
        };
        match file.format {
            Format::Txt => read_txt(file, &mut hasher, bytes_read, &mut emit, &mut bad)?,
            Format::Jsonl(c) => read_jsonl(
                file,
                c,
                options,
                &mut hasher,
                bytes_read,
                &mut emit,
                &mut bad,
            )?,
            Format::Parquet => {
                crate::prepare::parquet::read(file, options, bytes_read, &mut emit, &mut bad)?;
                hash_file(&file.path, &mut hasher)?;
            }
        }
    }
    Ok(ReadStats {
        sha256: crate::assets::hex(&hasher.finalize()),
        skipped,
    })
}

/// A reader that hashes and counts the bytes passing through.
struct Tap<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
    bytes: &'a AtomicU64,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<()> {
    let mut file = open(path)?;
    std::io::copy(&mut file, hasher).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(())
}

type Emit<'a> = dyn FnMut(Document) -> Result<()> + 'a;
type Bad<'a> = dyn FnMut(anyhow::Error) -> Result<()> + 'a;

fn read_txt(
    file: &SourceFile,
    hasher: &mut Sha256,
    bytes_read: &AtomicU64,
    emit: &mut Emit,
    bad: &mut Bad,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(file.bytes as usize);
    let mut tap = Tap {
        inner: open(&file.path)?,
        hasher,
        bytes: bytes_read,
    };
    tap.read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", file.path.display()))?;
    match String::from_utf8(bytes) {
        Ok(text) => emit(Document {
            name: file.path.display().to_string(),
            text,
        }),
        Err(e) => bad(anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            file.path.display(),
            e.utf8_error().valid_up_to()
        )),
    }
}

fn read_jsonl(
    file: &SourceFile,
    compression: Compression,
    options: &ReadOptions,
    hasher: &mut Sha256,
    bytes_read: &AtomicU64,
    emit: &mut Emit,
    bad: &mut Bad,
) -> Result<()> {
    let tap = Tap {
        inner: open(&file.path)?,
        hasher,
        bytes: bytes_read,
    };
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(tap),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(tap)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(tap)
                .with_context(|| format!("{}: not a zstd stream", file.path.display()))?,
        ),
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        let name = format!("{}:{number}", file.path.display());
        let n = reader.read_until(b'\n', &mut line).with_context(|| {
            format!("{name}: cannot read (corrupt or truncated {compression:?} data?)")
        })?;
        if n == 0 {
            return Ok(());
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            bad(anyhow::anyhow!("{name}: not UTF-8"))?;
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match document_text(text, &options.text_field) {
            Ok(text) => emit(Document { name, text })?,
            Err(problem) => bad(anyhow::anyhow!("{name}: {problem}"))?,
        }
    }
}

/// The text field of one JSON line.
fn document_text(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(t)) => Ok(t.clone()),
        Some(_) => Err(format!("field `{field}` is not a string")),
        None if value.is_object() => Err(format!(
            "line has no `{field}` field (choose another with --text-field)"
        )),
        None => Err("not a JSON object".into()),
    }
}
