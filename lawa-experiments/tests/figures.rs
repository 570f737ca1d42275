//! `lawa figures`: every figure from a synthetic but realistic sweep, partial sweeps, and bad
//! input (one clear error, nothing written).

use std::path::{Path, PathBuf};

use lawa_experiments::commands::figures::{run, FiguresArgs};
use lawa_experiments::figures::plot::{HEIGHT, WIDTH};
use lawa_experiments::figures::sweep::Sweep;
use lawa_experiments::figures::{render_all, FIGURES_DIR};
use lawa_experiments::results::schema::{curves_header, to_csv};
use lawa_experiments::results::{read_rows, CurveRow, Strategy, StrategyColumns, SummaryRow};

const STEPS: u64 = 1000;
const EVERY: u64 = 50;

/// One set of weights of the synthetic sweep.
#[derive(Clone, Copy)]
enum Weights {
    Raw,
    Lawa { k: u64, nu: u64 },
    Ema { decay: f64, warmup: bool },
    Swa { start: f64 },
}

impl Weights {
    fn label(self) -> String {
        match self {
            Weights::Raw => "raw".into(),
            Weights::Lawa { k, nu } => format!("lawa_k{k}_nu{nu}"),
            Weights::Ema { decay, warmup } => {
                format!("ema_{decay}{}", if warmup { "_warmup" } else { "" })
            }
            Weights::Swa { start } => format!("swa_start{start}_every10"),
        }
    }

    /// strategy, k, nu, decay, start, every
    fn columns(self) -> StrategyColumns {
        match self {
            Weights::Raw => StrategyColumns::default(),
            Weights::Lawa { k, nu } => StrategyColumns {
                strategy: Some(Strategy::Lawa),
                k: Some(k),
                nu: Some(nu),
                start: Some(0.0),
                every: Some(nu),
                ..Default::default()
            },
            Weights::Ema { decay, warmup } => StrategyColumns {
                strategy: Some(if warmup {
                    Strategy::EmaWarmup
                } else {
                    Strategy::Ema
                }),
                decay: Some(decay),
                start: Some(0.0),
                every: Some(1),
                ..Default::default()
            },
            Weights::Swa { start } => StrategyColumns {
                strategy: Some(Strategy::Swa),
                start: Some(start),
                every: Some(10),
                ..Default::default()
            },
        }
    }

    /// First step with an average to evaluate.
    fn ready(self) -> u64 {
        match self {
            Weights::Raw => 0,
            Weights::Lawa { nu, .. } => nu,
            Weights::Ema { .. } => 1,
            Weights::Swa { start } => (start * STEPS as f64) as u64,
        }
    }

    /// Loss of these weights given the raw loss at `step` (a loose imitation of the paper:
    /// averaging helps more at high lr and with wider spacing; SWA-early lags behind).
    fn loss(self, raw: f64, step: u64, lr: f64) -> f64 {
        let t = step as f64 / STEPS as f64;
        let hot = lr / 6e-3;
        match self {
            Weights::Raw => raw,
            Weights::Lawa { k, nu } => {
                let span = (k * nu) as f64 / 500.0;
                raw - 0.25 * hot * span.min(1.0) * (1.0 - t * 0.6)
                    + 0.3 * (-(step as f64) / 40.0).exp()
            }
            Weights::Ema { decay, .. } => raw - 0.08 * hot * decay * (1.0 - t * 0.5),
            Weights::Swa { start } if start < 0.5 => raw + 0.4 * t * (1.0 - start),
            Weights::Swa { .. } => raw - 0.03,
        }
    }
}

fn all_weights() -> Vec<Weights> {
    let mut weights = vec![Weights::Raw];
    for k in [2, 5, 10] {
        for nu in [10, 50] {
            weights.push(Weights::Lawa { k, nu });
        }
    }
    weights.push(Weights::Ema {
        decay: 0.99,
        warmup: false,
    });
    weights.push(Weights::Ema {
        decay: 0.9,
        warmup: true,
    });
    weights.push(Weights::Swa { start: 0.05 });
    weights.push(Weights::Swa { start: 0.75 });
    weights
}

/// Raw validation loss of a run: a decaying curve, higher and noisier at high lr.
fn raw_loss(step: u64, lr: f64, seed: u64) -> f64 {
    let s = step as f64;
    let noise = ((s * 0.37 + seed as f64 * 1.7).sin()) * 0.02 * (lr / 6e-4).sqrt();
    3.2 + 7.8 * (-s / 90.0).exp() + 0.6 * (-s / 600.0).exp() + (lr / 6e-3) * 0.15 + noise
}

struct Run {
    model: &'static str,
    lr: f64,
    seed: u64,
    /// Last step evaluated (a diverged run stops early).
    last: u64,
}

fn curves_csv(runs: &[Run], weights: &[Weights], train_loss: bool) -> String {
    let mut rows = Vec::new();
    for run in runs {
        let id = format!("{}-lr{}-s{}", run.model, run.lr, run.seed);
        for step in (0..=run.last).step_by(EVERY as usize) {
            let mut raw = raw_loss(step, run.lr, run.seed);
            if run.last < STEPS && step + 3 * EVERY > run.last {
                raw += (step + 3 * EVERY - run.last) as f64 * 0.01;
            }
            for &w in weights {
                if step < w.ready() {
                    continue;
                }
                let val = w.loss(raw, step, run.lr);
                // Training loss below validation loss, the gap widening with steps and lr,
                // narrower for averaged weights.
                let widen = step as f64 * 3e-5 * (1.0 + run.lr / 6e-3);
                let gap = if matches!(w, Weights::Raw) {
                    widen
                } else {
                    widen * 0.6
                };
                let c = w.columns();
                rows.push(CurveRow {
                    run: id.clone(),
                    model: run.model.into(),
                    lr: run.lr,
                    seed: run.seed,
                    weights: w.label(),
                    strategy: c.strategy.unwrap_or(Strategy::Raw),
                    k: c.k,
                    nu: c.nu,
                    decay: c.decay,
                    start: c.start,
                    every: c.every,
                    step,
                    tokens: step * 4096,
                    val_loss: val,
                    val_loss_se: Some(0.01),
                    gain_se: (!matches!(w, Weights::Raw)).then_some(0.004),
                    train_loss: train_loss.then_some(val - 0.02 - gap),
                    wall_time_s: step as f64 * 0.1,
                });
            }
        }
    }
    String::from_utf8(to_csv(&rows).unwrap()).unwrap()
}

fn full_runs() -> Vec<Run> {
    let mut runs = Vec::new();
    for lr in [6e-4, 3e-3, 6e-3] {
        for seed in [0, 1] {
            let last = if lr == 6e-3 && seed == 1 { 550 } else { STEPS };
            runs.push(Run {
                model: "tiny",
                lr,
                seed,
                last,
            });
        }
    }
    runs
}

fn write_sweep(dir: &Path, curves: &str, summary: Option<&str>) -> PathBuf {
    let results = dir.join("results").join("synthetic");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("curves.csv"), curves).unwrap();
    if let Some(summary) = summary {
        std::fs::write(results.join("summary.csv"), summary).unwrap();
    }
    results
}

/// summary.csv rows for the raw weights of each run (enough to say which diverged).
fn summary_csv(runs: &[Run]) -> String {
    let rows: Vec<SummaryRow> = runs
        .iter()
        .map(|run| {
            let last = raw_loss(run.last, run.lr, run.seed);
            SummaryRow {
                run: format!("{}-lr{}-s{}", run.model, run.lr, run.seed),
                model: run.model.into(),
                lr: run.lr,
                seed: run.seed,
                weights: "raw".into(),
                strategy: Strategy::Raw,
                final_step: run.last,
                final_val_loss: last,
                best_val_loss: last,
                gain_over_raw: Some(0.0),
                steps_to_raw_final: Some(run.last),
                steps_saved: Some(0),
                diverged: run.last < STEPS,
                ..SummaryRow::default()
            }
        })
        .collect();
    String::from_utf8(to_csv(&rows).unwrap()).unwrap()
}

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!(
        (info.width, info.height),
        (WIDTH, HEIGHT),
        "{}",
        path.display()
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn renders_every_figure_of_a_full_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let runs = full_runs();
    let results = write_sweep(
        dir.path(),
        &curves_csv(&runs, &all_weights(), true),
        Some(&summary_csv(&runs)),
    );
    let written = run(&FiguresArgs {
        results: results.clone(),
    })
    .unwrap();
    let expected = [
        "loss_raw_vs_lawa",
        "lr_comparison",
        "lawa_gain_vs_step",
        "gain_vs_k",
        "gain_vs_nu",
        "baselines",
        "baselines_lr6e-4",
        "baselines_lr3e-3",
        "steps_saved",
        "generalization_gap",
    ];
    let figures = results.join(FIGURES_DIR);
    let mut wanted: Vec<String> = expected
        .iter()
        .flat_map(|n| [format!("{n}.png"), format!("{n}.svg")])
        .collect();
    wanted.sort();
    assert_eq!(
        names_in(&figures),
        wanted,
        "no temporary files left, nothing else"
    );
    assert_eq!(written.len(), wanted.len());
    for name in expected {
        check_png(&figures.join(format!("{name}.png")));
        let svg = std::fs::read_to_string(figures.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{name}");
        assert!(
            svg.contains("font-family=\"sans-serif\""),
            "{name}: generic font family"
        );
        if name != "steps_saved" && !name.starts_with("gain_vs") {
            assert!(svg.contains("optimizer step"), "{name}: x axis label");
        }
    }
    let svg = |name: &str| std::fs::read_to_string(figures.join(format!("{name}.svg"))).unwrap();
    let loss = svg("loss_raw_vs_lawa");
    for text in [
        "validation loss (nats)",
        "raw, lr 6e-4",
        "raw, lr 6e-3",
        "LAWA k=10, ν=50, lr 3e-3",
        "thin lines: lr 6e-3, seed 1 (diverged)",
        "mean of 2 seeds",
    ] {
        assert!(loss.contains(text), "loss_raw_vs_lawa lacks {text:?}");
    }
    let lr = svg("lr_comparison");
    assert!(lr.contains("raw, lr 6e-4") && lr.contains("LAWA k=10, ν=50, lr 6e-3"));
    assert!(!lr.contains("lr 3e-3"), "only the lowest and highest lr");
    let base = svg("baselines");
    for text in [
        "raw",
        "LAWA k=10, ν=50",
        "EMA 0.99",
        "EMA 0.9 (warm-up)",
        "SWA from 5% (early)",
        "SWA from 75% (late)",
        "lr 6e-3",
    ] {
        assert!(base.contains(text), "baselines lacks {text:?}");
    }
    let k = svg("gain_vs_k");
    assert!(k.contains("LAWA window k") && k.contains("lr 6e-4, ν=50") && k.contains("step 500"));
    let nu = svg("gain_vs_nu");
    assert!(nu.contains("LAWA spacing ν") && nu.contains("lr 6e-3, k=5"));
    let gain = svg("lawa_gain_vs_step");
    assert!(gain.contains("raw − LAWA validation loss (nats)"));
    let saved = svg("steps_saved");
    assert!(saved.contains("SWA from 75%"));
    let spacing = format!("optimizer steps saved, read at evaluations {EVERY} steps apart");
    assert!(saved.contains(&spacing), "steps_saved lacks {spacing:?}");
    let gap = svg("generalization_gap");
    assert!(gap.contains("train − validation loss (nats)"));
}

#[test]
fn best_config_and_steps_saved_on_the_synthetic_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let runs = full_runs();
    let results = write_sweep(dir.path(), &curves_csv(&runs, &all_weights(), true), None);
    let rows: Vec<CurveRow> = read_rows(&results.join("curves.csv")).unwrap();
    let sweep = Sweep::from_rows(&rows, None);
    // k * nu = 500 and 250 saturate the synthetic gain; the largest window-spacing wins.
    assert_eq!(sweep.best_lawa("tiny").as_deref(), Some("lawa_k10_nu50"));
    // Without summary.csv the short run is "stopped", not known to have diverged.
    let stopped: Vec<String> = sweep
        .runs
        .iter()
        .filter(|r| r.end != lawa_experiments::figures::sweep::RunEnd::Finished)
        .map(|r| r.end_note())
        .collect();
    assert_eq!(stopped, [", seed 1 (stopped at step 550)"]);
    // Raw mean at lr 6e-4 ends at step 1000; the mean of the raw curve itself saves 0 steps.
    let raw = sweep.mean("tiny", 6e-4, "raw").unwrap().pairs();
    assert_eq!(raw.last().unwrap().0, 1000);
    assert_eq!(
        lawa_experiments::results::metrics::steps_saved(&raw, &raw),
        Some(0)
    );
}

#[test]
fn partial_sweep_draws_what_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [Run {
        model: "tiny",
        lr: 3e-3,
        seed: 0,
        last: STEPS,
    }];
    let weights = [Weights::Raw, Weights::Lawa { k: 5, nu: 50 }];
    let results = write_sweep(dir.path(), &curves_csv(&runs, &weights, false), None);
    let written = render_all(&results).unwrap();
    let names = names_in(&results.join(FIGURES_DIR));
    assert_eq!(
        names,
        [
            "lawa_gain_vs_step.png",
            "lawa_gain_vs_step.svg",
            "loss_raw_vs_lawa.png",
            "loss_raw_vs_lawa.svg",
            "steps_saved.png",
            "steps_saved.svg",
        ]
    );
    assert_eq!(written.len(), 6);

    // Raw weights only: nothing can be compared; no error, no folder.
    let dir = tempfile::tempdir().unwrap();
    let results = write_sweep(dir.path(), &curves_csv(&runs, &[Weights::Raw], true), None);
    assert!(render_all(&results).unwrap().is_empty());
    assert!(!results.join(FIGURES_DIR).exists());

    // Header only.
    let dir = tempfile::tempdir().unwrap();
    let results = write_sweep(dir.path(), &format!("{}\n", curves_header()), None);
    assert!(render_all(&results).unwrap().is_empty());
    assert!(!results.join(FIGURES_DIR).exists());
}

#[test]
fn several_models_get_one_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        Run {
            model: "tiny",
            lr: 6e-3,
            seed: 0,
            last: STEPS,
        },
        Run {
            model: "small",
            lr: 6e-3,
            seed: 0,
            last: STEPS,
        },
    ];
    let weights = [Weights::Raw, Weights::Lawa { k: 5, nu: 50 }];
    let results = write_sweep(dir.path(), &curves_csv(&runs, &weights, false), None);
    render_all(&results).unwrap();
    let names = names_in(&results.join(FIGURES_DIR));
    for name in ["loss_raw_vs_lawa_tiny.png", "loss_raw_vs_lawa_small.svg"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "loss_raw_vs_lawa.png"));
}

#[test]
fn bad_input_is_one_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("results").join("nope");
    let err = render_all(&missing).unwrap_err().to_string();
    assert!(err.contains("nope: results folder not found"), "{err}");

    let results = dir.path().join("results").join("empty");
    std::fs::create_dir_all(&results).unwrap();
    let err = render_all(&results).unwrap_err().to_string();
    assert!(err.contains("curves.csv: not found"), "{err}");
    assert!(!results.join(FIGURES_DIR).exists());

    let runs = full_runs();
    let good = curves_csv(&runs, &all_weights(), true);
    let wrong_header = good.replacen("val_loss", "loss", 1);
    let results = write_sweep(dir.path(), &wrong_header, None);
    let err = render_all(&results).unwrap_err().to_string();
    assert!(err.contains("curves.csv:1: wrong header"), "{err}");
    assert!(!results.join(FIGURES_DIR).exists());

    // Line 5 gets an unparsable validation loss.
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let mut fields: Vec<String> = lines[4].split(',').map(String::from).collect();
    fields[13] = "3.1.4".into();
    lines[4] = fields.join(",");
    let results = write_sweep(dir.path(), &(lines.join("\n") + "\n"), None);
    let err = render_all(&results).unwrap_err().to_string();
    assert!(
        err.contains("curves.csv:5: column 14 (val_loss): cannot parse \"3.1.4\""),
        "{err}"
    );
    assert!(!results.join(FIGURES_DIR).exists());

    // A bad summary.csv is an error too, before anything is drawn.
    let results = write_sweep(dir.path(), &good, Some("run,model\n"));
    let err = render_all(&results).unwrap_err().to_string();
    assert!(err.contains("summary.csv:1: wrong header"), "{err}");
    assert!(!results.join(FIGURES_DIR).exists());
}

#[test]
fn gain_figures_draw_bands_of_one_standard_error() {
    let dir = tempfile::tempdir().unwrap();
    let runs = full_runs();
    let results = write_sweep(dir.path(), &curves_csv(&runs, &all_weights(), true), None);
    let rows: Vec<CurveRow> = read_rows(&results.join("curves.csv")).unwrap();
    let sweep = Sweep::from_rows(&rows, None);
    let mut checked = 0;
    for outcome in lawa_experiments::figures::build_all(&sweep) {
        let lawa_experiments::figures::Outcome::Drawn(figure) = outcome else {
            continue;
        };
        if !["lawa_gain_vs_step", "gain_vs_k", "gain_vs_nu"].contains(&figure.name.as_str()) {
            continue;
        }
        for series in figure.panels.iter().flat_map(|p| &p.series) {
            if series.points.is_empty() || series.outlier {
                continue;
            }
            assert_eq!(series.band.len(), series.points.len(), "{}", figure.name);
            for (&(x, y), &(bx, lo, hi)) in series.points.iter().zip(&series.band) {
                assert_eq!(x, bx);
                // The synthetic gain is the same for every seed: the error is the windows'
                // paired SE, 0.004, on either side of the mean.
                assert!((y - lo - 0.004).abs() < 1e-9 && (hi - y - 0.004).abs() < 1e-9);
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} gain series with bands");
}
