//! Reading a text corpus: a `.txt` file, a folder of `.txt` files, or a `.jsonl` file whose lines
//! are objects with a `text` field. Each file (or JSON line) is one document.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// One document of a corpus.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from (`file` or `file:line`).
    pub name: String,
    /// Its text.
    pub text: String,
}

/// A corpus read into memory, with a checksum of what was read.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The path it was read from.
    pub source: PathBuf,
    /// Its documents, in a deterministic order (folders sorted by path).
    pub documents: Vec<Document>,
    /// sha256 over every file's path (relative to the source) and bytes, in order.
    pub sha256: String,
}

impl Corpus {
    /// Total bytes of text.
    pub fn bytes(&self) -> usize {
        self.documents.iter().map(|d| d.text.len()).sum()
    }

    /// Reads `source`.
    pub fn load(source: &Path) -> Result<Corpus> {
        let meta = std::fs::metadata(source).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{}: corpus not found", source.display())
            } else {
                anyhow::anyhow!("{}: {e}", source.display())
            }
        })?;
        let mut hasher = Sha256::new();
        let mut documents = Vec::new();
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_txt(source, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!("{}: folder holds no .txt files", source.display());
            }
            for file in files {
                let rel = file.strip_prefix(source).unwrap_or(&file);
                hasher.update(rel.to_string_lossy().as_bytes());
                hasher.update([0]);
                let text = read_text(&file, &mut hasher)?;
                documents.push(Document {
                    name: file.display().to_string(),
                    text,
                });
            }
        } else if source.extension().is_some_and(|e| e == "jsonl") {
            let text = read_text(source, &mut hasher)?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let name = format!("{}:{}", source.display(), i + 1);
                let value: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{name}: not a JSON object"))?;
                match value.get("text") {
                    Some(serde_json::Value::String(t)) => documents.push(Document {
                        name,
                        text: t.clone(),
                    }),
                    Some(_) => bail!("{name}: field `text` is not a string"),
                    None => bail!("{name}: line has no `text` field"),
                }
            }
        } else {
            let text = read_text(source, &mut hasher)?;
            documents.push(Document {
                name: source.display().to_string(),
                text,
            });
        }
        documents.retain(|d| !d.text.trim().is_empty());
        if documents.is_empty() {
            bail!("{}: corpus holds no text", source.display());
        }
        Ok(Corpus {
            source: source.to_owned(),
            documents,
            sha256: crate::assets::hex(&hasher.finalize()),
        })
    }
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list folder", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .path();
        if path.is_dir() {
            collect_txt(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_text(path: &Path, hasher: &mut Sha256) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    hasher.update(&bytes);
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}
