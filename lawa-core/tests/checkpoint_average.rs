//! Post-hoc checkpoint averaging against the in-memory mean.

use std::path::{Path, PathBuf};

use lawa_core::checkpoint_average::{
    average_safetensors, read_header, select_latest, step_in_name,
};
use tch::{Device, Kind, Tensor};

fn checkpoint(path: &Path, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let tensors = vec![
        (
            "h.0.w".to_string(),
            Tensor::randn([300, 70], (Kind::Float, Device::Cpu)),
        ),
        (
            "h.0.b16".to_string(),
            Tensor::randn([33], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16),
        ),
        (
            "h.0.f16".to_string(),
            Tensor::randn([5, 3], (Kind::Float, Device::Cpu)).to_kind(Kind::Half),
        ),
        ("steps".to_string(), Tensor::from_slice(&[seed * 10])),
    ];
    Tensor::write_safetensors(&tensors, path).unwrap();
    tensors
}

#[test]
fn streamed_mean_equals_the_in_memory_mean() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (1..=4)
        .map(|i| dir.path().join(format!("ckpt_{i}.safetensors")))
        .collect();
    let all: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| checkpoint(p, i as i64 + 1))
        .collect();
    let out = dir.path().join("avg.safetensors");
    let mut calls = 0;
    let report = average_safetensors(&paths, &out, |_, _| calls += 1).unwrap();
    assert_eq!((report.inputs, report.tensors, report.averaged), (4, 4, 3));
    assert!(calls >= 4);
    let got: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    for (j, (name, t)) in all[0].iter().enumerate() {
        let g = &got[name];
        assert_eq!(g.kind(), t.kind(), "{name}: dtype kept");
        assert_eq!(g.size(), t.size());
        if t.kind() == Kind::Int64 {
            assert_eq!(
                g.int64_value(&[0]),
                40,
                "integers copied from the last checkpoint"
            );
            continue;
        }
        let stack: Vec<Tensor> = all.iter().map(|c| c[j].1.to_kind(Kind::Double)).collect();
        let mean = Tensor::stack(&stack, 0)
            .mean_dim(0, false, Kind::Double)
            .to_kind(t.kind());
        let diff = (g.to_kind(Kind::Double) - mean.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0, "{name}: f64 mean rounded once equals torch's");
    }
    let header = read_header(&out).unwrap();
    assert!(header.metadata["lawa_average_of"].contains("ckpt_4.safetensors"));
}

#[test]
fn disagreeing_checkpoints_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let out = dir.path().join("out.safetensors");
    let base = checkpoint(&a, 1);
    let ones = |shape: &[i64], kind| Tensor::ones(shape, (kind, Device::Cpu));
    for (replace, needle) in [
        (("h.0.w", ones(&[300, 71], Kind::Float)), "shape"),
        (("h.0.w", ones(&[300, 70], Kind::Double)), "dtype"),
        (("other", ones(&[1], Kind::Float)), "missing"),
    ] {
        // b: a's tensors with h.0.w replaced (by another shape, dtype, or name).
        let mut tensors: Vec<(String, Tensor)> = base
            .iter()
            .filter(|(n, _)| n != "h.0.w")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        tensors.push((replace.0.to_string(), replace.1));
        Tensor::write_safetensors(&tensors, &b).unwrap();
        let err = average_safetensors(&[a.clone(), b.clone()], &out, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.safetensors") && err.contains(needle),
            "{err}"
        );
        assert!(!out.exists());
    }
    std::fs::write(&b, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let err = average_safetensors(&[a.clone(), b.clone()], &out, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary left"
    );
}

#[test]
fn latest_k_spaced_nu_apart() {
    let dir = tempfile::tempdir().unwrap();
    for step in [100u64, 200, 300, 400, 500, 600] {
        std::fs::write(dir.path().join(format!("ckpt_{step}.safetensors")), b"x").unwrap();
    }
    std::fs::create_dir(dir.path().join("step-700")).unwrap();
    std::fs::write(dir.path().join("step-700/model.safetensors"), b"x").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    let steps = |v: Vec<PathBuf>| {
        v.iter()
            .map(|p| {
                step_in_name(p)
                    .or_else(|| step_in_name(p.parent().unwrap()))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        steps(select_latest(dir.path(), 3, None).unwrap()),
        [500, 600, 700]
    );
    assert_eq!(
        steps(select_latest(dir.path(), 3, Some(200)).unwrap()),
        [300, 500, 700]
    );
    let err = select_latest(dir.path(), 3, Some(150)).unwrap_err();
    assert!(err.contains("step 550"), "{err}");
    let err = select_latest(dir.path(), 9, None).unwrap_err();
    assert!(err.contains("only 7"), "{err}");
    assert!(select_latest(dir.path(), 0, None).is_err());
}
