//! Figures computed from a model or read from what runs and reports recorded: the learned
//! against the exact density of 2-D data, the denoising strip (the paper's Fig. 4), Fig. 3 from
//! `cdm nll` outputs for uniform cubes, training curves from `log.jsonl`, and MMD² per
//! parallel iteration from `cdm eval` reports.
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::{cube_likelihoods, heatmaps, image_grid, line_chart, Axes, Heatmap, Series};
use crate::batches::Batches;
use crate::data::KnownDensity;
use crate::eval::{NllReport, Report};
use crate::likelihood::log_prob;
use crate::model::Model;
use crate::predictor::{Conditioned, NoisePredictor};
use crate::sample::{draw, Noise, SampleOptions};
use crate::schedule::levels_like;
use crate::train::read_log;
use crate::{Error, Result};

/// 2-D data: the exact and the learned (one-pass) log-density on a `grid` × `grid` mesh over
/// [−extent, extent]², side by side, with `samples` DDPM samples (200 steps at most) overlaid.
pub fn density_figure(
    path: &Path,
    model: &Model,
    density: &dyn KnownDensity,
    grid: usize,
    extent: f64,
    samples: usize,
    batches: &Batches,
) -> Result<()> {
    let axis = Tensor::linspace(-extent, extent, grid as i64, (Kind::Double, Device::Cpu)) + extent / grid as f64;
    let mesh = Tensor::meshgrid_indexing(&[&axis, &axis], "ij");
    let points = Tensor::stack(&[mesh[1].flatten(0, -1), mesh[0].flatten(0, -1)], 1);
    let classifier = model.classifier()?;
    let learned = batches.map(&points, |chunk, _| log_prob(classifier, chunk, 0, None))?.to_kind(Kind::Double);
    let exact = density.log_prob(&points);
    let grid_of = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
        let v = Vec::<f64>::try_from(t.reshape([grid as i64, grid as i64]).flatten(0, -1))?;
        Ok(v.chunks(grid).map(|c| c.to_vec()).collect())
    };
    let steps = 200.min(model.schedule().timesteps());
    let drawn = draw(model, samples, &SampleOptions::ddpm(steps), batches)?.x;
    let pairs = Vec::<f64>::try_from(drawn.to_kind(Kind::Double).flatten(0, -1))?;
    let dots: Vec<(f64, f64)> = pairs.chunks(2).map(|p| (p[0], p[1])).collect();
    let vmax = exact.max().double_value(&[]).max(learned.max().double_value(&[]));
    let (exact_grid, learned_grid) = (grid_of(&exact)?, grid_of(&learned)?);
    let panels = [
        Heatmap { title: "exact log p(x)", values: &exact_grid },
        Heatmap { title: "CDM log p(x), one pass; samples", values: &learned_grid },
    ];
    heatmaps(path, &panels, -extent, extent, vmax - 8.0, vmax, &dots)
}

/// The strip's default levels: 10%, 30%, 50%, 70%, 90% and 100% of T.
pub fn strip_levels(timesteps: usize) -> Vec<usize> {
    [0.1, 0.3, 0.5, 0.7, 0.9, 1.0].iter().map(|f| ((f * timesteps as f64).round() as usize).max(1)).collect()
}

/// A denoising strip (the paper's Fig. 4): one row per image of `x0` ([N, C, H, W]), the clean
/// image, then the noisy x_t and the denoised E[x0 | x_t] at each of `levels` (noise of `seed`).
pub fn denoising_strip(
    path: &Path,
    model: &Model,
    x0: &Tensor,
    levels: &[usize],
    seed: u64,
    on: &Batches,
) -> Result<()> {
    let schedule = model.schedule();
    if let Some(t) = levels.iter().find(|&&t| t == 0 || t > schedule.timesteps()) {
        return Err(Error::Config(format!("level {t} is outside 1..={}", schedule.timesteps())));
    }
    let x0 = x0.to_kind(on.kind).to_device(on.device);
    let eps = Noise::new(seed, 0, x0.size()[0] as usize).normal(&x0.size()[1..], x0.kind(), x0.device());
    let denoiser = Conditioned { model, labels: None };
    let mut columns = vec![x0.shallow_clone()];
    for &t in levels {
        let level = levels_like(t, &x0);
        let x_t = schedule.add_noise(&x0, &eps, &level);
        let denoised = schedule.x0_from_eps(&x_t, &denoiser.eps(&x_t, &level)?, &level);
        columns.extend([x_t, denoised]);
    }
    let cols = columns.len();
    // [rows, cols, C, H, W] → row-major tiles: image r, column c.
    let tiles = Tensor::stack(&columns, 1).flatten(0, 1).to_device(Device::Cpu);
    image_grid(path, &tiles, cols)
}

/// The paper's Fig. 3 from `cdm nll --json` outputs of models trained on uniform cubes, one per
/// width g (read from the data spec `uniform:...,g=G`).
pub fn cubes_figure(path: &Path, reports: &[PathBuf]) -> Result<()> {
    let mut points = Vec::new();
    for file in reports {
        let report = NllReport::read(file)?;
        let spec = &report.data;
        let g = spec.split([':', ',']).find_map(|kv| kv.strip_prefix("g=")).and_then(|g| g.parse::<f64>().ok());
        let g = g.ok_or_else(|| {
            Error::Data(format!("{}: field 'data' is '{spec}', expected uniform:...,g=G", file.display()))
        })?;
        let exact = report.scores.exact_nats_per_dim.ok_or_else(|| {
            Error::Data(format!("{}: no 'exact_nats_per_dim' (data without a known density)", file.display()))
        })?;
        points.push((g, exact, report.scores.log_likelihood_nats_per_dim));
    }
    cube_likelihoods(path, &points)
}

/// Training curves of `runs` from their `log.jsonl`: PREFIX_loss.png (the loss against step)
/// and, where the runs measured FID, PREFIX_fid_steps.png and PREFIX_fid_hours.png; returns the
/// files written.
pub fn training_curves(prefix: &Path, runs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let (mut loss, mut fid_steps, mut fid_hours) = (Vec::new(), Vec::new(), Vec::new());
    for run in runs {
        let label = run.file_name().map_or(run.display().to_string(), |n| n.to_string_lossy().into_owned());
        let steps = read_log(&run.join(crate::checkpoint::LOG_FILE))?;
        let series = |points| Series { label: label.clone(), points, markers_only: false };
        loss.push(series(steps.iter().map(|s| (s.step as f64, s.loss)).collect()));
        let fid: Vec<_> = steps.iter().filter_map(|s| Some((s.step as f64, s.seconds / 3600.0, s.fid?))).collect();
        if !fid.is_empty() {
            fid_steps.push(series(fid.iter().map(|&(step, _, f)| (step, f)).collect()));
            fid_hours.push(series(fid.iter().map(|&(_, hours, f)| (hours, f)).collect()));
        }
    }
    let png = |suffix: &str| {
        let mut name = prefix.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        prefix.with_file_name(name)
    };
    let axes = |title, x, y| Axes { title, x, y, log_x: false, log_y: true };
    let mut written = vec![png("_loss.png")];
    line_chart(&written[0], &axes("Training loss", "step", "loss"), &loss)?;
    if !fid_steps.is_empty() {
        written.push(png("_fid_steps.png"));
        line_chart(&written[1], &axes("FID of EMA samples", "step", "FID"), &fid_steps)?;
        written.push(png("_fid_hours.png"));
        line_chart(&written[2], &axes("FID of EMA samples", "training hours", "FID"), &fid_hours)?;
    }
    Ok(written)
}

/// MMD² after each parallel iteration, one line per model of each `cdm eval --only mmd` report
/// (whose window covered every step), labelled by the report folder's parent and folder.
pub fn iterations_figure(path: &Path, reports: &[PathBuf]) -> Result<()> {
    let mut curves = Vec::new();
    for file in reports {
        let report = Report::read(file)?;
        let mmd = report.mmd.ok_or_else(|| {
            Error::Data(format!("{}: no MMD section (a `cdm eval --only mmd` report?)", file.display()))
        })?;
        let folder = |p: Option<&Path>| {
            p.and_then(|p| p.file_name()).map_or(String::new(), |n| n.to_string_lossy().into_owned())
        };
        let dir = file.parent();
        let run = format!("{}/{}", folder(dir.and_then(|d| d.parent())), folder(dir));
        let several = mmd.models.len() > 1;
        for model in mmd.models {
            if model.mmd2_per_iteration.is_empty() {
                return Err(Error::Data(format!(
                    "{}: no 'mmd2_per_iteration' (the window must cover every step)",
                    file.display()
                )));
            }
            let points = model.mmd2_per_iteration.iter().enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect();
            let label = if several { format!("{run}: {}", model.model) } else { run.clone() };
            curves.push(Series { label, points, markers_only: false });
        }
    }
    let axes = Axes {
        title: "MMD² after each parallel iteration",
        x: "iteration",
        y: "MMD² (values ≤ 0 not drawn)",
        log_x: false,
        log_y: true,
    };
    line_chart(path, &axes, &curves)
}
