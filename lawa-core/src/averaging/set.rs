use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::cadence::check_step;
use super::state::SavedAverager;
use super::store::SnapshotStore;
use super::weights::Layout;
use super::{Averager, AveragingError, Storage, Weights};
use crate::checkpoint::Header;

/// File holding the counters of a saved [`AveragerSet`].
const STATE_JSON: &str = "averagers.json";
/// File holding the tensors of a saved [`AveragerSet`].
const STATE_TENSORS: &str = "averagers.safetensors";
/// The label errors of the shared snapshot store go by.
const SNAPSHOTS: &str = "snapshots";
/// The label errors of the set as a whole go by.
const SET: &str = "averagers";

/// Several averagers fed from one training trajectory. The set owns one snapshot store keyed by
/// step: when several averagers want the weights of the same step (in the same storage), one
/// copy is taken and all of them refer to it, so memory is the number of distinct snapshots
/// held, not the sum over averagers.
///
/// ```
/// use lawa_core::averaging::{AveragerSet, Ema, Lawa, Weights};
/// use tch::{nn, Device};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _w = vs.root().randn("w", &[4, 4], 0.0, 1.0);
/// let weights = Weights::from_var_store(&vs); // handles to the variables: build once
/// let mut set = AveragerSet::new();
/// set.push(Lawa::new(5, 10)?)?;
/// set.push(Lawa::new(3, 20)?)?;
/// set.push(Ema::new(0.99)?)?;
/// for step in 1..=100 {
///     // ... forward, backward, optimizer step ...
///     set.observe(step, &weights)?;
/// }
/// // Steps 60..100 (every 10) and 60, 80, 100 (every 20) overlap: 5 distinct snapshots.
/// assert_eq!(set.distinct_snapshots().0, 5);
/// # Ok::<(), lawa_core::averaging::AveragingError>(())
/// ```
#[derive(Default)]
pub struct AveragerSet {
    averagers: Vec<Box<dyn Averager>>,
    store: SnapshotStore,
    layout: Option<Layout>,
    /// The last step observed (checked before any averager moves).
    last: Option<u64>,
}

impl std::fmt::Debug for AveragerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AveragerSet")
            .field("labels", &self.labels())
            .field("snapshots", &self.distinct_snapshots().0)
            .finish()
    }
}

/// One averager of an [`AveragerSet`], as [`AveragerSet::iter`] yields it.
#[derive(Clone, Copy)]
pub struct Member<'a> {
    averager: &'a dyn Averager,
    store: &'a SnapshotStore,
}

impl Member<'_> {
    /// The averager's label.
    pub fn label(&self) -> String {
        self.averager.label()
    }

    /// Whether it has an average to write.
    pub fn is_ready(&self) -> bool {
        self.averager.is_ready()
    }

    /// Writes its average into `target` (see [`Averager::write_average`]).
    pub fn write_average(&self, target: &Weights) -> Result<(), AveragingError> {
        self.averager.write_from(target, self.store)
    }
}

/// The JSON half of a saved set.
#[derive(Serialize, Deserialize)]
struct SavedSet {
    version: u32,
    names: Vec<String>,
    averagers: Vec<SavedEntry>,
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    label: String,
    meta: serde_json::Value,
    tensors: usize,
    snapshot_steps: Vec<u64>,
}

impl AveragerSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an averager (labels must be unique). Snapshots it took while used alone join the
    /// set's store, and the set goes on after the last step it observed.
    pub fn push(&mut self, averager: impl Averager + 'static) -> Result<(), AveragingError> {
        self.push_boxed(Box::new(averager))
    }

    /// Adds a boxed averager, e.g. one built from a config.
    pub fn push_boxed(&mut self, mut averager: Box<dyn Averager>) -> Result<(), AveragingError> {
        let label = averager.label();
        if self.averagers.iter().any(|a| a.label() == label) {
            return Err(AveragingError::invalid(
                label,
                "averagers",
                "duplicate",
                "the same averager is listed twice",
            ));
        }
        let theirs = averager.layout().cloned();
        if let (Some(ours), Some(theirs)) = (&self.layout, &theirs) {
            ours.check(theirs, &format!("{SET}: {label}"), true)?;
        }
        averager.share_snapshots(&mut self.store)?;
        self.layout = self.layout.take().or(theirs);
        self.last = self.last.max(averager.last_step());
        self.averagers.push(averager);
        Ok(())
    }

    /// Number of averagers.
    pub fn len(&self) -> usize {
        self.averagers.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.averagers.is_empty()
    }

    /// The averagers' labels, in order.
    pub fn labels(&self) -> Vec<String> {
        self.averagers.iter().map(|a| a.label()).collect()
    }

    /// The averagers, in order.
    pub fn iter(&self) -> impl Iterator<Item = Member<'_>> {
        self.averagers.iter().map(|a| Member {
            averager: a.as_ref(),
            store: &self.store,
        })
    }

    /// Every averager sees the weights after optimizer step `step`; snapshots no averager
    /// holds any more are freed. Steps must increase: a step that does not come after the
    /// last one observed ([`AveragingError::StepOrder`]) and weights without a tensor
    /// ([`AveragingError::NoWeights`]) are refused before any averager moves.
    pub fn observe(&mut self, step: u64, weights: &Weights) -> Result<(), AveragingError> {
        check_step(self.last, step, &|| SET.into())?;
        if weights.is_empty() {
            return Err(AveragingError::NoWeights { label: SET.into() });
        }
        self.last = Some(step);
        if self.layout.is_none() {
            self.layout = Some(weights.layout());
        }
        for averager in &mut self.averagers {
            averager.observe_in(step, weights, &mut self.store)?;
        }
        let held: BTreeSet<_> = self.averagers.iter().flat_map(|a| a.held()).collect();
        self.store.retain(&held);
        Ok(())
    }

    /// Waits for the updates still running in the background: an EMA or SWA kept in host memory
    /// of weights on a GPU lerps on a thread of its own while training goes on, and a LAWA
    /// snapshot kept there is copied on by one. Reading an average, saving and the next update
    /// wait by themselves; this is for timing an update whole. An error if one failed.
    pub fn settle(&self) -> Result<(), AveragingError> {
        self.store.settle(SNAPSHOTS)?;
        self.averagers.iter().try_for_each(|a| a.settle())
    }

    /// Number and total bytes of the distinct snapshots held.
    pub fn distinct_snapshots(&self) -> (usize, usize) {
        self.store.usage()
    }

    /// Writes every averager's state into `dir` (`averagers.json` and `averagers.safetensors`),
    /// each snapshot once per step. Each file is replaced atomically; to make the pair atomic,
    /// save into a fresh folder and rename it (as [`crate::checkpoint::publish_dir`] does).
    pub fn save(&self, dir: &Path) -> Result<(), AveragingError> {
        self.settle()?;
        let names: Vec<String> = match &self.layout {
            Some(l) => l.names().map(String::from).collect(),
            None => Vec::new(),
        };
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let mut saved_steps = BTreeSet::new();
        for ((step, _), snapshot) in self.store.iter() {
            if saved_steps.insert(step) {
                for (name, t) in names.iter().zip(snapshot) {
                    // Moved to the host one at a time as they are written.
                    tensors.push((format!("snapshot.{step}.{name}"), t.shallow_clone()));
                }
            }
        }
        let mut entries = Vec::new();
        for (j, a) in self.averagers.iter().enumerate() {
            let saved = a.save()?;
            for (name, t) in names.iter().zip(&saved.tensors) {
                tensors.push((format!("averager.{j}.{name}"), t.shallow_clone()));
            }
            entries.push(SavedEntry {
                label: saved.label,
                meta: saved.meta,
                tensors: saved.tensors.len(),
                snapshot_steps: saved.snapshot_steps,
            });
        }
        let json = SavedSet {
            version: 1,
            names,
            averagers: entries,
        };
        let json_path = dir.join(STATE_JSON);
        let text = serde_json::to_vec_pretty(&json).map_err(|e| AveragingError::BadState {
            label: "averagers".into(),
            reason: format!("{}: cannot serialize: {e}", json_path.display()),
        })?;
        crate::checkpoint::write_safetensors(&dir.join(STATE_TENSORS), &tensors)?;
        crate::checkpoint::write_atomic(&json_path, &text).map_err(|source| AveragingError::Io {
            path: json_path,
            error: source,
        })
    }

    /// Restores every averager from `dir`, for training that continues on `weights` (which
    /// must have the names and shapes the state was saved with). The set must hold the same
    /// averagers, in the same order, as when it was saved. After an error, the set is in no defined
    /// state: build it anew.
    pub fn load(&mut self, dir: &Path, weights: &Weights) -> Result<(), AveragingError> {
        let json_path = dir.join(STATE_JSON);
        let bad = |reason: String| AveragingError::BadState {
            label: "averagers".into(),
            reason: format!("{}: {reason}", json_path.display()),
        };
        let text = std::fs::read(&json_path).map_err(|source| AveragingError::Io {
            path: json_path.clone(),
            error: source,
        })?;
        let saved: SavedSet = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if saved.version != 1 {
            return Err(bad(format!("unknown version {}", saved.version)));
        }
        let saved_labels: Vec<&str> = saved.averagers.iter().map(|e| e.label.as_str()).collect();
        if saved_labels != self.labels() {
            return Err(bad(format!(
                "saved averagers {saved_labels:?} differ from the configured {:?}",
                self.labels()
            )));
        }
        let layout = weights.layout();
        if !saved.names.is_empty() {
            check_names(&saved.names, &layout).map_err(bad)?;
        }
        // Read one tensor at a time, straight to where it is kept: host memory never holds the
        // whole state at once (GPT-2 large with LAWA k = 10 on a GPU: 31 GB of snapshots).
        let (file, header) = Header::open_checked(&dir.join(STATE_TENSORS))?;
        // The saved tensor `key`, shaped like `like`, on the device `storage` puts it.
        let fetch = |key: String, like: &Tensor, storage: Storage| {
            let info = header
                .get(&key)
                .ok_or_else(|| bad(format!("tensor `{key}` missing from {STATE_TENSORS}")))?;
            let t = header.read_tensor(&file, info)?;
            if t.size() != like.size() {
                return Err(bad(format!(
                    "tensor `{key}` has shape {:?}, expected {:?}",
                    t.size(),
                    like.size()
                )));
            }
            Ok(t.to_device(storage.device_for(like)))
        };
        let mut store = SnapshotStore::default();
        for (averager, entry) in self.averagers.iter().zip(&saved.averagers) {
            let storage = averager.storage();
            for &step in &entry.snapshot_steps {
                if store.get((step, storage)).is_none() {
                    let tensors = weights
                        .iter()
                        .map(|(name, w)| fetch(format!("snapshot.{step}.{name}"), w, storage))
                        .collect::<Result<Vec<_>, _>>()?;
                    store.insert((step, storage), tensors);
                }
            }
        }
        let mut restored = Vec::with_capacity(self.averagers.len());
        for (j, (averager, entry)) in self.averagers.iter().zip(saved.averagers).enumerate() {
            let tensors = if entry.tensors == 0 {
                Vec::new()
            } else {
                weights
                    .iter()
                    .map(|(name, w)| fetch(format!("averager.{j}.{name}"), w, averager.storage()))
                    .collect::<Result<Vec<_>, _>>()?
            };
            restored.push(SavedAverager {
                label: entry.label,
                meta: entry.meta,
                tensors,
                snapshot_steps: entry.snapshot_steps,
            });
        }
        for (averager, saved) in self.averagers.iter_mut().zip(restored) {
            averager.restore(saved, &layout, &store)?;
        }
        self.last = self.averagers.iter().filter_map(|a| a.last_step()).max();
        self.store = store;
        self.layout = Some(layout);
        Ok(())
    }
}

/// Refuses saved tensor names other than the model's, naming the first that differs.
fn check_names(saved: &[String], layout: &Layout) -> Result<(), String> {
    let model: Vec<&str> = layout.names().collect();
    if saved.iter().map(String::as_str).eq(model.iter().copied()) {
        return Ok(());
    }
    let at = saved
        .iter()
        .zip(&model)
        .position(|(s, m)| s != m)
        .unwrap_or(saved.len().min(model.len()));
    let name = |names: &[&str]| names.get(at).map_or("nothing".into(), |n| format!("`{n}`"));
    let saved: Vec<&str> = saved.iter().map(String::as_str).collect();
    Err(format!(
        "saved tensor names differ from the model's: tensor {} of {} saved is {}, the model's \
         {} of {} is {}",
        at + 1,
        saved.len(),
        name(&saved),
        at + 1,
        model.len(),
        name(&model)
    ))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::averaging::Lawa;

    /// Saving waits for a snapshot still being copied into host memory, and what it saved
    /// resumes to the same average.
    #[test]
    fn save_waits_for_a_host_snapshot_in_flight_and_resumes_exactly() {
        let lawa = || Lawa::new(2, 1).unwrap().storage(Storage::Cpu);
        let mut set = AveragerSet {
            store: SnapshotStore::deferring(),
            ..AveragerSet::default()
        };
        set.push(lawa()).unwrap();
        let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let weights = Weights::from_named([("w".to_string(), w.shallow_clone())]);
        for step in 1..=3u64 {
            let _ = w.shallow_clone().fill_(step as f64);
            set.observe(step, &weights).unwrap();
        }
        assert!(set.store.is_copying());
        let dir = tempfile::tempdir().unwrap();
        set.save(dir.path()).unwrap();
        assert!(!set.store.is_copying(), "save waited for the copy");
        let mut back = AveragerSet::new();
        back.push(lawa()).unwrap();
        back.load(dir.path(), &weights).unwrap();
        let out = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let target = Weights::from_named([("w".to_string(), out.shallow_clone())]);
        for s in [&set, &back] {
            s.iter().next().unwrap().write_average(&target).unwrap();
            assert_eq!(Vec::<f32>::try_from(&out).unwrap(), [2.5; 3]);
        }
    }

    /// A step given twice or out of order is refused, naming both steps, before any averager
    /// moves; so is it after a resume, whose saved state records the last step; weights without
    /// a tensor are refused.
    #[test]
    fn steps_must_increase_across_a_resume_and_weights_must_hold_tensors() {
        let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let weights = Weights::from_named([("w".to_string(), w.shallow_clone())]);
        let build = || {
            let mut set = AveragerSet::new();
            set.push(Lawa::new(2, 1).unwrap()).unwrap();
            set.push(crate::averaging::Ema::new(0.5).unwrap()).unwrap();
            set
        };
        let mut set = build();
        for step in 1..=3u64 {
            let _ = w.shallow_clone().fill_(step as f64);
            set.observe(step, &weights).unwrap();
        }
        let average = |set: &AveragerSet| {
            let out = Tensor::zeros([3], (Kind::Float, Device::Cpu));
            let target = Weights::from_named([("w".to_string(), out.shallow_clone())]);
            set.iter()
                .map(|m| {
                    m.write_average(&target).unwrap();
                    out.double_value(&[0])
                })
                .collect::<Vec<_>>()
        };
        let before = average(&set);
        assert_eq!(before, [2.5, 2.25]); // LAWA (2 + 3) / 2; EMA 0.5: 1 -> 1.5 -> 2.25
        for step in [3, 2] {
            let err = set.observe(step, &weights).unwrap_err().to_string();
            assert!(
                err.contains(&format!("step {step} observed after step 3")),
                "{err}"
            );
        }
        assert_eq!(average(&set), before, "nothing moved");

        let dir = tempfile::tempdir().unwrap();
        set.save(dir.path()).unwrap();
        let mut back = build();
        back.load(dir.path(), &weights).unwrap();
        let err = back.observe(3, &weights).unwrap_err().to_string();
        assert!(err.contains("step 3 observed after step 3"), "{err}");
        let _ = w.shallow_clone().fill_(4.0);
        back.observe(4, &weights).unwrap();
        assert_eq!(average(&back), [3.5, 3.125]);

        let mut lone = Lawa::new(2, 1).unwrap();
        lone.observe(1, &weights).unwrap();
        let err = lone.observe(1, &weights).unwrap_err().to_string();
        assert!(
            err.starts_with("lawa_k2_nu1: step 1 observed after step 1"),
            "{err}"
        );
        let none = Weights::from_named(Vec::<(String, Tensor)>::new());
        for err in [
            build().observe(1, &none).unwrap_err(),
            crate::averaging::Ema::new(0.5)
                .unwrap()
                .observe(1, &none)
                .unwrap_err(),
        ] {
            assert!(matches!(err, AveragingError::NoWeights { .. }), "{err}");
        }
    }

    /// A state saved for other tensors names the first one that differs.
    #[test]
    fn a_state_of_other_tensors_names_the_first_that_differs() {
        let named = |names: &[&str]| {
            Weights::from_named(names.iter().map(|n| {
                (
                    n.to_string(),
                    Tensor::zeros([2], (Kind::Float, Device::Cpu)),
                )
            }))
        };
        let mut set = AveragerSet::new();
        set.push(Lawa::new(2, 1).unwrap()).unwrap();
        set.observe(1, &named(&["a", "b", "c"])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        set.save(dir.path()).unwrap();
        let mut back = AveragerSet::new();
        back.push(Lawa::new(2, 1).unwrap()).unwrap();
        let err = back
            .load(dir.path(), &named(&["a", "bx", "c"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor 2 of 3 saved is `b`, the model's 2 of 3 is `bx`"),
            "{err}"
        );
        let err = back
            .load(dir.path(), &named(&["a", "b"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor 3 of 3 saved is `c`, the model's 3 of 2 is nothing"),
            "{err}"
        );
    }

    /// Averagers that observed alone, then joined a set that saves before observing anything,
    /// resume to the same averages, and the set goes on after their last step.
    #[test]
    fn a_set_of_averagers_that_observed_alone_saves_and_resumes_them() {
        let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let weights = Weights::from_named([("w".to_string(), w.shallow_clone())]);
        let mut lawa = Lawa::new(2, 1).unwrap();
        let mut ema = crate::averaging::Ema::new(0.5).unwrap();
        for step in 1..=3u64 {
            let _ = w.shallow_clone().fill_(step as f64);
            lawa.observe(step, &weights).unwrap();
            ema.observe(step, &weights).unwrap();
        }
        let mut set = AveragerSet::new();
        set.push(lawa).unwrap();
        set.push(ema).unwrap();
        let err = set.observe(2, &weights).unwrap_err().to_string();
        assert!(err.contains("step 2 observed after step 3"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        set.save(dir.path()).unwrap();
        let mut back = AveragerSet::new();
        back.push(Lawa::new(2, 1).unwrap()).unwrap();
        back.push(crate::averaging::Ema::new(0.5).unwrap()).unwrap();
        back.load(dir.path(), &weights).unwrap();
        let out = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let target = Weights::from_named([("w".to_string(), out.shallow_clone())]);
        let averages: Vec<f64> = back
            .iter()
            .map(|m| {
                m.write_average(&target).unwrap();
                out.double_value(&[0])
            })
            .collect();
        assert_eq!(averages, [2.5, 2.25]);
    }

    /// A lone averager whose update failed may be given the same step again; a state saved
    /// before lawa recorded the last step resumes a LAWA after its newest snapshot.
    #[test]
    fn a_failed_update_may_be_retried_and_old_states_bound_the_step() {
        let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let weights = Weights::from_named([("w".to_string(), w.shallow_clone())]);
        let other = Weights::from_named([(
            "w".to_string(),
            Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        )]);
        let mut ema = crate::averaging::Ema::new(0.5).unwrap();
        let mut lawa = Lawa::new(2, 1).unwrap();
        ema.observe(1, &weights).unwrap();
        lawa.observe(1, &weights).unwrap();
        assert!(ema.observe(2, &other).is_err(), "a shape that changed");
        assert!(lawa.observe(2, &other).is_err(), "a shape that changed");
        ema.observe(2, &weights).unwrap();
        lawa.observe(2, &weights).unwrap();

        let mut set = AveragerSet::new();
        set.push(Lawa::new(2, 2).unwrap()).unwrap();
        set.push(crate::averaging::Ema::new(0.5).unwrap()).unwrap();
        for step in 1..=5 {
            set.observe(step, &weights).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        set.save(dir.path()).unwrap();
        let json = dir.path().join(STATE_JSON);
        let mut saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        for entry in saved["averagers"].as_array_mut().unwrap() {
            assert_eq!(entry["meta"]["last_step"], 5);
            entry["meta"].as_object_mut().unwrap().remove("last_step");
        }
        std::fs::write(&json, serde_json::to_vec(&saved).unwrap()).unwrap();
        let mut back = AveragerSet::new();
        back.push(Lawa::new(2, 2).unwrap()).unwrap();
        back.push(crate::averaging::Ema::new(0.5).unwrap()).unwrap();
        back.load(dir.path(), &weights).unwrap();
        let err = back.observe(4, &weights).unwrap_err().to_string();
        assert!(err.contains("step 4 observed after step 4"), "{err}");
        back.observe(5, &weights).unwrap();
    }
}
