//! An ordinary tch training loop that gains LAWA, EMA and SWA evaluation with a handful of added
//! lines (marked `// +`). Noisy regression at a high learning rate: the raw weights bounce
//! around the optimum, and the averages sit closer to it.
//!
//! cargo run -p lawa-core --example train_with_averaging

use lawa_core::averaging::{AveragerSet, Ema, Lawa, Swa, Weights};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn model(vs: &nn::Path) -> impl Module {
    nn::seq()
        .add(nn::linear(vs / "l1", 16, 64, Default::default()))
        .add_fn(|x| x.gelu("tanh"))
        .add(nn::linear(vs / "l2", 64, 1, Default::default()))
}

fn main() -> anyhow::Result<()> {
    tch::manual_seed(0);
    let device = Device::cuda_if_available();
    let true_w = Tensor::randn([16, 1], (Kind::Float, device));
    let data = |n: i64| {
        let x = Tensor::randn([n, 16], (Kind::Float, device));
        let y = x.matmul(&true_w) + 0.5 * Tensor::randn([n, 1], (Kind::Float, device));
        (x, y)
    };
    let (x_val, y_val) = data(4096);

    let vs = nn::VarStore::new(device);
    let net = model(&vs.root());
    let mut opt = nn::Adam::default().build(&vs, 3e-2)?;
    let steps = 600;

    let mut averagers = AveragerSet::new(); // +
    averagers.push(Lawa::new(10, 20)?)?; // +
    averagers.push(Ema::new(0.99)?)?; // +
    averagers.push(Swa::new().every(10)?.start_fraction(0.5, steps)?)?; // +
    let eval_vs = nn::VarStore::new(device); // + an evaluation copy of the model
    let eval_net = model(&eval_vs.root()); // +
    let weights = Weights::from_var_store(&vs); // + handles, built once
    let eval_weights = Weights::from_var_store(&eval_vs); // +

    let val_loss = |m: &dyn Module| {
        tch::no_grad(|| m.forward(&x_val).mse_loss(&y_val, tch::Reduction::Mean)).double_value(&[])
    };
    for step in 1..=steps {
        let (x, y) = data(32);
        let loss = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        opt.backward_step(&loss);
        averagers.observe(step, &weights)?; // +
        if step % 100 == 0 {
            print!("step {step:4}  raw {:.4}", val_loss(&net));
            for averager in averagers.iter().filter(|a| a.is_ready()) {
                averager.write_average(&eval_weights)?; // +
                print!("  {} {:.4}", averager.label(), val_loss(&eval_net));
            }
            println!();
        }
    }
    let (count, bytes) = averagers.distinct_snapshots();
    println!(
        "snapshots held: {count} ({:.1} KB); noise floor 0.25",
        bytes as f64 / 1e3
    );
    Ok(())
}
