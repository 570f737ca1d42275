//! `copy_async`: copies from a GPU into pinned host memory that leave the host free, and hold
//! the values of when they were queued.

use lawa_ops::{copy_async, pin_memory};
use tch::{Cuda, Device, Kind, Tensor};

#[test]
fn host_copies_complete_on_the_call() {
    let src = vec![
        Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]),
        Tensor::arange(4, (Kind::Int64, Device::Cpu)),
    ];
    let dst = vec![
        Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
        Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
    ];
    let pending = copy_async(&dst, &src).unwrap();
    assert!(pending.is_done().unwrap(), "nothing queued on a device");
    pending.wait().unwrap();
    for (d, s) in dst.iter().zip(&src) {
        assert!(d.equal(s), "{d} vs {s}");
    }
    // Values are cast to the destination's dtype, as `copy_` does.
    let half = vec![Tensor::zeros([2, 3], (Kind::Double, Device::Cpu))];
    copy_async(&half, &src[..1]).unwrap().wait().unwrap();
    assert!(half[0].equal(&src[0].to_kind(Kind::Double)));
}

#[test]
fn bad_lists_are_refused_with_the_reason() {
    let one = vec![Tensor::zeros([2], (Kind::Float, Device::Cpu))];
    let e = copy_async(&one, &[]).unwrap_err().to_string();
    assert!(e.contains("different lengths"), "{e}");
    let wrong = vec![Tensor::zeros([3], (Kind::Float, Device::Cpu))];
    let e = copy_async(&wrong, &one).unwrap_err().to_string();
    assert!(e.starts_with("copy_async: "), "{e}");
}

/// On a GPU: 256 MB copied into pinned memory while the same stream then overwrites the source
/// (as the next optimizer step overwrites the weights). A thread waits on the copies and finds
/// the values of when they were queued. Without a GPU it says it was skipped.
#[test]
fn on_a_gpu_copies_hold_the_values_of_when_they_were_queued() {
    if !Cuda::is_available() {
        eprintln!("skipped: no GPU here (copies between host tensors were tested instead)");
        return;
    }
    let gpu = Device::Cuda(0);
    tch::manual_seed(1);
    let expected = Tensor::randn([64 << 20], (Kind::Float, Device::Cpu));
    let src = vec![
        expected.to_device(gpu),
        expected.narrow(0, 0, 1000).to_device(gpu),
    ];
    let dst: Vec<Tensor> = src
        .iter()
        .map(|s| pin_memory(&Tensor::zeros(s.size(), (Kind::Float, Device::Cpu))).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let pending = copy_async(&dst, &src).unwrap();
    let queued = started.elapsed();
    for s in &src {
        let _ = s.shallow_clone().fill_(f64::NAN);
    }
    let done_at_once = pending.is_done().unwrap();
    let reader = std::thread::spawn(move || {
        pending.wait().unwrap();
        dst
    });
    let dst = reader.join().unwrap();
    eprintln!(
        "256 MB queued in {queued:?} (done at once: {done_at_once}), waited on by another thread"
    );
    assert!(dst[0].equal(&expected));
    assert!(dst[1].equal(&expected.narrow(0, 0, 1000)));
    assert!(
        src[0].isnan().all().int64_value(&[]) == 1,
        "the overwrite ran after"
    );
}
