//! `lawa_ops::cross_entropy` against `log_softmax` + `nll_loss` over the narrowed fp32 logits
//! (what lawa's models compute without it): its CPU path, its kernels' source run on the CPU,
//! and on a GPU the kernels themselves.

use lawa_ops::{cross_entropy, emulate_cross_entropy_kernels, IGNORE_INDEX};
use tch::{Cuda, Device, Kind, Reduction, Tensor};

const ROWS: i64 = 37;
const VOCAB: i64 = 129;
/// Row widths: 136 columns are read 16 bytes at a time on a GPU (8 bf16 or 4 fp32 values),
/// 131 value by value.
const WIDTHS: [i64; 2] = [136, 131];

/// Logits `[ROWS, cols]` with a wide spread (so that the softmax is far from uniform), targets
/// including an ignored row and the last vocabulary column.
fn inputs(kind: Kind, device: Device, cols: i64) -> (Tensor, Tensor) {
    tch::manual_seed(11);
    let logits = (Tensor::randn([ROWS, cols], (Kind::Float, Device::Cpu)) * 4.0).to_kind(kind);
    let targets = Tensor::randint(VOCAB, [ROWS], (Kind::Int64, Device::Cpu));
    let _ = targets.get(3).fill_(IGNORE_INDEX);
    let _ = targets.get(5).fill_(VOCAB - 1);
    (logits.to(device), targets.to(device))
}

/// The upstream gradient of the losses: `sum(losses * weights)` is differentiated.
fn weights(device: Device) -> Tensor {
    Tensor::linspace(0.5, 2.0, ROWS, (Kind::Float, device))
}

/// Losses and the gradient of `sum(losses * weights)` with respect to the logits, by `f`.
fn losses_and_gradient(
    logits: &Tensor,
    targets: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor) {
    weighted_losses_and_gradient(logits, targets, &weights(logits.device()), f)
}

/// Losses and the gradient of `sum(losses * weights)` with respect to the logits, by `f`.
fn weighted_losses_and_gradient(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor) {
    let x = logits.detach().set_requires_grad(true);
    let losses = f(&x, targets);
    (&losses * weights).sum(Kind::Float).backward();
    (losses.detach(), x.grad())
}

/// The same by the kernels' source run on the CPU, in blocks of `threads`.
fn emulated(logits: &Tensor, targets: &Tensor, threads: u32) -> (Tensor, Tensor) {
    let (losses, lse, grad) =
        emulate_cross_entropy_kernels(logits, targets, VOCAB, &weights(Device::Cpu), threads)
            .unwrap();
    let want = logits
        .to_kind(Kind::Float)
        .narrow(1, 0, VOCAB)
        .logsumexp([1], false);
    assert!(max_abs_diff(&lse, &want) < 1e-5, "log-sum-exp");
    (losses, grad)
}

/// The ATen path: log-softmax of the narrowed logits in fp32, then the per-token NLL.
fn reference(x: &Tensor, targets: &Tensor) -> Tensor {
    x.narrow(1, 0, VOCAB)
        .log_softmax(-1, Kind::Float)
        .f_nll_loss(targets, None::<Tensor>, Reduction::None, IGNORE_INDEX)
        .unwrap()
}

fn fused(x: &Tensor, targets: &Tensor) -> Tensor {
    cross_entropy(x, targets, VOCAB).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

/// Compares the two paths on `device` in `kind` at every width: losses within `loss_tol`
/// (relative), the gradient within `grad_tol` of its largest value, the padding columns'
/// gradient exactly 0.
fn compare(kind: Kind, device: Device, loss_tol: f64, grad_tol: f64) {
    for cols in WIDTHS {
        compare_at(kind, device, cols, loss_tol, grad_tol, &|x, t| {
            losses_and_gradient(x, t, fused)
        });
    }
}

/// Compares `f`'s losses and gradient with the reference's at one width.
fn compare_at(
    kind: Kind,
    device: Device,
    cols: i64,
    loss_tol: f64,
    grad_tol: f64,
    f: &dyn Fn(&Tensor, &Tensor) -> (Tensor, Tensor),
) {
    let (logits, targets) = inputs(kind, device, cols);
    let (want, want_grad) = losses_and_gradient(&logits, &targets, reference);
    let (got, got_grad) = f(&logits, &targets);
    assert_eq!(got.kind(), Kind::Float);
    assert_eq!(got.size(), [ROWS]);
    assert_eq!(got_grad.kind(), kind);
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 1.0, "losses too small to test: {scale}");
    let d = max_abs_diff(&got, &want);
    assert!(
        d <= loss_tol * scale,
        "{kind:?} on {device:?}, {cols} columns: losses differ by {d}"
    );
    assert_eq!(got.double_value(&[3]), 0.0, "the ignored row");
    let gscale = want_grad.abs().max().double_value(&[]);
    let gd = max_abs_diff(&got_grad, &want_grad);
    assert!(
        gd <= grad_tol * gscale,
        "{kind:?} on {device:?}, {cols} columns: gradients differ by {gd} (largest {gscale})"
    );
    let padding = got_grad.narrow(1, VOCAB, cols - VOCAB);
    assert_eq!(padding.abs().max().double_value(&[]), 0.0);
    assert_eq!(got_grad.get(3).abs().max().double_value(&[]), 0.0);
    // Each row's gradient sums to 0 (softmax minus one-hot), times its weight.
    let row_sums = got_grad
        .to_kind(Kind::Float)
        .sum_dim_intlist(1, false, Kind::Float);
    assert!(row_sums.abs().max().double_value(&[]) < 1e-2 * gscale * VOCAB as f64);
}

#[test]
fn on_the_cpu_it_equals_log_softmax_and_nll_loss() {
    compare(Kind::Float, Device::Cpu, 1e-6, 1e-6);
    // In bf16 both round the same fp32 gradient once: at most one bf16 ulp apart (2^-8
    // relative), where summation order tips a value across a rounding boundary.
    compare(Kind::BFloat16, Device::Cpu, 1e-6, 4e-3);
}

/// The CUDA source itself, run on the CPU by an emulator: 16-byte reads and value by value, fp32
/// and bf16, blocks of one warp, two and four (so that both stages of the block reduction run).
#[test]
fn the_kernels_source_run_on_the_cpu_equals_log_softmax_and_nll_loss() {
    for (kind, grad_tol) in [(Kind::Float, 1e-6), (Kind::BFloat16, 4e-3)] {
        for cols in WIDTHS {
            for threads in [32, 64, 128] {
                compare_at(kind, Device::Cpu, cols, 1e-6, grad_tol, &|x, t| {
                    emulated(x, t, threads)
                });
            }
        }
    }
    // Reading 131 columns value by value, bf16 logits and their fp32 values go through the same
    // arithmetic in the same order: the bf16 gradient is the fp32 one rounded to nearest even,
    // as libtorch rounds, bit for bit.
    let (logits, targets) = inputs(Kind::BFloat16, Device::Cpu, 131);
    let (losses, grad) = emulated(&logits, &targets, 64);
    let (losses32, grad32) = emulated(&logits.to_kind(Kind::Float), &targets, 64);
    assert_eq!(losses, losses32);
    assert_eq!(grad, grad32.to_kind(Kind::BFloat16));
    // Rows wider than a block reads at once: in blocks of one warp, 600 bf16 columns are 75
    // vectors, three strides of the loop (593 of them vocabulary, so the last vector is cut).
    wide_rows(Device::Cpu, 5, 600, 593, |x, t| {
        let ones = Tensor::ones([5], (Kind::Float, Device::Cpu));
        let (losses, _, grad) = emulate_cross_entropy_kernels(x, t, 593, &ones, 32).unwrap();
        (losses, grad)
    });
    let e = emulate_cross_entropy_kernels(&logits, &targets, VOCAB, &weights(Device::Cpu), 48)
        .unwrap_err();
    assert!(e.message.contains("multiple of 32"), "{e}");
}

/// A NaN logit among the vocabulary makes its row's loss and gradient NaN, as torch's do,
/// wherever it falls: first among a thread's columns, after a -inf, filling a 16-byte group;
/// a NaN in the padding columns changes nothing. (The kernels' source, run on the CPU.)
#[test]
fn a_nan_logit_makes_its_row_nan_as_in_torch() {
    for kind in [Kind::Float, Kind::BFloat16] {
        for cols in WIDTHS {
            let (logits, targets) = inputs(kind, Device::Cpu, cols);
            let _ = logits.get(0).get(0).fill_(f64::NAN);
            let _ = logits.get(1).narrow(0, 0, 8).fill_(f64::NAN);
            let _ = logits.get(2).get(VOCAB - 1).fill_(f64::NAN);
            let _ = logits.get(6).get(0).fill_(f64::NEG_INFINITY);
            let _ = logits.get(6).get(1).fill_(f64::NAN);
            let _ = logits.get(7).get(cols - 1).fill_(f64::NAN); // padding
            let want = reference(&logits, &targets);
            let nan_rows = want.isnan();
            assert_eq!(
                nan_rows.sum(Kind::Int64).int64_value(&[]),
                4,
                "torch's NaN rows"
            );
            let finite = nan_rows.logical_not();
            for threads in [32, 64] {
                let (losses, _, grad) = emulate_cross_entropy_kernels(
                    &logits,
                    &targets,
                    VOCAB,
                    &weights(Device::Cpu),
                    threads,
                )
                .unwrap();
                let case = format!("{kind:?}, {cols} columns, blocks of {threads}");
                assert!(losses.isnan().equal(&nan_rows), "{case}: NaN losses");
                let d = max_abs_diff(&losses.masked_select(&finite), &want.masked_select(&finite));
                assert!(d < 1e-4, "{case}: the other losses differ by {d}");
                for row in [0, 1, 2, 6] {
                    let g = grad.get(row).narrow(0, 0, VOCAB).isnan();
                    assert!(
                        g.all().int64_value(&[]) == 1,
                        "{case}: row {row}'s gradient"
                    );
                }
                assert_eq!(
                    grad.get(7).isnan().any().int64_value(&[]),
                    0,
                    "{case}: row 7"
                );
            }
        }
    }
}

#[test]
fn on_a_gpu_the_kernels_equal_log_softmax_and_nll_loss() {
    if !Cuda::is_available() {
        eprintln!("skipped: no GPU here (the kernels' source ran in the emulator test instead)");
        return;
    }
    compare(Kind::Float, Device::Cuda(0), 1e-6, 1e-6);
    compare(Kind::BFloat16, Device::Cuda(0), 1e-6, 4e-3);
    // GPT-2-sized rows: 50257 of 50304 columns, bf16, over many strides of a block.
    wide_rows(Device::Cuda(0), 64, 50304, 50257, |x, t| {
        let ones = Tensor::ones([64], (Kind::Float, Device::Cuda(0)));
        weighted_losses_and_gradient(x, t, &ones, |x, t| cross_entropy(x, t, 50257).unwrap())
    });
}

/// `rows` bf16 rows of `cols` columns, `vocab` of them vocabulary, by `f` (losses and the
/// gradient of their plain sum) against the reference: losses within 1e-6 relative, gradients within
/// one bf16 ulp.
fn wide_rows(
    device: Device,
    rows: i64,
    cols: i64,
    vocab: i64,
    f: impl Fn(&Tensor, &Tensor) -> (Tensor, Tensor),
) {
    tch::manual_seed(5);
    let logits = (Tensor::randn([rows, cols], (Kind::Float, device)) * 3.0).to_kind(Kind::BFloat16);
    let targets = Tensor::randint(vocab, [rows], (Kind::Int64, device));
    let ones = Tensor::ones([rows], (Kind::Float, device));
    let (want, want_grad) = weighted_losses_and_gradient(&logits, &targets, &ones, |x, t| {
        x.narrow(1, 0, vocab)
            .log_softmax(-1, Kind::Float)
            .f_nll_loss(t, None::<Tensor>, Reduction::None, IGNORE_INDEX)
            .unwrap()
    });
    let (got, got_grad) = f(&logits, &targets);
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 1e-6 * want.abs().max().double_value(&[]),
        "{rows}x{cols}: losses {d}"
    );
    let scale = want_grad.abs().max().double_value(&[]);
    let gd = max_abs_diff(&got_grad, &want_grad);
    assert!(
        gd <= 4e-3 * scale,
        "{rows}x{cols}: gradients {gd} (largest {scale})"
    );
}

#[test]
fn targets_outside_the_vocabulary_give_nan() {
    let logits = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    let targets = Tensor::from_slice(&[3i64, -1]);
    let losses = cross_entropy(&logits, &targets, 3).unwrap();
    let v = Vec::<f32>::try_from(&losses).unwrap();
    assert!(v[0].is_nan() && v[1].is_nan(), "{v:?}");
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let cpu = (Kind::Float, Device::Cpu);
    let t = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
    let cases = [
        (
            Tensor::zeros([2, 3, 4], cpu),
            t.shallow_clone(),
            4,
            "[rows, columns]",
        ),
        (
            Tensor::zeros([2, 4], (Kind::Int, Device::Cpu)),
            t.shallow_clone(),
            4,
            "bf16 or fp32",
        ),
        (
            Tensor::zeros([3, 4], cpu),
            t.shallow_clone(),
            4,
            "targets must be [rows]",
        ),
        (Tensor::zeros([2, 4], cpu), t.to_kind(Kind::Int), 4, "int64"),
        (
            Tensor::zeros([2, 4], cpu),
            t.shallow_clone(),
            5,
            "vocab = 5",
        ),
        (
            Tensor::zeros([2, 4], cpu),
            t.shallow_clone(),
            0,
            "vocab = 0",
        ),
    ];
    for (logits, targets, vocab, why) in cases {
        let e = cross_entropy(&logits, &targets, vocab).unwrap_err();
        assert!(e.message.contains(why), "{why}: {e}");
    }
}
