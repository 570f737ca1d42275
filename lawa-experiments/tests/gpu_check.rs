//! The GPU check's dry run (`scripts/gpu-check.sh --cpu`): every section of the check that runs
//! on a GPU machine, at toy sizes on the CPU with the bootstrap's PyTorch as the reference, so the
//! script, the benchmarks it calls and the report it writes cannot rot between GPU sessions.
//! The CUDA path itself is not exercised here (no GPU); `tch::Cuda::is_available()` says which.

use std::path::Path;
use std::process::Command;

/// The paths in the gzipped tarball `path`, one a line.
fn tar_listing(path: &Path) -> String {
    let out = Command::new("tar").arg("-tzf").arg(path).output().unwrap();
    assert!(out.status.success(), "tar -tzf {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dry_run_passes_every_section_and_reports_real_figures() {
    if tch::Cuda::is_available() {
        eprintln!("a GPU is present: the dry run still runs on the CPU");
    }
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .args(["--cpu", "--lawa", env!("CARGO_BIN_EXE_lawa"), "--out"])
        .arg(out.path())
        .env("LAWA_LOG", "warn")
        .status()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let names: Vec<&str> = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // In the order they ran.
    assert_eq!(
        names,
        [
            "env",
            "parity_bf16",
            "kernels",
            "cuda_graph",
            "averaging",
            "speed_small",
            "sweep",
            "data_parallel",
            "parity_f32",
            "speed_small_options",
            "speed_medium",
            "speed_large"
        ]
    );
    for s in report["sections"].as_array().unwrap() {
        assert_eq!(s["status"], "passed", "{s}");
    }
    assert!(status.success());
    assert_eq!(report["passed"], true);

    let f = &report["figures"];
    // fp32: lawa and transformers agree to float rounding at every step.
    let f32 = &f["parity_f32"];
    assert_eq!(f32["lawa"].as_array().unwrap().len(), 6);
    assert!(f32["max_abs_diff"].as_f64().unwrap() <= 1e-5, "{f32}");
    // The losses are real training losses: they start near ln(512) and fall.
    let losses: Vec<f64> = serde_json::from_value(f32["lawa"].clone()).unwrap();
    assert!((losses[0] - 512f64.ln()).abs() < 0.1, "{losses:?}");
    assert!(losses[5] < losses[0], "{losses:?}");
    let bf16 = &f["parity_bf16"];
    assert!(bf16["max_abs_diff"].as_f64().unwrap() <= bf16["tolerance"].as_f64().unwrap());
    assert!(
        bf16["max_abs_diff"].as_f64().unwrap() > 0.0,
        "bf16 cannot be exact: {bf16}"
    );
    for speed in ["speed_small", "speed_medium", "speed_large"] {
        let s = &f[speed];
        assert!(s["lawa"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["eager"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{s}");
    }
    assert_eq!(f["speed_small"]["accumulation"], 2);
    // lawa alone with its speed options, each under its own name.
    let chunked = &f["speed_small_chunked_loss"];
    assert_eq!(chunked["loss_chunk"], 64, "{chunked}");
    assert!(chunked["lawa"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(chunked.get("eager").is_none(), "{chunked}");
    assert_eq!(f["speed_small_fused_adamw"]["adamw_kernel"], "fused");
    // lawa's own kernels: parity with transformers as parity_bf16 runs it, and timed with the
    // cross-entropy kernels, with both (profiled), and with both and the fused AdamW.
    let fused = &f["parity_bf16_fused"];
    assert_eq!(fused["passed"], true, "{fused}");
    assert_eq!(fused["lawa"].as_array().unwrap().len(), 6);
    assert_eq!(fused["reference"], f["parity_bf16"]["reference"]);
    let kernels = |name: &str| {
        let s = &f[name];
        assert!(s["lawa"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{s}");
        [
            &s["loss_kernel"],
            &s["norm_kernel"],
            &s["linear_kernel"],
            &s["adamw_kernel"],
        ]
        .map(|v| v.as_str().unwrap().to_owned())
    };
    assert_eq!(
        kernels("speed_small_fused_loss"),
        ["fused", "aten", "aten", "auto"]
    );
    assert_eq!(
        kernels("speed_small_fused"),
        ["fused", "fused", "fused", "auto"]
    );
    assert_eq!(
        kernels("speed_small_fused_all"),
        ["fused", "fused", "fused", "fused"]
    );
    // CUDA graphs: the option is refused on the CPU, naming the reason.
    assert_eq!(f["cuda_graph"]["refused_on_cpu"], true);
    let profile = &f["speed_small_fused"]["profile"]["lawa"];
    assert!(profile["busy_ms_per_step"].as_f64().unwrap() > 0.0);
    // The reference's own spread (run again, with lawa's weight layout, with that and lawa's
    // padded head, with math attention) was measured in both precisions, and sets the tolerance
    // when twice its largest is larger than the fixed one. On the CPU the reference run again
    // is the same run, bit for bit.
    for (p, fixed) in [(bf16, 2e-2), (f32, 1e-5)] {
        let spread = |key: &str| p[format!("reference_spread_{key}")].as_f64().unwrap();
        assert_eq!(spread("again"), 0.0, "{p}");
        let largest = ["linear_layout", "padded_head", "math_attention"]
            .map(spread)
            .into_iter()
            .fold(0.0, f64::max);
        assert_eq!(p["reference_spread"].as_f64().unwrap(), largest);
        assert_eq!(
            p["tolerance"].as_f64().unwrap(),
            (2.0 * largest).max(fixed),
            "{p}"
        );
    }
    assert!(bf16["reference_spread"].as_f64().unwrap() > 0.0, "{bf16}");
    // PyTorch with its weights laid out as lawa's ([out, in]) and its gradients clipped in
    // lawa's order trains as lawa does, bit for bit, at every step and in both precisions
    // (with lawa's padded head too: none at this vocabulary), where transformers' own layout
    // differs in bf16 from the second step on.
    for p in [bf16, f32] {
        let losses = |key: &str| -> Vec<f64> { serde_json::from_value(p[key].clone()).unwrap() };
        assert_eq!(losses("reference_linear_layout"), losses("lawa"), "{p}");
        assert_eq!(losses("reference_padded_head"), losses("lawa"), "{p}");
    }
    assert!(bf16["reference_spread_linear_layout"].as_f64().unwrap() > 0.0);
    // The profiled steps: lawa's and eager's, each with a busy time inside its wall time and
    // the matmuls among the largest operators.
    for which in ["lawa", "eager"] {
        let p = &f["speed_small"]["profile"][which];
        let wall = p["wall_ms_per_step"].as_f64().unwrap();
        let busy = p["busy_ms_per_step"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= wall * 1.01, "{p}");
        let names: Vec<&str> = p["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"aten::mm"), "{which}: {names:?}");
    }
    assert_eq!(f["speed_large"]["model"]["n_layer"], 4);
    // Medium and large again, lawa alone with every speed option.
    for (name, layers) in [("speed_medium_all", 3), ("speed_large_all", 4)] {
        let s = &f[name];
        assert_eq!(s["model"]["n_layer"], layers, "{s}");
        assert_eq!(s["adamw_kernel"], "fused", "{s}");
        assert!(s["lawa"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s.get("eager").is_none(), "{s}");
    }
    // On the CPU an EMA or a LAWA in host memory is the same update as one on the device.
    assert_eq!(f["averaging"]["host_vs_device_ema_max_difference"], 0.0);
    assert_eq!(f["averaging"]["host_vs_device_lawa_max_difference"], 0.0);
    let rows = f["averaging"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 15);
    // What an EMA after every step and LAWA's snapshots add to a step, in each storage, with
    // their range.
    let added: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["operation"].as_str().unwrap().contains("added to a step"))
        .collect();
    assert_eq!(added.len(), 4, "{rows:?}");
    for r in added {
        let range = r["range_ms"].as_array().unwrap();
        let ms = r["ms"].as_f64().unwrap();
        assert!(
            range[0].as_f64().unwrap() <= ms && ms <= range[1].as_f64().unwrap(),
            "{r}"
        );
    }
    assert!(f["averaging"]["pytorch"]["ms"].as_f64().unwrap() > 0.0);
    // A process group of one (Gloo here, NCCL on a GPU) trains as the lone process does.
    let dp = &f["data_parallel"];
    assert_eq!(dp["backend"], "Gloo", "{dp}");
    assert!(
        dp["max_val_loss_difference"].as_f64().unwrap() < 1e-4,
        "{dp}"
    );

    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.starts_with("# lawa GPU check (CPU dry run): passed"),
        "{md}"
    );
    assert!(md.contains("EMA in host memory vs on the device"), "{md}");
    for part in [
        "### parity_f32",
        "### parity_bf16",
        "| PyTorch eager |",
        "## Averaging cost",
        "## Where a step's time goes (profiler)",
        "math attention",
        "| again | nn.Linear layout | and padded head | math attention |",
        "PyTorch eager (speed_large's)",
        "small_chunked_loss",
        "AdamW fused",
        "### parity_bf16_fused",
        "loss kernel fused, norm kernel fused",
        "PyTorch eager (speed_small's)",
        "CUDA graphs: refused on the CPU",
    ] {
        assert!(md.contains(part), "{part} missing from {md}");
    }
    let listing = tar_listing(&out.path().join("sweep.tar.gz"));
    for file in [
        "gpu-check/curves.csv",
        "gpu-check/summary.csv",
        "gpu-check/figures/lr_comparison.png",
    ] {
        assert!(listing.contains(file), "{file} missing from {listing}");
    }
    assert!(!listing.contains("runs/"), "{listing}");
    let listing = tar_listing(&out.path().join("profiles.tar.gz"));
    for file in [
        "profile/lawa.tsv",
        "profile/eager.tsv",
        "profile/fused/lawa.tsv",
    ] {
        assert!(listing.contains(file), "{file} missing from {listing}");
    }
}

/// The check's report when it cannot run: a spent budget skips sections (still reported), and a
/// missing binary gives a report that says so, so that a GPU session never ends with nothing.
#[test]
fn a_spent_budget_or_a_missing_binary_still_leaves_a_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let check = |lawa: &str, budget: &str, out: &Path| {
        Command::new("bash")
            .arg(root.join("scripts/gpu-check.sh"))
            .args(["--cpu", "--lawa", lawa, "--out"])
            .arg(out)
            .env("GPU_CHECK_BUDGET", budget)
            .output() // the failing report it prints is this test's subject, not its failure
            .unwrap()
            .status
    };
    let out = tempfile::tempdir().unwrap();
    // 25 s of budget leaves under 20 s for the first section once 12 s are kept for the report.
    let status = check(env!("CARGO_BIN_EXE_lawa"), "25", out.path());
    assert_eq!(status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["passed"], false);
    let sections = report["sections"].as_array().unwrap();
    assert_eq!(sections.len(), 12, "{report}");
    for s in sections {
        assert_eq!(s["status"], "skipped: 25 s budget spent", "{s}");
    }

    let out = tempfile::tempdir().unwrap();
    let status = check("/nonexistent/lawa", "100", out.path());
    assert_eq!(status.code(), Some(2));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("no lawa binary at /nonexistent/lawa"), "{md}");
    let report = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["passed"], false);
}

/// A check whose budget ran out before its last sections passes when every section that ran
/// passed, and names the skipped ones; a failed section fails it, skipped sections or not.
#[test]
fn skipped_sections_are_named_apart_from_failed_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = std::env::var("LAWA_PYTHON").expect("LAWA_PYTHON (cargo config)");
    let report = |statuses: &[(&str, &str)]| {
        let work = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join("status")).unwrap();
        for (i, (name, status)) in statuses.iter().enumerate() {
            let line = serde_json::json!({"name": name, "status": status, "exit": 0, "seconds": 1});
            let file = work.path().join(format!("status/{i:02}-{name}.json"));
            std::fs::write(file, line.to_string()).unwrap();
        }
        let run = Command::new(&python)
            .arg(root.join("scripts/gpu_check_report.py"))
            .args([work.path(), out.path()])
            .arg("gpu")
            .output()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
                .unwrap();
        let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
        (run.status.code(), json, md)
    };
    let spent = "skipped: 420 s budget spent";
    let (code, json, md) = report(&[
        ("env", "passed"),
        ("kernels", "passed"),
        ("speed_medium", spent),
        ("speed_large", spent),
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(json["passed"], true);
    assert_eq!(
        json["skipped"],
        serde_json::json!(["speed_medium", "speed_large"])
    );
    assert!(
        md.starts_with("# lawa GPU check (GPU): passed (2 skipped: speed_medium, speed_large)"),
        "{md}"
    );
    let (code, json, md) = report(&[
        ("env", "passed"),
        ("kernels", "failed"),
        ("speed_large", spent),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(json["passed"], false);
    assert!(
        md.starts_with("# lawa GPU check (GPU): FAILED (1 skipped: speed_large)"),
        "{md}"
    );
    let (code, json, _) = report(&[("env", spent)]);
    assert_eq!(code, Some(1), "nothing ran: not a pass");
    assert_eq!(json["passed"], false);
}
