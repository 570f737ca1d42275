//! Writing a dataset: token ids appended to `train.bin` / `val.bin` in a staging folder as they
//! come, then published whole. A folder holding only lawa's files is swapped in one rename; one
//! that also holds other files (`--force`) has only lawa's files replaced, behind a `meta.json`
//! marked incomplete, so a crash never leaves a folder that reads as a finished dataset.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::checkpoint::{publish_dir, staging_dir, sync_dir, write_atomic};
use lawa_core::data::{DatasetMeta, Split, META_FILE};

use super::tokenizer::TOKENIZER_FILE;

/// The files lawa writes into a dataset folder.
pub const DATASET_FILES: [&str; 4] = ["train.bin", "val.bin", META_FILE, TOKENIZER_FILE];

/// A token file being appended to.
struct TokenWriter {
    path: PathBuf,
    out: BufWriter<File>,
    tokens: u64,
}

impl TokenWriter {
    fn create(path: PathBuf) -> Result<Self> {
        let file =
            File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
        Ok(TokenWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            tokens: 0,
        })
    }

    fn append(&mut self, ids: &[u16]) -> Result<()> {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        self.out
            .write_all(&bytes)
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_all())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        Ok(self.tokens)
    }
}

/// The two token files of a dataset being written into a staging folder.
pub struct DatasetWriter {
    staging: PathBuf,
    train: TokenWriter,
    val: TokenWriter,
}

impl DatasetWriter {
    /// Starts a dataset for `out` in a fresh staging folder beside it (`.NAME.partial-PID`).
    pub fn create(out: &Path) -> Result<Self> {
        let staging = staging_dir(out)
            .with_context(|| format!("{}: cannot create a staging folder", out.display()))?;
        Ok(DatasetWriter {
            train: TokenWriter::create(staging.join(Split::Train.file_name()))?,
            val: TokenWriter::create(staging.join(Split::Val.file_name()))?,
            staging,
        })
    }

    /// The staging folder (for the tokenizer file).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Appends ids to a split.
    pub fn append(&mut self, split: Split, ids: &[u16]) -> Result<()> {
        match split {
            Split::Train => self.train.append(ids),
            Split::Val => self.val.append(ids),
        }
    }

    /// Tokens written so far to each split.
    pub fn tokens(&self) -> (u64, u64) {
        (self.train.tokens, self.val.tokens)
    }

    /// Finishes both files and writes `meta.json` (with the token counts): the staging folder
    /// now holds a complete dataset.
    pub fn finish(self, mut meta: DatasetMeta) -> Result<PathBuf> {
        meta.train_tokens = self.train.finish()?;
        meta.val_tokens = self.val.finish()?;
        meta.save(&self.staging)
            .with_context(|| format!("{}: cannot write meta.json", self.staging.display()))?;
        Ok(self.staging)
    }

    /// Drops an unfinished dataset.
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// Whether `dir` is missing, empty, or holds nothing but lawa's dataset files.
pub fn holds_only_dataset_files(dir: &Path) -> Result<bool> {
    crate::train::run_dir::empty_or_owned(dir, |name| {
        DATASET_FILES.contains(&name) || crate::train::run_dir::is_temporary(name)
    })
}

/// Moves a complete staging folder to `out`: swapped whole when `out` holds only a dataset (or
/// nothing), else (other files beside it, `--force`) lawa's files replaced one by one behind an
/// incomplete `meta.json`.
pub fn publish(staging: &Path, out: &Path) -> Result<()> {
    let swap = |staging: &Path| {
        publish_dir(staging, out)
            .with_context(|| format!("{}: cannot move into place", out.display()))
    };
    if holds_only_dataset_files(out)? {
        return swap(staging);
    }
    let meta_path = out.join(META_FILE);
    let mut marker = DatasetMeta::load(&staging.join(META_FILE))?;
    marker.incomplete = true;
    let text = serde_json::to_string_pretty(&marker)?;
    write_atomic(&meta_path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", meta_path.display()))?;
    for name in DATASET_FILES {
        let (from, to) = (staging.join(name), out.join(name));
        if name == META_FILE {
            continue;
        }
        if from.exists() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("{}: cannot move into place", to.display()))?;
        } else if to.exists() {
            std::fs::remove_file(&to)
                .with_context(|| format!("{}: cannot remove", to.display()))?;
        }
    }
    sync_dir(out)?;
    std::fs::rename(staging.join(META_FILE), &meta_path)
        .with_context(|| format!("{}: cannot move into place", meta_path.display()))?;
    sync_dir(out)?;
    std::fs::remove_dir_all(staging)
        .with_context(|| format!("{}: cannot remove", staging.display()))
}

/// Refuses an output path that is a file, or a folder holding something other than a dataset
/// (unless `force`).
pub fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("{}: exists and is not a folder", out.display());
    }
    if !force && !holds_only_dataset_files(out)? {
        bail!(
            "{}: holds files that are not a dataset's; choose another --out (or pass --force to replace lawa's files there and keep the others)",
            out.display()
        );
    }
    Ok(())
}
