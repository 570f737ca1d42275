//! The averagers against a naive reference, against PyTorch's `torch.optim.swa_utils`, and
//! against hand-computed values.

use std::path::PathBuf;
use std::process::Command;

use lawa_core::averaging::{
    Averager, AveragerSet, AveragingError, Ema, Lawa, Storage, Swa, Weights,
};
use tch::{Device, Kind, Tensor};

const SHAPES: [(&str, &[i64]); 3] = [
    ("a.weight", &[7, 5]),
    ("b.bias", &[11]),
    ("c.scale", &[2, 3, 4]),
];

/// A fresh random set of weights (seeded), as a model's parameters would be after a step.
/// Named tensors, as a model's parameters.
type Named = Vec<(String, Tensor)>;

fn random_weights(seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    SHAPES
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::randn(*s, (Kind::Float, Device::Cpu))))
        .collect()
}

fn weights_of(named: &[(String, Tensor)]) -> Weights {
    Weights::from_named(named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
}

fn zeros_target() -> (Vec<(String, Tensor)>, Weights) {
    let named: Vec<(String, Tensor)> = SHAPES
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::zeros(*s, (Kind::Float, Device::Cpu))))
        .collect();
    let w = weights_of(&named);
    (named, w)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Sorted-by-name order of SHAPES, which is the order of `Weights`.
fn sorted_names() -> Vec<String> {
    let mut names: Vec<String> = SHAPES.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    names
}

#[test]
fn lawa_equals_the_explicit_mean_of_stored_copies() {
    for (k, nu, start) in [(5usize, 7u64, 20u64), (1, 1, 0), (3, 10, 0), (10, 3, 5)] {
        let mut lawa = Lawa::new(k, nu).unwrap().start(start);
        let mut kept: Vec<Vec<(String, Tensor)>> = Vec::new(); // naive: full copies
        let (target_named, target) = zeros_target();
        for step in 1..=200u64 {
            let w = random_weights(step as i64);
            lawa.observe(step, &weights_of(&w)).unwrap();
            if step >= start && (step - start) % nu == 0 {
                kept.push(w.iter().map(|(n, t)| (n.clone(), t.copy())).collect());
            }
            if kept.is_empty() {
                assert!(!lawa.is_ready());
                assert!(matches!(
                    lawa.write_average(&target),
                    Err(AveragingError::NotReady { .. })
                ));
                continue;
            }
            lawa.write_average(&target).unwrap();
            let window = &kept[kept.len().saturating_sub(k)..];
            assert_eq!(lawa.held_steps().len(), window.len());
            for (name, out) in &target_named {
                let stack: Vec<Tensor> = window
                    .iter()
                    .map(|ws| {
                        ws.iter()
                            .find(|(n, _)| n == name)
                            .unwrap()
                            .1
                            .to_kind(Kind::Double)
                    })
                    .collect();
                let reference = Tensor::stack(&stack, 0).mean_dim(0, false, Kind::Double);
                let diff = max_abs_diff(out, &reference);
                assert!(diff <= 1e-6, "k={k} nu={nu} step={step} {name}: {diff}");
            }
        }
    }
}

#[test]
fn ema_warmup_decay_equals_the_formula() {
    // 1 - (1 + e)^(-2/3), computed by hand (Python float64).
    let expected = [
        (0u64, 0.0),
        (1, 0.3700394750525634),
        (10, 0.7978199917664258),
        (31, 0.9007874342519875),
        (1000, 0.9900066611160449),
    ];
    let high = Ema::with_warmup(0.9999).unwrap();
    let authors = Ema::with_warmup(0.9).unwrap();
    for (e, value) in expected {
        assert!((high.decay_at(e) - value).abs() < 1e-15, "e={e}");
        assert!(
            (authors.decay_at(e) - value.min(0.9)).abs() < 1e-15,
            "e={e}"
        );
    }
    assert_eq!(authors.decay_at(31), 0.9, "clamped at beta");
    assert_eq!(
        Ema::new(0.99).unwrap().decay_at(0),
        0.99,
        "plain form is constant"
    );
}

#[test]
fn ema_warmup_running_average_by_hand() {
    // Scalar weights 1, 2, 3: e=0 copies (1); e=1: lerp(1, 2, 1 - d1); e=2: lerp(., 3, 1 - d2).
    let mut ema = Ema::with_warmup(0.9).unwrap().storage(Storage::Cpu);
    let w = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let weights = Weights::from_named([("w".into(), w.shallow_clone())]);
    for step in 1..=3u64 {
        let _ = w.shallow_clone().fill_(step as f64);
        ema.observe(step, &weights).unwrap();
    }
    let d1 = 1.0 - 2f64.powf(-2.0 / 3.0);
    let d2 = 1.0 - 3f64.powf(-2.0 / 3.0);
    let after2 = 1.0 * d1 + 2.0 * (1.0 - d1);
    let after3 = after2 * d2 + 3.0 * (1.0 - d2);
    let out = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    ema.write_average(&Weights::from_named([("w".into(), out.shallow_clone())]))
        .unwrap();
    assert!(
        (out.double_value(&[0]) - after3).abs() < 1e-6,
        "{} vs {after3}",
        out.double_value(&[0])
    );
    assert_eq!(ema.updates(), 3);
}

fn python() -> PathBuf {
    PathBuf::from(
        std::env::var("LAWA_PYTHON")
            .expect("LAWA_PYTHON (set by .cargo/config.toml; run ./test once)"),
    )
}

#[test]
fn ema_and_swa_equal_pytorch_swa_utils() {
    let steps = 150u64;
    let (decay, swa_start, swa_every) = (0.95, 30u64, 10u64);
    let report = [1u64, 29, 30, 75, 150];
    let dir = tempfile::tempdir().unwrap();
    let mut seq: Vec<(String, Tensor)> = Vec::new();
    let mut ema = Ema::new(decay).unwrap();
    let mut swa = Swa::new().every(swa_every).unwrap().start(swa_start);
    let mut ours: Vec<(String, u64, Named)> = Vec::new();
    for step in 1..=steps {
        let w = random_weights(1000 + step as i64);
        for (n, t) in &w {
            seq.push((format!("step{step}.{n}"), t.copy()));
        }
        ema.observe(step, &weights_of(&w)).unwrap();
        swa.observe(step, &weights_of(&w)).unwrap();
        if report.contains(&step) {
            for (label, avg) in [
                ("ema", &ema as &dyn Averager),
                ("swa", &swa as &dyn Averager),
            ] {
                if avg.is_ready() {
                    let (named, target) = zeros_target();
                    avg.write_average(&target).unwrap();
                    ours.push((label.into(), step, named));
                }
            }
        }
    }
    Tensor::write_safetensors(&seq, dir.path().join("in.safetensors")).unwrap();
    let cfg = serde_json::json!({"steps": steps, "ema_decay": decay, "swa_start": swa_start,
        "swa_every": swa_every, "report_steps": report});
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/swa_utils_reference.py");
    let out = Command::new(python())
        .arg(script)
        .arg(dir.path().join("in.safetensors"))
        .arg(dir.path().join("out.safetensors"))
        .arg(dir.path().join("cfg.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("out.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        ours.len(),
        reference.len() / SHAPES.len(),
        "same reports on both sides"
    );
    let mut worst: f64 = 0.0;
    for (label, step, named) in &ours {
        for (name, t) in named {
            let r = &reference[&format!("{label}.{step}.{name}")];
            worst = worst.max(max_abs_diff(t, r));
        }
    }
    println!("max abs diff vs torch.optim.swa_utils: {worst:e}");
    assert!(worst <= 1e-6, "{worst}");
    assert_eq!(swa.samples(), 13, "steps 30, 40, ..., 150");
}

/// The flattened values an averager writes into a fresh zero target.
fn written(write: impl FnOnce(&Weights) -> Result<(), AveragingError>) -> Vec<f64> {
    let (named, target) = zeros_target();
    write(&target).unwrap();
    named
        .iter()
        .flat_map(|(_, t)| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap())
        .collect()
}

#[test]
fn overlapping_lawa_instances_share_snapshot_storage() {
    let mut set = AveragerSet::new();
    set.push(Lawa::new(4, 10).unwrap()).unwrap();
    set.push(Lawa::new(2, 20).unwrap()).unwrap();
    set.push(Ema::new(0.9).unwrap()).unwrap();
    let mut alone = [Lawa::new(4, 10).unwrap(), Lawa::new(2, 20).unwrap()];
    for step in 1..=100u64 {
        let w = weights_of(&random_weights(step as i64));
        set.observe(step, &w).unwrap();
        for lawa in &mut alone {
            lawa.observe(step, &w).unwrap();
        }
    }
    assert_eq!(alone[0].held_steps(), [70, 80, 90, 100]);
    assert_eq!(alone[1].held_steps(), [80, 100]);
    let (count, bytes) = set.distinct_snapshots();
    assert_eq!(count, 4, "4 distinct steps, not 6 copies");
    assert_eq!(bytes, 4 * (35 + 11 + 24) * 4);
    // Sharing changes nothing: the set's averages are those of the averagers used alone.
    let members: Vec<_> = set.iter().collect();
    for (member, lawa) in members.iter().zip(&alone) {
        assert_eq!(member.label(), lawa.label());
        assert_eq!(
            written(|t| member.write_average(t)),
            written(|t| lawa.write_average(t))
        );
    }
}

#[test]
fn storage_is_chosen_per_averager_and_copies_are_keyed_by_it() {
    let mut set = AveragerSet::new();
    set.push(Lawa::new(2, 10).unwrap()).unwrap();
    set.push(Lawa::new(3, 10).unwrap().storage(Storage::Cpu))
        .unwrap();
    set.push(Ema::new(0.9).unwrap().storage(Storage::Cpu))
        .unwrap();
    for step in 1..=30u64 {
        set.observe(step, &weights_of(&random_weights(step as i64)))
            .unwrap();
    }
    // Steps 20 and 30 in training storage, 10, 20 and 30 in host storage.
    assert_eq!(set.distinct_snapshots().0, 5);
}

#[test]
fn a_lone_lawa_keeps_its_snapshots_when_it_joins_a_set() {
    let mut lawa = Lawa::new(3, 5).unwrap();
    for step in 1..=10u64 {
        lawa.observe(step, &weights_of(&random_weights(step as i64)))
            .unwrap();
    }
    let before = written(|t| lawa.write_average(t));
    let mut set = AveragerSet::new();
    set.push(lawa).unwrap();
    assert_eq!(set.distinct_snapshots().0, 2);
    let member = set.iter().next().unwrap();
    assert_eq!(written(|t| member.write_average(t)), before);
}

#[test]
fn averagers_and_sets_are_send() {
    fn send<T: Send>(_: &T) {}
    let mut set = AveragerSet::new();
    set.push(Lawa::new(2, 1).unwrap()).unwrap();
    set.observe(1, &weights_of(&random_weights(1))).unwrap();
    send(&set);
    let boxed: Box<dyn Averager> = Box::new(Ema::new(0.5).unwrap());
    send(&boxed);
    // A set moves to another thread and keeps working there.
    let handle = std::thread::spawn(move || {
        set.observe(2, &weights_of(&random_weights(2))).unwrap();
        set.distinct_snapshots().0
    });
    assert_eq!(handle.join().unwrap(), 2);
}

#[test]
fn not_ready_errors_name_the_first_due_step() {
    let first = |a: &dyn Averager| match written_err(a) {
        AveragingError::NotReady { first_step, .. } => first_step,
        other => panic!("{other}"),
    };
    assert_eq!(first(&Ema::new(0.9).unwrap().every(5).unwrap()), 5);
    assert_eq!(first(&Ema::new(0.9).unwrap()), 1);
    assert_eq!(first(&Ema::new(0.9).unwrap().start(7)), 7);
    assert_eq!(first(&Swa::new().every(10).unwrap()), 10);
    assert_eq!(first(&Swa::new().every(10).unwrap().start(25)), 25);
    assert_eq!(first(&Lawa::new(3, 50).unwrap()), 50);
    assert_eq!(first(&Lawa::new(3, 50).unwrap().start(120)), 120);
    // The first due step is indeed when an average appears.
    let mut ema = Ema::new(0.9).unwrap().every(5).unwrap();
    for step in 1..=5u64 {
        assert!(!ema.is_ready());
        ema.observe(step, &weights_of(&random_weights(step as i64)))
            .unwrap();
    }
    assert!(ema.is_ready());
}

fn written_err(a: &dyn Averager) -> AveragingError {
    let (_, target) = zeros_target();
    a.write_average(&target).unwrap_err()
}

#[test]
fn tied_tensors_count_once_and_integer_buffers_are_copied() {
    let shared = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
    let steps_buf = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
    let named = || {
        vec![
            ("wte.weight".to_string(), shared.shallow_clone()),
            ("lm_head.weight".to_string(), shared.shallow_clone()),
            ("num_batches".to_string(), steps_buf.shallow_clone()),
        ]
    };
    let w = Weights::from_named(named());
    assert_eq!(w.len(), 2, "the tied head is the embedding");
    let mut lawa = Lawa::new(3, 1).unwrap();
    for step in 1..=3u64 {
        let _ = shared.shallow_clone().fill_(step as f64);
        let _ = steps_buf.shallow_clone().fill_(step as i64 * 7);
        lawa.observe(step, &Weights::from_named(named())).unwrap();
    }
    let out_w = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
    let out_b = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
    lawa.write_average(&Weights::from_named([
        ("lm_head.weight".to_string(), out_w.shallow_clone()),
        ("num_batches".to_string(), out_b.shallow_clone()),
    ]))
    .unwrap();
    assert_eq!(out_w.double_value(&[0, 0]), 2.0, "mean of 1, 2, 3");
    assert_eq!(
        out_b.int64_value(&[0]),
        21,
        "integer buffer copied from the newest snapshot"
    );
}

#[test]
fn bad_parameters_are_refused_with_the_field_named() {
    let msg = |e: AveragingError| e.to_string();
    assert!(msg(Lawa::new(0, 10).unwrap_err()).contains("k = 0"));
    assert!(msg(Lawa::new(5, 0).unwrap_err()).contains("nu = 0"));
    // A window of 2^40 snapshots is only a number until snapshots are taken (a run's memory
    // check refuses it before): nothing is allocated for it up front.
    assert_eq!(
        Lawa::new(1 << 40, 10).unwrap().label(),
        "lawa_k1099511627776_nu10"
    );
    assert!(msg(Ema::new(1.0).unwrap_err()).contains("decay = 1"));
    assert!(msg(Ema::new(-0.1).unwrap_err()).contains("decay = -0.1"));
    assert!(Ema::new(0.0).is_ok(), "decay 0 is a copy, allowed");
    assert!(msg(Ema::new(0.9).unwrap().every(0).unwrap_err()).contains("every = 0"));
    assert!(msg(Swa::new().every(0).unwrap_err()).contains("every = 0"));
    let e = Swa::new().start_fraction(1.5, 1000).unwrap_err();
    assert!(msg(e).contains("start = 1.5"));
    assert_eq!(
        Swa::new().start_fraction(0.75, 1000).unwrap().start_step(),
        750
    );
    let mut set = AveragerSet::new();
    set.push(Lawa::new(5, 10).unwrap()).unwrap();
    let dup = set.push(Lawa::new(5, 10).unwrap()).unwrap_err();
    assert!(msg(dup).contains("lawa_k5_nu10"));
}

#[test]
fn a_target_with_other_tensors_is_refused_and_left_untouched() {
    let mut lawa = Lawa::new(2, 1).unwrap();
    lawa.observe(1, &weights_of(&random_weights(1))).unwrap();
    let (mut named, _) = zeros_target();
    named[0].1 = Tensor::zeros([5, 7], (Kind::Float, Device::Cpu)); // a.weight transposed
    let err = lawa
        .write_average(&weights_of(&named))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.weight") && err.contains("shape"), "{err}");
    for (_, t) in &named {
        assert_eq!(
            t.abs().sum(Kind::Double).double_value(&[]),
            0.0,
            "untouched"
        );
    }
    let (mut named, _) = zeros_target();
    named.pop();
    let err = lawa
        .write_average(&weights_of(&named))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
    // Observed weights that change shape mid-run are refused too.
    let mut other = random_weights(2);
    other[1].1 = Tensor::zeros([12], (Kind::Float, Device::Cpu));
    assert!(lawa.observe(2, &weights_of(&other)).is_err());
}

#[test]
fn labels_are_stable() {
    let labels = [
        Lawa::new(5, 50).unwrap().label(),
        Lawa::new(5, 50).unwrap().start(1000).label(),
        Ema::new(0.99).unwrap().label(),
        Ema::with_warmup(0.9).unwrap().label(),
        Ema::new(0.999)
            .unwrap()
            .every(10)
            .unwrap()
            .start(100)
            .label(),
        Swa::new()
            .every(10)
            .unwrap()
            .start_fraction(0.75, 70_000)
            .unwrap()
            .label(),
        Swa::new().every(5).unwrap().start(5000).label(),
    ];
    assert_eq!(
        labels,
        [
            "lawa_k5_nu50",
            "lawa_k5_nu50_start1000",
            "ema_0.99",
            "ema_0.9_warmup",
            "ema_0.999_every10_start100",
            "swa_start0.75_every10",
            "swa_start5000_every5"
        ]
    );
}

fn build_set() -> AveragerSet {
    let cpu = Storage::Cpu;
    let mut set = AveragerSet::new();
    set.push(Lawa::new(3, 4).unwrap().storage(cpu)).unwrap();
    set.push(Lawa::new(2, 8).unwrap().storage(cpu)).unwrap();
    set.push(Ema::with_warmup(0.9).unwrap().storage(cpu))
        .unwrap();
    let swa = Swa::new().every(3).unwrap();
    set.push(swa.start_fraction(0.25, 100).unwrap().storage(cpu))
        .unwrap();
    set
}

fn averages(set: &AveragerSet) -> Vec<Vec<f64>> {
    set.iter()
        .map(|a| written(|t| a.write_average(t)))
        .collect()
}

#[test]
fn saved_state_resumes_exactly() {
    let mut straight = build_set();
    let mut first = build_set();
    for step in 1..=60u64 {
        let w = weights_of(&random_weights(step as i64));
        straight.observe(step, &w).unwrap();
        first.observe(step, &w).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    first.save(dir.path()).unwrap();
    drop(first);
    let mut resumed = build_set();
    resumed
        .load(dir.path(), &weights_of(&random_weights(0)))
        .unwrap();
    assert_eq!(
        resumed.distinct_snapshots().0,
        straight.distinct_snapshots().0
    );
    for step in 61..=100u64 {
        let w = weights_of(&random_weights(step as i64));
        straight.observe(step, &w).unwrap();
        resumed.observe(step, &w).unwrap();
    }
    assert_eq!(averages(&straight), averages(&resumed), "bit for bit");

    // A different set of averagers refuses the state.
    let mut other = AveragerSet::new();
    other.push(Lawa::new(3, 4).unwrap()).unwrap();
    let err = other
        .load(dir.path(), &weights_of(&random_weights(0)))
        .unwrap_err();
    assert!(err.to_string().contains("differ"), "{err}");
    // Snapshots are saved once per step, not once per averager.
    let saved = Tensor::read_safetensors(dir.path().join("averagers.safetensors")).unwrap();
    let snapshot_tensors = saved
        .iter()
        .filter(|(n, _)| n.starts_with("snapshot."))
        .count();
    let names = sorted_names();
    // lawa_k3_nu4 holds 52, 56, 60; lawa_k2_nu8 holds 56 (shared) and 48.
    assert_eq!(snapshot_tensors, 4 * names.len());
}

#[test]
fn a_saved_state_with_missing_pieces_is_refused() {
    let mut set = build_set();
    for step in 1..=20u64 {
        set.observe(step, &weights_of(&random_weights(step as i64)))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    set.save(dir.path()).unwrap();
    let json_path = dir.path().join("averagers.json");
    let good = std::fs::read_to_string(&json_path).unwrap();
    let load = || build_set().load(dir.path(), &weights_of(&random_weights(0)));
    assert!(load().is_ok());
    // No snapshot_steps: before, an empty LAWA queue was restored silently.
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["averagers"][0]
        .as_object_mut()
        .unwrap()
        .remove("snapshot_steps");
    std::fs::write(&json_path, json.to_string()).unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("snapshot_steps"), "{err}");
    // A snapshot step whose tensors are not in the file.
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["averagers"][0]["snapshot_steps"] = serde_json::json!([12, 16, 99]);
    std::fs::write(&json_path, json.to_string()).unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("snapshot.99."), "{err}");
    // EMA's update counter missing.
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["averagers"][2]["meta"] = serde_json::json!({});
    std::fs::write(&json_path, json.to_string()).unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("updates"), "{err}");
    // Flipped bytes in the tensors file are caught by its checksum.
    std::fs::write(&json_path, &good).unwrap();
    let tensors = dir.path().join("averagers.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&tensors, bytes).unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("CRC-32"), "{err}");
}

/// On a GPU, an EMA, an SWA and a LAWA kept in host memory (the weights copied through pinned
/// staging buffers on the GPU's stream, the lerp or the snapshot's copy on a host thread while
/// the GPU goes on) equal the same averagers kept on the device. The weights are changed in place right after each update, as
/// the next optimizer step changes them, before the host thread has read its copy: the copies
/// must hold the values of the step observed. Without a GPU it says it was skipped.
#[test]
fn host_averages_of_gpu_weights_equal_device_averages() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no GPU here (host averages of GPU weights go through pinned buffers)");
        return;
    }
    let gpu = Device::Cuda(0);
    let mut host = AveragerSet::new();
    host.push(Ema::new(0.9).unwrap().storage(Storage::Cpu))
        .unwrap();
    host.push(Swa::new().storage(Storage::Cpu)).unwrap();
    host.push(Lawa::new(3, 2).unwrap().storage(Storage::Cpu))
        .unwrap();
    let mut device = AveragerSet::new();
    device.push(Ema::new(0.9).unwrap()).unwrap();
    device.push(Swa::new()).unwrap();
    device.push(Lawa::new(3, 2).unwrap()).unwrap();
    let live: Named = random_weights(0)
        .into_iter()
        .map(|(n, t)| (n, t.to_device(gpu)))
        .collect();
    for step in 1..=12u64 {
        for ((_, w), (_, t)) in live.iter().zip(random_weights(step as i64)) {
            tch::no_grad(|| w.shallow_clone().copy_(&t));
        }
        host.observe(step, &weights_of(&live)).unwrap();
        device.observe(step, &weights_of(&live)).unwrap();
        for (_, w) in &live {
            // The next step's change, queued on the stream behind the copies.
            let _ = w.shallow_clone().fill_(f64::NAN);
        }
    }
    for (h, d) in host.iter().zip(device.iter()) {
        let (a, b) = (
            written(|t| h.write_average(t)),
            written(|t| d.write_average(t)),
        );
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(a.iter().all(|x| x.is_finite()), "{}: {a:?}", h.label());
        assert!(diff <= 1e-6, "{}: {diff}", h.label());
    }
}
