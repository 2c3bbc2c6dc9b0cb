//! Pictures a person would rather look at than read: learned against exact log-density of 2-D
//! data as heat maps with samples overlaid, and the paper's Fig. 3 (estimated against exact
//! log-likelihood of uniform cubes).
use std::path::Path;

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use tch::{Kind, Tensor};

use crate::{Error, Result};

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
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
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
