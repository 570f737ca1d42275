//! `lawa_ops::add_layer_norm` against `x + delta` then `layer_norm(..).to(out)` (what lawa's
//! GPT-2 computes without it): its CPU path through autograd, its kernels' source run on the
//! CPU, and on a GPU the kernels themselves.

use lawa_ops::{add_layer_norm, emulate_layer_norm_kernels};
use tch::{Cuda, Device, Kind, Tensor};

const EPS: f64 = 1e-5;

/// The inputs of one case: x fp32 `[rows, cols]` (a residual stream with an offset and a
/// spread per row), delta in `delta_kind`, weight and bias around 1 and 0.
struct Case {
    x: Tensor,
    delta: Option<Tensor>,
    weight: Tensor,
    bias: Option<Tensor>,
}

fn case(rows: i64, cols: i64, delta_kind: Option<Kind>, bias: bool, device: Device) -> Case {
    tch::manual_seed(7);
    let f = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([rows, cols], f) * 2.0 + Tensor::randn([rows, 1], f);
    let delta = delta_kind.map(|k| Tensor::randn([rows, cols], f).to_kind(k).to(device));
    Case {
        x: x.to(device),
        delta,
        weight: (Tensor::randn([cols], f) * 0.1 + 1.0).to(device),
        bias: bias.then(|| (Tensor::randn([cols], f) * 0.1).to(device)),
    }
}

/// Upstream gradients for the sum (fp32) and for y (in `out`).
fn upstream(rows: i64, cols: i64, out: Kind, device: Device) -> (Tensor, Tensor) {
    tch::manual_seed(8);
    let f = (Kind::Float, Device::Cpu);
    let gs = Tensor::randn([rows, cols], f).to(device);
    let gy = Tensor::randn([rows, cols], f).to_kind(out).to(device);
    (gs, gy)
}

/// Outputs and gradients `[sum, y, grad_x, grad_delta, grad_weight, grad_bias]` of
/// `sum(sum_out * gs) + sum(y * gy)` by `f`, which returns `(sum or None, y)`.
fn run(
    c: &Case,
    out: Kind,
    f: impl Fn(&Tensor, Option<&Tensor>, &Tensor, Option<&Tensor>) -> (Option<Tensor>, Tensor),
) -> Vec<Option<Tensor>> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, delta) = (leaf(&c.x), c.delta.as_ref().map(leaf));
    let (weight, bias) = (leaf(&c.weight), c.bias.as_ref().map(leaf));
    let (sum, y) = f(&x, delta.as_ref(), &weight, bias.as_ref());
    let (rows, cols) = (c.x.size()[0], c.x.size()[1]);
    let (gs, gy) = upstream(rows, cols, out, c.x.device());
    let mut total = (&y.to_kind(Kind::Float) * gy.to_kind(Kind::Float)).sum(Kind::Float);
    if let Some(s) = &sum {
        total += (s * &gs).sum(Kind::Float);
    }
    total.backward();
    let grad = |t: Option<&Tensor>| t.map(|t| t.grad());
    vec![
        sum.map(|s| s.detach()),
        Some(y.detach()),
        Some(x.grad()),
        grad(delta.as_ref()),
        Some(weight.grad()),
        grad(bias.as_ref()),
    ]
}

/// The ATen path: the add in fp32, `layer_norm`, the cast.
fn reference(
    x: &Tensor,
    delta: Option<&Tensor>,
    w: &Tensor,
    b: Option<&Tensor>,
    out: Kind,
) -> (Option<Tensor>, Tensor) {
    let sum = delta.map(|d| x + d);
    let s = sum.as_ref().unwrap_or(x);
    let cols = x.size()[1];
    (
        sum.as_ref().map(|s| s.shallow_clone()),
        s.layer_norm([cols], Some(w), b, EPS, true).to_kind(out),
    )
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

const NAMES: [&str; 6] = [
    "sum",
    "y",
    "grad_x",
    "grad_delta",
    "grad_weight",
    "grad_bias",
];

/// Each of `got` within `tol` (relative to the largest value of `want`'s) of `want`; the same
/// ones present.
fn assert_close(what: &str, got: &[Option<Tensor>], want: &[Option<Tensor>], tol: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => {
                assert_eq!(g.size(), w.size(), "{what}: {}", NAMES[i]);
                assert_eq!(g.kind(), w.kind(), "{what}: {}", NAMES[i]);
                let scale = w.abs().max().double_value(&[]).max(1e-30);
                let d = max_abs_diff(g, w);
                assert!(
                    d <= tol[i] * scale,
                    "{what}: {} differs by {d} (largest {scale})",
                    NAMES[i]
                );
            }
            (None, None) => {}
            _ => panic!("{what}: {} present on one side only", NAMES[i]),
        }
    }
}

/// Tolerances for `[sum, y, grad_x, grad_delta, grad_weight, grad_bias]`: exact sums; fp32
/// rounding elsewhere, or one bf16 step at the largest value (at most 2^-7 of it) for a bf16 y
/// or delta gradient.
fn tolerances(delta: Option<Kind>, out: Kind) -> [f64; 6] {
    let ulp = |k: Kind| {
        if k == Kind::BFloat16 {
            2f64.powi(-7)
        } else {
            1e-5
        }
    };
    [0.0, ulp(out), 1e-5, delta.map_or(0.0, ulp), 1e-5, 1e-5]
}

const COMBOS: [(Option<Kind>, Kind); 4] = [
    (Some(Kind::BFloat16), Kind::BFloat16),
    (Some(Kind::Float), Kind::Float),
    (None, Kind::BFloat16),
    (Some(Kind::BFloat16), Kind::Float),
];

fn compare_on(device: Device, rows: i64, cols: i64) {
    for (delta, out) in COMBOS {
        for bias in [true, false] {
            let c = case(rows, cols, delta, bias, device);
            let want = run(&c, out, |x, d, w, b| reference(x, d, w, b, out));
            let got = run(&c, out, |x, d, w, b| {
                add_layer_norm(x, d, w, b, EPS, out).unwrap()
            });
            let what =
                format!("{device:?} {rows}x{cols}, delta {delta:?}, out {out:?}, bias {bias}");
            assert_close(&what, &got, &want, &tolerances(delta, out));
        }
    }
}

#[test]
fn on_the_cpu_it_equals_the_add_layer_norm_and_cast() {
    compare_on(Device::Cpu, 37, 100);
    // Leading dimensions are kept: [B, T, C] in, [B, T, C] out.
    let x = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::ones([8], (Kind::Float, Device::Cpu));
    let (sum, y) = add_layer_norm(&x, Some(&x), &w, None, EPS, Kind::BFloat16).unwrap();
    assert_eq!(
        (sum.unwrap().size(), y.size()),
        (vec![2, 3, 8], vec![2, 3, 8])
    );
    assert_eq!(y.kind(), Kind::BFloat16);
}

/// Shapes the emulator runs: (rows, cols, whether the kernels holding a row in registers may
/// run, the groups of 4 values a lane of the forward and the input gradient kernels expected to
/// run).
const EMULATED: [(i64, i64, bool, [u32; 2]); 8] = [
    // The kernels that re-read the row: rows not a multiple of a block's 8 and more than one
    // chunk of 64 rows for the weight and bias sums, columns not a multiple of a warp's 32
    // nor of a tile's.
    (150, 100, false, [0, 0]),
    // The same width in registers (25 groups of 4 values over a warp's 64 slots), on fewer rows
    // (still a partial block): the weight and bias sums are the same kernel.
    (20, 100, true, [2, 2]),
    // Not a multiple of 4 values: the kernels that re-read the row, whatever was asked.
    (20, 102, true, [0, 0]),
    // Every width of the kernels in registers, full and partial: 128 groups over 128 slots.
    (20, 512, true, [4, 4]),
    // 250 groups over 256 slots.
    (20, 1000, true, [8, 8]),
    // GPT-2 XL's width: 400 groups over 512 slots; the backward kernel in registers stops at
    // 1,024 columns.
    (9, 1600, true, [16, 0]),
    // The widest row in registers, and the first one past it.
    (4, 2048, true, [16, 0]),
    (4, 2052, true, [0, 0]),
];

/// The emulation's `[sum, y, grad_x, grad_delta, grad_weight, grad_bias]` for case `c` and
/// the upstream gradients, checked against the reference (with the statistics the forward
/// pass saved); returns the groups of 4 values a lane of the forward and the input gradient
/// kernels that ran.
fn check_emulated(
    c: &Case,
    out: Kind,
    gs: Option<&Tensor>,
    gy: &Tensor,
    in_registers: bool,
    what: &str,
) -> [u32; 2] {
    let (got, groups) = emulate_layer_norm_kernels(
        &c.x,
        c.delta.as_ref(),
        &c.weight,
        c.bias.as_ref(),
        EPS,
        out,
        gs,
        gy,
        in_registers,
    )
    .unwrap();
    let want = run(c, out, |x, d, w, b| {
        let (sum, y) = reference(x, d, w, b, out);
        // Without a gradient for the sum, the sum takes no part in the loss.
        (sum.filter(|_| gs.is_some()), y)
    });
    // The emulation's [sum, y, mean, rstd, grad_x, grad_delta, grad_weight, grad_bias], in the
    // reference's order (its sum only when the reference had one).
    let [sum, y, mean, rstd, gx, gd, gw, gb] = got;
    let sum = sum.filter(|_| gs.is_some());
    let gb = gb.filter(|_| c.bias.is_some());
    let delta = c.delta.as_ref().map(Tensor::kind);
    assert_close(
        what,
        &[sum, y, gx, gd, gw, gb],
        &want,
        &tolerances(delta, out),
    );
    let s = match &c.delta {
        Some(d) => &c.x + d,
        None => c.x.shallow_clone(),
    };
    let want_mean = s.mean_dim(1, false, Kind::Float);
    let var = s.var_dim(1, false, false);
    let want_rstd = (var + EPS).rsqrt();
    assert!(
        max_abs_diff(&mean.unwrap(), &want_mean) < 1e-5,
        "{what}: mean"
    );
    assert!(
        max_abs_diff(&rstd.unwrap(), &want_rstd) < 1e-4,
        "{what}: rstd"
    );
    groups
}

/// The CUDA source itself, run on the CPU by the emulator: both families of per-row kernels
/// (re-reading the row; holding it in registers, at each width the shapes reach), every dtype
/// combination on the first shapes (the first of them on the others, to bound the time: the
/// emulator starts a thread per CUDA thread), with and without bias and a gradient for the sum.
#[test]
fn the_kernels_source_run_on_the_cpu_equals_the_add_layer_norm_and_cast() {
    for (i, (rows, cols, in_registers, want_groups)) in EMULATED.into_iter().enumerate() {
        let combos = if i < 2 { &COMBOS[..] } else { &COMBOS[..1] };
        for &(delta, out) in combos {
            for (bias, with_grad_sum) in [(true, true), (false, false)] {
                let c = case(rows, cols, delta, bias, Device::Cpu);
                let (gs, gy) = upstream(rows, cols, out, Device::Cpu);
                let gs = (delta.is_some() && with_grad_sum).then_some(gs);
                let what = format!(
                    "emulated {rows}x{cols}, in registers {in_registers}, delta {delta:?}, out {out:?}, bias {bias}"
                );
                let groups = check_emulated(&c, out, gs.as_ref(), &gy, in_registers, &what);
                assert_eq!(groups, want_groups, "{what}: the kernel that ran");
            }
        }
    }
}

/// `t`'s values in a tensor that starts 4 bytes past a 16-byte boundary (a view at an offset).
fn misaligned(t: &Tensor) -> Tensor {
    let n = t.numel() as i64;
    let padded = Tensor::zeros([2 * n + 8], (t.kind(), Device::Cpu));
    let offset = 4 / t.kind().elt_size_in_bytes() as i64;
    let view = padded.narrow(0, offset, n).view(t.size().as_slice());
    tch::no_grad(|| view.shallow_clone().copy_(t));
    assert!(view.is_contiguous() && view.data_ptr() as usize % 16 == 4);
    view
}

/// A tensor that does not start on a 16-byte boundary sends the kernel that reads it to the
/// kernels that re-read the row, with the same results: x for the forward kernel (the backward
/// one reads the aligned sum), the output's gradient for the backward one.
#[test]
fn a_misaligned_tensor_takes_the_kernels_that_re_read_the_row() {
    let (rows, cols) = (12, 64);
    let out = Kind::BFloat16;
    let (gs, gy) = upstream(rows, cols, out, Device::Cpu);
    let aligned = case(rows, cols, Some(Kind::BFloat16), true, Device::Cpu);
    let groups =
        |c: &Case, gy: &Tensor, what: &str| check_emulated(c, out, Some(&gs), gy, true, what);
    assert_eq!(groups(&aligned, &gy, "aligned"), [2, 2]);
    let mut shifted = case(rows, cols, Some(Kind::BFloat16), true, Device::Cpu);
    shifted.x = misaligned(&shifted.x);
    assert_eq!(groups(&shifted, &gy, "x at an offset of 4 bytes"), [0, 2]);
    let gy = misaligned(&gy);
    assert_eq!(
        groups(&aligned, &gy, "grad_y at an offset of 4 bytes"),
        [2, 0]
    );
}

#[test]
fn on_a_gpu_the_kernels_equal_the_add_layer_norm_and_cast() {
    if !Cuda::is_available() {
        eprintln!("skipped: no GPU here (the kernels' source ran in the emulator test instead)");
        return;
    }
    // Rows in registers (100, GPT-2 XL's 1600), and re-read (a width not a multiple of 4, one
    // above the registers' 2048).
    for cols in [100, 1600, 102, 2100] {
        compare_on(Device::Cuda(0), 37, cols);
    }
    // GPT-2 small's width and a micro-batch's rows.
    compare_on(Device::Cuda(0), 4096, 768);
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let f = (Kind::Float, Device::Cpu);
    let (x, w) = (Tensor::zeros([4, 8], f), Tensor::ones([8], f));
    let refused = |r: Result<(Option<Tensor>, Tensor), lawa_ops::OpsError>, why: &str| {
        let e = r.unwrap_err();
        assert!(e.message.contains(why), "{why}: {e}");
    };
    let x64 = x.to_kind(Kind::Double);
    refused(
        add_layer_norm(&x64, None, &w, None, EPS, Kind::Float),
        "x must be fp32",
    );
    let short = Tensor::zeros([4, 7], f);
    refused(
        add_layer_norm(&x, Some(&short), &w, None, EPS, Kind::Float),
        "delta must be",
    );
    let w7 = Tensor::ones([7], f);
    refused(
        add_layer_norm(&x, None, &w7, None, EPS, Kind::Float),
        "weight must be fp32 [8]",
    );
    refused(
        add_layer_norm(&x, None, &w, Some(&w7), EPS, Kind::Float),
        "bias must be fp32 [8]",
    );
    refused(
        add_layer_norm(&x, None, &w, None, EPS, Kind::Half),
        "bf16 or fp32",
    );
}
