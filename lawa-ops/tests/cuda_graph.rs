//! CUDA graphs: a capture records without running, a replay runs the recorded work on the
//! tensors it was recorded with, and what cannot be recorded is refused with a reason. On a
//! machine without a GPU the device tests say they were skipped.

use lawa_ops::{CudaGraph, OpsError};
use tch::{Cuda, Device, Kind, Tensor};

#[test]
fn a_capture_on_the_cpu_is_refused_naming_the_device() {
    let err = CudaGraph::capture(Device::Cpu, || Ok::<_, OpsError>(())).unwrap_err();
    assert_eq!(err.op, "CUDA graph");
    assert!(err.message.contains("needs a CUDA device"), "{err}");
}

#[test]
fn this_build_has_cuda_graphs_when_libtorch_has_cuda() {
    // The bootstrap installs the CUDA headers beside a CUDA libtorch, so a CUDA build that lacks
    // graphs has lost them by accident.
    let libtorch_cuda = std::path::Path::new(env!("LAWA_LIBTORCH_LIB"))
        .join("libtorch_cuda.so")
        .exists();
    if libtorch_cuda {
        assert!(lawa_ops::cuda_graphs_built());
    } else {
        eprintln!("skipped: this libtorch has no CUDA");
    }
}

/// A GPU when there is one, held by this test alone: captures are process-wide (global capture
/// mode, one random generator), so two at once would fail each other.
fn gpu() -> Option<(Device, std::sync::MutexGuard<'static, ()>)> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if Cuda::is_available() {
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        return Some((Device::Cuda(0), guard));
    }
    eprintln!("skipped: no GPU here");
    None
}

/// A capture runs nothing; each replay recomputes the outputs from the inputs as they are then
/// (refilled in place), and the device's stream is the caller's again after the capture.
#[test]
fn on_a_gpu_replays_recompute_the_outputs_from_the_refilled_inputs() {
    let Some((gpu, _one)) = gpu() else { return };
    let x = Tensor::arange(1024, (Kind::Float, gpu));
    let w = Tensor::full([1024, 1024], 0.5, (Kind::Float, gpu));
    let _ = (&x * 2.0 + 1.0).matmul(&w); // warm-up: cuBLAS's plans before the capture
    let before = Vec::<f32>::try_from(&x).unwrap();
    let (graph, y) = CudaGraph::capture(gpu, || {
        let _ = x.shallow_clone().g_add_scalar_(1.0);
        Ok::<_, OpsError>((&x * 2.0 + 1.0).matmul(&w))
    })
    .unwrap();
    Cuda::synchronize(0);
    assert_eq!(
        Vec::<f32>::try_from(&x).unwrap(),
        before,
        "the capture ran its work"
    );
    for fill in [3.0, -1.5] {
        let _ = x.shallow_clone().fill_(fill);
        graph.replay().unwrap();
        let expected = ((Tensor::full([1024], fill + 1.0, (Kind::Float, gpu)) * 2.0 + 1.0)
            .matmul(&w))
        .to_device(Device::Cpu);
        let got = y.to_device(Device::Cpu);
        assert!(
            got.equal(&expected),
            "replay after fill {fill}: {got} vs {expected}"
        );
        assert_eq!(x.double_value(&[0]), fill + 1.0);
    }
    // Eager work goes on as before the capture.
    let z = &x + 1.0;
    assert_eq!(z.double_value(&[5]), x.double_value(&[5]) + 1.0);
}

/// A backward pass recorded with its forward: replays give the gradients of eager steps, bit
/// for bit, accumulated into the same gradient tensors.
#[test]
fn on_a_gpu_a_recorded_backward_gives_the_eager_gradients() {
    let Some((gpu, _one)) = gpu() else { return };
    tch::manual_seed(0);
    let w = Tensor::randn([256, 256], (Kind::Float, gpu)).set_requires_grad(true);
    let x = Tensor::zeros([64, 256], (Kind::Float, gpu));
    let step = || {
        let loss = x.matmul(&w).gelu("tanh").square().mean(Kind::Float);
        loss.backward();
        loss.detach()
    };
    let eager = |input: &Tensor| {
        x.shallow_clone().copy_(input);
        w.shallow_clone().zero_grad(); // no gradient yet at the first call
        let loss = step();
        (loss.to_device(Device::Cpu), w.grad().to_device(Device::Cpu))
    };
    let inputs: Vec<Tensor> = (0..3)
        .map(|_| Tensor::randn([64, 256], (Kind::Float, gpu)))
        .collect();
    let _ = eager(&inputs[0]); // warm-up, and the gradient tensor allocated
    let want: Vec<_> = inputs.iter().map(eager).collect();
    let (graph, loss) = CudaGraph::capture(gpu, || Ok::<_, OpsError>(step())).unwrap();
    for (input, (want_loss, want_grad)) in inputs.iter().zip(&want) {
        x.shallow_clone().copy_(input);
        w.shallow_clone().zero_grad();
        graph.replay().unwrap();
        // The replay's matmuls run with the capture stream's cuBLAS workspace: bit for bit in
        // practice, and the difference printed if not, so that one run on a device says by how
        // much.
        let (loss, grad) = (loss.to_device(Device::Cpu), w.grad().to_device(Device::Cpu));
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        let (dl, dg) = (diff(&loss, want_loss), diff(&grad, want_grad));
        assert!(
            dl == 0.0 && dg == 0.0,
            "loss differs by {dl}, gradient by {dg}"
        );
    }
}

/// Reading a value on the host inside a capture is refused with libtorch's reason, and the body's
/// error is what the caller gets; the device works afterwards, and so does the next capture (the
/// failed one was abandoned, its memory pool released).
#[test]
fn on_a_gpu_a_host_read_inside_a_capture_is_refused_and_the_next_capture_works() {
    let Some((gpu, _one)) = gpu() else { return };
    let x = Tensor::ones([8], (Kind::Float, gpu));
    let _ = x.sum(Kind::Float);
    let err = CudaGraph::capture(gpu, || {
        let s = x.sum(Kind::Float);
        s.f_double_value(&[]).map_err(|e| OpsError {
            op: "read",
            message: e.to_string(),
        })
    })
    .unwrap_err();
    assert_eq!(err.op, "read", "{err}");
    assert!(err.message.contains("captur"), "{err}");
    // The same read by tch's panicking method: the panic ends the capture and is an error.
    let err = CudaGraph::capture(gpu, || {
        Ok::<_, OpsError>(x.sum(Kind::Float).double_value(&[]))
    })
    .unwrap_err();
    assert_eq!(err.op, "CUDA graph", "{err}");
    assert!(
        err.message.contains("panicked") && err.message.contains("captur"),
        "{err}"
    );
    let y = &x * 3.0;
    assert_eq!(y.double_value(&[7]), 3.0);
    // The random generator is not left marked as capturing.
    let r = Tensor::randn([1024], (Kind::Float, gpu));
    assert!(r.std(true).double_value(&[]) > 0.5);
    let (graph, z) = CudaGraph::capture(gpu, || Ok::<_, OpsError>(&x * 5.0)).unwrap();
    let _ = x.shallow_clone().fill_(2.0);
    graph.replay().unwrap();
    assert_eq!(Vec::<f32>::try_from(&z).unwrap(), [10.0; 8]);
}
