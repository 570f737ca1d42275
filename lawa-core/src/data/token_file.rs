use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::DataError;

/// A file of uint16 little-endian token ids (nanoGPT's `train.bin` / `val.bin`), read by
/// position.
///
/// Opening checks the length (even, non-zero); every read checks that the ids it returns are
/// below the vocabulary size, so only the tokens a run uses are ever checked, and a bad id is
/// reported with its file and position. The file is read with positioned reads, not mapped: a
/// file truncated while a run reads it gives an error naming it, not a crash.
pub struct TokenFile {
    path: PathBuf,
    file: File,
    tokens: u64,
    vocab_size: u32,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("tokens", &self.tokens)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl TokenFile {
    /// Opens `path`, whose ids must be below `vocab_size`.
    pub fn open(path: &Path, vocab_size: u32) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DataError::Missing {
                    path: path.to_owned(),
                    hint: String::new(),
                }
            } else {
                DataError::io(path, source)
            }
        })?;
        let meta = file.metadata().map_err(|e| DataError::io(path, e))?;
        if !meta.is_file() {
            return Err(DataError::io(
                path,
                std::io::Error::other("not a regular file"),
            ));
        }
        let bytes = meta.len();
        if bytes % 2 != 0 {
            return Err(DataError::OddLength {
                path: path.to_owned(),
                bytes,
            });
        }
        if bytes == 0 {
            return Err(DataError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(TokenFile {
            path: path.to_owned(),
            file,
            tokens: bytes / 2,
            vocab_size,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens (when opened).
    pub fn len(&self) -> u64 {
        self.tokens
    }

    /// Whether the file holds no tokens (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }

    /// The vocabulary size the ids are checked against.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The id at `position`.
    pub fn get(&self, position: u64) -> Result<u16, DataError> {
        let mut out = Vec::with_capacity(1);
        self.read_i64(position, 1, &mut out)?;
        Ok(out[0] as u16)
    }

    /// Appends the ids `start..start + len` to `out` as i64 (the dtype embeddings index with),
    /// checking each against the vocabulary.
    pub fn read_i64(&self, start: u64, len: usize, out: &mut Vec<i64>) -> Result<(), DataError> {
        let mut bytes = vec![0u8; len * 2];
        self.read_bytes(start, &mut bytes)?;
        let limit = self.vocab_size.min(u16::MAX as u32 + 1);
        for (i, c) in bytes.chunks_exact(2).enumerate() {
            let id = u16::from_le_bytes([c[0], c[1]]);
            if id as u32 >= limit {
                return Err(DataError::TokenOutOfRange {
                    path: self.path.clone(),
                    position: start + i as u64,
                    id,
                    vocab_size: self.vocab_size,
                });
            }
            out.push(id as i64);
        }
        Ok(())
    }

    /// The raw bytes of tokens `start..start + bytes.len() / 2`.
    fn read_bytes(&self, start: u64, bytes: &mut [u8]) -> Result<(), DataError> {
        let end = start + bytes.len() as u64 / 2;
        if end > self.tokens {
            return Err(DataError::io(
                &self.path,
                std::io::Error::other(format!(
                    "tokens {start}..{end} asked of a file of {}",
                    self.tokens
                )),
            ));
        }
        self.file.read_exact_at(bytes, start * 2).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "; the file shrank while in use (re-prepared or truncated?)"
            } else {
                ""
            };
            DataError::io(
                &self.path,
                std::io::Error::new(e.kind(), format!("{e}{hint}")),
            )
        })
    }

    /// Checks every id of the file against the vocabulary (reading it whole, in chunks).
    pub fn check_all_ids(&self) -> Result<(), DataError> {
        const CHUNK: u64 = 1 << 20;
        let mut out = Vec::with_capacity(CHUNK as usize);
        let mut start = 0;
        while start < self.tokens {
            let n = CHUNK.min(self.tokens - start);
            out.clear();
            self.read_i64(start, n as usize, &mut out)?;
            start += n;
        }
        Ok(())
    }

    /// Checks that windows of `block_size` tokens plus one target token fit in this split.
    pub fn check_block(&self, block_size: usize) -> Result<(), DataError> {
        if block_size == 0 {
            return Err(DataError::Zero { name: "block_size" });
        }
        let needed = block_size as u64 + 1;
        if self.len() < needed {
            return Err(DataError::BlockTooLong {
                path: self.path.clone(),
                block_size,
                needed,
                tokens: self.len(),
            });
        }
        Ok(())
    }
}
