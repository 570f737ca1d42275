//! `summary.csv`: per run and set of weights, the final and best validation loss, the gain over
//! the raw weights, and the steps needed to reach the raw run's final loss.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::train::curves::{step_of, HEADER};

/// The header of `summary.csv`.
pub const SUMMARY_HEADER: &str = "run,model,lr,seed,weights,strategy,k,nu,decay,start,every,final_step,final_val_loss,best_val_loss,gain_over_raw,steps_to_raw_final,steps_saved,diverged";

#[derive(Debug, Clone)]
struct Point {
    step: u64,
    val: f64,
}

/// Builds summary.csv's text from the lines of a sweep's curves.csv (header included) and the
/// ids of the runs that diverged.
pub fn summarize(curves: &str, diverged: &[String]) -> Result<String> {
    let mut lines = curves.lines();
    match lines.next() {
        Some(h) if h == HEADER => {}
        other => bail!("curves.csv: unexpected header {other:?}"),
    }
    // (run, weights) -> (first 11 columns, points), in first-seen order.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut series: BTreeMap<(String, String), (String, Vec<Point>)> = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 16 {
            bail!(
                "curves.csv line {}: {} columns, expected 16",
                i + 2,
                cols.len()
            );
        }
        let step =
            step_of(line).ok_or_else(|| anyhow::anyhow!("curves.csv line {}: bad step", i + 2))?;
        let val: f64 = cols[13].parse().map_err(|_| {
            anyhow::anyhow!("curves.csv line {}: bad val_loss {:?}", i + 2, cols[13])
        })?;
        let key = (cols[0].to_string(), cols[4].to_string());
        if !series.contains_key(&key) {
            order.push(key.clone());
        }
        series
            .entry(key)
            .or_insert_with(|| (cols[..11].join(","), Vec::new()))
            .1
            .push(Point { step, val });
    }
    let mut out = String::from(SUMMARY_HEADER);
    out.push('\n');
    for key in &order {
        let (prefix, points) = &series[key];
        let raw = &series[&(key.0.clone(), "raw".to_string())].1;
        let Some(raw_last) = raw.last() else { continue };
        let Some(last) = points.last() else { continue };
        let best = points.iter().map(|p| p.val).fold(f64::INFINITY, f64::min);
        let gain = raw
            .iter()
            .find(|p| p.step == last.step)
            .map(|r| format!("{:.6}", r.val - last.val))
            .unwrap_or_default();
        let reach = points
            .iter()
            .find(|p| p.val <= raw_last.val)
            .map(|p| p.step);
        let saved = reach
            .map(|s| (raw_last.step as i64 - s as i64).to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{prefix},{},{:.6},{:.6},{gain},{},{saved},{}\n",
            last.step,
            last.val,
            best,
            reach.map(|s| s.to_string()).unwrap_or_default(),
            diverged.contains(&key.0)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gains_and_steps_saved_by_hand() {
        let row = |w: &str, s: &str, step: u64, val: f64| {
            format!("r,tiny,0.01,0,{w},{s},,,,,,{step},{},{val},,1.0", step * 10)
        };
        let curves = [
            HEADER.to_string(),
            row("raw", "raw", 0, 9.0),
            row("raw", "raw", 10, 5.0),
            row("lawa_k2_nu5", "lawa", 10, 4.5),
            row("raw", "raw", 20, 4.0),
            row("lawa_k2_nu5", "lawa", 20, 3.5),
        ]
        .join("\n");
        let s = summarize(&curves, &["r".to_string()]).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], SUMMARY_HEADER);
        assert_eq!(
            lines[1],
            "r,tiny,0.01,0,raw,raw,,,,,,20,4.000000,4.000000,0.000000,20,0,true"
        );
        // LAWA: 0.5 below raw at step 20; reaches raw's final 4.0 at step 20 (4.5 > 4.0 at 10).
        assert_eq!(
            lines[2],
            "r,tiny,0.01,0,lawa_k2_nu5,lawa,,,,,,20,3.500000,3.500000,0.500000,20,0,true"
        );
    }
}
