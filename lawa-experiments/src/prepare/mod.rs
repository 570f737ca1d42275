//! Dataset preparation (`lawa prepare`, and sweeps that prepare their data): a corpus ->
//! `train.bin`, `val.bin` (uint16 token ids, nanoGPT's format), `meta.json`, streamed.
//!
//! Documents are read one at a time ([`source`]), tokenized in batches on every core, and
//! appended to the token files as they come ([`mod@write`]), so memory does not grow with the corpus:
//! the bound is one batch of documents ([`BATCH_BYTES`] of text and its tokens), the largest
//! single document, and for `bpe:N` the vocabulary's training sample ([`sample`]). The split
//! ([`split`]) is decided by document index, so it is the same however the corpus is read.
//! For a corpus that fits in memory the output is what the earlier in-memory preparation wrote.

pub mod parquet;
pub mod sample;
pub mod source;
pub mod split;
pub mod tokenizer;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_core::data::{Dataset, DatasetMeta, Split, SplitMethod, MAX_UINT16_VOCAB, META_FILE};
use rayon::prelude::*;

use sample::BpeSample;
use source::{list_files, read_documents, Document, ReadOptions, SourceFile};
use split::{chunks, position_cut, SplitRule};
use tokenizer::{TextTokenizer, TokenizerSpec};
use write::{check_out, publish, DatasetWriter};

/// Text tokenized per batch (the documents of a batch are tokenized in parallel).
pub const BATCH_BYTES: usize = 16 << 20;

/// The default budget of the `bpe:N` training sample.
pub const DEFAULT_BPE_SAMPLE_BYTES: usize = 16 << 20;

/// What to prepare, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// A corpus file or folder (see [`source`]), or `sotu` for the bundled State of the Union
    /// corpus.
    pub source: String,
    /// Output folder [default: data/SOURCE-TOKENIZER, e.g. data/sotu-bpe4096].
    pub out: Option<PathBuf>,
    /// The tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Fraction of the corpus held out for validation: whole documents when there are several,
    /// the tail of the text when there is one.
    pub val_fraction: f64,
    /// Replace an existing, different dataset in the output folder (only lawa's files).
    pub force: bool,
    /// The JSON field or Parquet column holding each document's text.
    pub text_field: String,
    /// Skip unreadable documents (counted in `meta.json`) instead of stopping.
    pub skip_bad: bool,
    /// Bytes of training text a `bpe:N` vocabulary is trained on, at most.
    pub bpe_sample_bytes: usize,
    /// Threads for tokenizing [default: every core].
    pub threads: Option<usize>,
}

impl PrepareOptions {
    /// Options with the defaults of `lawa prepare`.
    pub fn new(source: impl Into<String>, tokenizer: TokenizerSpec) -> Self {
        PrepareOptions {
            source: source.into(),
            out: None,
            tokenizer,
            val_fraction: 0.05,
            force: false,
            text_field: "text".into(),
            skip_bad: false,
            bpe_sample_bytes: DEFAULT_BPE_SAMPLE_BYTES,
            threads: None,
        }
    }

    /// What besides the corpus and tokenizer shapes the output, as recorded in `meta.json`.
    fn settings(&self) -> String {
        let mut s = format!("text_field={}", self.text_field);
        if matches!(self.tokenizer, TokenizerSpec::Bpe(_)) {
            s.push_str(&format!(" bpe_sample_bytes={}", self.bpe_sample_bytes));
        }
        if self.skip_bad {
            s.push_str(" skip_bad");
        }
        s
    }
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
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "corpus".into());
    let name = stem
        .trim_end_matches(".gz")
        .trim_end_matches(".zst")
        .trim_end_matches(".jsonl")
        .trim_end_matches(".parquet")
        .trim_end_matches(".txt")
        .to_string();
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
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.map(|n| {
        if n > cores {
            tracing::warn!(
                "--threads {n}: this process may use {cores} cores; tokenizing on {cores}"
            );
        }
        n.min(cores)
    });
    if args.bpe_sample_bytes == 0 && matches!(args.tokenizer, TokenizerSpec::Bpe(_)) {
        bail!("--bpe-sample-mb 0 leaves no text to train the vocabulary on: give at least 1");
    }
    let (source, name) = resolve_source(&args.source)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("data").join(format!("{name}-{}", args.tokenizer.dir_suffix()))
    });
    let files = list_files(&source)?;
    let fingerprint = source::fingerprint(&files);
    let existing = existing_meta(&out)?;
    if let Some(m) = existing.as_ref().filter(|m| same_settings(m, args)) {
        if m.source_fingerprint == fingerprint {
            return Ok(already(out, m));
        }
    }
    check_out(&out, args.force)?;
    let nanogpt = out.join(Split::Train.file_name()).exists() && existing.is_none();
    let other_settings = existing.as_ref().is_some_and(|m| !same_settings(m, args));
    if !args.force && (nanogpt || other_settings) {
        return Err(AnotherDataset(out).into());
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create folder", parent.display()))?;
    lawa_core::checkpoint::remove_stale_staging(parent)
        .with_context(|| format!("{}: cannot clear stale staging folders", parent.display()))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .context("starting the tokenizing threads")?;
    let staging = pool.install(|| build(args, &source, &files, &out, fingerprint))?;
    if let Some(m) = &existing {
        let built = DatasetMeta::load(&staging.join(META_FILE))?;
        if same_settings(m, args) && m.source_sha256 == built.source_sha256 {
            let _ = std::fs::remove_dir_all(&staging);
            if m.source_fingerprint != built.source_fingerprint || m.settings != built.settings {
                // The same dataset, made before lawa recorded these (or from moved files):
                // record them, so the next run recognizes it without reading the corpus.
                let mut updated = m.clone();
                updated.source_fingerprint = built.source_fingerprint.clone();
                updated.settings = built.settings.clone();
                updated.save(&out)?;
            }
            return Ok(already(out, m));
        }
        if !args.force {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(AnotherDataset(out).into());
        }
    }
    publish(&staging, &out)?;
    Dataset::open(&out).context("checking the written dataset")?;
    tracing::info!("wrote {}", out.display());
    Ok(Prepared {
        dir: out,
        created: true,
    })
}

/// The output folder holds another dataset (another corpus, tokenizer or split) and
/// [`PrepareOptions::force`] is off: each caller says how to choose (`lawa prepare`'s
/// `--force` and `--out`, a sweep's `data.prepare.out`).
#[derive(Debug, thiserror::Error)]
#[error("{}: already holds another dataset (another corpus, tokenizer or split)", .0.display())]
pub struct AnotherDataset(pub PathBuf);

/// The report of an identical preparation found in `out`.
fn already(out: PathBuf, m: &DatasetMeta) -> Prepared {
    tracing::info!(
        "{} already holds this preparation ({} train / {} val tokens); nothing to do",
        out.display(),
        m.train_tokens,
        m.val_tokens
    );
    Prepared {
        dir: out,
        created: false,
    }
}

/// The description of the dataset in `out`, if it holds a readable one.
fn existing_meta(out: &Path) -> Result<Option<DatasetMeta>> {
    if !out.join(META_FILE).is_file() {
        return Ok(None);
    }
    Ok(Dataset::open(out).ok().map(|d| d.meta().clone()))
}

/// Whether an earlier preparation used the same tokenizer, split and reading settings (one made
/// before lawa recorded its settings counts as the same when its content turns out to be).
fn same_settings(m: &DatasetMeta, args: &PrepareOptions) -> bool {
    m.tokenizer == args.tokenizer.to_string()
        && m.val_fraction == args.val_fraction
        && (m.settings == args.settings() || m.settings.is_empty())
}

/// Reads, tokenizes and writes the corpus into a staging folder beside `out`; returns it.
fn build(
    args: &PrepareOptions,
    source: &Path,
    files: &[SourceFile],
    out: &Path,
    fingerprint: String,
) -> Result<PathBuf> {
    let started = Instant::now();
    let read = ReadOptions {
        text_field: args.text_field.clone(),
        skip_bad: args.skip_bad,
    };
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    tracing::info!(
        "preparing {} ({} files, {:.1} MB) with {} on {} threads",
        source.display(),
        files.len(),
        total_bytes as f64 / 1e6,
        args.tokenizer,
        rayon::current_num_threads()
    );
    let tokenizer = make_tokenizer(args, files, &read)?;
    let mut writer = DatasetWriter::create(out)?;
    let corpus = Corpus {
        source,
        files,
        read: &read,
        total_bytes,
        fingerprint,
    };
    match tokenize_into(args, &corpus, &tokenizer, &mut writer) {
        Ok(meta) => {
            log_prepared(&meta, &tokenizer, started);
            writer.finish(meta)
        }
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

/// The corpus being prepared: where it is, its files and how they are read.
struct Corpus<'a> {
    source: &'a Path,
    files: &'a [SourceFile],
    read: &'a ReadOptions,
    total_bytes: u64,
    fingerprint: String,
}

/// The tokenizer asked for: a ready-made one, or a `bpe:N` trained on a sample of the corpus.
fn make_tokenizer(
    args: &PrepareOptions,
    files: &[SourceFile],
    read: &ReadOptions,
) -> Result<TextTokenizer> {
    let tokenizer = match &args.tokenizer {
        TokenizerSpec::Bpe(n) => {
            let texts = bpe_sample(args, files, read)?;
            tracing::info!(
                "training a byte-level BPE of {n} tokens on {:.1} MB of training text",
                texts.iter().map(String::len).sum::<usize>() as f64 / 1e6
            );
            let tokenizer = TextTokenizer::train_bpe(*n, texts.iter().map(String::as_str))?;
            if tokenizer.vocab_size() < *n {
                tracing::warn!(
                    "bpe:{n}: the training text gives only {} tokens (no pair of tokens left \
                     that occurs twice): the dataset's vocabulary (meta.json's vocab_size, and \
                     the model's) is {0}, not {n}",
                    tokenizer.vocab_size()
                );
            }
            tokenizer
        }
        spec => TextTokenizer::ready_made(spec)?,
    };
    if tokenizer.vocab_size() > MAX_UINT16_VOCAB {
        bail!(
            "vocabulary size {} does not fit uint16 token ids (at most {MAX_UINT16_VOCAB})",
            tokenizer.vocab_size()
        );
    }
    Ok(tokenizer)
}

/// Streams the corpus's documents through the tokenizer into `writer`'s staging folder; returns
/// the dataset's description.
fn tokenize_into(
    args: &PrepareOptions,
    corpus: &Corpus,
    tokenizer: &TextTokenizer,
    writer: &mut DatasetWriter,
) -> Result<DatasetMeta> {
    let source = corpus.source;
    let mut sink = Sink::new(
        tokenizer,
        SplitRule {
            fraction: args.val_fraction,
        },
    );
    let progress = Progress::new(corpus.total_bytes, "tokenizing");
    let stats = read_documents(corpus.files, corpus.read, &progress.bytes, |doc| {
        sink.push(doc, writer)?;
        progress.show(sink.documents, writer.tokens());
        Ok(())
    })?;
    if sink.documents + sink.batch.len() as u64 == 0 {
        bail!("{}: corpus holds no text", source.display());
    }
    let method = sink.finish(writer, args.val_fraction)?;
    progress.done();
    let (train, val) = writer.tokens();
    for (tokens, split) in [(train, "train"), (val, "val")] {
        if tokens == 0 {
            bail!(
                "{}: the {split} split holds no tokens; use a larger corpus or another --val-fraction",
                source.display()
            );
        }
    }
    Ok(DatasetMeta {
        tokenizer: tokenizer.spec().to_string(),
        tokenizer_file: tokenizer.save_into(writer.staging())?,
        vocab_size: tokenizer.vocab_size(),
        eot_token: Some(tokenizer.eot()),
        train_tokens: train,
        val_tokens: val,
        train_documents: sink.train_documents,
        val_documents: sink.val_documents,
        split: method,
        val_fraction: args.val_fraction,
        source: source.display().to_string(),
        source_sha256: stats.sha256,
        source_fingerprint: corpus.fingerprint.clone(),
        settings: args.settings(),
        skipped_documents: stats.skipped,
        incomplete: false,
    })
}

/// Logs what a preparation made, and how fast.
fn log_prepared(meta: &DatasetMeta, tokenizer: &TextTokenizer, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let (train, val) = (meta.train_tokens, meta.val_tokens);
    tracing::info!(
        "{} train + {} val tokens ({}, vocab {}) in {secs:.1} s ({:.0} tokens/s){}",
        train,
        val,
        tokenizer.spec(),
        tokenizer.vocab_size(),
        (train + val) as f64 / secs,
        if meta.skipped_documents > 0 {
            format!("; {} unreadable documents skipped", meta.skipped_documents)
        } else {
            String::new()
        }
    );
}

/// The `bpe:N` training sample: a first pass over the corpus, keeping a bounded, seeded sample
/// of the training documents (see [`sample`]).
fn bpe_sample(
    args: &PrepareOptions,
    files: &[SourceFile],
    read: &ReadOptions,
) -> Result<Vec<String>> {
    let rule = SplitRule {
        fraction: args.val_fraction,
    };
    let mut sample = BpeSample::new(args.bpe_sample_bytes);
    let mut count = 0u64;
    let mut any_val = false;
    let mut first: Option<String> = None;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let progress = Progress::new(total, "sampling for the BPE");
    read_documents(files, read, &progress.bytes, |doc| {
        if count == 0 {
            first = Some(doc.text.clone());
        } else {
            first = None;
        }
        if rule.is_val(count) {
            any_val = true;
        } else {
            sample.offer(count, &doc.text);
        }
        count += 1;
        progress.show(count, (0, 0));
        Ok(())
    })?;
    progress.done();
    match (count, first) {
        (1, Some(text)) => {
            let cut = position_cut(&text, args.val_fraction).unwrap_or(text.len());
            sample.replace_with(&text[..cut]);
        }
        _ if !any_val && count >= 2 => sample.withdraw(count - 1),
        _ => {}
    }
    Ok(sample.into_texts())
}

/// Where tokenized documents go: validation documents straight to `val.bin`; each training
/// document held back until the next one arrives, because the last one may turn out to be
/// needed elsewhere (as the only validation document, or cut by position when the corpus is one
/// document).
struct Sink<'a> {
    tokenizer: &'a TextTokenizer,
    rule: SplitRule,
    batch: Vec<Document>,
    batch_bytes: usize,
    held: Option<(Document, Vec<u16>)>,
    documents: u64,
    train_documents: u64,
    val_documents: u64,
}

impl<'a> Sink<'a> {
    fn new(tokenizer: &'a TextTokenizer, rule: SplitRule) -> Self {
        Sink {
            tokenizer,
            rule,
            batch: Vec::new(),
            batch_bytes: 0,
            held: None,
            documents: 0,
            train_documents: 0,
            val_documents: 0,
        }
    }

    fn push(&mut self, doc: Document, writer: &mut DatasetWriter) -> Result<()> {
        self.batch_bytes += doc.text.len();
        self.batch.push(doc);
        if self.batch_bytes >= BATCH_BYTES {
            self.flush(writer)?;
        }
        Ok(())
    }

    /// Tokenizes the batch in parallel and routes its documents, in order.
    fn flush(&mut self, writer: &mut DatasetWriter) -> Result<()> {
        let docs = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let tokens = tokenize(self.tokenizer, &docs)?;
        let eot = self.tokenizer.eot() as u16;
        for (doc, mut ids) in docs.into_iter().zip(tokens) {
            let index = self.documents;
            self.documents += 1;
            ids.push(eot);
            if self.rule.is_val(index) {
                writer.append(Split::Val, &ids)?;
                self.val_documents += 1;
            } else if let Some((_, previous)) = self.held.replace((doc, ids)) {
                writer.append(Split::Train, &previous)?;
                self.train_documents += 1;
            }
        }
        Ok(())
    }

    /// Places the held document and says how the corpus was split.
    fn finish(&mut self, writer: &mut DatasetWriter, val_fraction: f64) -> Result<SplitMethod> {
        self.flush(writer)?;
        let eot = self.tokenizer.eot() as u16;
        let Some((doc, ids)) = self.held.take() else {
            bail!("the corpus holds no training document");
        };
        if self.documents == 1 {
            // One document: cut by position; the head is training text without end-of-text.
            let cut = position_cut(&doc.text, val_fraction).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: a single document with no word break after {:.0} % of its text cannot be split by position; give several documents or a longer text",
                    doc.name,
                    (1.0 - val_fraction) * 100.0
                )
            })?;
            let (head, tail) = doc.text.split_at(cut);
            writer.append(Split::Train, &encode(self.tokenizer, head)?)?;
            let mut tail_ids = encode(self.tokenizer, tail)?;
            tail_ids.push(eot);
            writer.append(Split::Val, &tail_ids)?;
            (self.train_documents, self.val_documents) = (1, 1);
            return Ok(SplitMethod::Position);
        }
        if self.val_documents == 0 {
            // Fewer than 1 / F documents: the last one is the validation split.
            writer.append(Split::Val, &ids)?;
            self.val_documents = 1;
        } else {
            writer.append(Split::Train, &ids)?;
            self.train_documents += 1;
        }
        Ok(SplitMethod::Document)
    }
}

/// Token ids of each document (no end-of-text), pieces of every document tokenized in parallel.
fn tokenize(tokenizer: &TextTokenizer, docs: &[Document]) -> Result<Vec<Vec<u16>>> {
    let pieces: Vec<(usize, &str)> = docs
        .iter()
        .enumerate()
        .flat_map(|(d, doc)| {
            let size = if tokenizer.pieces_are_safe() {
                1 << 16
            } else {
                usize::MAX
            };
            chunks(&doc.text, size).into_iter().map(move |c| (d, c))
        })
        .collect();
    let encoded: Vec<Vec<u32>> = pieces
        .par_iter()
        .map(|(_, text)| tokenizer.encode(text))
        .collect::<Result<_>>()?;
    let mut out: Vec<Vec<u16>> = vec![Vec::new(); docs.len()];
    for ((d, _), ids) in pieces.iter().zip(encoded) {
        out[*d].extend(ids.iter().map(|&id| id as u16));
    }
    Ok(out)
}

/// Token ids of one text, its pieces tokenized in parallel.
fn encode(tokenizer: &TextTokenizer, text: &str) -> Result<Vec<u16>> {
    let doc = Document {
        name: String::new(),
        text: text.to_string(),
    };
    Ok(tokenize(tokenizer, std::slice::from_ref(&doc))?.remove(0))
}

/// Progress over the corpus bytes: a bar with documents, tokens and tokens/s on a terminal, a
/// log line every 30 s otherwise.
struct Progress {
    bytes: Arc<AtomicU64>,
    bar: indicatif::ProgressBar,
    started: Instant,
    last_log: std::cell::Cell<Instant>,
    label: &'static str,
}

impl Progress {
    fn new(total: u64, label: &'static str) -> Self {
        Progress {
            bytes: Arc::new(AtomicU64::new(0)),
            bar: crate::progress::bar(total, label, "bytes"),
            started: Instant::now(),
            last_log: std::cell::Cell::new(Instant::now()),
            label,
        }
    }

    fn show(&self, documents: u64, (train, val): (u64, u64)) {
        let read = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let tokens = train + val;
        self.bar.set_position(read);
        self.bar.set_message(format!(
            "{documents} docs, {tokens} tokens, {:.0} tokens/s",
            tokens as f64 / secs
        ));
        if !crate::progress::interactive() && self.last_log.get().elapsed().as_secs() >= 30 {
            self.last_log.set(Instant::now());
            let total = self.bar.length().unwrap_or(0).max(1);
            let eta = secs / read.max(1) as f64 * total.saturating_sub(read) as f64;
            tracing::info!(
                "{}: {:.1} % of {:.1} MB, {documents} documents, {tokens} tokens, {:.0} tokens/s, ETA {eta:.0} s",
                self.label,
                100.0 * read as f64 / total as f64,
                total as f64 / 1e6,
                tokens as f64 / secs
            );
        }
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// Token ids of a split's documents, in order, each followed by end-of-text (except, when
/// `last_document_is_whole` is false, the last: the head of a document cut by position), as a
/// preparation writes them. Used by tests and benchmarks to compare with other tokenizers.
pub fn tokenize_documents(
    tokenizer: &TextTokenizer,
    docs: &[Document],
    last_document_is_whole: bool,
) -> Result<Vec<u16>> {
    let eot = tokenizer.eot() as u16;
    let mut ids = Vec::new();
    for (i, doc_ids) in tokenize(tokenizer, docs)?.into_iter().enumerate() {
        ids.extend(doc_ids);
        if last_document_is_whole || i + 1 < docs.len() {
            ids.push(eot);
        }
    }
    Ok(ids)
}
