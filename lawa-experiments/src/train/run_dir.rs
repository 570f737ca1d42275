//! Claiming a run folder: a run writes only into an empty folder or one it made itself (holding
//! its `run.yaml`), and only one process at a time (an exclusive lock held while it trains).
//! Staging folders left by crashed processes are removed when the folder is claimed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{RunConfig, RunPlan};

/// The copy of the run's config in its folder.
pub const CONFIG_FILE: &str = "run.yaml";
/// The lock file a training process holds.
pub const LOCK_FILE: &str = ".lock";

/// A folder locked for one process; the lock is released when this is dropped (or the process
/// ends, however it ends).
#[derive(Debug)]
pub struct Claim {
    _lock: File,
}

/// How a folder is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// By this process alone (a run that trains, a sweep that gathers its results).
    Exclusive,
    /// Together with other processes that hold it shared, and no exclusive holder (the shards
    /// and device workers of one sweep, each training its own runs).
    Shared,
}

/// The folder is held by another process: the error [`lock`] returns, which callers can tell
/// apart (`anyhow::Error::downcast_ref`) from other failures.
#[derive(Debug, thiserror::Error)]
#[error("{dir}: another lawa process ({holder}) is working on this {what}; wait for it to end, or give this one another folder")]
pub struct Busy {
    /// The folder.
    pub dir: std::path::PathBuf,
    /// `pid N`, `pid unknown`, or the shared holders of a sweep's folder.
    pub holder: String,
    /// The folder's kind.
    pub what: String,
}

/// Takes an exclusive lock on `dir` (which must exist) for this process, or says which process
/// holds it. `what` names the folder's kind in the message.
pub fn lock(dir: &Path, what: &str) -> Result<Claim> {
    lock_as(dir, what, LockMode::Exclusive)
}

/// Takes a lock on `dir` in `mode`; fails with [`Busy`] when another process holds it in a way
/// that excludes this one.
pub fn lock_as(dir: &Path, what: &str, mode: LockMode) -> Result<Claim> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    let locked = match mode {
        LockMode::Exclusive => file.try_lock(),
        LockMode::Shared => file.try_lock_shared(),
    };
    match locked {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Busy {
                dir: dir.to_owned(),
                holder: holder(&file, &path, mode),
                what: what.to_string(),
            }
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
    // An exclusive holder writes its PID; shared holders (several) clear the last one's.
    file.set_len(0)
        .and_then(|_| match mode {
            LockMode::Exclusive => write!(file, "{}", std::process::id()),
            LockMode::Shared => Ok(()),
        })
        .and_then(|_| file.flush())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(Claim { _lock: file })
}

/// Who holds the lock this process could not take in `mode`: the PID an exclusive holder wrote,
/// or the processes that share the folder (they clear the PID, and a shared lock can still be
/// had; an exclusive holder that ended in between leaves its PID, and is named).
fn holder(file: &File, path: &Path, mode: LockMode) -> String {
    let written = std::fs::read_to_string(path).unwrap_or_default();
    let shared = mode == LockMode::Exclusive && file.try_lock_shared().is_ok();
    if shared {
        let _ = file.unlock();
    }
    match written.trim() {
        "" if shared => "or several, sharing it: a sweep's shards or device workers".into(),
        "" => "pid unknown".to_string(),
        pid => format!("pid {pid}"),
    }
}

/// Whether `name` is one of lawa's temporary names: a staging folder `.NAME.partial-PID`, a
/// temporary file `.NAME.tmpPID`, or a previous checkpoint `.NAME.old`.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && (name.contains(".partial-") || name.contains(".tmp") || name.ends_with(".old"))
}

/// What a run folder holds: a name lawa writes there.
pub fn run_owns(name: &str) -> bool {
    matches!(
        name,
        CONFIG_FILE | LOCK_FILE | "curves.csv" | "status.json" | "checkpoint" | "series"
    ) || is_temporary(name)
}

/// Whether `dir` is missing or holds nothing but what `owned` accepts.
pub fn empty_or_owned(dir: &Path, owned: impl Fn(&str) -> bool) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", dir.display())),
        Ok(entries) => {
            for entry in entries {
                let entry = entry.with_context(|| format!("{}: cannot read", dir.display()))?;
                if !owned(&entry.file_name().to_string_lossy()) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Claims `dir` for the config `text` recorded in its file `marker` (`run.yaml`,
/// `sweep.yaml`): refuses a folder that holds the results of another config, or files that are
/// not `owns`'s and no marker; locks it; records the config; clears stale staging folders.
/// `what` (`run`, `sweep`) and `hint` (what to change instead) word the refusals.
pub fn claim_folder(
    dir: &Path,
    marker: &str,
    text: &str,
    owns: fn(&str) -> bool,
    what: &str,
    hint: &str,
) -> Result<Claim> {
    claim_folder_as(dir, marker, text, owns, what, hint, LockMode::Exclusive)
}

/// As [`claim_folder`], holding the folder in `mode` (a shared holder leaves staging folders
/// alone: another holder may be writing them).
pub fn claim_folder_as(
    dir: &Path,
    marker: &str,
    text: &str,
    owns: fn(&str) -> bool,
    what: &str,
    hint: &str,
    mode: LockMode,
) -> Result<Claim> {
    let marker_path = dir.join(marker);
    let existing = match std::fs::read_to_string(&marker_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", marker_path.display())),
    };
    match &existing {
        Some(t) if t != text => {
            let differences = config_differences(t, text);
            if !differences.is_empty() {
                bail!(
                    "{}: the folder holds a {what} of a different config ({}); {hint} or delete the folder",
                    dir.display(),
                    summarize(&differences)
                );
            }
        }
        Some(_) => {}
        None if !empty_or_owned(dir, owns)? => bail!(
            "{}: the folder holds files that are not a lawa {what}'s, and no {marker}; a {what} writes only into an empty folder or its own ({hint})",
            dir.display()
        ),
        None => {}
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let claim = lock_as(dir, what, mode)?;
    // A shared holder leaves staging folders alone: another holder may be writing them.
    if mode == LockMode::Exclusive {
        for stale in lawa_core::checkpoint::remove_stale_staging(dir)
            .with_context(|| format!("{}: cannot clear stale staging folders", dir.display()))?
        {
            tracing::info!("removed {}, left by a process that ended", stale.display());
        }
    }
    if existing.is_none() {
        lawa_core::checkpoint::write_atomic(&marker_path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", marker_path.display()))?;
    }
    Ok(claim)
}

/// Where the config recorded in a folder (`there`, YAML) and the one given (`here`) differ,
/// one `field: A there, B here` each, in field order. Text that differs only in form (key
/// order, quoting) is no difference, nor are two paths naming the same file (relative and
/// absolute, a trailing slash, a symbolic link). An unreadable record differs as a whole.
pub fn config_differences(there: &str, here: &str) -> Vec<String> {
    match (
        serde_yaml::from_str::<serde_yaml::Value>(there),
        serde_yaml::from_str::<serde_yaml::Value>(here),
    ) {
        (Ok(a), Ok(b)) => {
            let mut out = Vec::new();
            differ("", &a, &b, &mut out);
            out
        }
        _ => vec!["the recorded config cannot be read".to_string()],
    }
}

/// Appends to `out` the fields under `field` where `a` (there) and `b` (here) differ.
fn differ(field: &str, a: &serde_yaml::Value, b: &serde_yaml::Value, out: &mut Vec<String>) {
    use serde_yaml::Value;
    let child = |key: &str| match field {
        "" => key.to_string(),
        _ => format!("{field}.{key}"),
    };
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            let mut keys: Vec<&Value> = x.keys().collect();
            keys.extend(y.keys().filter(|k| !x.contains_key(*k)));
            for key in keys {
                let name = child(&compact(key));
                let (va, vb) = (x.get(key), y.get(key));
                differ(
                    &name,
                    va.unwrap_or(&Value::Null),
                    vb.unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Sequence(x), Value::Sequence(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differ(&format!("{field}[{i}]"), va, vb, out);
            }
        }
        (Value::String(x), Value::String(y)) if x == y || same_file(x.as_ref(), y.as_ref()) => {}
        _ if a == b => {}
        _ => out.push(format!(
            "{field}: {} there, {} here",
            compact(a),
            compact(b)
        )),
    }
}

/// Whether two paths name one existing file or folder (relative or absolute, through a
/// symbolic link or a trailing slash).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The run's config with `out` as the folder's record has it where both name the default
/// folder (`runs/NAME`, given as `out` or not): the same run, however it is written.
fn with_out_as_recorded(plan: &RunPlan) -> RunConfig {
    let mut config = plan.config.clone();
    let default = config.default_out_dir();
    let names_default = |out: Option<&Path>| out.is_none_or(|o| same_path(o, &default));
    if !names_default(config.out.as_deref()) {
        return config;
    }
    // An unreadable record is left to `claim_folder`, which reports it.
    let recorded = std::fs::read_to_string(plan.dir.join(CONFIG_FILE))
        .ok()
        .and_then(|text| serde_yaml::from_str::<serde_yaml::Value>(&text).ok());
    if let Some(record) = recorded {
        let out = record
            .get("out")
            .and_then(|o| o.as_str())
            .map(PathBuf::from);
        if names_default(out.as_deref()) {
            config.out = out;
        }
    }
    config
}

/// Whether two paths name one file or folder, existing or not: the same absolute path
/// (`./runs/a`, `runs/a/`), or, existing, the same one on disk (a symbolic link).
pub(crate) fn same_path(a: &Path, b: &Path) -> bool {
    let absolute = |p: &Path| std::path::absolute(p).ok();
    matches!((absolute(a), absolute(b)), (Some(x), Some(y)) if x == y) || same_file(a, b)
}

/// A YAML value on one line.
fn compact(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Null => "(absent)".to_string(),
        other => serde_json::to_string(other).unwrap_or_else(|_| {
            serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .replace('\n', " ")
        }),
    }
}

/// The first few differences on one line.
fn summarize(differences: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = differences[..differences.len().min(SHOWN)].join("; ");
    if differences.len() > SHOWN {
        text.push_str(&format!("; and {} more", differences.len() - SHOWN));
    }
    text
}

/// Claims the run folder of `plan` (see [`claim_folder`]).
pub fn claim(plan: &RunPlan) -> Result<Claim> {
    let text = serde_yaml::to_string(&with_out_as_recorded(plan))?;
    let claim = claim_folder(
        &plan.dir,
        CONFIG_FILE,
        &text,
        run_owns,
        "run",
        "choose another `out`/`name`",
    )?;
    lawa_core::checkpoint::remove_stale_staging(&plan.dir.join("series"))?;
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_differences_name_each_field_and_ignore_form_and_equal_paths() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let there = format!(
            "name: r\ndata: {}\ntrain: {{lr: 0.001, steps: 20}}\naveragers: [{{kind: ema, decay: 0.9}}]\n",
            data.display()
        );
        // Key order, flow style, a trailing slash and a symbolic link: the same config.
        let same = format!(
            "train:\n  steps: 20\n  lr: 1.0e-3\nname: r\ndata: {}/\naveragers:\n- {{decay: 0.9, kind: ema}}\n",
            link.display()
        );
        assert_eq!(config_differences(&there, &same), Vec::<String>::new());
        let other = there
            .replace("lr: 0.001", "lr: 0.002")
            .replace("decay: 0.9", "decay: 0.99")
            .replace("name: r", "name: r\nseed: 3");
        assert_eq!(
            config_differences(&there, &other),
            [
                "train.lr: 0.001 there, 0.002 here",
                "averagers[0].decay: 0.9 there, 0.99 here",
                "seed: (absent) there, 3 here",
            ]
        );
        assert_eq!(
            config_differences("a: [", &there),
            ["the recorded config cannot be read"]
        );
        let many: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
        assert_eq!(summarize(&many), "f0; f1; f2; f3; and 2 more");
    }

    fn busy(result: Result<Claim>) -> String {
        let err = result.expect_err("the folder is held");
        err.downcast_ref::<Busy>()
            .expect("a Busy error")
            .holder
            .clone()
    }

    #[test]
    fn a_busy_folder_names_its_holder_and_no_stale_pid() {
        let dir = tempfile::tempdir().unwrap();
        let pid = format!("pid {}", std::process::id());
        // flock locks belong to open files, so one process can stand for two.
        let first = lock(dir.path(), "sweep").unwrap();
        assert_eq!(busy(lock(dir.path(), "sweep")), pid);
        assert_eq!(busy(lock_as(dir.path(), "sweep", LockMode::Shared)), pid);
        drop(first);
        // Shared holders clear the PID the exclusive holder left behind.
        let shards = [
            lock_as(dir.path(), "sweep", LockMode::Shared).unwrap(),
            lock_as(dir.path(), "sweep", LockMode::Shared).unwrap(),
        ];
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            ""
        );
        let holder = busy(lock(dir.path(), "sweep"));
        assert!(holder.contains("shards or device workers"), "{holder}");
        drop(shards);
        lock(dir.path(), "sweep").unwrap();
    }
}
