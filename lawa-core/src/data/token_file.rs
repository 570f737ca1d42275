use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::DataError;

/// A memory-mapped file of uint16 little-endian token ids (nanoGPT's `train.bin` / `val.bin`).
///
/// Opening checks that the length is even and non-zero and that every id is below the
/// vocabulary size, so later reads cannot fail.
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
    vocab_size: u32,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("tokens", &self.len())
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl TokenFile {
    /// Maps `path` and validates it against `vocab_size`.
    pub fn open(path: &Path, vocab_size: u32) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DataError::Missing {
                    path: path.to_owned(),
                    hint: String::new(),
                }
            } else {
                DataError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let io = |source| DataError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = file.metadata().map_err(io)?.len();
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
        // SAFETY: the file is opened read-only; like every reader of nanoGPT's format we assume
        // nobody truncates it while it is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let token_file = TokenFile {
            path: path.to_owned(),
            map,
            vocab_size,
        };
        token_file.check_ids()?;
        Ok(token_file)
    }

    fn check_ids(&self) -> Result<(), DataError> {
        let limit = self.vocab_size.min(u16::MAX as u32 + 1);
        for (position, chunk) in self.map.chunks_exact(2).enumerate() {
            let id = u16::from_le_bytes([chunk[0], chunk[1]]);
            if id as u32 >= limit {
                return Err(DataError::TokenOutOfRange {
                    path: self.path.clone(),
                    position: position as u64,
                    id,
                    vocab_size: self.vocab_size,
                });
            }
        }
        Ok(())
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.map.len() as u64 / 2
    }

    /// Whether the file holds no tokens (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The vocabulary size the ids were checked against.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The id at `position`. Panics if `position >= len()`.
    pub fn get(&self, position: u64) -> u16 {
        let i = position as usize * 2;
        u16::from_le_bytes([self.map[i], self.map[i + 1]])
    }

    /// Appends the ids `start..start + len` to `out` as i64 (the dtype embeddings index with).
    /// Panics if the range runs past the end.
    pub fn extend_i64(&self, start: u64, len: usize, out: &mut Vec<i64>) {
        let bytes = &self.map[start as usize * 2..(start as usize + len) * 2];
        out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64),
        );
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
