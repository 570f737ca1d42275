//! `lawa figures <results/NAME>`: regenerate every figure of a sweep from its CSVs alone.

use std::path::PathBuf;

use anyhow::Result;

/// The results folder to draw.
#[derive(Debug, Clone, clap::Args)]
pub struct FiguresArgs {
    /// A sweep's results folder, holding curves.csv (and summary.csv when the sweep wrote one);
    /// figures go to its figures/ folder.
    pub results: PathBuf,
}

/// Runs `lawa figures`: returns the PNG and SVG files written.
pub fn run(args: &FiguresArgs) -> Result<Vec<PathBuf>> {
    let written = crate::figures::render_all(&args.results)?;
    tracing::info!(
        "{} figures written to {}",
        written.len() / 2,
        args.results.join(crate::figures::FIGURES_DIR).display()
    );
    Ok(written)
}
