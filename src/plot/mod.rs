//! Pictures a person would rather look at than read: learned against exact log-density of 2-D
//! data as heat maps with samples overlaid, and the paper's Fig. 3 (estimated against exact
//! log-likelihood of uniform cubes), image grids, line charts and matrices for evaluation reports.
use std::path::Path;

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use tch::{Kind, Tensor};

use crate::{Error, Result};

pub mod figures;

pub use figures::{cubes_figure, denoising_strip, density_figure, iterations_figure, strip_levels, training_curves};

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data(format!("drawing {}: {e}", path.display()))
}

/// A log-density on a square grid over [lo, hi]²: `values[row][col]`, row = y index from lo.
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub values: &'a [Vec<f64>],
}

/// Draws heat maps side by side on a common colour scale [vmin, vmax] (values below are
/// clamped, −∞ included), each with `samples` overlaid as white dots.
pub fn heatmaps(
    path: &Path,
    panels: &[Heatmap],
    lo: f64,
    hi: f64,
    vmin: f64,
    vmax: f64,
    samples: &[(f64, f64)],
) -> Result<()> {
    let width = 460 * panels.len() as u32;
    let root = BitMapBackend::new(path, (width, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(lo..hi, lo..hi)
            .map_err(|e| plot_err(path, e))?;
        chart.configure_mesh().disable_mesh().draw().map_err(|e| plot_err(path, e))?;
        let n = panel.values.len();
        let cell = (hi - lo) / n as f64;
        chart
            .draw_series(panel.values.iter().enumerate().flat_map(|(row, line)| {
                line.iter().enumerate().map(move |(col, &v)| {
                    let u = ((v.max(vmin) - vmin) / (vmax - vmin)).clamp(0.0, 1.0);
                    let (x, y) = (lo + col as f64 * cell, lo + row as f64 * cell);
                    Rectangle::new([(x, y), (x + cell, y + cell)], ViridisRGB::get_color(u).filled())
                })
            }))
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(samples.iter().map(|&(x, y)| Circle::new((x, y), 1, WHITE.mix(0.6).filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// The paper's Fig. 3: estimated and exact log-likelihood per dimension against cube width g.
/// `points`: (g, exact, estimated) in nats/dim.
pub fn cube_likelihoods(path: &Path, points: &[(f64, f64, f64)]) -> Result<()> {
    let root = BitMapBackend::new(path, (640, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1.min(p.2)), hi.max(p.1.max(p.2))));
    let gmax = points.iter().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let pad = 0.1 * (hi - lo).max(0.1);
    let mut chart = ChartBuilder::on(&root)
        .caption("Uniform cubes U[-g/2, g/2]^D: log-likelihood per dim", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..gmax, (lo - pad)..(hi + pad))
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().x_desc("cube width g").y_desc("nats / dim").draw().map_err(|e| plot_err(path, e))?;
    let exact: Vec<(f64, f64)> = (1..=100).map(|i| gmax * i as f64 / 100.0).map(|g| (g, -g.ln())).collect();
    chart
        .draw_series(LineSeries::new(exact, BLACK.stroke_width(2)))
        .map_err(|e| plot_err(path, e))?
        .label("exact: -ln g")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    chart
        .draw_series(points.iter().map(|&(g, _, est)| Circle::new((g, est), 6, RED.filled())))
        .map_err(|e| plot_err(path, e))?
        .label("CDM, one forward pass")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
    draw_legend(&mut chart, path)?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Images [len, ..] padded with white images to `cols`, so grid rows line up.
fn pad_row(images: &Tensor, cols: i64) -> Tensor {
    let mut size = images.size();
    size[0] = cols - size[0];
    Tensor::cat(&[images.shallow_clone(), Tensor::ones(&size, (images.kind(), images.device()))], 0)
}

/// Samples [N, ..] of a conditional model laid out one row per class (`labels[i]` is sample
/// i's, classes 0..=max), rows padded where N is not a multiple of the classes; returns the
/// grid's images and its columns, for [`image_grid`].
pub fn rows_by_class(samples: &Tensor, labels: &[i64]) -> (Tensor, usize) {
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let cols = labels.len().div_ceil(classes.max(1) as usize) as i64;
    let rows: Vec<Tensor> = (0..classes)
        .map(|c| {
            let index: Vec<i64> = (0..labels.len() as i64).filter(|&i| labels[i as usize] == c).collect();
            let index = Tensor::from_slice(&index).to_device(samples.device());
            pad_row(&samples.index_select(0, &index).to_kind(Kind::Double), cols)
        })
        .collect();
    (Tensor::cat(&rows, 0), cols as usize)
}

/// Sets of N images each ([N, ..], e.g. clean, noised and sampled) laid out in blocks of
/// `cols` columns: for each block, one row from each set in turn; for [`image_grid`].
pub fn interleaved_rows(sets: &[&Tensor], cols: usize) -> Tensor {
    let n = sets.first().map_or(0, |s| s.size()[0]);
    let cols = cols.max(1) as i64;
    let mut rows = Vec::new();
    for first in (0..n).step_by(cols as usize) {
        let len = cols.min(n - first);
        for images in sets {
            rows.push(pad_row(&images.narrow(0, first, len).to_kind(Kind::Double), cols));
        }
    }
    Tensor::cat(&rows, 0)
}

/// Images [N, C, H, W] in [-1, 1] (C = 1 or 3) tiled `cols` to a row with a 2-pixel gap, as PNG.
pub fn image_grid(path: &Path, images: &Tensor, cols: usize) -> Result<()> {
    let size = images.size();
    let [n, c, h, w] = size[..] else {
        return Err(Error::Shape(format!("image grid needs [N, C, H, W], got {size:?}")));
    };
    if c != 1 && c != 3 {
        return Err(Error::Shape(format!("image grid needs 1 or 3 channels, got {c}")));
    }
    let (n, h, w, cols) = (n as usize, h as usize, w as usize, cols.max(1));
    let rows = n.div_ceil(cols);
    let pixels = Vec::<u8>::try_from(
        ((images.to_kind(Kind::Double).clamp(-1.0, 1.0) + 1.0) * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
            .flatten(0, -1),
    )?;
    // Small images (8×8 digits) are enlarged to at least 32 pixels a side, without smoothing.
    let scale = (32 / h.max(w)).max(1);
    let (th, tw, gap) = (h * scale, w * scale, 2);
    let mut canvas = image::RgbImage::from_pixel(
        (cols * (tw + gap) + gap) as u32,
        (rows * (th + gap) + gap) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (i, tile) in pixels.chunks(h * w * c as usize).enumerate() {
        let (x0, y0) = (gap + (i % cols) * (tw + gap), gap + (i / cols) * (th + gap));
        for (j, px) in tile.chunks(c as usize).enumerate() {
            let rgb = if c == 1 { [px[0]; 3] } else { [px[0], px[1], px[2]] };
            for k in 0..scale * scale {
                let (x, y) = (x0 + (j % w) * scale + k % scale, y0 + (j / w) * scale + k / scale);
                canvas.put_pixel(x as u32, y as u32, image::Rgb(rgb));
            }
        }
    }
    canvas.save(path).map_err(|e| plot_err(path, e))
}

/// The legend box of a chart whose series have labels.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|e| plot_err(path, e))
}

/// One line (or set of markers) of a [`line_chart`].
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw markers only (a single measurement, like a CDM's one evaluation).
    pub markers_only: bool,
}

/// Axes of a [`line_chart`].
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub log_x: bool,
    pub log_y: bool,
}

/// Lines with markers on common axes, each in its own colour, with a legend.
pub fn line_chart(path: &Path, axes: &Axes, series: &[Series]) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let finite = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let range = |pick: fn((f64, f64)) -> f64, log: bool| {
        let (lo, hi) = points()
            .map(pick)
            .filter(|&v| finite(v, log))
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            (if log { 0.1 } else { 0.0 }, 1.0)
        } else if log {
            (lo / 1.5, hi * 1.5)
        } else {
            let pad = 0.05 * (hi - lo).max(1e-9 + 0.1 * hi.abs());
            (lo - pad, hi + pad)
        }
    };
    let (x_lo, x_hi) = range(|p| p.0, axes.log_x);
    let (y_lo, y_hi) = range(|p| p.1, axes.log_y);
    let root = BitMapBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(axes.title, ("sans-serif", 20)).margin(15).x_label_area_size(40).y_label_area_size(70);
    // Log axes are a different coordinate type, so each combination builds its own chart.
    macro_rules! draw {
        ($x:expr, $y:expr) => {{
            let mut chart = builder.build_cartesian_2d($x, $y).map_err(|e| plot_err(path, e))?;
            chart.configure_mesh().x_desc(axes.x).y_desc(axes.y).draw().map_err(|e| plot_err(path, e))?;
            for (i, s) in series.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let pts: Vec<(f64, f64)> =
                    s.points.iter().copied().filter(|&(x, y)| finite(x, axes.log_x) && finite(y, axes.log_y)).collect();
                if !s.markers_only {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                        .map_err(|e| plot_err(path, e))?;
                }
                // Dense curves (a value per level) read better as plain lines.
                let size = if s.markers_only {
                    7
                } else if pts.len() > 60 {
                    0
                } else {
                    3
                };
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, size, colour.filled())))
                    .map_err(|e| plot_err(path, e))?
                    .label(s.label.as_str())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
            }
            draw_legend(&mut chart, path)?;
        }};
    }
    match (axes.log_x, axes.log_y) {
        (false, false) => draw!(x_lo..x_hi, y_lo..y_hi),
        (true, false) => draw!((x_lo..x_hi).log_scale(), y_lo..y_hi),
        (false, true) => draw!(x_lo..x_hi, (y_lo..y_hi).log_scale()),
        (true, true) => draw!((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale()),
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// A matrix as a heat map, `values[row][col]` with row 0 at the top, on the scale [0, max]
/// (a row-normalised confusion matrix: true class down, predicted class across).
pub fn matrix_heatmap(path: &Path, title: &str, row_label: &str, col_label: &str, values: &[Vec<f64>]) -> Result<()> {
    let (rows, cols) = (values.len(), values.first().map_or(0, Vec::len));
    let max = values.iter().flatten().copied().fold(0.0, f64::max).max(1e-12);
    let root = BitMapBackend::new(path, (620, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..cols as f64, rows as f64..0.0)
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().disable_mesh().x_desc(col_label).y_desc(row_label).draw().map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(values.iter().enumerate().flat_map(|(r, line)| {
            line.iter().enumerate().map(move |(c, &v)| {
                let (x, y) = (c as f64, r as f64);
                Rectangle::new([(x, y), (x + 1.0, y + 1.0)], ViridisRGB::get_color((v / max).clamp(0.0, 1.0)).filled())
            })
        }))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}
