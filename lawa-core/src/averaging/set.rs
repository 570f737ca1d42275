use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use tch::Tensor;

use super::weights::Layout;
use super::{Averager, AveragerState, AveragingError, Snapshot, SnapshotCache, Storage, Weights};

/// File names of a saved [`AveragerSet`].
pub const STATE_JSON: &str = "averagers.json";
/// Tensors of a saved [`AveragerSet`].
pub const STATE_TENSORS: &str = "averagers.safetensors";

/// Several averagers fed from one training trajectory. Snapshots are shared: when several
/// averagers want the weights of the same step, one copy is taken and all of them hold it, so
/// memory is the number of distinct snapshots held, not the sum over averagers.
///
/// ```
/// use lawa_core::averaging::{AveragerSet, Ema, Lawa, Storage, Weights};
/// use tch::{nn, Device};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _w = vs.root().randn("w", &[4, 4], 0.0, 1.0);
/// let mut set = AveragerSet::new(Storage::Training);
/// set.push(Box::new(Lawa::new(5, 10).unwrap())).unwrap();
/// set.push(Box::new(Lawa::new(3, 20).unwrap())).unwrap();
/// set.push(Box::new(Ema::new(0.99).unwrap())).unwrap();
/// for step in 1..=100 {
///     // ... forward, backward, optimizer step ...
///     set.observe(step, &Weights::from_var_store(&vs)).unwrap();
/// }
/// // Steps 60..100 (every 10) and 60, 80, 100 (every 20) overlap: 5 distinct snapshots.
/// assert_eq!(set.distinct_snapshots().0, 5);
/// ```
pub struct AveragerSet {
    averagers: Vec<Box<dyn Averager>>,
    cache: SnapshotCache,
    layout: Option<Layout>,
}

impl std::fmt::Debug for AveragerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AveragerSet")
            .field("labels", &self.labels())
            .finish()
    }
}

impl AveragerSet {
    /// An empty set keeping its copies in `storage`.
    pub fn new(storage: Storage) -> Self {
        AveragerSet {
            averagers: Vec::new(),
            cache: SnapshotCache::new(storage),
            layout: None,
        }
    }

    /// Adds an averager; labels must be unique.
    pub fn push(&mut self, averager: Box<dyn Averager>) -> Result<(), AveragingError> {
        let label = averager.label();
        if self.averagers.iter().any(|a| a.label() == label) {
            return Err(AveragingError::invalid(
                label,
                "averagers",
                "duplicate",
                "the same averager is listed twice",
            ));
        }
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
    pub fn iter(&self) -> impl Iterator<Item = &dyn Averager> {
        self.averagers.iter().map(|a| a.as_ref())
    }

    /// Every averager sees the weights after optimizer step `step`.
    pub fn observe(&mut self, step: u64, weights: &Weights) -> Result<(), AveragingError> {
        if self.layout.is_none() {
            self.layout = Some(weights.layout());
        }
        for averager in &mut self.averagers {
            averager.observe(step, weights, &mut self.cache)?;
        }
        self.cache.clear();
        Ok(())
    }

    /// Number and total bytes of the distinct snapshots held by all averagers.
    pub fn distinct_snapshots(&self) -> (usize, usize) {
        let distinct = self.distinct();
        (distinct.len(), distinct.iter().map(|s| s.bytes()).sum())
    }

    fn distinct(&self) -> Vec<Rc<Snapshot>> {
        let mut seen: Vec<Rc<Snapshot>> = Vec::new();
        for s in self.averagers.iter().flat_map(|a| a.snapshots()) {
            if !seen.iter().any(|t| Rc::ptr_eq(t, &s)) {
                seen.push(s);
            }
        }
        seen.sort_by_key(|s| s.step());
        seen
    }

    /// Writes every averager's state into `dir` ([`STATE_JSON`] and [`STATE_TENSORS`]), each
    /// distinct snapshot once. Each file is replaced atomically; to make the pair atomic, save
    /// into a fresh folder and rename it (as the trainer's checkpoints do).
    pub fn save(&self, dir: &Path) -> Result<(), AveragingError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AveragingError::Io { path, source }
        };
        let names: Vec<String> = self
            .layout
            .as_ref()
            .map(|l| l.names().map(String::from).collect())
            .unwrap_or_default();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for s in self.distinct() {
            for (name, t) in names.iter().zip(s.tensors()) {
                tensors.push((
                    format!("snapshot.{}.{name}", s.step()),
                    t.to_device(tch::Device::Cpu),
                ));
            }
        }
        let mut entries = Vec::new();
        for (j, a) in self.averagers.iter().enumerate() {
            let state = a.state();
            for (name, t) in names.iter().zip(&state.tensors) {
                tensors.push((
                    format!("averager.{j}.{name}"),
                    t.to_device(tch::Device::Cpu),
                ));
            }
            entries.push(serde_json::json!({
                "label": state.label,
                "meta": state.meta,
                "tensors": state.tensors.len(),
                "snapshot_steps": state.snapshots.iter().map(|s| s.step()).collect::<Vec<_>>(),
            }));
        }
        let json = serde_json::json!({ "version": 1, "names": names, "averagers": entries });
        let tensors_path = dir.join(STATE_TENSORS);
        let tmp = dir.join(format!(".{STATE_TENSORS}.tmp{}", std::process::id()));
        Tensor::write_safetensors(&tensors, &tmp)?;
        std::fs::rename(&tmp, &tensors_path).map_err(io(&tensors_path))?;
        let json_path = dir.join(STATE_JSON);
        let text = serde_json::to_vec_pretty(&json).map_err(|e| AveragingError::Io {
            path: json_path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::fsutil::write_atomic(&json_path, &text).map_err(io(&json_path))?;
        Ok(())
    }

    /// Restores every averager from `dir`, for training that continues on `weights` (which
    /// must have the names and shapes the state was saved with). The set must hold the same
    /// averagers, in the same order, as when it was saved.
    pub fn load(&mut self, dir: &Path, weights: &Weights) -> Result<(), AveragingError> {
        let json_path = dir.join(STATE_JSON);
        let bad = |reason: String| AveragingError::BadState {
            label: "averagers".into(),
            reason: format!("{}: {reason}", json_path.display()),
        };
        let text = std::fs::read(&json_path).map_err(|source| AveragingError::Io {
            path: json_path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let layout = weights.layout();
        let names: Vec<String> = json["names"]
            .as_array()
            .ok_or_else(|| bad("no `names`".into()))?
            .iter()
            .map(|n| {
                n.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad("bad name".into()))
            })
            .collect::<Result<_, _>>()?;
        let entries = json["averagers"]
            .as_array()
            .ok_or_else(|| bad("no `averagers`".into()))?;
        let saved_labels: Vec<&str> = entries
            .iter()
            .map(|e| e["label"].as_str().unwrap_or("?"))
            .collect();
        if saved_labels != self.labels() {
            return Err(bad(format!(
                "saved averagers {saved_labels:?} differ from the configured {:?}",
                self.labels()
            )));
        }
        if !names.is_empty() && !names.iter().map(String::as_str).eq(layout.names()) {
            return Err(bad("saved tensor names differ from the model's".into()));
        }
        let mut stored: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(STATE_TENSORS))?
                .into_iter()
                .collect();
        let storage = self.cache.storage();
        let mut take = |key: String, like: &Tensor| -> Result<Tensor, AveragingError> {
            let t = stored
                .remove(&key)
                .ok_or_else(|| bad(format!("tensor `{key}` missing from {STATE_TENSORS}")))?;
            if t.size() != like.size() {
                return Err(bad(format!(
                    "tensor `{key}` has shape {:?}, expected {:?}",
                    t.size(),
                    like.size()
                )));
            }
            Ok(t.to_device(storage.device_for(like)))
        };
        let mut snapshots: HashMap<u64, Rc<Snapshot>> = HashMap::new();
        for (j, entry) in entries.iter().enumerate() {
            let steps: Vec<u64> = entry["snapshot_steps"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_u64()).collect())
                .unwrap_or_default();
            let mut held = Vec::new();
            for step in steps {
                if let std::collections::hash_map::Entry::Vacant(slot) = snapshots.entry(step) {
                    let tensors = weights
                        .iter()
                        .map(|(name, w)| take(format!("snapshot.{step}.{name}"), w))
                        .collect::<Result<Vec<_>, _>>()?;
                    slot.insert(Rc::new(Snapshot::from_tensors(step, tensors)));
                }
                held.push(snapshots[&step].clone());
            }
            let count = entry["tensors"].as_u64().unwrap_or(0);
            let tensors = if count == 0 {
                Vec::new()
            } else {
                weights
                    .iter()
                    .map(|(name, w)| take(format!("averager.{j}.{name}"), w))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let state = AveragerState {
                label: saved_labels[j].to_string(),
                meta: entry["meta"].clone(),
                tensors,
                snapshots: held,
            };
            self.averagers[j].restore(state, &layout)?;
        }
        self.layout = Some(layout);
        Ok(())
    }
}
