//! Everything that can go wrong building, loading or saving a model.

use std::path::PathBuf;

/// An error of lawa-models: a bad configuration, a checkpoint that does not fit, or an I/O
/// failure. Each message names the file, field, tensor or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration field has a value lawa cannot use.
    #[error("model config: {field} = {value}: {reason}")]
    BadConfig {
        /// The field, e.g. `n_head`.
        field: String,
        /// Its value, as written.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A preset name that does not exist.
    #[error("unknown model preset '{name}' (expected tiny, small, medium or large)")]
    UnknownPreset {
        /// The name asked for.
        name: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A checkpoint path that is neither a checkpoint folder nor a `.safetensors` file.
    #[error("{path}: {reason}")]
    BadCheckpointPath {
        /// The path given.
        path: PathBuf,
        /// What was expected there.
        reason: String,
    },
    /// A `config.json` that cannot be parsed or does not describe a model lawa can build.
    #[error("{path}: {message}")]
    BadConfigFile {
        /// The `config.json`.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// One of lawa's own operations failed (e.g. its CUDA kernels could not be compiled).
    #[error(transparent)]
    Ops(#[from] lawa_ops::OpsError),
    /// A weights file that cannot be read (malformed header, corrupt data, I/O).
    #[error(transparent)]
    Checkpoint(#[from] lawa_core::checkpoint::CheckpointError),
    /// A tensor the model needs is absent from the checkpoint.
    #[error("{path}: tensor {name} is missing")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// Hugging Face name of the tensor.
        name: String,
    },
    /// A tensor in the checkpoint that the configured model has no place for.
    #[error("{path}: unexpected tensor {name}; {hint}")]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// Its name.
        name: String,
        /// Why it does not fit (e.g. the config's layer count).
        hint: String,
    },
    /// A tensor whose shape disagrees with the configuration.
    #[error("{path}: tensor {name} has shape {actual:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// Hugging Face name of the tensor.
        name: String,
        /// Shape the configuration implies (Hugging Face layout).
        expected: Vec<i64>,
        /// Shape found in the file.
        actual: Vec<i64>,
    },
    /// A tensor whose values cannot be used (unsupported dtype, non-zero bias of a bias-free
    /// model, an untied LM head...).
    #[error("{path}: tensor {name}: {reason}")]
    BadTensor {
        /// The weights file.
        path: PathBuf,
        /// Hugging Face name of the tensor.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model (or a run around it) larger than the device can hold.
    #[error("{what} needs {needed_gb:.1} GB, and the device has {available_gb:.1} GB available")]
    TooLarge {
        /// What was to be allocated (naming the model's shape).
        what: String,
        /// Gigabytes it needs (at least).
        needed_gb: f64,
        /// Gigabytes available.
        available_gb: f64,
    },
    /// Input token ids that the model cannot take.
    #[error("{0}")]
    BadInput(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
