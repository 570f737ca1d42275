//! Dataset preparation (`lawa prepare`, and sweeps that prepare their data): a text corpus ->
//! `train.bin`, `val.bin` (uint16 token ids) and `meta.json`.

pub mod corpus;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_core::data::{Dataset, DatasetMeta, SplitMethod, MAX_UINT16_VOCAB, META_FILE};
use rayon::prelude::*;

use corpus::{Corpus, Document};
use tokenizer::{TextTokenizer, TokenizerSpec};

/// What to prepare, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// A .txt file, a folder of .txt files, a .jsonl file with a `text` field per line, or
    /// `sotu` for the bundled State of the Union corpus.
    pub source: String,
    /// Output folder [default: data/SOURCE-TOKENIZER, e.g. data/sotu-bpe4096].
    pub out: Option<PathBuf>,
    /// The tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Fraction of the corpus held out for validation: whole documents when there are several,
    /// the tail of the text when there is one.
    pub val_fraction: f64,
    /// Replace an existing, different dataset in the output folder.
    pub force: bool,
}

/// A prepared dataset's location and whether this call made it.
#[derive(Debug)]
pub struct Prepared {
    /// The dataset folder.
    pub dir: PathBuf,
    /// False when an identical preparation was already there.
    pub created: bool,
}

fn resolve_source(source: &str) -> Result<(PathBuf, String)> {
    let path = PathBuf::from(source);
    if source == "sotu" && !path.exists() {
        return Ok((crate::assets::sotu_dir()?, "sotu".into()));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "corpus".into());
    Ok((path, name))
}

/// Prepares the dataset `args` describes (nothing to do when an identical preparation is
/// already in the output folder).
pub fn prepare(args: &PrepareOptions) -> Result<Prepared> {
    if !(args.val_fraction > 0.0 && args.val_fraction < 1.0) {
        bail!(
            "--val-fraction must be between 0 and 1 (exclusive), got {}",
            args.val_fraction
        );
    }
    let (source, name) = resolve_source(&args.source)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("data").join(format!(
            "{name}-{}",
            args.tokenizer.to_string().replace(':', "")
        ))
    });

    let started = Instant::now();
    // A ready-made vocabulary is loaded (and its cache checked) before any corpus work.
    let ready_made = match args.tokenizer {
        TokenizerSpec::Gpt2 => Some(TextTokenizer::gpt2()?),
        TokenizerSpec::Byte => Some(TextTokenizer::byte()),
        TokenizerSpec::Bpe(_) => None,
    };
    let corpus = Corpus::load(&source)?;
    if let Some(existing) = existing_preparation(&out, &corpus, args)? {
        tracing::info!(
            "{} already holds this preparation ({} train / {} val tokens); nothing to do",
            out.display(),
            existing.meta().train_tokens,
            existing.meta().val_tokens
        );
        return Ok(Prepared {
            dir: out,
            created: false,
        });
    }
    tracing::info!(
        "read {} documents, {:.1} MB from {}",
        corpus.documents.len(),
        corpus.bytes() as f64 / 1e6,
        source.display()
    );

    let (train_docs, val_docs, method) = split(&corpus.documents, args.val_fraction)?;
    let tokenizer = match (args.tokenizer, ready_made) {
        (TokenizerSpec::Bpe(n), _) => {
            tracing::info!("training a byte-level BPE of {n} tokens on the training split");
            TextTokenizer::train_bpe(n, train_docs.iter().map(|d| d.text.as_str()))?
        }
        (_, Some(tokenizer)) => tokenizer,
        (spec, None) => bail!("no tokenizer was loaded for {spec}"),
    };
    if tokenizer.vocab_size() > MAX_UINT16_VOCAB {
        bail!(
            "vocabulary size {} does not fit uint16 token ids (at most {MAX_UINT16_VOCAB})",
            tokenizer.vocab_size()
        );
    }
    let last_document_is_whole = method == SplitMethod::Document;
    let train = tokenize_documents(&tokenizer, &train_docs, last_document_is_whole, "train")?;
    let val = tokenize_documents(&tokenizer, &val_docs, true, "val")?;
    for (ids, split) in [(&train, "train"), (&val, "val")] {
        if ids.is_empty() {
            bail!(
                "{}: the {split} split holds no tokens; use a larger corpus or another --val-fraction",
                source.display()
            );
        }
    }

    let meta = DatasetMeta {
        tokenizer: tokenizer.spec().to_string(),
        tokenizer_file: None,
        vocab_size: tokenizer.vocab_size(),
        eot_token: Some(tokenizer.eot()),
        train_tokens: train.len() as u64,
        val_tokens: val.len() as u64,
        train_documents: train_docs.len() as u64,
        val_documents: val_docs.len() as u64,
        split: method,
        val_fraction: args.val_fraction,
        source: source.display().to_string(),
        source_sha256: corpus.sha256.clone(),
    };
    write_dataset(&out, &tokenizer, meta, &train, &val, args.force)?;
    let tokens = train.len() + val.len();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "wrote {}: {} train + {} val tokens ({}, vocab {}) in {secs:.1} s ({:.0} tokens/s)",
        out.display(),
        train.len(),
        val.len(),
        tokenizer.spec(),
        tokenizer.vocab_size(),
        tokens as f64 / secs
    );
    Ok(Prepared {
        dir: out,
        created: true,
    })
}

/// An identical earlier preparation in `out` (same corpus bytes, tokenizer and split), if any.
/// A different dataset there is an error unless `--force`.
fn existing_preparation(
    out: &Path,
    corpus: &Corpus,
    args: &PrepareOptions,
) -> Result<Option<Dataset>> {
    if !out.exists() {
        return Ok(None);
    }
    if !out.is_dir() {
        bail!("{}: exists and is not a folder", out.display());
    }
    if out.join(META_FILE).is_file() {
        if let Ok(existing) = Dataset::open(out) {
            let m = existing.meta();
            if m.source_sha256 == corpus.sha256
                && m.tokenizer == args.tokenizer.to_string()
                && m.val_fraction == args.val_fraction
            {
                return Ok(Some(existing));
            }
        }
    }
    let empty = std::fs::read_dir(out)
        .with_context(|| format!("{}: cannot list folder", out.display()))?
        .next()
        .is_none();
    if !empty && !args.force {
        bail!(
            "{}: already holds something else (another corpus, tokenizer or split); pass --force to replace it or choose another --out",
            out.display()
        );
    }
    Ok(None)
}

/// Splits documents into training and validation sets, deterministically.
///
/// Several documents: document `i` goes to validation when `floor((i + 1) F) > floor(i F)`,
/// which spreads `round(n F)` validation documents evenly through the corpus (at least one of
/// each kind). One document: cut at fraction `1 - F` of its text, moved forward to the next
/// place where every supported tokenizer splits anyway (preferably a line break), so the cut
/// never changes the tokens.
pub fn split(
    documents: &[Document],
    val_fraction: f64,
) -> Result<(Vec<Document>, Vec<Document>, SplitMethod)> {
    if documents.len() >= 2 {
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (i, doc) in documents.iter().enumerate() {
            let before = (i as f64 * val_fraction).floor();
            let after = ((i + 1) as f64 * val_fraction).floor();
            if after > before {
                val.push(doc.clone());
            } else {
                train.push(doc.clone());
            }
        }
        if val.is_empty() {
            if let Some(last) = train.pop() {
                val.push(last);
            }
        }
        if train.is_empty() {
            bail!("--val-fraction {val_fraction} leaves no training documents");
        }
        return Ok((train, val, SplitMethod::Document));
    }
    let doc = &documents[0];
    let text = doc.text.as_str();
    let target = ((text.len() as f64) * (1.0 - val_fraction)) as usize;
    let cut = safe_cut_at_or_after(text, target).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: a single document with no word break after {:.0} % of its text cannot be split by position; give several documents or a longer text",
            doc.name,
            (1.0 - val_fraction) * 100.0
        )
    })?;
    let (head, tail) = text.split_at(cut);
    let part = |suffix: &str, text: &str| Document {
        name: format!("{} ({suffix})", doc.name),
        text: text.to_string(),
    };
    Ok((
        vec![part("head", head)],
        vec![part("tail", tail)],
        SplitMethod::Position,
    ))
}

/// Whether byte offset `i` of `text` is a place where every supported pre-tokenizer (GPT-2's
/// regex, the byte-level BPE's, and bytes) has a token boundary anyway: right after a `\n` before
/// a non-space character, or between a non-space character and a space. No pre-token holds a
/// newline beside other characters, nor a non-space character followed by a space.
fn is_safe_cut(text: &str, i: usize) -> bool {
    let bytes = text.as_bytes();
    if i == 0 || i >= bytes.len() || !text.is_char_boundary(i) {
        return false;
    }
    let Some(next) = text[i..].chars().next() else {
        return false;
    };
    let Some(prev) = text[..i].chars().next_back() else {
        return false;
    };
    (prev == '\n' && !next.is_whitespace()) || (!prev.is_whitespace() && next == ' ')
}

/// The first [`is_safe_cut`] offset at or after `from`, preferring a line break within 4 KiB.
fn safe_cut_at_or_after(text: &str, from: usize) -> Option<usize> {
    let newline = (from..text.len().min(from + 4096))
        .find(|&i| text.as_bytes()[i.max(1) - 1] == b'\n' && is_safe_cut(text, i));
    newline.or_else(|| (from..text.len()).find(|&i| is_safe_cut(text, i)))
}

/// Pieces of about `target` bytes, cut only at [`safe_cut_at_or_after`] boundaries, so that
/// tokenizing the pieces separately gives exactly the tokens of the whole.
fn chunks(text: &str, target: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        match safe_cut_at_or_after(text, start + target) {
            Some(cut) => {
                out.push(&text[start..cut]);
                start = cut;
            }
            None => break,
        }
    }
    out.push(&text[start..]);
    out
}

/// Token ids of a split's documents, in order, each followed by end-of-text (except, when
/// `last_document_is_whole` is false, the last: the head of a document cut by position).
/// Uses every core; shows progress.
pub fn tokenize_documents(
    tokenizer: &TextTokenizer,
    docs: &[Document],
    last_document_is_whole: bool,
    label: &str,
) -> Result<Vec<u16>> {
    let pieces: Vec<(usize, &str)> = docs
        .iter()
        .enumerate()
        .flat_map(|(d, doc)| chunks(&doc.text, 1 << 16).into_iter().map(move |c| (d, c)))
        .collect();
    let total: u64 = pieces.iter().map(|(_, c)| c.len() as u64).sum();
    let bar = crate::progress::bar(total, &format!("tokenizing {label}"), "bytes");
    let encoded: Vec<Vec<u32>> = pieces
        .par_iter()
        .map(|(_, text)| {
            let ids = tokenizer.encode(text);
            bar.inc(text.len() as u64);
            ids
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut ids = Vec::with_capacity(encoded.iter().map(Vec::len).sum::<usize>() + docs.len());
    let eot = tokenizer.eot() as u16;
    for (i, piece_ids) in encoded.iter().enumerate() {
        ids.extend(piece_ids.iter().map(|&id| id as u16));
        let doc = pieces[i].0;
        let doc_ends = pieces.get(i + 1).is_none_or(|(next, _)| *next != doc);
        if doc_ends && (last_document_is_whole || doc + 1 < docs.len()) {
            ids.push(eot);
        }
    }
    Ok(ids)
}

fn to_le_bytes(ids: &[u16]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// Writes the dataset into a fresh sibling folder, then moves it into place, so `out` holds
/// either the old dataset or the whole new one.
fn write_dataset(
    out: &Path,
    tokenizer: &TextTokenizer,
    mut meta: DatasetMeta,
    train: &[u16],
    val: &[u16],
    force: bool,
) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("{}: cannot create folder", parent.display()))?;
    let base = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    let staging = parent.join(format!(".{base}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| -> Result<()> {
        std::fs::create_dir(&staging)
            .with_context(|| format!("{}: cannot create folder", staging.display()))?;
        meta.tokenizer_file = tokenizer.save_into(&staging)?;
        for (name, ids) in [("train.bin", train), ("val.bin", val)] {
            let path = staging.join(name);
            lawa_core::checkpoint::write_atomic(&path, &to_le_bytes(ids))
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        meta.save(&staging)
            .with_context(|| format!("{}: cannot write meta.json", staging.display()))?;
        Dataset::open(&staging).context("checking the written dataset")?;
        if out.exists() {
            if !force && std::fs::read_dir(out)?.next().is_some() {
                bail!("{}: appeared while preparing; not replaced", out.display());
            }
            let old = parent.join(format!(".{base}.old-{}", std::process::id()));
            std::fs::rename(out, &old)
                .with_context(|| format!("{}: cannot move aside", out.display()))?;
            std::fs::rename(&staging, out)
                .with_context(|| format!("{}: cannot move into place", out.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&staging, out)
                .with_context(|| format!("{}: cannot move into place", out.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n: usize) -> Vec<Document> {
        (0..n)
            .map(|i| Document {
                name: format!("d{i}"),
                text: format!("document {i}\n"),
            })
            .collect()
    }

    #[test]
    fn document_split_is_even_and_deterministic() {
        let (train, val, method) = split(&docs(20), 0.1).unwrap();
        assert_eq!(method, SplitMethod::Document);
        let names: Vec<_> = val.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["d9", "d19"]);
        assert_eq!(train.len(), 18);
        // At least one validation document even when F * n < 1.
        let (train, val, _) = split(&docs(3), 0.05).unwrap();
        assert_eq!((train.len(), val.len()), (2, 1));
    }

    #[test]
    fn single_document_is_cut_after_a_newline() {
        let text = "line one\nline two\nline three\nline four\n".to_string();
        let d = vec![Document {
            name: "x".into(),
            text: text.clone(),
        }];
        let (train, val, method) = split(&d, 0.5).unwrap();
        assert_eq!(method, SplitMethod::Position);
        assert_eq!(train[0].text, "line one\nline two\nline three\n");
        assert_eq!(val[0].text, "line four\n");
        assert_eq!(format!("{}{}", train[0].text, val[0].text), text);
    }

    #[test]
    fn chunks_rejoin_to_the_text_and_cut_only_after_newlines() {
        let text = "alpha beta\n\n  gamma\ndelta\n".repeat(500);
        let pieces = chunks(&text, 100);
        assert!(pieces.len() > 10);
        assert_eq!(pieces.concat(), text);
        for p in &pieces[1..] {
            assert!(
                !p.starts_with(char::is_whitespace),
                "cut at a line break: {p:?}"
            );
        }
        // One long line: cut between words, the space going with the next piece.
        let line = "word ".repeat(1000);
        let pieces = chunks(&line, 100);
        assert_eq!(pieces.concat(), line);
        assert!(pieces.len() > 10);
        for p in &pieces[1..] {
            assert!(p.starts_with(" w"), "{p:?}");
        }
    }
}
