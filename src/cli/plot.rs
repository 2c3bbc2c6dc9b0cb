//! `cdm plot`: pictures of a trained model against the exact density.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use cdm::checkpoint::load_model;
use cdm::data::Dataset;
use cdm::eval::Batches;
use cdm::plot::{cubes_figure, denoising_strip, density_figure, iterations_figure, strip_levels, training_curves};

use super::{check_count, DeviceArg};

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
            let batches = Batches::new(1024, loaded.options());
            density_figure(&out, &loaded.model, density, grid, extent, samples, &batches)?;
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
            let levels = match levels.is_empty() {
                true => strip_levels(loaded.model.schedule().timesteps()),
                false => levels,
            };
            check_count("--n", n, &dataset.shape())?;
            let x0 = dataset.eval_points(n, seed);
            let x0 = x0.narrow(0, 0, (n as i64).min(x0.size()[0]));
            let batches = Batches::new(n, loaded.options());
            denoising_strip(&out, &loaded.model, &x0, &levels, seed, &batches).context("--levels")?;
            println!("wrote {} (columns: clean, then noisy/denoised at levels {levels:?})", out.display());
        }
        PlotCommand::Cubes { reports, out } => {
            cubes_figure(&out, &reports)?;
            println!("wrote {}", out.display());
        }
        PlotCommand::Training { runs, out } => {
            for path in training_curves(&out, &runs)? {
                println!("wrote {}", path.display());
            }
        }
        PlotCommand::Iterations { reports, out } => {
            iterations_figure(&out, &reports)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
