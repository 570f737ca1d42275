//! What can go wrong between processes.

/// An error of setting up or using a process group.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable is missing or malformed.
    #[error("{var}={value:?}: {reason}")]
    Env {
        /// The environment variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// libtorch could not make the process group (rendezvous timed out, backend missing...).
    #[error("cannot join the process group as rank {rank} of {world_size} at {addr}: {message}")]
    Setup {
        /// This process's rank.
        rank: usize,
        /// The number of processes.
        world_size: usize,
        /// The rendezvous address.
        addr: String,
        /// libtorch's message.
        message: String,
    },
    /// A collective failed: most often another rank ended (its connection closed) or the
    /// timeout passed.
    #[error("{op} failed on rank {rank} (another rank probably ended, or the timeout passed): {message}")]
    Collective {
        /// The collective.
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// libtorch's message.
        message: String,
    },
    /// The ranks disagree where they must agree.
    #[error("rank {rank}: {message}")]
    Diverged {
        /// This process's rank.
        rank: usize,
        /// What differs.
        message: String,
    },
}
