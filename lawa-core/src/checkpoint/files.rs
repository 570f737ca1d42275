//! The tensors of a checkpoint, whatever files hold them: one `.safetensors` file, shards listed
//! in `model.safetensors.index.json`, a `pytorch_model.bin`, or `.bin` shards listed in
//! `pytorch_model.bin.index.json` — the forms Hugging Face checkpoints (Pythia's revisions among
//! them) are published in. Every tensor is located once (name, dtype, shape, file, offset) and
//! read when asked for, whole or a range of its elements at a time, so a caller streams a
//! checkpoint without holding it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::safetensors::{Dtype, Header};
use super::torch_bin;
use super::CheckpointError;

/// Where one tensor's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Which of the checkpoint's files.
    pub file: usize,
    /// Offset of its first byte in that file.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.bytes / self.dtype.size() as u64
    }

    /// The shape as libtorch takes it.
    pub fn shape_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }
}

/// The tensors of one checkpoint, by name, and the open files they live in.
#[derive(Debug)]
pub struct TensorFiles {
    /// The checkpoint's weights file, or its shards' index: what messages name.
    pub path: PathBuf,
    files: Vec<(PathBuf, File)>,
    entries: BTreeMap<String, TensorEntry>,
    /// Safetensors headers, for their checksums.
    headers: Vec<(usize, Header)>,
}

/// The weight files of a checkpoint folder, in the order Hugging Face looks for them.
const SINGLE: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
const INDEXES: [&str; 2] = [
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
];

impl TensorFiles {
    /// Opens a checkpoint: a folder (one of `model.safetensors`,
    /// `model.safetensors.index.json` with its shards, `pytorch_model.bin`,
    /// `pytorch_model.bin.index.json` with its shards), or one `.safetensors` / `.bin` file.
    pub fn open(path: &Path) -> Result<TensorFiles, CheckpointError> {
        let bad = |reason: String| CheckpointError::BadFile {
            path: path.to_owned(),
            reason,
        };
        if path.is_file() {
            return Self::from_files(path, vec![path.to_owned()]);
        }
        if !path.is_dir() {
            return Err(CheckpointError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such checkpoint folder or file",
                ),
            ));
        }
        if let Some(single) = SINGLE.iter().map(|f| path.join(f)).find(|p| p.is_file()) {
            return Self::from_files(&single, vec![single.clone()]);
        }
        if let Some(index) = INDEXES.iter().map(|f| path.join(f)).find(|p| p.is_file()) {
            let shards = read_index(&index)?;
            return Self::from_files(&index, shards.into_iter().map(|s| path.join(s)).collect());
        }
        Err(bad(format!(
            "holds no weights ({}, or a sharded index {})",
            SINGLE.join(", "),
            INDEXES.join(", ")
        )))
    }

    fn from_files(path: &Path, files: Vec<PathBuf>) -> Result<TensorFiles, CheckpointError> {
        let mut out = TensorFiles {
            path: path.to_owned(),
            files: Vec::new(),
            entries: BTreeMap::new(),
            headers: Vec::new(),
        };
        for (i, file_path) in files.into_iter().enumerate() {
            let file = File::open(&file_path).map_err(|e| CheckpointError::io(&file_path, e))?;
            let entries: Vec<TensorEntry> = if is_bin(&file_path) {
                torch_bin::read_index(&file_path)?
                    .into_iter()
                    .map(|t| TensorEntry {
                        name: t.name,
                        dtype: t.dtype,
                        shape: t.shape,
                        file: i,
                        offset: t.offset,
                        bytes: t.bytes,
                    })
                    .collect()
            } else {
                let header = Header::read_from(&file, &file_path)?;
                let entries = header
                    .tensors
                    .iter()
                    .map(|t| TensorEntry {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        file: i,
                        offset: header.data_start + t.offsets.0,
                        bytes: t.offsets.1 - t.offsets.0,
                    })
                    .collect();
                out.headers.push((i, header));
                entries
            };
            for e in entries {
                if out.entries.contains_key(&e.name) {
                    return Err(CheckpointError::BadFile {
                        path: file_path.clone(),
                        reason: format!("tensor `{}` is also in another shard", e.name),
                    });
                }
                out.entries.insert(e.name.clone(), e);
            }
            out.files.push((file_path, file));
        }
        Ok(out)
    }

    /// Every tensor, by name.
    pub fn entries(&self) -> impl Iterator<Item = &TensorEntry> {
        self.entries.values()
    }

    /// The entry of tensor `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// The file a tensor lives in (for messages).
    pub fn file_of(&self, entry: &TensorEntry) -> &Path {
        &self.files[entry.file].0
    }

    /// Checks the data of every file that carries a lawa checksum.
    pub fn verify(&self) -> Result<(), CheckpointError> {
        for (i, header) in &self.headers {
            header.verify_checksum(&self.files[*i].1)?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of tensor `entry`, from byte `start` of its data.
    pub fn read_bytes(
        &self,
        entry: &TensorEntry,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(), CheckpointError> {
        let (path, file) = &self.files[entry.file];
        if start + buf.len() as u64 > entry.bytes {
            return Err(CheckpointError::BadFile {
                path: path.clone(),
                reason: format!("read past the end of tensor `{}`", entry.name),
            });
        }
        file.read_exact_at(buf, entry.offset + start)
            .map_err(|e| CheckpointError::io(path, e))
    }

    /// Reads tensor `name` whole, on CPU, in its stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor, CheckpointError> {
        let entry = self.get(name).ok_or_else(|| CheckpointError::BadFile {
            path: self.path.clone(),
            reason: format!("tensor `{name}` is missing"),
        })?;
        let numel = entry.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let want = numel.and_then(|n| n.checked_mul(entry.dtype.size() as u64));
        if want != Some(entry.bytes) {
            // libtorch copies numel × size bytes without looking at the buffer's length.
            return Err(CheckpointError::BadFile {
                path: self.file_of(entry).to_owned(),
                reason: format!(
                    "tensor `{name}`: {} bytes for shape {:?}",
                    entry.bytes, entry.shape
                ),
            });
        }
        let mut bytes = vec![0u8; entry.bytes as usize];
        self.read_bytes(entry, 0, &mut bytes)?;
        Tensor::f_from_data_size(&bytes, &entry.shape_i64(), entry.dtype.kind()).map_err(|e| {
            CheckpointError::BadFile {
                path: self.file_of(entry).to_owned(),
                reason: format!("tensor `{name}`: {e}"),
            }
        })
    }
}

fn is_bin(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
}

/// The shard files an index lists (`weight_map` values), in first-seen order.
fn read_index(path: &Path) -> Result<Vec<String>, CheckpointError> {
    let bad = |reason: String| CheckpointError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| CheckpointError::io(path, e))?;
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let index: Index =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a weight index: {e}")))?;
    let mut shards: Vec<String> = index.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    for s in &shards {
        if s.contains('/') || s.contains('\\') || s == ".." {
            return Err(bad(format!("shard {s:?} is not a file name in the folder")));
        }
    }
    if shards.is_empty() {
        return Err(bad("the weight map is empty".into()));
    }
    Ok(shards)
}
