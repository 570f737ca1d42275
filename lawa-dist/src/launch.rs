//! Where a process stands among its peers, read from the variables launchers set: torchrun's
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
//! `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`) or Slurm's `srun`
//! (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`, with `MASTER_ADDR`/`MASTER_PORT`
//! from the job script). Only an srun step counts: a batch script's own shell (which has
//! `SLURM_NTASKS` but no step) is a lone process.

use std::time::Duration;

use crate::DistError;

/// The port PyTorch uses when `MASTER_PORT` is not set.
pub const DEFAULT_PORT: u16 = 29500;
/// How long a collective may wait for the other ranks (`LAWA_DIST_TIMEOUT_S` overrides).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// This process's place in a multi-process launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, 0 to `world_size - 1`.
    pub rank: usize,
    /// The number of processes.
    pub world_size: usize,
    /// The rank on this machine: which device it takes.
    pub local_rank: usize,
    /// Host of the rendezvous store.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Whether a launcher's agent already serves the store (torchrun): then rank 0 connects as
    /// a client like the others instead of serving it.
    pub agent_store: bool,
    /// How long a collective may wait.
    pub timeout: Duration,
    /// The network interface Gloo binds to (`GLOO_SOCKET_IFNAME`), if named.
    pub interface: Option<String>,
    /// Which restart of an elastic launch this is (`TORCHELASTIC_RESTART_COUNT`): each round
    /// meets under its own keys in the store.
    pub restart: u64,
}

impl Launch {
    /// The launch described by the environment, or `None` for a lone process (no launcher
    /// variables, or a Slurm step of one task).
    pub fn from_env() -> Result<Option<Launch>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
        let pick = |torchrun: &'static str, slurm: &'static str| {
            var(torchrun)
                .map(|v| (torchrun, v))
                .or_else(|| var(slurm).map(|v| (slurm, v)))
        };
        let Some((world_var, world)) = pick("WORLD_SIZE", "SLURM_STEP_NUM_TASKS") else {
            return Ok(None);
        };
        let world_size = number(world_var, &world)?;
        // torchrun's WORLD_SIZE=1 still makes a group of one, as PyTorch does (it exercises
        // the backend); a one-task Slurm step is a lone process.
        if world_size == 0 || (world_size == 1 && world_var == "SLURM_STEP_NUM_TASKS") {
            return Ok(None);
        }
        let (rank_var, rank) = pick("RANK", "SLURM_PROCID").ok_or_else(|| DistError::Env {
            var: "RANK",
            value: String::new(),
            reason: format!("{world_var} is {world_size} but this process has no rank"),
        })?;
        let rank = number(rank_var, &rank)?;
        if rank >= world_size {
            return Err(DistError::Env {
                var: rank_var,
                value: rank.to_string(),
                reason: format!("not below the world size {world_size}"),
            });
        }
        let local_rank = match pick("LOCAL_RANK", "SLURM_LOCALID") {
            Some((v, value)) => number(v, &value)?,
            None => rank,
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse().map_err(|_| DistError::Env {
                var: "MASTER_PORT",
                value: p.clone(),
                reason: "not a port number".into(),
            })?,
            None => DEFAULT_PORT,
        };
        let timeout = match var("LAWA_DIST_TIMEOUT_S") {
            Some(s) => Duration::from_secs(number("LAWA_DIST_TIMEOUT_S", &s)? as u64),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True"),
            timeout,
            interface: var("GLOO_SOCKET_IFNAME").filter(|s| !s.is_empty()),
            restart: match var("TORCHELASTIC_RESTART_COUNT") {
                Some(s) => number("TORCHELASTIC_RESTART_COUNT", &s)? as u64,
                None => 0,
            },
        }))
    }

    /// Whether this is rank 0, the one that evaluates and writes.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

fn number(var: &'static str, value: &str) -> Result<usize, DistError> {
    value.trim().parse().map_err(|_| DistError::Env {
        var,
        value: value.to_string(),
        reason: "not a non-negative integer".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        Launch::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.restart, 2);
        assert_eq!(
            (l.rank, l.world_size, l.local_rank, l.master_port),
            (3, 8, 1, 1234)
        );
        assert_eq!(l.master_addr, "node7");
        assert!(l.agent_store && !l.is_leader());
    }

    #[test]
    fn slurm_variables_and_defaults() {
        let l = launch(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world_size, l.master_port), (0, 4, DEFAULT_PORT));
        assert_eq!(l.master_addr, "127.0.0.1");
        assert!(!l.agent_store && l.is_leader());
        assert_eq!(l.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn lone_processes_and_bad_values() {
        assert!(launch(&[]).unwrap().is_none());
        assert!(
            launch(&[("SLURM_STEP_NUM_TASKS", "1"), ("SLURM_PROCID", "0")])
                .unwrap()
                .is_none()
        );
        // A batch script's shell: tasks allotted, but no srun step.
        assert!(launch(&[("SLURM_NTASKS", "8"), ("SLURM_PROCID", "0")])
            .unwrap()
            .is_none());
        let one = launch(&[("WORLD_SIZE", "1"), ("RANK", "0")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (one.rank, one.world_size),
            (0, 1),
            "torchrun's group of one"
        );
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "2")]).unwrap_err();
        assert_eq!(e.to_string(), "RANK=\"2\": not below the world size 2");
        let e = launch(&[("WORLD_SIZE", "two")]).unwrap_err();
        assert!(e.to_string().contains("not a non-negative integer"), "{e}");
        assert!(launch(&[("WORLD_SIZE", "2")]).is_err());
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "x")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
    }
}
