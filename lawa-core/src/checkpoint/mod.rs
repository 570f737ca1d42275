//! Checkpoint pieces a training loop needs: durable writes of files and folders
//! ([`write_atomic`], [`publish_dir`]), the safetensors format read and written in one checked
//! place ([`Header`], [`read_safetensors`], [`write_safetensors`]), PyTorch's `.bin` files read
//! as data ([`read_torch_bin_index`]), the tensors of a checkpoint in whatever files hold them
//! ([`TensorFiles`]: single or sharded safetensors or `.bin`), and streamed post-hoc averaging
//! of saved checkpoints ([`average_checkpoints`]).
//!
//! ```no_run
//! use lawa_core::checkpoint::{publish_dir, staging_dir, write_atomic};
//! use std::path::Path;
//!
//! let target = Path::new("runs/demo/checkpoint");
//! let staging = staging_dir(target)?; // runs/demo/.checkpoint.partial-PID
//! write_atomic(&staging.join("trainer.json"), b"{\"step\": 100}")?;
//! publish_dir(&staging, target)?; // the old checkpoint or the new one, never half of either
//! # Ok::<(), std::io::Error>(())
//! ```

mod atomic;
mod average;
mod files;
mod safetensors;
mod source;
mod torch_bin;

use std::path::{Path, PathBuf};

pub use atomic::{
    finish_publish, process_alive, publish_dir, remove_stale_staging, staging_dir, sync_dir,
    write_atomic, write_atomic_with,
};
pub use average::{average_checkpoints, average_safetensors, AverageReport};
pub use files::{TensorEntry, TensorFiles};
pub use safetensors::{
    header_bytes, layout_entries, read_safetensors, write_safetensors, write_streamed, Dtype,
    Header, TensorInfo, CRC_KEY,
};
pub use source::{MeanOf, WeightSource};
pub use torch_bin::{read_index as read_torch_bin_index, BinTensor};

/// What can go wrong reading, writing or averaging checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A file that is not a well-formed checkpoint file.
    #[error("{}: not a valid checkpoint file: {reason}", .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file whose data does not match the checksum written with it.
    #[error("{}: corrupt: the data's CRC-32 is {actual}, the file was written with {expected}", .path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in its header.
        expected: String,
        /// The checksum of its data now.
        actual: String,
    },
    /// Checkpoints that do not hold the same tensors.
    #[error("{}: tensor `{tensor}` {problem} (compared with {})", .path.display(), .first.display())]
    Mismatch {
        /// The disagreeing file.
        path: PathBuf,
        /// The first file, which the others are compared with.
        first: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What differs.
        problem: String,
    },
    /// A dtype that cannot be stored or averaged here.
    #[error("{}: tensor `{tensor}` has dtype {dtype}, which is not supported", .path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// No inputs.
    #[error("no checkpoints to average")]
    Empty,
    /// Inputs without a tensor to average (all left out, or none there).
    #[error("{}: no tensors to average", .path.display())]
    NoTensors {
        /// The first input.
        path: PathBuf,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_owned(),
            error: source,
        }
    }
}
