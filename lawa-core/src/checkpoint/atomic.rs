//! Durable writes: a reader sees the old file (or folder) or the whole new one, never half of
//! it, after a killed process and after a power cut. Files are synced before they are renamed
//! into place, and the folder holding them after (SQLite's and PostgreSQL's recipe).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, renamed over
/// `path`, and the folder synced. A crash leaves either the previous file or the complete new
/// one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with the contents produced by `write` into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes the entries of folder `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Syncs every file of folder `dir` (not recursively) and the folder itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// A staging folder for `target` (e.g. `run/.checkpoint.partial-1234` for `run/checkpoint`),
/// named after this process so that stale ones can be recognized; emptied if it exists.
pub fn staging_dir(target: &Path) -> std::io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a folder path", target.display())))?;
    let staging = parent_of(target).join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(&staging)?;
    Ok(staging)
}

/// Publishes a complete `staging` folder as `target`: its files and the folder are synced,
/// the previous `target` (if any) moves aside to `.NAME.old`, `staging` is renamed to `target`,
/// and the old one is removed. A crash at any point leaves `target` or `.NAME.old` complete;
/// [`finish_publish`] completes what the crash interrupted.
pub fn publish_dir(staging: &Path, target: &Path) -> std::io::Result<()> {
    sync_tree(staging)?;
    let old = old_dir(target)?;
    let parent = parent_of(target);
    if target.exists() {
        match std::fs::remove_dir_all(&old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::rename(target, &old)?;
    }
    std::fs::rename(staging, target)?;
    sync_dir(&parent)?;
    match std::fs::remove_dir_all(&old) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => sync_dir(&parent),
    }
}

fn old_dir(target: &Path) -> std::io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a folder path", target.display())))?;
    Ok(parent_of(target).join(format!(".{}.old", name.to_string_lossy())))
}

/// Completes a [`publish_dir`] of `target` that a crash interrupted, and says whether `target`
/// now holds a published folder. `complete(dir)` says whether a folder holds what a published
/// one must (e.g. its last-written file). A complete `target` stays and a leftover `.NAME.old`
/// (a crash after the second rename) is removed; otherwise a complete `.NAME.old` (a crash
/// between the renames) is renamed back to `target`, replacing an incomplete one. Call it only
/// while holding the folder's lock, with no publish of `target` running.
pub fn finish_publish(target: &Path, complete: impl Fn(&Path) -> bool) -> std::io::Result<bool> {
    let old = old_dir(target)?;
    let parent = parent_of(target);
    if complete(target) {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
            sync_dir(&parent)?;
        }
        return Ok(true);
    }
    if !complete(&old) {
        return Ok(false);
    }
    if target.exists() {
        std::fs::remove_dir_all(target)?;
    }
    std::fs::rename(&old, target)?;
    sync_dir(&parent)?;
    Ok(true)
}

/// Removes the staging folders and temporary files in `dir` (`.NAME.partial-PID`,
/// `.NAME.tmpPID`) left by processes that no longer run; returns what it removed. Those of
/// running processes (another run writing there) are left alone.
pub fn remove_stale_staging(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(staging_pid)
        else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed.push(path);
    }
    Ok(removed)
}

/// The process id in a staging name `.NAME.partial-PID` or temporary name `.NAME.tmpPID`.
fn staging_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, digits) = name
        .rsplit_once(".partial-")
        .or_else(|| name.rsplit_once(".tmp"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a process with this id runs on this machine.
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |_| Err(std::io::Error::other("boom")));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn publish_replaces_a_folder_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("checkpoint");
        for text in ["one", "two"] {
            let staging = staging_dir(&target).unwrap();
            std::fs::write(staging.join("f"), text).unwrap();
            publish_dir(&staging, &target).unwrap();
            assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), text);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["checkpoint"]);
        let complete = |d: &Path| d.join("f").is_file();
        let names = || -> Vec<_> {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        // A crash between the renames leaves only the previous folder: it is published again.
        let old = dir.path().join(".checkpoint.old");
        std::fs::rename(&target, &old).unwrap();
        assert!(finish_publish(&target, complete).unwrap());
        assert_eq!(names(), ["checkpoint"]);
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "two");
        // A crash after the second rename leaves the previous folder beside the new one: removed.
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("f"), "one").unwrap();
        assert!(finish_publish(&target, complete).unwrap());
        assert_eq!(names(), ["checkpoint"]);
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "two");
        // An incomplete target with a complete previous one: the previous one wins.
        std::fs::remove_file(target.join("f")).unwrap();
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("f"), "one").unwrap();
        assert!(finish_publish(&target, complete).unwrap());
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "one");
        assert_eq!(names(), ["checkpoint"]);
        // Neither complete: nothing published, nothing removed.
        std::fs::remove_file(target.join("f")).unwrap();
        assert!(!finish_publish(&target, complete).unwrap());
        assert_eq!(names(), ["checkpoint"]);
    }

    #[test]
    fn stale_staging_of_dead_processes_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's limit runs nowhere.
        let dead = dir.path().join(".checkpoint.partial-4999999");
        std::fs::create_dir(&dead).unwrap();
        let dead_tmp = dir.path().join(".curves.csv.tmp4999998");
        std::fs::write(&dead_tmp, "x").unwrap();
        let mine = staging_dir(&dir.path().join("checkpoint")).unwrap();
        let other = dir.path().join("notes.partial-12");
        std::fs::write(&other, "keep").unwrap();
        let removed = remove_stale_staging(dir.path()).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!dead.exists() && !dead_tmp.exists());
        assert!(mine.exists(), "this process's own staging stays");
        assert!(other.exists(), "not a staging name");
    }
}
