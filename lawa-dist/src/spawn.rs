//! Starting N ranks on this machine, as `torchrun --nproc-per-node N` does: each a copy of a
//! program with the launcher variables set, watched until all end; when one fails, the others
//! are given a grace period and then stopped.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long the other ranks may take to notice a failed rank and end on their own.
pub const GRACE: Duration = Duration::from_secs(30);

/// Why the local ranks did not all succeed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A rank could not be started.
    #[error("cannot start rank {rank}: {source}")]
    Start {
        /// The rank.
        rank: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A rank ended with a failure (the first to fail is named).
    #[error(
        "rank {rank} failed ({status}; its own message, if it printed one, is above){}",
        stopped_note(*.stopped)
    )]
    Failed {
        /// The first rank that failed.
        rank: usize,
        /// How it ended.
        status: ExitStatus,
        /// Ranks stopped after the grace period.
        stopped: usize,
    },
}

fn stopped_note(stopped: usize) -> String {
    match stopped {
        0 => String::new(),
        n => format!("; {n} other rank(s) stopped after {} s", GRACE.as_secs()),
    }
}

/// Runs `n` copies of `program` with `args` as ranks 0..n of one group that meets on a free
/// loopback port; each gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
/// and `OMP_NUM_THREADS` (this machine's cores split evenly) unless already set.
pub fn run_local_ranks(
    program: &std::path::Path,
    args: &[String],
    n: usize,
) -> Result<(), SpawnError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| SpawnError::Start { rank: 0, source })?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / n).max(1).to_string();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            command.env("OMP_NUM_THREADS", &threads);
        }
        match command.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(source) => {
                stop(&mut children);
                return Err(SpawnError::Start { rank, source });
            }
        }
    }
    watch(children)
}

/// Waits for every child; after the first failure, stops those still running once `GRACE` has
/// passed.
fn watch(mut children: Vec<Option<Child>>) -> Result<(), SpawnError> {
    let mut failed: Option<(usize, ExitStatus, Instant)> = None;
    let mut stopped = 0;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() && failed.is_none() {
                        failed = Some((rank, status, Instant::now()));
                    }
                }
                Err(_) => {
                    // The child cannot be waited on: stop it, and count it as failed.
                    let _ = child.kill();
                    let status = child.wait().unwrap_or_else(|_| failed_status());
                    *slot = None;
                    if failed.is_none() {
                        failed = Some((rank, status, Instant::now()));
                    }
                }
            }
        }
        if failed.is_some_and(|(_, _, at)| at.elapsed() > GRACE) {
            stopped = stop(&mut children);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        None => Ok(()),
        Some((rank, status, _)) => Err(SpawnError::Failed {
            rank,
            status,
            stopped,
        }),
    }
}

/// An exit status that reads as a failure (for a child that could not be waited on).
fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(1 << 8)
}

/// Kills and reaps the children still running; returns how many.
fn stop(children: &mut [Option<Child>]) -> usize {
    let mut n = 0;
    for slot in children.iter_mut() {
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
            n += 1;
        }
    }
    n
}
