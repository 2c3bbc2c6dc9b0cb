//! `cdm plot`: pictures of a trained model against the exact density.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tch::{Kind, Tensor};

use cdm::data::Dataset;
use cdm::likelihood::log_prob;
use cdm::plot::{cube_likelihoods, heatmaps, image_grid, line_chart, Axes, Heatmap, Series};
use cdm::predictor::{Conditioned, NoisePredictor};
use cdm::sample::Noise;
use cdm::schedule::levels_like;
use cdm::train::load_model;

use super::infer::draw_samples;
use super::{check_count, DeviceArg};
use cdm::sample::SampleOptions;

#[derive(Args)]
pub struct PlotArgs {
    #[command(subcommand)]
    what: PlotCommand,
}

#[derive(Subcommand)]
enum PlotCommand {
    /// 2-D data: exact and learned log-density as heat maps, with model samples overlaid.
    Density {
        /// Run directory of a model trained on built-in 2-D data.
        #[arg(long)]
        ckpt: PathBuf,
        /// Output PNG.
        #[arg(long, value_parser = super::png_file)]
        out: PathBuf,
        /// Grid cells per side.
        #[arg(long, default_value_t = 120, value_parser = super::positive::<usize>)]
        grid: usize,
        /// Half-width of the square shown.
        #[arg(long, default_value_t = 3.0)]
        extent: f64,
        /// Samples to overlay (DDPM, 200 steps).
        #[arg(long, default_value_t = 1000, value_parser = super::positive::<usize>)]
        samples: usize,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceArg,
    },
    /// Image data: a denoising strip like the paper's Fig. 4. Each row is one image: the clean
    /// image, then (noisy x_t, denoised E[x0 | x_t]) at each level, up to t = T, where the input
    /// is almost pure noise and the MMSE answer is the data mean.
    Strip {
        #[arg(long)]
        ckpt: PathBuf,
        /// Images to denoise (default: the model's training data).
        #[arg(long)]
        data: Option<String>,
        #[arg(long, value_parser = super::png_file)]
        out: PathBuf,
        /// Rows (images).
        #[arg(long, default_value_t = 6, value_parser = super::positive::<usize>)]
        n: usize,
        /// Levels (default: 10%, 30%, 50%, 70%, 90% and 100% of T).
        #[arg(long, value_delimiter = ',')]
        levels: Vec<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceArg,
    },
    /// The paper's Fig. 3 from `cdm nll --json` reports of models trained on uniform cubes.
    Cubes {
        /// `cdm nll --json` outputs, one per cube width (the spec must be uniform:...,g=G).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        #[arg(long, value_parser = super::png_file)]
        out: PathBuf,
    },
    /// Training curves of one or more runs from their `log.jsonl`: OUT_loss.png (the loss
    /// against step), and where the runs measured FID (`--fid-every`) OUT_fid_steps.png and
    /// OUT_fid_hours.png (FID against step and against training wall-clock).
    Training {
        /// Run directories, each labelled by its folder name.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output prefix: OUT_loss.png, OUT_fid_steps.png, OUT_fid_hours.png.
        #[arg(long)]
        out: PathBuf,
    },
    /// MMD² after each parallel iteration, one line per model, from `cdm eval --only mmd`
    /// reports whose window covered every step (their `mmd2_per_iteration`).
    Iterations {
        /// `report.json` files, each labelled by its folder's parent (the run) and folder.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        #[arg(long, value_parser = super::png_file)]
        out: PathBuf,
    },
}

pub fn run(args: PlotArgs) -> Result<()> {
    match args.what {
        PlotCommand::Density { ckpt, out, grid, extent, samples, device } => {
            let loaded = load_model(&ckpt, device.device()?, true)
                .with_context(|| format!("loading --ckpt {}", ckpt.display()))?;
            let data = Dataset::open(&loaded.config.data)?;
            let Some(density) = data.density().filter(|d| d.shape() == [2]) else {
                bail!("{}: trained on '{}', not on built-in 2-D data", ckpt.display(), loaded.config.data);
            };
            // grid × grid points of two values.
            check_count("--grid", grid, &[grid as i64, 2])?;
            check_count("--samples", samples, &[2])?;
            let axis =
                Tensor::linspace(-extent, extent, grid as i64, (Kind::Double, tch::Device::Cpu)) + extent / grid as f64;
            let mesh = Tensor::meshgrid_indexing(&[&axis, &axis], "ij");
            let points = Tensor::stack(&[mesh[1].flatten(0, -1), mesh[0].flatten(0, -1)], 1);
            let kind = loaded.config.train.precision.kind();
            let learned =
                log_prob(loaded.model.classifier()?, &points.to_kind(kind).to_device(loaded.vs.device()), 0, None)?
                    .to_kind(Kind::Double)
                    .to_device(tch::Device::Cpu);
            let exact = density.log_prob(&points);
            let grid_of = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
                let v = Vec::<f64>::try_from(t.reshape([grid as i64, grid as i64]).flatten(0, -1))?;
                Ok(v.chunks(grid).map(|c| c.to_vec()).collect())
            };
            let steps = 200.min(loaded.model.schedule().timesteps());
            let drawn = draw_samples(&loaded, samples, &SampleOptions::ddpm(steps), 1024, None, &mut |_| {})?.x;
            let pairs = Vec::<f64>::try_from(drawn.to_kind(Kind::Double).flatten(0, -1))?;
            let dots: Vec<(f64, f64)> = pairs.chunks(2).map(|p| (p[0], p[1])).collect();
            let vmax = exact.max().double_value(&[]).max(learned.max().double_value(&[]));
            let (exact_grid, learned_grid) = (grid_of(&exact)?, grid_of(&learned)?);
            let panels = [
                Heatmap { title: "exact log p(x)", values: &exact_grid },
                Heatmap { title: "CDM log p(x), one pass; samples", values: &learned_grid },
            ];
            heatmaps(&out, &panels, -extent, extent, vmax - 8.0, vmax, &dots)?;
            println!("wrote {}", out.display());
        }
        PlotCommand::Strip { ckpt, data, out, n, levels, seed, device } => {
            let loaded = load_model(&ckpt, device.device()?, true)
                .with_context(|| format!("loading --ckpt {}", ckpt.display()))?;
            let spec = data.unwrap_or_else(|| loaded.config.data.clone());
            let dataset = Dataset::open(&spec).with_context(|| format!("--data {spec}"))?;
            if dataset.shape().len() != 3 {
                bail!("--data {spec}: a strip needs image data [C, H, W]");
            }
            let schedule = loaded.model.schedule();
            let t_max = schedule.timesteps();
            let levels: Vec<usize> = match levels.is_empty() {
                true => [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
                    .iter()
                    .map(|f| ((f * t_max as f64).round() as usize).max(1))
                    .collect(),
                false => levels,
            };
            if let Some(t) = levels.iter().find(|&&t| t == 0 || t > t_max) {
                bail!("--levels: {t} is outside 1..={t_max}");
            }
            check_count("--n", n, &dataset.shape())?;
            let x0 = dataset.eval_points(n, seed);
            let x0 = x0
                .narrow(0, 0, (n as i64).min(x0.size()[0]))
                .to_kind(loaded.config.train.precision.kind())
                .to_device(loaded.vs.device());
            let rows = x0.size()[0];
            let eps = Noise::new(seed, 0, rows as usize).normal(&x0.size()[1..], x0.kind(), x0.device());
            let denoiser = Conditioned { model: &loaded.model, labels: None };
            let mut columns = vec![x0.shallow_clone()];
            for &t in &levels {
                let level = levels_like(t, &x0);
                let x_t = schedule.add_noise(&x0, &eps, &level);
                let denoised = schedule.x0_from_eps(&x_t, &denoiser.eps(&x_t, &level)?, &level);
                columns.extend([x_t, denoised]);
            }
            let cols = columns.len();
            // [cols, rows, C, H, W] → row-major tiles: image r, column c.
            let tiles = Tensor::stack(&columns, 1).flatten(0, 1).to_device(tch::Device::Cpu);
            image_grid(&out, &tiles, cols)?;
            println!("wrote {} (columns: clean, then noisy/denoised at levels {levels:?})", out.display());
        }
        PlotCommand::Cubes { reports, out } => {
            let mut points = Vec::new();
            for path in &reports {
                let report = read_json(path)?;
                let spec = report["data"].as_str().unwrap_or_default();
                let g = spec
                    .split([':', ','])
                    .find_map(|kv| kv.strip_prefix("g="))
                    .and_then(|g| g.parse::<f64>().ok())
                    .with_context(|| {
                        format!("{}: field 'data' is '{spec}', expected uniform:...,g=G", path.display())
                    })?;
                let field = |name: &str| {
                    report[name].as_f64().with_context(|| format!("{}: missing number '{name}'", path.display()))
                };
                points.push((g, field("exact_nats_per_dim")?, field("log_likelihood_nats_per_dim")?));
            }
            cube_likelihoods(&out, &points)?;
            println!("wrote {}", out.display());
        }
        PlotCommand::Training { runs, out } => {
            let (mut loss, mut fid_steps, mut fid_hours) = (Vec::new(), Vec::new(), Vec::new());
            for run in &runs {
                let label = run.file_name().map_or(run.display().to_string(), |n| n.to_string_lossy().into_owned());
                let path = run.join("log.jsonl");
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let (mut l, mut fs, mut fh) = (Vec::new(), Vec::new(), Vec::new());
                for (i, line) in text.lines().enumerate() {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 1))?;
                    let Some(step) = v["step"].as_f64() else {
                        bail!("{}: line {} has no 'step'", path.display(), i + 1)
                    };
                    l.extend(v["loss"].as_f64().map(|y| (step, y)));
                    if let Some(f) = v["fid"].as_f64() {
                        fs.push((step, f));
                        fh.extend(v["seconds"].as_f64().map(|s| (s / 3600.0, f)));
                    }
                }
                let series = |points| Series { label: label.clone(), points, markers_only: false };
                loss.push(series(l));
                if !fs.is_empty() {
                    fid_steps.push(series(fs));
                    fid_hours.push(series(fh));
                }
            }
            let png = |suffix: &str| {
                let mut name = out.file_name().unwrap_or_default().to_os_string();
                name.push(suffix);
                out.with_file_name(name)
            };
            let axes = |title, x, y, log_y| Axes { title, x, y, log_x: false, log_y };
            let mut written = vec![png("_loss.png")];
            line_chart(&written[0], &axes("Training loss", "step", "loss", true), &loss)?;
            if !fid_steps.is_empty() {
                written.push(png("_fid_steps.png"));
                line_chart(&written[1], &axes("FID of EMA samples", "step", "FID", true), &fid_steps)?;
                written.push(png("_fid_hours.png"));
                line_chart(&written[2], &axes("FID of EMA samples", "training hours", "FID", true), &fid_hours)?;
            }
            for path in written {
                println!("wrote {}", path.display());
            }
        }
        PlotCommand::Iterations { reports, out } => {
            let mut curves = Vec::new();
            for path in &reports {
                let report = read_json(path)?;
                let Some(models) = report["mmd"]["models"].as_array() else {
                    bail!("{}: no 'mmd.models' (a `cdm eval --only mmd` report?)", path.display());
                };
                let folder = |p: Option<&Path>| {
                    p.and_then(|p| p.file_name()).map_or(String::new(), |n| n.to_string_lossy().into_owned())
                };
                let dir = path.parent();
                let run = format!("{}/{}", folder(dir.and_then(|d| d.parent())), folder(dir));
                for model in models {
                    let Some(values) = model["mmd2_per_iteration"].as_array().filter(|v| !v.is_empty()) else {
                        bail!("{}: no 'mmd2_per_iteration' (the window must cover every step)", path.display());
                    };
                    let points = values.iter().enumerate().filter_map(|(k, v)| Some(((k + 1) as f64, v.as_f64()?)));
                    let label = match models.len() {
                        1 => run.clone(),
                        _ => format!("{run}: {}", model["model"].as_str().unwrap_or("?")),
                    };
                    curves.push(Series { label, points: points.collect(), markers_only: false });
                }
            }
            let axes = Axes {
                title: "MMD² after each parallel iteration",
                x: "iteration",
                y: "MMD² (values ≤ 0 not drawn)",
                log_x: false,
                log_y: true,
            };
            line_chart(&out, &axes, &curves)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

/// A JSON report, its path named in any error.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}
