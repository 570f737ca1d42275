//! A series of checkpoints of one training run, by step: the revision folders of a hub download
//! (`step1000/`, `step2000/`, ...), a lawa run's `series/` (saved every `checkpoint.series_every`
//! steps), or any folder of step-numbered checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The step number in a checkpoint's file or folder name: the last run of digits
/// (`ckpt_1000.safetensors`, `step-1000/`, `model_step00500.safetensors`).
pub fn step_in_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy();
    let name = name.strip_suffix(".safetensors").unwrap_or(&name);
    let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    name[start..end].parse().ok()
}

/// Whether a folder's name is a step's alone (`step8`, `step-143000`, `checkpoint-500`, `1000`),
/// not merely one holding digits (`notes2`, `eval-v2`).
fn names_a_step(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let digits = ["step", "checkpoint"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(&name)
        .trim_start_matches(['-', '_']);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a name is hidden, as lawa's staging folders are (`.step8.partial-PID`, still being
/// written): never a checkpoint of a series.
pub fn is_staging(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Checkpoint folders (holding a `config.json`) by step.
#[derive(Debug, Clone)]
pub struct Series {
    /// The folder searched.
    pub dir: PathBuf,
    /// Checkpoint folders by step.
    pub steps: BTreeMap<u64, PathBuf>,
}

impl Series {
    /// The step-numbered checkpoint folders of `dir` (sub-folders holding `config.json`); a
    /// step-numbered folder without one is an error, hidden (staging) folders are passed over.
    pub fn discover(dir: &Path) -> Result<Series> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
        let mut steps = BTreeMap::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("{}: cannot read", dir.display()))?
                .path();
            if is_staging(&path) || !path.is_dir() {
                continue;
            }
            if !path.join("config.json").is_file() {
                if names_a_step(&path) {
                    bail!(
                        "{}: a step-numbered folder without config.json (an incomplete \
                         checkpoint?); complete it, or move it out of the series",
                        path.display()
                    );
                }
                continue;
            }
            if let Some(step) = step_in_name(&path) {
                if let Some(other) = steps.insert(step, path.clone()) {
                    bail!(
                        "{} and {} are both checkpoints of step {step}",
                        other.display(),
                        path.display()
                    );
                }
            }
        }
        if steps.is_empty() {
            bail!(
                "{}: no step-numbered checkpoint folders (step1000/ ... holding config.json and weights)",
                dir.display()
            );
        }
        Ok(Series {
            dir: dir.to_owned(),
            steps,
        })
    }

    /// The checkpoints LAWA(k, nu) averages at step `t`: `t, t - nu, ..., t - (k - 1) nu`,
    /// oldest first, fewer when the series starts later. A step inside the series' span that it
    /// lacks is an error naming it.
    pub fn window(&self, t: u64, k: usize, nu: u64) -> Result<Vec<u64>> {
        let first = *self.steps.keys().next().unwrap_or(&0);
        let mut members = Vec::new();
        for i in 0..k as u64 {
            let Some(step) = t.checked_sub(i * nu).filter(|&s| s >= first) else {
                break;
            };
            if !self.steps.contains_key(&step) {
                bail!(
                    "{}: LAWA k={k}, nu={nu} at step {t} needs the checkpoint of step {step}, which the series lacks",
                    self.dir.display()
                );
            }
            members.push(step);
        }
        members.reverse();
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_in_names_and_windows() {
        assert_eq!(
            step_in_name(Path::new("model_step00500.safetensors")),
            Some(500)
        );
        assert_eq!(step_in_name(Path::new("step143000")), Some(143_000));
        assert_eq!(step_in_name(Path::new("nodigits")), None);
        let dir = tempfile::tempdir().unwrap();
        for s in [1000, 2000, 3000, 4000, 6000] {
            let d = dir.path().join(format!("step{s}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
        }
        // A staging folder still being written (hidden) is passed over, digits and all.
        let staging = dir.path().join(".step7000.partial-99");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("config.json"), "{}").unwrap();
        // A step folder without config.json is an error, not a checkpoint silently skipped.
        std::fs::create_dir(dir.path().join("step9000")).unwrap();
        let err = Series::discover(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("step9000: a step-numbered folder without config.json"),
            "{err}"
        );
        std::fs::remove_dir(dir.path().join("step9000")).unwrap();
        // Other folders with digits in their names are not step folders.
        std::fs::create_dir(dir.path().join("notes2")).unwrap();
        assert!(names_a_step(Path::new("checkpoint-500")) && names_a_step(Path::new("1000")));
        assert!(!names_a_step(Path::new("eval-v2")) && !names_a_step(Path::new("step")));
        let series = Series::discover(dir.path()).unwrap();
        assert_eq!(
            series.steps.keys().copied().collect::<Vec<_>>(),
            [1000, 2000, 3000, 4000, 6000]
        );
        assert_eq!(series.window(4000, 3, 1000).unwrap(), [2000, 3000, 4000]);
        assert_eq!(
            series.window(2000, 5, 1000).unwrap(),
            [1000, 2000],
            "fewer at the start"
        );
        let err = series.window(6000, 3, 1000).unwrap_err().to_string();
        assert!(err.contains("step 5000"), "{err}");
    }
}
