//! `lawa bench`: training throughput of a GPT-2 shape beside a PyTorch reference training the
//! same model with the same batch in the same invocation (`bench train`, the default), or the
//! per-step cost of the averagers beside PyTorch's `AveragedModel` (`bench averaging`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_core::averaging::{AveragerSet, Ema, Lawa, Weights};
use lawa_core::optim::{clip_grad_norm, AdamW, AdamWConfig};
use lawa_models::{CausalLm, Gpt, GptConfig, Precision};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::tasks::{score, Request};
use crate::train::trainer::decays;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Training tokens/s (and MFU) against PyTorch eager and torch.compile.
    Train,
    /// Per-step cost of EMA and LAWA as a fraction of a training step, against
    /// `torch.optim.swa_utils.AveragedModel`.
    Averaging,
    /// Zero-shot scoring: log-likelihood requests per second, one at a time and batched,
    /// against PyTorch scoring the same requests the harness's way.
    Tasks,
}

/// Model shape, batch and device of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "train")]
    pub what: BenchKind,
    /// Model preset (tiny, small, medium, large); --n-layer etc. override it.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Blocks.
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Heads.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Width.
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Vocabulary [default: 4096 on CPU, 50257 on CUDA].
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Sequences per step [default: 16].
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per sequence [default: 128 on CPU, the preset's block size on CUDA].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// auto, cpu, cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (bf16 on CUDA, f32 on CPU), f32, bf16.
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Requests scored by `bench tasks`.
    #[arg(long, default_value_t = 512)]
    pub requests: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
}

struct Setup {
    cfg: GptConfig,
    device: Device,
    precision: Precision,
    block: usize,
}

fn setup(args: &BenchArgs) -> Result<Setup> {
    let device = match args.device.as_str() {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => bail!("--device {other:?}: expected auto, cpu or cuda"),
    };
    if device.is_cuda() && !tch::Cuda::is_available() {
        bail!("--device cuda: no CUDA device is available");
    }
    let precision = match args.precision.as_str() {
        "auto" if device.is_cuda() => Precision::Bf16,
        "auto" => Precision::F32,
        other => other
            .parse()
            .map_err(|e| anyhow::anyhow!("--precision: {e}"))?,
    };
    let vocab = args
        .vocab_size
        .unwrap_or(if device.is_cuda() { 50_257 } else { 4096 });
    let mut cfg = GptConfig::preset(&args.preset, vocab)?;
    cfg.n_layer = args.n_layer.unwrap_or(cfg.n_layer);
    cfg.n_head = args.n_head.unwrap_or(cfg.n_head);
    cfg.n_embd = args.n_embd.unwrap_or(cfg.n_embd);
    let block = args.block_size.unwrap_or(if device.is_cuda() {
        cfg.block_size
    } else {
        128
    });
    cfg.block_size = cfg.block_size.max(block);
    cfg.validate()?;
    Ok(Setup {
        cfg,
        device,
        precision,
        block,
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A model, its optimizer and a fixed random batch, ready to take steps.
struct Trainer {
    vs: VarStore,
    gpt: Gpt,
    opt: AdamW,
    params: Vec<Tensor>,
    x: Tensor,
    y: Tensor,
}

impl Trainer {
    fn new(s: &Setup, batch: usize) -> Result<Self> {
        tch::manual_seed(0);
        let vs = VarStore::new(s.device);
        let gpt = Gpt::new(vs.root(), &s.cfg)?.with_precision(s.precision);
        let opt = AdamW::new(vs.variables(), AdamWConfig::default(), decays)?;
        let params = opt.parameters();
        let shape = [batch as i64, s.block as i64];
        let x = Tensor::randint(s.cfg.vocab_size as i64, shape, (Kind::Int64, s.device));
        let y = Tensor::randint(s.cfg.vocab_size as i64, shape, (Kind::Int64, s.device));
        Ok(Trainer {
            vs,
            gpt,
            opt,
            params,
            x,
            y,
        })
    }

    fn step(&mut self) -> Result<()> {
        let loss = self.gpt.loss(&self.x, &self.y, true)?;
        loss.backward();
        let _norm = clip_grad_norm(&self.params, 1.0);
        self.opt.step(6e-4)?;
        self.opt.zero_grad();
        Ok(())
    }

    /// Seconds per step over `steps` steps after `warmup` untimed ones.
    fn time_steps(&mut self, warmup: usize, steps: usize) -> Result<f64> {
        for _ in 0..warmup {
            self.step()?;
        }
        sync(self.gpt.device());
        let start = Instant::now();
        for _ in 0..steps {
            self.step()?;
        }
        sync(self.gpt.device());
        Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
    }
}

/// What the PyTorch reference measures besides training.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Averaging,
    Tasks,
}

fn reference(s: &Setup, args: &BenchArgs, extra: Extra) -> Result<serde_json::Value> {
    let python = crate::assets::reference_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/bench_gpt.py");
    let config = serde_json::json!({
        "n_layer": s.cfg.n_layer, "n_head": s.cfg.n_head, "n_embd": s.cfg.n_embd,
        "block_size": s.block, "vocab_size": s.cfg.vocab_size, "batch_size": args.batch_size,
        "steps": args.steps, "warmup": args.warmup,
        "device": if s.device.is_cuda() { "cuda" } else { "cpu" },
        "precision": s.precision.to_string(), "compile": s.device.is_cuda(), "averaging": extra == Extra::Averaging,
        "tasks": if extra == Extra::Tasks { args.requests } else { 0 },
    });
    let out = Command::new(&python)
        .arg(&script)
        .arg(config.to_string())
        .output()
        .with_context(|| {
            format!(
                "running the PyTorch reference with {} (set LAWA_PYTHON)",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "PyTorch reference failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim().lines().last().unwrap_or_default())
        .context("PyTorch reference printed no result")
}

/// Dense bf16 peak of the GPU, for MFU, from its name as `nvidia-smi` reports it.
fn gpu_peak_flops() -> Option<(String, f64)> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_string();
    let peak = if name.contains("H100") && name.contains("PCIe") {
        756e12
    } else if name.contains("H100") || name.contains("H200") || name.contains("GH200") {
        989e12
    } else if name.contains("A100") {
        312e12
    } else {
        return None;
    };
    Some((name, peak))
}

/// Runs `lawa bench`; returns the speed-up over PyTorch (eager) when measured.
pub fn run(args: &BenchArgs) -> Result<Option<f64>> {
    let s = setup(args)?;
    println!(
        "model: {} layers, {} heads, {} wide, vocab {} ({:.1}M parameters); batch {} x {} tokens; {:?}, {}",
        s.cfg.n_layer,
        s.cfg.n_head,
        s.cfg.n_embd,
        s.cfg.vocab_size,
        s.cfg.num_params(false) as f64 / 1e6,
        args.batch_size,
        s.block,
        s.device,
        s.precision
    );
    match args.what {
        BenchKind::Train => bench_train(&s, args),
        BenchKind::Averaging => bench_averaging(&s, args),
        BenchKind::Tasks => bench_tasks(&s, args),
    }
}

fn bench_train(s: &Setup, args: &BenchArgs) -> Result<Option<f64>> {
    let tokens = (args.batch_size * s.block) as f64;
    let mut trainer = Trainer::new(s, args.batch_size)?;
    let ours = tokens / trainer.time_steps(args.warmup, args.steps)?;
    drop(trainer);
    let peak = if s.device.is_cuda() && s.precision == Precision::Bf16 {
        gpu_peak_flops()
    } else {
        None
    };
    let flops = s.cfg.flops_per_token();
    let mfu = |tok_s: f64| {
        peak.as_ref()
            .map(|(_, p)| format!("{:.1} %", 100.0 * flops * tok_s / p))
            .unwrap_or_else(|| "-".into())
    };
    if let Some((name, p)) = &peak {
        println!(
            "device: {name}, bf16 dense peak {:.0} TFLOP/s; {:.3e} FLOPs per token",
            p / 1e12,
            flops
        );
    }
    println!("{:<28} {:>12} {:>8}", "implementation", "tokens/s", "MFU");
    println!("{:<28} {:>12.0} {:>8}", "lawa (Rust, tch)", ours, mfu(ours));
    if args.no_reference {
        return Ok(None);
    }
    let r = reference(s, args, Extra::None)?;
    let eager = r["eager_tokens_per_s"].as_f64().context("eager tokens/s")?;
    println!(
        "{:<28} {:>12.0} {:>8}",
        format!("PyTorch {} eager", r["torch"].as_str().unwrap_or("?")),
        eager,
        mfu(eager)
    );
    if let Some(compiled) = r["compile_tokens_per_s"].as_f64() {
        println!(
            "{:<28} {:>12.0} {:>8}",
            "PyTorch torch.compile",
            compiled,
            mfu(compiled)
        );
        println!("speedup_vs_compile={:.3}", ours / compiled);
    }
    let ratio = ours / eager;
    println!("speedup_vs_pytorch={ratio:.3}");
    Ok(Some(ratio))
}

fn bench_averaging(s: &Setup, args: &BenchArgs) -> Result<Option<f64>> {
    let mut trainer = Trainer::new(s, args.batch_size)?;
    let step_s = trainer.time_steps(args.warmup, args.steps)?;
    let weights = Weights::from_var_store(&trainer.vs);
    let calls = 50u64;
    let time = |set: &mut AveragerSet, step_of: &dyn Fn(u64) -> u64| -> Result<f64> {
        for i in 1..=3 {
            set.observe(step_of(i), &weights)?;
        }
        sync(s.device);
        let start = Instant::now();
        for i in 4..4 + calls {
            set.observe(step_of(i), &weights)?;
        }
        sync(s.device);
        Ok(start.elapsed().as_secs_f64() / calls as f64)
    };
    let mut ema = AveragerSet::new();
    ema.push(Ema::new(0.99)?)?;
    let ema_s = time(&mut ema, &|i| i)?;
    let nu = 50;
    let mut lawa = AveragerSet::new();
    lawa.push(Lawa::new(5, nu)?)?;
    let snapshot_s = time(&mut lawa, &|i| i * nu)?;
    let eval_vs = VarStore::new(s.device);
    let _eval = Gpt::new(eval_vs.root(), &s.cfg)?;
    let target = Weights::from_var_store(&eval_vs);
    let start = Instant::now();
    for a in lawa.iter() {
        for _ in 0..10 {
            a.write_average(&target)?;
        }
    }
    sync(s.device);
    let write_s = start.elapsed().as_secs_f64() / 10.0;
    let pct = |x: f64| 100.0 * x / step_s;
    println!("training step: {:.2} ms", step_s * 1e3);
    println!("{:<46} {:>10} {:>12}", "operation", "ms", "% of a step");
    println!(
        "{:<46} {:>10.3} {:>12.2}",
        "lawa EMA update (every step)",
        ema_s * 1e3,
        pct(ema_s)
    );
    println!(
        "{:<46} {:>10.3} {:>12.2}",
        format!("lawa LAWA snapshot (every nu = {nu} steps)"),
        snapshot_s * 1e3,
        pct(snapshot_s)
    );
    println!(
        "{:<46} {:>10.3} {:>12.3}",
        format!("lawa LAWA per step, amortized (nu = {nu})"),
        snapshot_s / nu as f64 * 1e3,
        pct(snapshot_s / nu as f64)
    );
    println!(
        "{:<46} {:>10.3} {:>12.2}",
        "lawa LAWA k=5 average into eval model (per eval)",
        write_s * 1e3,
        pct(write_s)
    );
    if args.no_reference {
        return Ok(None);
    }
    let r = reference(s, args, Extra::Averaging)?;
    let torch_ema = r["ema_update_s"].as_f64().context("ema_update_s")?;
    println!(
        "{:<46} {:>10.3} {:>12.2}",
        "PyTorch AveragedModel EMA update_parameters",
        torch_ema * 1e3,
        pct(torch_ema)
    );
    let ratio = torch_ema / ema_s;
    println!("ema_speedup_vs_pytorch={ratio:.3}");
    Ok(Some(ratio))
}

/// `(context, continuation)` lengths of request `i`: the same formula as the PyTorch reference's
/// `request_lengths`, contexts spread over the block, continuations of 1 to 6 tokens.
fn request_lengths(i: usize, block: usize) -> (usize, usize) {
    (1 + (i * 37) % (block - 8), 1 + i % 6)
}

fn bench_tasks(s: &Setup, args: &BenchArgs) -> Result<Option<f64>> {
    if s.block < 16 {
        bail!("bench tasks needs --block-size of at least 16");
    }
    tch::manual_seed(0);
    let vs = VarStore::new(s.device);
    let gpt = Gpt::new(vs.root(), &s.cfg)?.with_precision(s.precision);
    let vocab = s.cfg.vocab_size as i64;
    let requests: Vec<Request> = (0..args.requests)
        .map(|i| {
            let (c, n) = request_lengths(i, s.block);
            let t = Vec::<i64>::try_from(Tensor::randint(
                vocab,
                [(c + n) as i64],
                (Kind::Int64, Device::Cpu),
            ))?;
            Ok(Request {
                context: t[..c].to_vec(),
                continuation: t[c..].to_vec(),
            })
        })
        .collect::<Result<_>>()?;
    let rate = |batch: usize| -> Result<f64> {
        score(&gpt, &requests, batch, s.block)?; // warm-up
        sync(s.device);
        let start = Instant::now();
        score(&gpt, &requests, batch, s.block)?;
        sync(s.device);
        Ok(requests.len() as f64 / start.elapsed().as_secs_f64())
    };
    let one = rate(1)?;
    let batched = rate(args.batch_size)?;
    println!(
        "{} requests, contexts of 1 to {} tokens",
        requests.len(),
        s.block - 8
    );
    println!("{:<36} {:>14}", "implementation", "requests/s");
    println!("{:<36} {:>14.1}", "lawa, one request at a time", one);
    println!(
        "{:<36} {:>14.1}",
        format!("lawa, batches of {}", args.batch_size),
        batched
    );
    println!("batching_speedup={:.3}", batched / one);
    if args.no_reference {
        return Ok(None);
    }
    let r = reference(s, args, Extra::Tasks)?;
    let torch = r["requests_per_s"].as_f64().context("requests_per_s")?;
    println!(
        "{:<36} {:>14.1}",
        format!(
            "PyTorch {}, batches of {}",
            r["torch"].as_str().unwrap_or("?"),
            args.batch_size
        ),
        torch
    );
    let ratio = batched / torch;
    println!("speedup_vs_pytorch={ratio:.3}");
    Ok(Some(ratio))
}
