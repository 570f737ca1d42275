//! `linear`: libtorch's linear layer with the bias gradient by lawa's kernel on CUDA; the
//! kernel's own source run on the CPU against `sum(0)`.

use lawa_ops::{emulate_bias_grad_kernel, linear};
use tch::{Cuda, Device, Kind, Tensor};

/// Output and gradients of `x`, `weight` and `bias` for the upstream gradient `g`, by `f`.
fn run(
    f: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    g: &Tensor,
) -> Vec<Tensor> {
    let leaf = |t: &Tensor| t.detach().copy().set_requires_grad(true);
    let (x, w, b) = (leaf(x), leaf(w), b.map(leaf));
    let y = f(&x, &w, b.as_ref());
    (&y * g).sum(y.kind()).backward(); // the gradient reaching y is exactly g
    let mut out = vec![y.detach(), x.grad(), w.grad()];
    out.extend(b.map(|b| b.grad()));
    out
}

/// Random `x` of `x_shape`, weight `[n_out, in]`, bias `[n_out]` and upstream gradient, of `kind`
/// on `device`.
fn inputs(
    x_shape: &[i64],
    n_out: i64,
    kind: Kind,
    device: Device,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let n_in = *x_shape.last().unwrap();
    let opts = (kind, device);
    let x = Tensor::randn(x_shape, opts);
    let w = Tensor::randn([n_out, n_in], opts) * 0.3;
    let b = Tensor::randn([n_out], opts);
    let mut out_shape = x_shape.to_vec();
    *out_shape.last_mut().unwrap() = n_out;
    let g = Tensor::randn(out_shape.as_slice(), opts);
    (x, w, b, g)
}

fn same(a: &[Tensor], b: &[Tensor], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.size(), y.size(), "{what}: output {i}");
        assert!(x.equal(y), "{what}: output {i} differs");
    }
}

/// Off CUDA the op is `linear` itself: the output and all three gradients equal bit for bit, in
/// fp32 and bf16, over rows and over a batch of sequences, with and without a bias.
#[test]
fn off_cuda_linear_equals_libtorch_linear_bit_for_bit() {
    tch::manual_seed(0);
    for kind in [Kind::Float, Kind::BFloat16] {
        for shape in [vec![7, 12], vec![2, 5, 12]] {
            let (x, w, b, g) = inputs(&shape, 9, kind, Device::Cpu);
            for bias in [Some(&b), None] {
                let ours = run(|x, w, b| linear(x, w, b).unwrap(), &x, &w, bias, &g);
                let theirs = run(|x, w, b| x.linear(w, b), &x, &w, bias, &g);
                let what = format!("{kind:?} {shape:?} bias {}", bias.is_some());
                same(&ours, &theirs, &what);
            }
        }
    }
}

/// The kernel's partial sums of `grad` by chunks of `per_chunk` rows against `sum(0)` over each
/// chunk's rows (fp32 sums of the same values: equal up to their order).
fn check_partials(grad: &Tensor, per_chunk: i64, what: &str) {
    let partial = emulate_bias_grad_kernel(grad, per_chunk).unwrap();
    let rows = grad.size()[0];
    let chunks = (rows + per_chunk - 1) / per_chunk;
    assert_eq!(partial.size(), [chunks, grad.size()[1]], "{what}");
    assert_eq!(partial.kind(), Kind::Float, "{what}");
    let values = grad.to_kind(Kind::Float);
    for chunk in 0..chunks {
        let first = chunk * per_chunk;
        let rows_here = per_chunk.min(rows - first);
        let want =
            values
                .narrow(0, first, rows_here)
                .sum_dim_intlist([0].as_slice(), false, Kind::Float);
        let scale = values.narrow(0, first, rows_here).abs().sum_dim_intlist(
            [0].as_slice(),
            false,
            Kind::Float,
        );
        let err = (partial.get(chunk) - &want).abs() - &scale * 1e-6;
        let worst = err.max().double_value(&[]);
        assert!(
            worst <= 0.0,
            "{what}: chunk {chunk} off by {worst:e} beyond 1e-6 of |sum|"
        );
    }
}

/// The kernel's CUDA source, run on the CPU: 16-byte reads (columns a multiple of 8) and value by
/// value (other widths, a misaligned start), several chunks and column tiles, partial ones
/// included, in bf16 and fp32.
#[test]
fn the_kernel_source_sums_columns_as_sum_does() {
    tch::manual_seed(1);
    for kind in [Kind::BFloat16, Kind::Float] {
        for (rows, cols) in [(300, 768), (300, 770), (33, 13), (130, 520)] {
            let grad = Tensor::randn([rows, cols], (kind, Device::Cpu));
            check_partials(&grad, 64, &format!("{kind:?} {rows}x{cols}"));
        }
        // A start 2 or 4 bytes past an aligned address: read value by value.
        let flat = Tensor::randn([101 * 16 + 1], (kind, Device::Cpu));
        let shifted = flat.narrow(0, 1, 101 * 16).view([101, 16]);
        check_partials(&shifted, 40, &format!("{kind:?} misaligned"));
    }
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let x = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
    let w = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
    let e = linear(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("weight must be [out, 4]"), "{e}");
    let w = Tensor::zeros([5, 4], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let e = linear(&x, &w, Some(&b)).unwrap_err().to_string();
    assert!(e.contains("bias must be [5]"), "{e}");
    let scalar = Tensor::from(1.0f32);
    let e = linear(&scalar, &w, None).unwrap_err().to_string();
    assert!(e.contains("at least one dimension"), "{e}");
    let e = emulate_bias_grad_kernel(&x, 0).unwrap_err().to_string();
    assert!(e.contains("rows_per_chunk"), "{e}");
    let ints = Tensor::zeros([3, 4], (Kind::Int64, Device::Cpu));
    let e = emulate_bias_grad_kernel(&ints, 8).unwrap_err().to_string();
    assert!(e.contains("bf16 or fp32"), "{e}");
}

/// On a GPU: the output and the gradients of `x` and `weight` equal `linear`'s bit for bit (the
/// same ops); the bias gradient from the kernel equals `sum(0)` within fp32 rounding, or one
/// bf16 step. GPT-2 small's MLP shape included. Without a GPU it says it was skipped.
#[test]
fn on_a_gpu_linear_equals_libtorch_linear() {
    if !Cuda::is_available() {
        eprintln!("skipped: no GPU here (the kernel's source ran in the emulator test instead)");
        return;
    }
    let gpu = Device::Cuda(0);
    tch::manual_seed(2);
    for kind in [Kind::Float, Kind::BFloat16] {
        for (shape, n_out) in [
            (vec![37, 100], 36),
            (vec![4, 1024, 768], 3072),
            (vec![4096, 3072], 768),
        ] {
            let (x, w, b, g) = inputs(&shape, n_out, kind, gpu);
            let ours = run(|x, w, b| linear(x, w, b).unwrap(), &x, &w, Some(&b), &g);
            let theirs = run(|x, w, b| x.linear(w, b), &x, &w, Some(&b), &g);
            let what = format!("{kind:?} {shape:?} -> {n_out}");
            same(&ours[..3], &theirs[..3], &what);
            let (a, t) = (ours[3].to_kind(Kind::Float), theirs[3].to_kind(Kind::Float));
            let scale = g
                .to_kind(Kind::Float)
                .abs()
                .reshape([-1, n_out])
                .sum_dim_intlist([0].as_slice(), false, Kind::Float);
            let step = if kind == Kind::BFloat16 {
                2f64.powi(-7)
            } else {
                1e-6
            };
            let worst = ((&a - &t).abs() - (t.abs() * step + &scale * 1e-6))
                .max()
                .double_value(&[]);
            assert!(worst <= 0.0, "{what}: bias gradient off by {worst:e}");
        }
    }
}
