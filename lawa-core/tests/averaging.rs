//! The averagers against a naive reference, against PyTorch's `torch.optim.swa_utils`, and
//! against hand-computed values.

use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

use lawa_core::averaging::{
    Averager, AveragerSet, AveragerSpec, AveragingError, Ema, Lawa, SnapshotCache, Storage, Swa,
    SwaStart, Weights,
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
        let mut lawa = Lawa::new(k, nu).unwrap().with_start(start);
        let mut cache = SnapshotCache::new(Storage::Training);
        let mut kept: Vec<Vec<(String, Tensor)>> = Vec::new(); // naive: full copies
        let (target_named, target) = zeros_target();
        for step in 1..=200u64 {
            let w = random_weights(step as i64);
            lawa.observe(step, &weights_of(&w), &mut cache).unwrap();
            if step >= start && step % nu == 0 {
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
    let mut ema = Ema::with_warmup(0.9).unwrap();
    let mut cache = SnapshotCache::new(Storage::Cpu);
    let w = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for step in 1..=3u64 {
        let _ = w.shallow_clone().fill_(step as f64);
        ema.observe(
            step,
            &Weights::from_named([("w".into(), w.shallow_clone())]),
            &mut cache,
        )
        .unwrap();
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
    let mut swa = Swa::new(SwaStart::Step(swa_start), swa_every, Some(steps)).unwrap();
    let mut cache = SnapshotCache::new(Storage::Training);
    let mut ours: Vec<(String, u64, Named)> = Vec::new();
    for step in 1..=steps {
        let w = random_weights(1000 + step as i64);
        for (n, t) in &w {
            seq.push((format!("step{step}.{n}"), t.copy()));
        }
        ema.observe(step, &weights_of(&w), &mut cache).unwrap();
        swa.observe(step, &weights_of(&w), &mut cache).unwrap();
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

#[test]
fn overlapping_lawa_instances_share_snapshot_storage() {
    let mut set = AveragerSet::new(Storage::Training);
    set.push(Box::new(Lawa::new(4, 10).unwrap())).unwrap();
    set.push(Box::new(Lawa::new(2, 20).unwrap())).unwrap();
    set.push(Box::new(Ema::new(0.9).unwrap())).unwrap();
    for step in 1..=100u64 {
        set.observe(step, &weights_of(&random_weights(step as i64)))
            .unwrap();
    }
    let held: Vec<_> = set.iter().map(|a| a.snapshots()).collect();
    let steps = |i: usize| held[i].iter().map(|s| s.step()).collect::<Vec<_>>();
    assert_eq!(steps(0), [70, 80, 90, 100]);
    assert_eq!(steps(1), [80, 100]);
    for (i, step) in [(1usize, 80u64), (3, 100)] {
        let a = &held[0][i];
        let b = held[1].iter().find(|s| s.step() == step).unwrap();
        assert!(Rc::ptr_eq(a, b), "step {step}: one snapshot object");
        for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
            assert_eq!(ta.data_ptr(), tb.data_ptr(), "same storage");
        }
    }
    let (count, bytes) = set.distinct_snapshots();
    assert_eq!(count, 4, "4 distinct steps, not 6 copies");
    assert_eq!(bytes, 4 * (35 + 11 + 24) * 4);
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
    let mut cache = SnapshotCache::new(Storage::Training);
    for step in 1..=3u64 {
        let _ = shared.shallow_clone().fill_(step as f64);
        let _ = steps_buf.shallow_clone().fill_(step as i64 * 7);
        lawa.observe(step, &Weights::from_named(named()), &mut cache)
            .unwrap();
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
    assert!(msg(Ema::new(1.0).unwrap_err()).contains("decay = 1"));
    assert!(msg(Ema::new(-0.1).unwrap_err()).contains("decay = -0.1"));
    assert!(Ema::new(0.0).is_ok(), "decay 0 is a copy, allowed");
    assert!(msg(Ema::new(0.9).unwrap().every(0).unwrap_err()).contains("every = 0"));
    let e = Swa::new(SwaStart::Step(2000), 10, Some(1000)).unwrap_err();
    assert!(msg(e).contains("after the end of training"));
    let e = Swa::new(SwaStart::Fraction(0.75), 10, None).unwrap_err();
    assert!(msg(e).contains("total steps"));
    assert_eq!(
        Swa::new(SwaStart::Fraction(0.75), 10, Some(1000))
            .unwrap()
            .start_step(),
        750
    );
    let spec = AveragerSpec::Lawa {
        k: 5,
        nu: 10,
        start: 5000,
    };
    assert!(msg(spec.build(Some(1000)).err().unwrap()).contains("start = 5000"));
    let mut set = AveragerSet::new(Storage::Training);
    set.push(Box::new(Lawa::new(5, 10).unwrap())).unwrap();
    let dup = set.push(Box::new(Lawa::new(5, 10).unwrap())).unwrap_err();
    assert!(msg(dup).contains("lawa_k5_nu10"));
}

#[test]
fn a_target_with_other_tensors_is_refused_and_left_untouched() {
    let mut lawa = Lawa::new(2, 1).unwrap();
    let mut cache = SnapshotCache::new(Storage::Training);
    lawa.observe(1, &weights_of(&random_weights(1)), &mut cache)
        .unwrap();
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
    assert!(lawa.observe(2, &weights_of(&other), &mut cache).is_err());
}

#[test]
fn labels_are_stable() {
    let specs: Vec<AveragerSpec> = serde_json::from_str(
        r#"[{"kind": "lawa", "k": 5, "nu": 50},
            {"kind": "lawa", "k": 5, "nu": 50, "start": 1000},
            {"kind": "ema", "decay": 0.99},
            {"kind": "ema", "decay": 0.9, "warmup": true},
            {"kind": "ema", "decay": 0.999, "every": 10, "start": 100},
            {"kind": "swa", "start": 0.75},
            {"kind": "swa", "start": 5000, "every": 5}]"#,
    )
    .unwrap();
    let labels: Vec<String> = specs
        .iter()
        .map(|s| s.build(Some(70_000)).unwrap().label())
        .collect();
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
    let unknown =
        serde_json::from_str::<AveragerSpec>(r#"{"kind": "lawa", "k": 5, "nu": 5, "window": 3}"#);
    assert!(unknown.unwrap_err().to_string().contains("window"));
}

fn build_set() -> AveragerSet {
    let mut set = AveragerSet::new(Storage::Cpu);
    set.push(Box::new(Lawa::new(3, 4).unwrap())).unwrap();
    set.push(Box::new(Lawa::new(2, 8).unwrap())).unwrap();
    set.push(Box::new(Ema::with_warmup(0.9).unwrap())).unwrap();
    set.push(Box::new(
        Swa::new(SwaStart::Fraction(0.25), 3, Some(100)).unwrap(),
    ))
    .unwrap();
    set
}

fn averages(set: &AveragerSet) -> Vec<Vec<f64>> {
    set.iter()
        .map(|a| {
            let (named, target) = zeros_target();
            a.write_average(&target).unwrap();
            named
                .iter()
                .flat_map(|(_, t)| {
                    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
                })
                .collect()
        })
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
    let mut other = AveragerSet::new(Storage::Cpu);
    other.push(Box::new(Lawa::new(3, 4).unwrap())).unwrap();
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
