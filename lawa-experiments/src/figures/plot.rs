//! Shared chart styling and drawing: a [`Figure`] of line/dot panels with one legend on the
//! right, rendered to PNG and SVG with the same layout. Text uses DejaVu Sans, embedded in the
//! binary, so PNGs look the same on any machine; SVGs name the generic `sans-serif` family.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// Width of every figure, pixels.
pub const WIDTH: u32 = 1600;
/// Height of every figure, pixels.
pub const HEIGHT: u32 = 1000;
/// The font family name text is drawn with (registered with the embedded DejaVu Sans).
pub const FONT: &str = "sans-serif";

const TITLE_SIZE: f64 = 34.0;
const TITLE_HEIGHT: u32 = 76;
const PANEL_TITLE_SIZE: f64 = 28.0;
const AXIS_DESC_SIZE: f64 = 28.0;
const TICK_SIZE: f64 = 22.0;
const LEGEND_SIZE: f64 = 22.0;

/// How a line is stroked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dash {
    /// A continuous line.
    Solid,
    /// Long dashes.
    Dashed,
    /// Short dots.
    Dotted,
}

/// One line (and/or set of markers) with its legend entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text (entries with the same text are shown once).
    pub label: String,
    /// Colour.
    pub color: RGBColor,
    /// Stroke pattern.
    pub dash: Dash,
    /// Stroke width, pixels.
    pub width: u32,
    /// (x, y) points, in x order for lines.
    pub points: Vec<(f64, f64)>,
    /// Optional shaded band: (x, low, high).
    pub band: Vec<(f64, f64, f64)>,
    /// Draw a marker at each point.
    pub markers: bool,
    /// Join the points with a line.
    pub line: bool,
    /// Leave this series out when choosing the y range (it is clipped instead), e.g. a
    /// diverging run.
    pub outlier: bool,
}

impl Series {
    /// A solid line of width 4 without markers.
    pub fn line(label: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            color,
            dash: Dash::Solid,
            width: 4,
            points,
            band: Vec::new(),
            markers: false,
            line: true,
            outlier: false,
        }
    }

    /// The same series with another stroke pattern.
    pub fn dashed(mut self, dash: Dash) -> Series {
        self.dash = dash;
        self
    }
}

/// One chart: axes, series, optional zero line and categorical y axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Title above the panel (for figures with several panels).
    pub title: Option<String>,
    /// X axis label, with units.
    pub x_label: String,
    /// Y axis label, with units.
    pub y_label: String,
    /// What to draw.
    pub series: Vec<Series>,
    /// Draw a line at 0 and include 0 in the range: horizontal (y = 0), or vertical (x = 0)
    /// on a categorical y axis.
    pub zero_line: bool,
    /// When set, y values are indices into these names (a dot chart).
    pub y_categories: Option<Vec<String>>,
    /// Choose the y range from points past this fraction of the x span, so an early spike
    /// (the first steps of training) does not flatten the rest; the spike is clipped, unless
    /// showing it stretches the axis by at most a half (see [`SPIKE_SHOWN`]).
    pub y_from_x_fraction: f64,
    /// Leave this margin, as a fraction of the x span, on each side (for markers).
    pub x_pad: f64,
}

impl Panel {
    /// A panel of curves against optimizer steps.
    pub fn steps(y_label: impl Into<String>, series: Vec<Series>) -> Panel {
        Panel {
            title: None,
            x_label: "optimizer step".into(),
            y_label: y_label.into(),
            series,
            zero_line: false,
            y_categories: None,
            y_from_x_fraction: 0.2,
            x_pad: 0.0,
        }
    }
}

/// A figure: a title, panels side by side and one legend for all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File name without extension.
    pub name: String,
    /// Title at the top.
    pub title: String,
    /// The panels, left to right.
    pub panels: Vec<Panel>,
}

/// Colours for `n` ordered things (learning rates, low to high): cool to warm.
pub fn ordered_color(i: usize, n: usize) -> RGBColor {
    const BLUE: RGBColor = RGBColor(31, 119, 180);
    const GREEN: RGBColor = RGBColor(44, 160, 44);
    const ORANGE: RGBColor = RGBColor(255, 127, 14);
    const RED: RGBColor = RGBColor(214, 39, 40);
    const MANY: [RGBColor; 10] = [
        BLUE,
        RGBColor(23, 190, 207),
        GREEN,
        RGBColor(188, 189, 34),
        ORANGE,
        RED,
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    match n {
        0 | 1 => BLUE,
        2 => [BLUE, RED][i.min(1)],
        3 => [BLUE, GREEN, RED][i.min(2)],
        4 => [BLUE, GREEN, ORANGE, RED][i.min(3)],
        _ => MANY[i % MANY.len()],
    }
}

/// Distinct colours for unordered things (strategies), skipping black (kept for raw weights).
pub fn category_color(i: usize) -> RGBColor {
    // Matplotlib's tab10 without its grey, then darker shades: 12 before one repeats (a full
    // LAWA grid of 3 x 3 plus EMA and SWA fits).
    const COLORS: [RGBColor; 12] = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
        RGBColor(188, 189, 34),
        RGBColor(0, 0, 128),
        RGBColor(128, 0, 0),
        RGBColor(0, 100, 0),
    ];
    COLORS[i % COLORS.len()]
}

/// A learning rate written short: 0.006 -> "6e-3", 0.0015 -> "1.5e-3".
pub fn format_lr(lr: f64) -> String {
    if lr <= 0.0 || !lr.is_finite() {
        return format!("{lr}");
    }
    let exponent = lr.log10().floor() as i32;
    let mantissa = lr / 10f64.powi(exponent);
    let mut text = format!("{mantissa:.2}");
    while text.ends_with('0') {
        text.pop();
    }
    if text.ends_with('.') {
        text.pop();
    }
    if text == "10" {
        return format!("1e{}", exponent + 1);
    }
    format!("{text}e{exponent}")
}

/// About `target` evenly spaced round tick values (1, 2 or 5 times a power of ten) covering
/// `[lo, hi]`.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let step = tick_step(lo, hi, target);
    let (first, last) = ((lo / step).ceil(), (hi / step).floor());
    if !(step > 0.0 && first.is_finite() && last.is_finite()) || last - first > 100.0 {
        return vec![lo, hi];
    }
    (first as i64..=last as i64)
        .map(|i| i as f64 * step)
        .collect()
}

fn tick_step(lo: f64, hi: f64, target: usize) -> f64 {
    let raw = (hi - lo) / target.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let factor = raw / power;
    let nice = if factor < 1.5 {
        1.0
    } else if factor < 3.0 {
        2.0
    } else if factor < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// A linear axis from `lo` to `hi` with its tick positions chosen by us (the labels are
/// formatted by the mesh's formatter).
#[derive(Debug, Clone, PartialEq)]
pub struct TickAxis {
    /// Lowest value shown.
    pub lo: f64,
    /// Highest value shown.
    pub hi: f64,
    /// Where ticks and grid lines go.
    pub ticks: Vec<f64>,
}

impl Ranged for TickAxis {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        let t = if span > 0.0 {
            (value - self.lo) / span
        } else {
            0.5
        };
        let t = if t.is_finite() {
            t.clamp(-10.0, 10.0)
        } else {
            0.0
        };
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// A tick label for `value` on an axis whose ticks are `step` apart: thousands as "12k" on
/// axes reaching 10,000, otherwise as many decimals as the step needs.
pub fn format_tick(value: f64, step: f64, axis_max: f64) -> String {
    if axis_max.abs() >= 10_000.0 && step >= 1000.0 {
        let decimals = decimals_for(step / 1000.0);
        return format!("{:.*}k", decimals, value / 1000.0);
    }
    let text = format!("{:.*}", decimals_for(step), value);
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text[1..].to_owned()
    } else {
        text
    }
}

fn decimals_for(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(6)
}

/// Splits a polyline into the parts inside `[x0, x1] x [y0, y1]`, cutting segments at the
/// border (Liang–Barsky), so lines leave the plot where they cross its edge.
pub fn clip_polyline(points: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut parts: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let inside = |p: (f64, f64)| p.0 >= x.0 && p.0 <= x.1 && p.1 >= y.0 && p.1 <= y.1;
    if points.len() == 1 && inside(points[0]) {
        return vec![points.to_vec()];
    }
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        match clip_segment(a, b, x, y) {
            Some((ca, cb)) => {
                if current.last() != Some(&ca) {
                    if !current.is_empty() {
                        parts.push(std::mem::take(&mut current));
                    }
                    current.push(ca);
                }
                current.push(cb);
                if cb != b {
                    parts.push(std::mem::take(&mut current));
                }
            }
            None => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// Clips a polygon to the rectangle `[x0, x1] x [y0, y1]` (Sutherland–Hodgman).
pub fn clip_polygon(points: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) -> Vec<(f64, f64)> {
    type Inside = fn((f64, f64), f64) -> bool;
    type Cut = fn((f64, f64), (f64, f64), f64) -> (f64, f64);
    let at_x: Cut = |a, b, v| (v, a.1 + (b.1 - a.1) * (v - a.0) / (b.0 - a.0));
    let at_y: Cut = |a, b, v| (a.0 + (b.0 - a.0) * (v - a.1) / (b.1 - a.1), v);
    let edges: [(Inside, Cut, f64); 4] = [
        (|p, v| p.0 >= v, at_x, x.0),
        (|p, v| p.0 <= v, at_x, x.1),
        (|p, v| p.1 >= v, at_y, y.0),
        (|p, v| p.1 <= v, at_y, y.1),
    ];
    let mut poly = points.to_vec();
    for (inside, cut, v) in edges {
        let Some(&last) = poly.last() else {
            break;
        };
        let mut out = Vec::with_capacity(poly.len() + 4);
        let mut prev = last;
        for &p in &poly {
            match (inside(p, v), inside(prev, v)) {
                (true, true) => out.push(p),
                (true, false) => {
                    out.push(cut(prev, p, v));
                    out.push(p);
                }
                (false, true) => out.push(cut(prev, p, v)),
                (false, false) => {}
            }
            prev = p;
        }
        poly = out;
    }
    poly
}

type Segment = ((f64, f64), (f64, f64));

fn clip_segment(a: (f64, f64), b: (f64, f64), x: (f64, f64), y: (f64, f64)) -> Option<Segment> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - x.0),
        (dx, x.1 - a.0),
        (-dy, a.1 - y.0),
        (dy, y.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 > t1 {
        return None;
    }
    let at = |t: f64| {
        if t == 0.0 {
            a
        } else if t == 1.0 {
            b
        } else {
            (a.0 + t * dx, a.1 + t * dy)
        }
    };
    Some((at(t0), at(t1)))
}

/// The (x, y) ranges a panel shows.
pub fn panel_ranges(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    // Every finite point of the given series, band edges included.
    let points = |series: &mut dyn Iterator<Item = &Series>| -> Vec<(f64, f64)> {
        series
            .flat_map(|s| {
                s.points
                    .iter()
                    .copied()
                    .chain(s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]))
            })
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect()
    };
    let all = points(&mut panel.series.iter());
    let (mut x0, mut x1) = min_max(all.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    if panel.zero_line && panel.y_categories.is_some() {
        (x0, x1) = (x0.min(0.0), x1.max(0.0));
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = (x1 - x0) * panel.x_pad;
    let x = (x0 - pad, x1 + pad);
    if let Some(categories) = &panel.y_categories {
        return (x, (-0.6, categories.len() as f64 - 0.4));
    }
    let cut = x0 + panel.y_from_x_fraction * (x1 - x0);
    let main = points(&mut panel.series.iter().filter(|s| !s.outlier));
    let pool = if main.is_empty() { &all } else { &main };
    let late = min_max(pool.iter().filter(|p| p.0 >= cut).map(|p| p.1));
    let whole = min_max(pool.iter().map(|p| p.1));
    let (mut y0, mut y1) = match (late, whole) {
        (Some(l), Some(w)) if w.1 - w.0 > SPIKE_SHOWN * (l.1 - l.0) => l,
        (_, w) => w.unwrap_or((0.0, 1.0)),
    };
    if panel.zero_line {
        y0 = y0.min(0.0);
        y1 = y1.max(0.0);
    }
    if y1 <= y0 {
        let half = y0.abs().max(1.0) * 0.05;
        (y0, y1) = (y0 - half, y1 + half);
    }
    let pad = (y1 - y0) * 0.06;
    (x, (y0 - pad, y1 + pad))
}

/// An early spike is shown when the whole y range is at most this many times the range of
/// the later points (it stretches the axis by a half at most); a larger one is clipped.
pub const SPIKE_SHOWN: f64 = 1.5;

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn register_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if *ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font could not be loaded"))
    }
}

fn drawing_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw: {e}")
}

/// Renders `figure` into `dir` as `<name>.png` and `<name>.svg`, each written atomically;
/// returns their paths.
pub fn render(figure: &Figure, dir: &Path) -> Result<Vec<PathBuf>> {
    register_fonts()?;
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, figure)?;
        root.present().map_err(drawing_error)?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, figure)?;
        root.present().map_err(drawing_error)?;
    }
    let png_path = dir.join(format!("{}.png", figure.name));
    let svg_path = dir.join(format!("{}.svg", figure.name));
    let png = encode_png(&rgb)?;
    lawa_core::checkpoint::write_atomic(&png_path, &png)
        .with_context(|| format!("{}: cannot write", png_path.display()))?;
    lawa_core::checkpoint::write_atomic(&svg_path, svg.as_bytes())
        .with_context(|| format!("{}: cannot write", svg_path.display()))?;
    Ok(vec![png_path, svg_path])
}

fn encode_png(rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| anyhow!("cannot encode PNG: {e}"))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| anyhow!("cannot encode PNG: {e}"))?;
    writer
        .finish()
        .map_err(|e| anyhow!("cannot encode PNG: {e}"))?;
    Ok(out)
}

/// A legend entry: how a series looks, once per label.
struct Entry<'a> {
    label: &'a str,
    color: RGBColor,
    dash: Dash,
    width: u32,
    markers: bool,
    line: bool,
}

fn legend_entries(figure: &Figure) -> Vec<Entry<'_>> {
    let mut entries: Vec<Entry> = Vec::new();
    for s in figure.panels.iter().flat_map(|p| &p.series) {
        if s.label.is_empty() || entries.iter().any(|e| e.label == s.label) {
            continue;
        }
        entries.push(Entry {
            label: &s.label,
            color: s.color,
            dash: s.dash,
            width: s.width,
            markers: s.markers,
            line: s.line,
        });
    }
    entries
}

/// The title's font size: [`TITLE_SIZE`], smaller for a title too long to fit the width.
fn title_size<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str) -> f64 {
    let room = f64::from(WIDTH - 40);
    let style = TextStyle::from((FONT, TITLE_SIZE).into_font());
    match root.estimate_text_size(title, &style) {
        Ok((width, _)) if f64::from(width) > room => {
            (TITLE_SIZE * room / f64::from(width)).max(16.0)
        }
        _ => TITLE_SIZE,
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> Result<()> {
    root.fill(&WHITE).map_err(drawing_error)?;
    let (title_area, body) = root.split_vertically(TITLE_HEIGHT);
    let title_font = (FONT, title_size(root, &figure.title))
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    title_area
        .draw(&Text::new(
            figure.title.clone(),
            (WIDTH as i32 / 2, TITLE_HEIGHT as i32 / 2),
            title_font,
        ))
        .map_err(drawing_error)?;
    let entries = legend_entries(figure);
    let legend_font = (FONT, LEGEND_SIZE).into_font();
    let text_width = entries
        .iter()
        .map(|e| {
            root.estimate_text_size(e.label, &TextStyle::from(legend_font.clone()))
                .map_or(200, |s| s.0)
        })
        .max()
        .unwrap_or(0);
    let legend_width = if entries.is_empty() {
        0
    } else {
        (text_width + 110).clamp(220, WIDTH * 2 / 5)
    };
    let (charts, legend) = body.split_horizontally(WIDTH - legend_width);
    let n = figure.panels.len().max(1);
    let panels = charts.split_evenly((1, n));
    for (panel, area) in figure.panels.iter().zip(&panels) {
        draw_panel(area, panel)?;
    }
    if !entries.is_empty() {
        draw_legend(&legend, &entries)?;
    }
    Ok(())
}

/// The style of a line `width` pixels wide. plotters fills a thick line as a polygon of whole
/// pixels, which draws an odd width a pixel wider where the line is flat and a pixel narrower
/// where it is steep (3 px came out 4 and 2); an even width comes out even. Figures ask for
/// even widths (4, and 6 for the curve a figure is about); an odd one above 1 is widened.
fn stroke(color: RGBColor, width: u32) -> ShapeStyle {
    let even = if width > 1 { width + width % 2 } else { width };
    color.stroke_width(even)
}

fn draw_path<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    area: &DrawingArea<DB, CT>,
    points: Vec<(f64, f64)>,
    dash: Dash,
    style: ShapeStyle,
) -> Result<()> {
    match dash {
        Dash::Solid => area.draw(&PathElement::new(points, style)),
        Dash::Dashed => area.draw(&DashedPathElement::new(points, 16, 9, style)),
        Dash::Dotted => area.draw(&DashedPathElement::new(points, 4, 7, style)),
    }
    .map_err(drawing_error)
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()> {
    let ((x0, x1), (y0, y1)) = panel_ranges(panel);
    let x_ticks = nice_ticks(x0, x1, 6);
    let x_step = tick_step(x0, x1, 6);
    let (y_ticks, y_step) = match &panel.y_categories {
        Some(names) => ((0..names.len()).map(|i| i as f64).collect(), 1.0),
        None => (nice_ticks(y0, y1, 7), tick_step(y0, y1, 7)),
    };
    let x_max = x0.abs().max(x1.abs());
    let y_max = y0.abs().max(y1.abs());
    let x_format = |v: &f64| format_tick(*v, x_step, x_max);
    let y_format = |v: &f64| match &panel.y_categories {
        Some(names) => names
            .get(v.round().max(0.0) as usize)
            .cloned()
            .unwrap_or_default(),
        None => format_tick(*v, y_step, y_max),
    };
    let tick_font = (FONT, TICK_SIZE).into_font();
    let y_label_width = y_ticks
        .iter()
        .map(|v| {
            area.estimate_text_size(&y_format(v), &TextStyle::from(tick_font.clone()))
                .map_or(60, |s| s.0)
        })
        .max()
        .unwrap_or(60);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(16)
        .margin_right(36)
        .margin_left(12)
        .margin_bottom(12)
        .x_label_area_size(80)
        .y_label_area_size(y_label_width + 70);
    if let Some(title) = &panel.title {
        builder.caption(title, (FONT, PANEL_TITLE_SIZE));
    }
    let mut chart = builder
        .build_cartesian_2d(
            TickAxis {
                lo: x0,
                hi: x1,
                ticks: x_ticks,
            },
            TickAxis {
                lo: y0,
                hi: y1,
                ticks: y_ticks.clone(),
            },
        )
        .map_err(drawing_error)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .axis_desc_style((FONT, AXIS_DESC_SIZE))
        .label_style(tick_font.clone())
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .bold_line_style(RGBColor(225, 225, 225).stroke_width(1))
        .light_line_style(TRANSPARENT)
        .axis_style(RGBColor(60, 60, 60).stroke_width(2))
        .draw()
        .map_err(drawing_error)?;
    let plot = chart.plotting_area();
    let (xs, ys) = ((x0, x1), (y0, y1));
    draw_zero_line(plot, panel, xs, ys)?;
    draw_bands(plot, panel, xs, ys)?;
    draw_series(plot, panel, xs, ys)
}

/// The zero line of a panel that asks for one, where zero is in range (vertical on a
/// categorical y axis).
fn draw_zero_line<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    plot: &DrawingArea<DB, CT>,
    panel: &Panel,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<()> {
    if !panel.zero_line {
        return Ok(());
    }
    let line = match panel.y_categories {
        Some(_) if x0 <= 0.0 && x1 >= 0.0 => vec![(0.0, y0), (0.0, y1)],
        None if y0 <= 0.0 && y1 >= 0.0 => vec![(x0, 0.0), (x1, 0.0)],
        _ => return Ok(()),
    };
    plot.draw(&PathElement::new(line, stroke(RGBColor(90, 90, 90), 2)))
        .map_err(drawing_error)
}

/// The shaded bands, clipped to the ranges, under every line; bands thinner than about a
/// pixel everywhere (identical seeds) are not drawn.
fn draw_bands<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    plot: &DrawingArea<DB, CT>,
    panel: &Panel,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<()> {
    let min_width = (y1 - y0) / HEIGHT as f64;
    for series in &panel.series {
        let visible = series.band.iter().any(|&(_, lo, hi)| hi - lo > min_width);
        if series.band.len() < 2 || !visible {
            continue;
        }
        let mut outline: Vec<(f64, f64)> = series.band.iter().map(|&(x, lo, _)| (x, lo)).collect();
        outline.extend(series.band.iter().rev().map(|&(x, _, hi)| (x, hi)));
        let clipped = clip_polygon(&outline, (x0, x1), (y0, y1));
        if clipped.len() >= 3 {
            plot.draw(&Polygon::new(clipped, series.color.mix(0.15).filled()))
                .map_err(drawing_error)?;
        }
    }
    Ok(())
}

/// Each series' line (clipped to the ranges) and markers (those in range).
fn draw_series<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    plot: &DrawingArea<DB, CT>,
    panel: &Panel,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<()> {
    for series in &panel.series {
        if series.line {
            for part in clip_polyline(&series.points, (x0, x1), (y0, y1)) {
                draw_path(plot, part, series.dash, stroke(series.color, series.width))?;
            }
        }
        if series.markers {
            let inside = |&&(x, y): &&(f64, f64)| x >= x0 && x <= x1 && y >= y0 && y <= y1;
            for &(x, y) in series.points.iter().filter(inside) {
                let dot = Circle::new((x, y), series.width + 5, series.color.filled());
                plot.draw(&dot).map_err(drawing_error)?;
            }
        }
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[Entry]) -> Result<()> {
    let (_, height) = area.dim_in_pixel();
    let top = 30i32;
    let row = ((height as i32 - top - 20) / entries.len().max(1) as i32).clamp(14, 40);
    let size = LEGEND_SIZE.min(row as f64 * 0.7);
    let font = (FONT, size)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, entry) in entries.iter().enumerate() {
        let y = top + row * i as i32 + row / 2;
        let style = stroke(entry.color, entry.width);
        if entry.line {
            let points = vec![(10, y), (70, y)];
            match entry.dash {
                Dash::Solid => area.draw(&PathElement::new(points, style)),
                Dash::Dashed => area.draw(&DashedPathElement::new(points, 16, 9, style)),
                Dash::Dotted => area.draw(&DashedPathElement::new(points, 4, 7, style)),
            }
            .map_err(drawing_error)?;
        }
        if entry.markers {
            area.draw(&Circle::new((40, y), entry.width + 5, entry.color.filled()))
                .map_err(drawing_error)?;
        }
        area.draw(&Text::new(entry.label.to_owned(), (84, y), font.clone()))
            .map_err(drawing_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pixels a line of `width` covers across a steep segment (along a row) and across a
    /// flat one (along a column) of a path with a sharp turn, drawn as figures draw lines.
    fn line_widths(width: u32) -> (usize, usize) {
        let size = 1000usize;
        let mut rgb = vec![255u8; size * size * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (size as u32, size as u32))
                .into_drawing_area();
            let chart = ChartBuilder::on(&root)
                .build_cartesian_2d(0.0..1000.0, 1000.0..0.0)
                .unwrap();
            // Down steeply, up steeply, then nearly flat (pixel coordinates).
            let path = vec![
                (130.0, 173.0),
                (265.0, 795.0),
                (401.0, 377.0),
                (662.0, 410.0),
            ];
            draw_path(chart.plotting_area(), path, Dash::Solid, stroke(RED, width)).unwrap();
            root.present().unwrap();
        }
        let red = |x: usize, y: usize| {
            let p = &rgb[(y * size + x) * 3..][..3];
            p[0] > 200 && p[1] < 80
        };
        let steep = (0..size).filter(|&x| red(x, 300)).count();
        let flat = (0..size).filter(|&y| red(590, y)).count();
        (steep, flat)
    }

    /// A line is as wide where it is steep as where it is flat, and at least as wide as asked.
    #[test]
    fn lines_are_as_wide_steep_as_flat() {
        for width in [2, 3, 4, 5] {
            let (steep, flat) = line_widths(width);
            assert!(
                steep.abs_diff(flat) <= 1 && steep >= width as usize,
                "width {width}: {steep} px steep, {flat} px flat"
            );
        }
    }

    #[test]
    fn learning_rates_print_short() {
        assert_eq!(format_lr(0.006), "6e-3");
        assert_eq!(format_lr(0.0006), "6e-4");
        assert_eq!(format_lr(0.0015), "1.5e-3");
        assert_eq!(format_lr(0.01), "1e-2");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 1000.0, 5),
            [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        let ticks = nice_ticks(3.13, 3.61, 6);
        assert!(ticks.first().unwrap() >= &3.13 && ticks.last().unwrap() <= &3.61);
        assert_eq!(format_tick(3.2, 0.1, 3.6), "3.2");
        assert_eq!(format_tick(20_000.0, 10_000.0, 70_000.0), "20k");
        assert_eq!(format_tick(2500.0, 500.0, 3000.0), "2500");
        assert_eq!(format_tick(-0.0, 0.05, 0.3), "0.00");
    }

    #[test]
    fn clipping_cuts_lines_at_the_border() {
        let parts = clip_polyline(
            &[(0.0, 10.0), (1.0, 0.0), (2.0, 0.0), (3.0, 10.0)],
            (0.0, 3.0),
            (0.0, 5.0),
        );
        assert_eq!(
            parts,
            [vec![(0.5, 5.0), (1.0, 0.0), (2.0, 0.0), (2.5, 5.0)]]
        );
        let parts = clip_polyline(
            &[(0.0, 1.0), (1.0, 9.0), (2.0, 1.0)],
            (0.0, 2.0),
            (0.0, 5.0),
        );
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn polygons_are_clipped_to_the_plot() {
        let square = [(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)];
        let clipped = clip_polygon(&square, (0.0, 2.0), (0.0, 1.0));
        assert_eq!(clipped.len(), 4);
        assert!(clipped.iter().all(|p| p.1 <= 1.0));
        assert!(clip_polygon(&square, (3.0, 4.0), (0.0, 1.0)).is_empty());
    }

    #[test]
    fn y_range_ignores_the_early_spike_and_outliers() {
        let mut panel = Panel::steps(
            "loss",
            vec![Series::line(
                "raw",
                BLACK,
                (0..=10)
                    .map(|i| {
                        (
                            i as f64 * 10.0,
                            if i == 0 { 11.0 } else { 4.0 - i as f64 * 0.1 },
                        )
                    })
                    .collect(),
            )],
        );
        let mut wild = Series::line("diverged", RED, vec![(0.0, 11.0), (50.0, 30.0)]);
        wild.outlier = true;
        panel.series.push(wild);
        let (x, (y0, y1)) = panel_ranges(&panel);
        assert_eq!(x, (0.0, 100.0));
        // From x = 20 on (past 20 % of the span): 3.8 down to 3.0, plus 6 % padding.
        assert!(
            (y0 - 2.952).abs() < 1e-9 && (y1 - 3.848).abs() < 1e-9,
            "{y0} {y1}"
        );
        // A small early excursion is shown: at 4.1 the later points' range (3.0 to 3.8)
        // grows 1.375 times; at 4.4, 1.75 times, and it is clipped.
        for (first, (lo, hi)) in [(4.1, (3.0, 4.1)), (4.4, (3.0, 3.8))] {
            panel.series[0].points[0].1 = first;
            let (_, (y0, y1)) = panel_ranges(&panel);
            let pad = (hi - lo) * 0.06;
            assert!(
                (y0 - (lo - pad)).abs() < 1e-9 && (y1 - (hi + pad)).abs() < 1e-9,
                "{first}: {y0} {y1}"
            );
        }
    }
}
