//! `lawa bench`: lawa beside a PyTorch reference in the same invocation on the same device:
//! training throughput (`bench train`, the default), the averagers' cost (`bench averaging`),
//! zero-shot scoring (`bench tasks`) and the losses of a short training run (`bench parity`).
//! The measurements live in [`crate::bench`]; this module turns flags into a [`Bench`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lawa_models::{GptConfig, Precision};
use tch::Device;

use crate::bench::{self, Bench};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Training tokens/s (and MFU) against PyTorch eager and torch.compile.
    Train,
    /// Per-step cost of EMA and LAWA (on the device and in host memory) as a fraction of a
    /// training step, against `torch.optim.swa_utils.AveragedModel`.
    Averaging,
    /// Zero-shot scoring: log-likelihood requests per second, one at a time and batched,
    /// against PyTorch scoring the same requests the harness's way.
    Tasks,
    /// The losses of `--steps` training steps beside Hugging Face transformers trained from the
    /// same weights on the same batches; fails beyond the precision's tolerance.
    Parity,
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
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub accumulation: usize,
    /// Tokens per sequence [default: 128 on CPU, the preset's block size on CUDA].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Timed steps (for parity: the steps compared).
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
    /// Leave `torch.compile` out of the reference (it is timed on CUDA otherwise).
    #[arg(long)]
    pub no_compile: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How lawa's AdamW computes its step: auto (foreach on CUDA, single on CPU), single,
    /// foreach, fused.
    #[arg(long, default_value = "auto")]
    pub adamw_kernel: String,
    /// Run lawa's LM head and loss this many tokens at a time (`train.loss_chunk`).
    #[arg(long, value_name = "TOKENS")]
    pub loss_chunk: Option<usize>,
    /// What computes lawa's softmax and loss (`train.loss_kernel`): aten, or fused (lawa's
    /// cross-entropy kernels, on CUDA).
    #[arg(long, default_value = "aten")]
    pub loss_kernel: String,
    /// What computes lawa's residual adds and LayerNorms (`train.norm_kernel`): aten, or fused
    /// (lawa's add + LayerNorm kernels, on CUDA).
    #[arg(long, default_value = "aten")]
    pub norm_kernel: String,
    /// What computes lawa's linear layers (`train.linear_kernel`): aten, or fused (libtorch's
    /// linear with each bias gradient summed by lawa's kernel, on CUDA).
    #[arg(long, default_value = "aten")]
    pub linear_kernel: String,
    /// Record lawa's forward, backward and clipping as a CUDA graph after a few eager steps and
    /// replay it (`train.cuda_graph`; CUDA only, and the recording happens during the warm-up).
    #[arg(long)]
    pub cuda_graph: bool,
    /// `bench train`: also profile a few steps of lawa and of the reference with libtorch's
    /// profiler, print where the time goes, and write every event to this folder.
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Steps profiled with --profile.
    #[arg(long, default_value_t = 2)]
    pub profile_steps: usize,
}

/// A `--*-kernel` value.
fn kernel(flag: &str, value: &str) -> Result<lawa_models::Kernel> {
    serde_yaml::from_str(value)
        .map_err(|_| anyhow::anyhow!("{flag} {value:?}: expected aten or fused"))
}

fn device(name: &str) -> Result<Device> {
    let device = match name {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => bail!("--device {other:?}: expected auto, cpu or cuda"),
    };
    if device.is_cuda() && !tch::Cuda::is_available() {
        bail!("--device cuda: no CUDA device is available");
    }
    Ok(device)
}

/// `--profile`'s folder (created) and step count.
fn profile(args: &BenchArgs) -> Result<Option<(PathBuf, usize)>> {
    let Some(dir) = &args.profile else {
        return Ok(None);
    };
    if args.profile_steps == 0 {
        bail!("--profile-steps must be at least 1");
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--profile: cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--profile: cannot resolve {}", dir.display()))?;
    Ok(Some((dir, args.profile_steps)))
}

/// `--cuda-graph`, where it can be used: on CUDA, with the graph recorded during the warm-up.
fn cuda_graph(args: &BenchArgs, device: Device) -> Result<bool> {
    if !args.cuda_graph {
        return Ok(false);
    }
    if !matches!(args.what, BenchKind::Train | BenchKind::Parity) {
        bail!("--cuda-graph is for bench train and bench parity, which take training steps");
    }
    if !device.is_cuda() {
        bail!("--cuda-graph needs a CUDA device; this benchmark runs on {device:?}");
    }
    if !lawa_ops::cuda_graphs_built() {
        bail!(
            "--cuda-graph: this build of lawa has no CUDA graphs (the CUDA headers were not found \
             when it was built: run scripts/bootstrap.sh, then rebuild)"
        );
    }
    // The recording must happen where it is not timed (train) and within the run (parity).
    let eager = crate::train::gradients::EAGER_STEPS_BEFORE_GRAPH as usize;
    let (flag, given) = match args.what {
        BenchKind::Parity => ("--steps", args.steps),
        _ => ("--warmup", args.warmup),
    };
    if given <= eager {
        bail!(
            "--cuda-graph needs {flag} of at least {} ({eager} eager steps, then the recording)",
            eager + 1
        );
    }
    Ok(true)
}

/// The benchmark the flags describe.
pub fn bench_of(args: &BenchArgs) -> Result<Bench> {
    let device = device(&args.device)?;
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
    cfg.block_size = block;
    cfg.validate()?;
    if args.batch_size == 0 || args.accumulation == 0 || args.steps == 0 {
        bail!("--batch-size, --accumulation and --steps must be at least 1");
    }
    Ok(Bench {
        cfg,
        device,
        precision,
        block,
        batch_size: args.batch_size,
        accumulation: args.accumulation,
        steps: args.steps,
        warmup: args.warmup,
        requests: args.requests,
        compile: !args.no_compile,
        reference: !args.no_reference,
        loss: lawa_models::LossPlan {
            chunk: args.loss_chunk.filter(|&c| c > 0),
            kernel: kernel("--loss-kernel", &args.loss_kernel)?,
        },
        norm_kernel: kernel("--norm-kernel", &args.norm_kernel)?,
        linear_kernel: kernel("--linear-kernel", &args.linear_kernel)?,
        profile: profile(args)?,
        cuda_graph: cuda_graph(args, device)?,
        adamw_kernel: serde_yaml::from_str(&args.adamw_kernel).map_err(|_| {
            anyhow::anyhow!(
                "--adamw-kernel {:?}: expected auto, single, foreach or fused",
                args.adamw_kernel
            )
        })?,
    })
}

/// Runs `lawa bench`; returns the figures (also written to `--json`). A parity run beyond its
/// tolerance is an error, after the figures are written.
pub fn run(args: &BenchArgs) -> Result<serde_json::Value> {
    let b = bench_of(args)?;
    // The --json file's folder is made before the benchmark, not found missing after it.
    if let Some(path) = &args.json {
        if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
            bail!("--json {}: a folder; give a file name", path.display());
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("--json {}: cannot make its folder", path.display()))?;
        }
    }
    println!(
        "model: {} layers, {} heads, {} wide, vocab {} ({:.1}M parameters); batch {} x {} tokens{}; {:?}, {}",
        b.cfg.n_layer,
        b.cfg.n_head,
        b.cfg.n_embd,
        b.cfg.vocab_size,
        b.cfg.num_params(false) as f64 / 1e6,
        b.batch_size,
        b.block,
        if b.accumulation > 1 { format!(" x {} micro-batches", b.accumulation) } else { String::new() },
        b.device,
        b.precision
    );
    let figures = match args.what {
        BenchKind::Train => bench::train::run(&b)?,
        BenchKind::Averaging => bench::averaging::run(&b)?,
        BenchKind::Tasks => bench::tasks::run(&b)?,
        BenchKind::Parity => {
            if !b.reference {
                bail!("bench parity compares with the reference; drop --no-reference");
            }
            let dir = std::env::temp_dir().join(format!("lawa-parity-{}", std::process::id()));
            let figures = bench::parity::run(&b, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            figures?
        }
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&figures)?;
        lawa_core::checkpoint::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if figures["passed"] == serde_json::json!(false) {
        bail!(
            "parity failed: the losses differ by up to {} (tolerance {})",
            figures["max_abs_diff"],
            figures["tolerance"]
        );
    }
    Ok(figures)
}
