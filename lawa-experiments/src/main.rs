//! `lawa`: prepare datasets, train GPT-2 models and compare weight-averaging strategies.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use lawa_experiments::commands;

/// lawa: pre-train GPT-2 models and measure weight averaging (LAWA, EMA, SWA) along the way.
#[derive(Debug, Parser)]
#[command(name = "lawa", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tokenize a text corpus into train.bin / val.bin / meta.json (nanoGPT's format).
    Prepare(commands::prepare::PrepareArgs),
    /// Average saved checkpoints (safetensors or PyTorch .bin) into one, streaming a chunk at a time.
    Average(commands::average::AverageArgs),
    /// Mean next-token loss (and perplexity) of a checkpoint over every window of a split.
    Eval(commands::eval::EvalArgs),
    /// Generate text from a checkpoint, continuing a prompt.
    Sample(commands::sample::SampleArgs),
    /// Training throughput (and averaging cost) beside a PyTorch reference in the same run.
    Bench(Box<commands::bench::BenchArgs>),
    /// Run a sweep: models x lrs x seeds, every averager of a grid; re-running resumes.
    Sweep(commands::sweep::SweepArgs),
    /// Train a model from a run YAML, evaluating its averagers; re-running resumes.
    Train(commands::train::TrainArgs),
    /// LAWA over a series of saved checkpoints, scored along training; re-running continues.
    Posthoc(commands::posthoc::PosthocArgs),
    /// Regenerate a sweep's figures (PNG and SVG) from its CSVs into RESULTS/figures/.
    Figures(commands::figures::FiguresArgs),
}

fn init_logging() {
    // Ranks other than 0 of a data-parallel run report only warnings and errors.
    let follower = ["RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .is_some_and(|r| r.trim() != "0");
    let default = if follower { "warn" } else { "info" };
    let filter = match std::env::var("LAWA_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new(default),
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!("LAWA_LOG={text:?} is not a log filter ({e}); logging at {default}");
            tracing_subscriber::EnvFilter::new(default)
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(lawa_experiments::progress::interactive())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match &cli.command {
        Command::Prepare(args) => commands::prepare::run(args).map(|prepared| {
            println!("{}", prepared.dir.display());
        }),
        Command::Average(args) => commands::average::run(args).map(|_| ()),
        Command::Eval(args) => {
            commands::eval::run(args).map(|report| println!("{}", report.render(args.json)))
        }
        Command::Sample(args) => commands::sample::run(args).map(|text| println!("{text}")),
        Command::Train(args) => commands::train::run(args).map(|_| ()),
        Command::Bench(args) => commands::bench::run(args).map(|_| ()),
        Command::Sweep(args) => commands::sweep::run(args).map(|r| println!("{}", r.dir.display())),
        Command::Figures(args) => commands::figures::run(args).map(|_| ()),
        Command::Posthoc(args) => {
            commands::posthoc::run(args).map(|r| println!("{}", r.dir.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
