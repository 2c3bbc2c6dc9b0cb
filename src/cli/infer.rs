//! `cdm nll`, `cdm denoise` and `cdm sample`: what a trained checkpoint is for.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tch::{Kind, Tensor};

use cdm::data::{npy, Dataset, DATA_SPECS};
use cdm::eval::{against_posterior_mean, posterior_mean_levels, Batches};
use cdm::likelihood::{bits_per_dim, bits_per_dim_8bit, convention_for, dequantize, log_prob, Dequantization};
use cdm::plot::image_grid;
use cdm::predictor::{Conditioned, NoisePredictor};
use cdm::rng::Rng;
use cdm::sample::{draw, time_windows, Noise, SampleOptions, Samples, SamplingStats, Start};
use cdm::schedule::levels_like;
use cdm::train::{load_model, LoadedModel, Precision};

use super::{check_count, output_file, progress_bar, DeviceArg};

/// Flags every command that reads a checkpoint shares.
#[derive(Args)]
pub struct CkptArgs {
    /// Run directory written by `cdm train`.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub raw_weights: bool,
    /// Points per forward pass.
    #[arg(long, default_value_t = 1024, value_parser = super::positive::<usize>)]
    pub batch: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Compute in this precision instead of the run's: f32 or f64 converts the weights; bf16
    /// computes the network under bfloat16 autocast (f32 weights; heads, likelihood and losses
    /// in f32).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
}

impl CkptArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        self.load_from(&self.ckpt)
    }

    /// Another run directory, with the same weights choice and device.
    pub fn load_from(&self, dir: &std::path::Path) -> Result<LoadedModel> {
        let mut loaded = load_model(dir, self.device.device()?, !self.raw_weights)
            .with_context(|| format!("loading checkpoint {}", dir.display()))?;
        if let Some(precision) = self.precision {
            loaded.set_precision(precision);
        }
        Ok(loaded)
    }
}

/// Runs `f` with the chunking of `loaded` (`batch` points a pass, on its device, in its
/// precision), a progress bar on stderr following the chunks.
pub fn with_progress<T>(
    loaded: &LoadedModel,
    batch: usize,
    f: impl FnOnce(&Batches) -> cdm::Result<T>,
) -> cdm::Result<T> {
    let bar = progress_bar(0, "eval");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let out = f(&Batches { progress: Some(&progress), ..Batches::new(batch, loaded.options()) });
    bar.finish_and_clear();
    out
}

/// Runs `f` over chunks of `x` (on the model's device, in its precision) and concatenates the
/// results on the CPU.
pub fn batched(
    loaded: &LoadedModel,
    x: &Tensor,
    batch: usize,
    f: impl FnMut(&Tensor, i64) -> cdm::Result<Tensor>,
) -> Result<Tensor> {
    Ok(with_progress(loaded, batch, |b| b.map(x, f))?)
}

#[derive(Args)]
pub struct NllArgs {
    #[command(flatten)]
    ckpt: CkptArgs,
    #[arg(long, help = format!("Data to score: {DATA_SPECS}"))]
    data: String,
    /// Noise level t: 0 scores the data density, t > 0 the density p_t of x_t (built-in data
    /// are noised to level t first).
    #[arg(long, default_value_t = 0)]
    level: usize,
    /// Points to draw from a built-in density (files are scored whole).
    #[arg(long, default_value_t = 10_000, value_parser = super::positive::<usize>)]
    n: usize,
    /// Seed of the held-out points drawn from a built-in density.
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Write the per-sample log-likelihoods (nats) here (.npy).
    #[arg(long, value_parser = super::npy_file)]
    out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// 8-bit images (x = k/127.5 − 1) are reported in bits/dim of the discrete data: with
    /// uniform dequantization (a true bound; the default for 8-bit data at level 0) or the
    /// paper's convention (no dequantization; not a bound).
    #[arg(long, value_enum)]
    dequantize: Option<Dequantization>,
    /// Score 8-bit images as they are, as continuous points on the [−1, 1] scale (no 8-bit figure).
    #[arg(long, conflicts_with = "dequantize")]
    continuous: bool,
}

pub fn nll(args: NllArgs) -> Result<()> {
    let loaded = args.ckpt.load()?;
    let data = Dataset::open(&args.data).with_context(|| format!("--data {}", args.data))?;
    check_count("--n", args.n, loaded.model.data_shape())?;
    let clean = data.eval_points(args.n, args.seed);
    let schedule = loaded.model.schedule();
    schedule.check_level(args.level)?;
    // Built-in data are clean samples; at t > 0 score them noised to level t.
    let x = match data.density() {
        Some(_) if args.level > 0 => {
            let eps = Noise::new(args.seed, 0, clean.size()[0] as usize).normal(
                &clean.size()[1..],
                Kind::Double,
                tch::Device::Cpu,
            );
            schedule.add_noise(&clean, &eps, &levels_like(args.level, &clean))
        }
        _ => clean,
    };
    // 8-bit images get the 8-bit figure unless told otherwise.
    let how = convention_for(&x, args.level, args.dequantize, args.continuous).context("--dequantize")?;
    let x = match how {
        Some(how) => dequantize(&x, how, &mut Rng::new(args.seed)),
        None => x,
    };
    let log_p = batched(&loaded, &x, args.ckpt.batch, |chunk, _| {
        log_prob(loaded.model.classifier()?, chunk, args.level, None)
    })?
    .to_kind(Kind::Double);
    let dim = x.size()[1..].iter().product::<i64>() as f64;
    let nats_per_dim = log_p.mean(Kind::Double).double_value(&[]) / dim;
    let mut report = json!({
        "ckpt": args.ckpt.ckpt, "data": args.data, "level": args.level, "n": x.size()[0], "dim": dim,
        "log_likelihood_nats_per_dim": nats_per_dim, "nll_bits_per_dim": bits_per_dim(nats_per_dim),
    });
    if let Some(how) = how {
        report["continuous_points"] = json!(match how {
            Dequantization::Uniform => "the dequantized points on the [−1, 1] scale",
            Dequantization::Paper => "the 8-bit grid points on the [−1, 1] scale",
        });
        report["bits_per_dim_8bit"] = json!(bits_per_dim_8bit(nats_per_dim));
        report["bits_per_dim_8bit_convention"] = json!(match how {
            Dequantization::Uniform => "uniform dequantization (upper bound on the discrete NLL)",
            Dequantization::Paper => "paper convention: no dequantization, +7 (not a bound)",
        });
    }
    let abar = schedule.alpha_bar(args.level);
    let exact =
        data.density().and_then(|d| if args.level == 0 { Some(d.log_prob(&x)) } else { d.log_prob_noisy(&x, abar) });
    if let Some(exact) = exact {
        let exact_per_dim = exact.mean(Kind::Double).double_value(&[]) / dim;
        report["exact_nats_per_dim"] = json!(exact_per_dim);
        report["mean_abs_error_nats"] = json!((&log_p - &exact).abs().mean(Kind::Double).double_value(&[]));
    }
    if let Some(out) = &args.out {
        npy::write_npy(out, &log_p).with_context(|| format!("--out {}", out.display()))?;
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{} points, D = {dim}, level {}", x.size()[0], args.level);
        if let (Some(bpd), Some(how)) =
            (report["bits_per_dim_8bit"].as_f64(), report["bits_per_dim_8bit_convention"].as_str())
        {
            println!("8-bit images:   {bpd:.4} bits/dim, {how}");
        }
        let scale = match report["continuous_points"].as_str() {
            Some(points) => format!(", continuous density of {points}"),
            None => String::new(),
        };
        println!("log-likelihood: {nats_per_dim:.5} nats/dim ({:.5} bits/dim NLL){scale}", bits_per_dim(nats_per_dim));
        if let Some(exact) = report["exact_nats_per_dim"].as_f64() {
            println!(
                "exact:          {exact:.5} nats/dim; mean |error| per point {:.5} nats",
                report["mean_abs_error_nats"]
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct DenoiseArgs {
    #[command(flatten)]
    ckpt: CkptArgs,
    /// Noisy inputs x_t (.npy, N x D or N x C x H x W); clean inputs with --add-noise.
    #[arg(long)]
    input: PathBuf,
    /// Noise level t of the inputs (1..=T).
    #[arg(long)]
    level: usize,
    /// Treat --input as clean data: noise it to level t first (seeded) and report the MSE.
    #[arg(long)]
    add_noise: bool,
    /// Seed of the noise for --add-noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write E[x0 | x_t] (.npy).
    #[arg(long, default_value = "denoised.npy", value_parser = super::npy_file)]
    out: PathBuf,
}

pub fn denoise(args: DenoiseArgs) -> Result<()> {
    let loaded = args.ckpt.load()?;
    let schedule = loaded.model.schedule();
    if args.level == 0 || args.level > schedule.timesteps() {
        bail!("--level {} must be in 1..={}", args.level, schedule.timesteps());
    }
    let input = npy::read_npy(&args.input).with_context(|| format!("--input {}", args.input.display()))?;
    loaded.model.check_input(&input).with_context(|| format!("--input {}", args.input.display()))?;
    let denoiser = Conditioned { model: &loaded.model, labels: None };
    let x0 = batched(&loaded, &input, args.ckpt.batch, |chunk, start| {
        let level = levels_like(args.level, chunk);
        let x_t = if args.add_noise {
            let eps = Noise::new(args.seed, start as u64, chunk.size()[0] as usize).normal(
                &chunk.size()[1..],
                chunk.kind(),
                chunk.device(),
            );
            schedule.add_noise(chunk, &eps, &level)
        } else {
            chunk.shallow_clone()
        };
        Ok(schedule.x0_from_eps(&x_t, &denoiser.eps(&x_t, &level)?, &level))
    })?;
    npy::write_npy(&args.out, &x0).with_context(|| format!("--out {}", args.out.display()))?;
    if args.add_noise {
        let mse = (&x0 - input.to_kind(x0.kind())).square().mean(Kind::Double).double_value(&[]);
        println!("denoised {} inputs at level {}: MSE per dim {mse:.6}", input.size()[0], args.level);
    }
    Ok(())
}

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    ckpt: CkptArgs,
    /// Number of samples.
    #[arg(long)]
    n: usize,
    #[command(flatten)]
    options: SampleOptions,
    /// Start from data instead of pure noise (SDEdit, Meng et al. 2022): the first --n points
    /// of this data spec (e.g. `mnist:split=test`, `npy:FILE`), noised to --from-level; a
    /// conditional model gets their labels unless --class or --unconditional says otherwise.
    #[arg(long, requires = "from_level")]
    init: Option<String>,
    /// The level (1..=T) that --init's points are noised to; --steps counts the steps from it.
    #[arg(long, requires = "init")]
    from_level: Option<usize>,
    /// Output: FILE.npy (the array), FILE.png (a grid; one row per class for a conditional
    /// model; with --init, rows of clean, noised and sampled images in turn), or a directory
    /// (one PNG per image).
    #[arg(long)]
    out: PathBuf,
    /// With --parallel: also draw the same samples sequentially, and report both runs' cost and
    /// how far apart their samples are.
    #[arg(long)]
    compare_sequential: bool,
    /// Print what the run cost as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The first `n` points of `spec` ([n, ..], CPU) and the SDEdit start made by noising them to
/// `level` with the seed's starting-point streams.
fn noised_start(loaded: &LoadedModel, spec: &str, level: usize, n: usize, seed: u64) -> Result<(Tensor, Start)> {
    let data = Dataset::open(spec).with_context(|| format!("--init {spec}"))?;
    let (x, labels) = (data.first_points(n, seed), data.labels().map(Tensor::shallow_clone));
    if (x.size()[0] as usize) < n {
        bail!("--init {spec}: has {} points, --n asks for {n}", x.size()[0]);
    }
    let x = x.narrow(0, 0, n as i64).to_kind(Kind::Double);
    let labels = labels.map(|l| l.narrow(0, 0, n as i64));
    let start = Start::sdedit(&loaded.model, &x, labels.as_ref(), level, seed)
        .with_context(|| format!("--init {spec} --from-level {level}"))?;
    Ok((x, start))
}

/// What `cdm sample --out` writes.
enum SampleOut {
    /// FILE.npy: the array.
    Array,
    /// FILE.png: a grid of images.
    Grid,
    /// A folder of PNGs, one per image.
    Folder,
}

/// What `out` asks for, checked against the data before any sampling: images may go to any of
/// them, vector data only to an array.
fn sample_out(out: &std::path::Path, is_image: bool) -> Result<SampleOut> {
    let kind = match (out.extension().and_then(|e| e.to_str()), is_image) {
        (Some("npy"), _) => SampleOut::Array,
        (Some("png"), true) => SampleOut::Grid,
        (None, true) => return Ok(SampleOut::Folder),
        (_, true) => bail!("--out {}: expected FILE.npy, FILE.png or a folder", out.display()),
        (_, false) => bail!("--out {}: expected FILE.npy (the model's data are vectors, not images)", out.display()),
    };
    output_file(out, &["npy", "png"]).map_err(|e| anyhow::anyhow!("--out {e}"))?;
    Ok(kind)
}

pub fn sample(args: SampleArgs) -> Result<()> {
    let loaded = args.ckpt.load()?;
    check_count("--n", args.n, loaded.model.data_shape())?;
    let is_image = loaded.model.data_shape().len() == 3;
    let out = sample_out(&args.out, is_image)?;
    if args.compare_sequential && args.options.parallel.is_none() {
        bail!("--compare-sequential compares a --parallel run with the sequential one; add --parallel P");
    }
    let init = match (&args.init, args.from_level) {
        (Some(spec), Some(level)) => Some(noised_start(&loaded, spec, level, args.n, args.options.seed)?),
        _ => None,
    };
    let start = init.as_ref().map(|(_, start)| start);
    if args.compare_sequential {
        // One step for one sample first, so neither timed run pays libtorch's warm-up.
        let warm_up = SampleOptions { steps: 1, parallel: None, ..args.options.clone() };
        draw(&loaded.model, loaded.options(), 1, &warm_up, 1, None, &mut |_| {})?;
    }
    let Samples { x: samples, labels, stats, windows, .. } =
        draw_samples(&loaded, args.n, &args.options, args.ckpt.batch, start, &mut |_| {})?;
    let mut report = json!({"n": args.n, "options": args.options, "cost": stats});
    if args.compare_sequential {
        let sequential = SampleOptions { parallel: None, ..args.options.clone() };
        let reference = draw_samples(&loaded, args.n, &sequential, args.ckpt.batch, start, &mut |_| {})?;
        let gap = (&samples - &reference.x).to_kind(Kind::Double);
        report["sequential_cost"] = json!(reference.stats);
        report["latency"] = latency(&loaded, &args, &stats, &windows, &reference.stats)?;
        report["max_abs_difference"] = json!(gap.abs().max().double_value(&[]));
        report["rms_difference"] = json!(gap.square().mean(Kind::Double).sqrt().double_value(&[]));
    }
    if args.json {
        println!("{report}");
    } else {
        print_cost(&report);
    }
    match (out, &init) {
        (SampleOut::Array, _) => npy::write_npy(&args.out, &samples)?,
        (SampleOut::Grid, Some((clean, start))) => {
            let cols = args.n.min(SDEDIT_COLUMNS) as i64;
            let mut rows = Vec::new();
            for first in (0..args.n as i64).step_by(cols as usize) {
                let len = cols.min(args.n as i64 - first);
                for images in [clean, &start.x_t, &samples] {
                    rows.push(pad_row(&images.narrow(0, first, len).to_kind(Kind::Double), cols));
                }
            }
            image_grid(&args.out, &Tensor::cat(&rows, 0), cols as usize)?;
        }
        (SampleOut::Grid, None) => {
            // Every class in turn: lay the grid out with one row per class.
            let rows = labels
                .as_ref()
                .filter(|_| args.options.class.is_none())
                .map_or(0, |l| l.iter().max().map_or(0, |m| m + 1));
            let grid = match (rows, &labels) {
                (r, Some(labels)) if r > 0 => {
                    // A row per class, padded where n is not a multiple of the classes.
                    let cols = args.n.div_ceil(r as usize) as i64;
                    let rows: Vec<Tensor> = (0..r)
                        .map(|c| {
                            let index: Vec<i64> =
                                (0..labels.len() as i64).filter(|&i| labels[i as usize] == c).collect();
                            let index = Tensor::from_slice(&index).to_device(samples.device());
                            pad_row(&samples.index_select(0, &index).to_kind(Kind::Double), cols)
                        })
                        .collect();
                    (Tensor::cat(&rows, 0), cols as usize)
                }
                _ => (samples.shallow_clone(), (args.n as f64).sqrt().ceil() as usize),
            };
            image_grid(&args.out, &grid.0, grid.1)?;
        }
        (SampleOut::Folder, _) => {
            std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
            for i in 0..args.n as i64 {
                image_grid(&args.out.join(format!("{i:05}.png")), &samples.narrow(0, i, 1), 1)?;
            }
        }
    }
    if !args.json {
        println!("{} samples written to {}", args.n, args.out.display());
    }
    Ok(())
}

/// Where a parallel run's time goes: the run against its network calls replayed alone (each
/// iteration's window evaluated in one batch, nothing else), so that their ratio is the cost
/// of one iteration over one batched evaluation of its window; and the parallel run against
/// the sequential one by the clock.
fn latency(
    loaded: &LoadedModel,
    args: &SampleArgs,
    parallel: &SamplingStats,
    windows: &[usize],
    sequential: &SamplingStats,
) -> Result<serde_json::Value> {
    let n = args.n.min(args.ckpt.batch.max(1));
    let network = time_windows(&loaded.model, loaded.options(), n, &args.options, windows)?;
    let iterations = parallel.iterations.max(1) as f64;
    Ok(json!({
        "iteration_seconds": parallel.seconds / iterations,
        "window_evaluation_seconds": network / iterations,
        "iteration_over_evaluation": parallel.seconds / network,
        "sequential_step_seconds": sequential.seconds / sequential.iterations.max(1) as f64,
        "speed_up": sequential.seconds / parallel.seconds,
    }))
}

/// One line per run: rounds of evaluation, states per trajectory and the largest batch.
fn print_cost(report: &serde_json::Value) {
    let line = |what: &str, c: &serde_json::Value| {
        println!(
            "{what}: {} iterations, {} network evaluations per sample, largest batch {}, {:.2} s",
            c["iterations"],
            c["evaluations"],
            c["largest_batch"],
            c["seconds"].as_f64().unwrap_or(f64::NAN)
        )
    };
    match report["options"]["parallel"].as_u64() {
        Some(p) => line(
            &format!("parallel ({}, window {p}, tol {})", report["options"]["solver"], report["options"]["tol"]),
            &report["cost"],
        ),
        None => line("sequential", &report["cost"]),
    }
    if !report["sequential_cost"].is_null() {
        line("sequential", &report["sequential_cost"]);
        println!(
            "parallel against sequential samples: max |difference| {:.3e}, rms {:.3e}",
            report["max_abs_difference"].as_f64().unwrap_or(f64::NAN),
            report["rms_difference"].as_f64().unwrap_or(f64::NAN)
        );
        let latency = &report["latency"];
        let seconds = |key: &str| latency[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "one iteration {:.2} ms against {:.2} ms for one evaluation of its window ({:.2}x); {:.2}x faster than sequential",
            seconds("iteration_seconds") * 1e3,
            seconds("window_evaluation_seconds") * 1e3,
            seconds("iteration_over_evaluation"),
            seconds("speed_up")
        );
    }
}

/// Images per row of an SDEdit grid (its clean, noised and sampled rows come in turn).
const SDEDIT_COLUMNS: usize = 10;

/// `images` [len, ..] padded with white images to `cols`, so grid rows line up.
fn pad_row(images: &Tensor, cols: i64) -> Tensor {
    let mut size = images.size();
    let len = size[0];
    size[0] = cols - len;
    Tensor::cat(&[images.shallow_clone(), Tensor::ones(&size, (images.kind(), images.device()))], 0)
}

/// `n` samples from a loaded model with a progress bar (see [`cdm::sample::draw`]).
pub fn draw_samples(
    loaded: &LoadedModel,
    n: usize,
    opts: &SampleOptions,
    batch: usize,
    start: Option<&Start>,
    on_step: &mut dyn FnMut(&cdm::sample::Step),
) -> Result<Samples> {
    let bar = progress_bar((n.div_ceil(batch.max(1)) * opts.steps) as u64, "sample");
    let samples = draw(&loaded.model, loaded.options(), n, opts, batch, start, &mut |step| {
        bar.inc(1);
        on_step(step)
    })?;
    bar.finish_and_clear();
    Ok(samples)
}

#[derive(Args)]
pub struct MmseArgs {
    #[command(flatten)]
    ckpt: CkptArgs,
    /// Levels to test (default: 1%, 5%, 10%, 25%, 50%, 75% and 95% of T).
    #[arg(long, value_delimiter = ',')]
    levels: Vec<usize>,
    /// Held-out points per level.
    #[arg(long, default_value_t = 10_000, value_parser = super::positive::<usize>)]
    n: usize,
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// The denoiser against the exact posterior mean E[x0 | x_t] of built-in data that has one.
pub fn mmse(args: MmseArgs) -> Result<()> {
    let loaded = args.ckpt.load()?;
    let data = Dataset::open(&loaded.config.data)?;
    let Some(density) = data.density() else {
        bail!("{}: trained on '{}', which has no exact posterior mean", args.ckpt.ckpt.display(), loaded.config.data);
    };
    let levels = match args.levels.is_empty() {
        true => posterior_mean_levels(loaded.model.schedule().timesteps()),
        false => args.levels.clone(),
    };
    check_count("--n", args.n, loaded.model.data_shape())?;
    let x0 = data.eval_points(args.n, args.seed);
    let eps = Noise::new(args.seed, 0, args.n).normal(&x0.size()[1..], Kind::Double, tch::Device::Cpu);
    let rows = with_progress(&loaded, args.ckpt.batch, |batches| {
        against_posterior_mean(&loaded.model, density, &x0, &eps, &levels, batches)
    })
    .with_context(|| format!("--levels {levels:?}"))?;
    let rows: Vec<serde_json::Value> = rows.iter().map(|r| json!(r)).collect();
    if args.json {
        println!("{}", json!({"ckpt": args.ckpt.ckpt, "data": loaded.config.data, "n": args.n, "levels": rows}));
    } else {
        println!("{:>6} {:>10} {:>12} {:>12} {:>9}", "level", "alpha_bar", "MSE", "MMSE", "excess");
        for r in &rows {
            println!(
                "{:>6} {:>10.4} {:>12.6} {:>12.6} {:>8.2}%",
                r["level"],
                r["alpha_bar"].as_f64().unwrap_or(f64::NAN),
                r["mse"].as_f64().unwrap_or(f64::NAN),
                r["mmse"].as_f64().unwrap_or(f64::NAN),
                r["excess_percent"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
