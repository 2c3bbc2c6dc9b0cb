//! `cdm nll`, `cdm denoise` and `cdm sample`: what a trained checkpoint is for.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tch::{Kind, Tensor};

use cdm::checkpoint::{load_model, LoadedModel};
use cdm::data::{npy, Dataset, DATA_SPECS};
use cdm::distributed::Launch;
use cdm::eval::{against_posterior_mean, posterior_mean_levels, score_points, Batches, PointsToScore};
use cdm::likelihood::{bits_per_dim, Dequantization};
use cdm::plot::{image_grid, interleaved_rows, rows_by_class};
use cdm::precision::Precision;
use cdm::sample::{
    draw_from, Conditioning, Latency, Noise, ParallelOptions, SampleOptions, Samples, SamplingStats, Start,
};

use super::sampling::SamplingArgs;
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
        self.load_on(None)
    }

    /// The run on `device` instead of the one --device picks (a rank's own GPU).
    pub fn load_on(&self, device: Option<tch::Device>) -> Result<LoadedModel> {
        self.load_from(&self.ckpt, device)
    }

    /// The device --device picks.
    pub fn device(&self) -> Result<tch::Device> {
        self.device.device()
    }

    /// Another run directory, with the same weights choice, on `device` or the one --device picks.
    pub fn load_from(&self, dir: &std::path::Path, device: Option<tch::Device>) -> Result<LoadedModel> {
        let device = match device {
            Some(device) => device,
            None => self.device()?,
        };
        let mut loaded = load_model(dir, device, !self.raw_weights)
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
    let progress = super::follow(&bar);
    let out = f(&Batches { progress: Some(&progress), ..Batches::new(batch, loaded.options()) });
    bar.finish_and_clear();
    out
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
    let which = PointsToScore {
        level: args.level,
        n: args.n,
        seed: args.seed,
        dequantize: args.dequantize,
        continuous: args.continuous,
    };
    let (scores, log_p) = with_progress(&loaded, args.ckpt.batch, |b| score_points(&loaded.model, &data, &which, b))?;
    if let Some(out) = &args.out {
        npy::write_npy(out, &log_p).with_context(|| format!("--out {}", out.display()))?;
    }
    if args.json {
        let mut report = json!({"ckpt": args.ckpt.ckpt, "data": args.data});
        if let (Some(fields), serde_json::Value::Object(more)) =
            (report.as_object_mut(), serde_json::to_value(&scores)?)
        {
            fields.extend(more);
        }
        println!("{report}");
        return Ok(());
    }
    println!("{} points, D = {}, level {}", scores.n, scores.dim, scores.level);
    if let (Some(bpd), Some(how)) = (scores.bits_per_dim_8bit, &scores.bits_per_dim_8bit_convention) {
        println!("8-bit images:   {bpd:.4} bits/dim, {how}");
    }
    let scale = scores.continuous_points.as_ref().map_or(String::new(), |p| format!(", continuous density of {p}"));
    let nats = scores.log_likelihood_nats_per_dim;
    println!("log-likelihood: {nats:.5} nats/dim ({:.5} bits/dim NLL){scale}", bits_per_dim(nats));
    if let (Some(exact), Some(error)) = (scores.exact_nats_per_dim, scores.mean_abs_error_nats) {
        println!("exact:          {exact:.5} nats/dim; mean |error| per point {error:.5} nats");
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
    let input = npy::read_npy(&args.input).with_context(|| format!("--input {}", args.input.display()))?;
    let noise_seed = args.add_noise.then_some(args.seed);
    let x0 = with_progress(&loaded, args.ckpt.batch, |b| {
        cdm::eval::denoise(&loaded.model, &input, args.level, noise_seed, b)
    })
    .with_context(|| format!("--input {} --level {}", args.input.display(), args.level))?;
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
    #[arg(long, value_parser = super::positive::<usize>)]
    n: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
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
    #[arg(long, requires = "parallel")]
    compare_sequential: bool,
    /// On a CUDA device, replay each network call from a CUDA graph once its input shape has
    /// run twice as it is: one launch instead of one per kernel, for models whose calls the
    /// host's launches bound. Needs the CUDA extension library (scripts/build-cuda.sh); without
    /// it, or if a capture fails, it says so and runs as without.
    #[arg(long)]
    cuda_graphs: bool,
    /// Print what the run cost as one JSON object.
    #[arg(long)]
    json: bool,
    /// Ranks to start on this host that share each iteration of a --parallel run: each
    /// evaluates its share of the window's slots in one batch, the results gathered (the same
    /// samples as one process); a launcher's environment starts a rank without it.
    #[arg(long, value_name = "N", value_parser = super::positive::<usize>)]
    nproc: Option<usize>,
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

/// Images per row of an SDEdit grid (its clean, noised and sampled rows come in turn).
const SDEDIT_COLUMNS: usize = 10;

pub fn sample(args: SampleArgs) -> Result<()> {
    let launch = Launch::from_env()?;
    if args.nproc.is_some_and(|n| n > 1) && args.sampling.parallel.is_none() {
        bail!("--nproc shares the windows of a parallel run among ranks: add --parallel P");
    }
    if super::start_ranks(args.nproc, launch.as_ref(), false)? {
        return Ok(());
    }
    let device = launch.as_ref().map(|l| args.ckpt.device().map(|d| l.device(d))).transpose()?;
    let group = super::join(launch.as_ref(), device)?;
    // Rank 0 alone prints and writes; every rank draws the same samples in step.
    let writes = group.as_ref().is_none_or(|g| g.rank() == 0);
    let loaded = args.ckpt.load_on(device)?;
    check_count("--n", args.n, loaded.model.data_shape())?;
    let out = sample_out(&args.out, loaded.model.data_shape().len() == 3)?;
    let opts = args.sampling.options();
    let init = match (&args.init, args.from_level) {
        (Some(spec), Some(level)) => {
            let data = Dataset::open(spec).with_context(|| format!("--init {spec}"))?;
            let start = Start::from_data(&loaded.model, &data, args.n, level, opts.seed);
            Some(start.with_context(|| format!("--init {spec} --from-level {level}"))?)
        }
        _ => None,
    };
    let start = init.as_ref().map(|(_, start)| start);
    let batches =
        Batches { group: group.as_ref(), graphs: args.cuda_graphs, ..Batches::new(args.ckpt.batch, loaded.options()) };
    if args.compare_sequential {
        // A short run of each kind for one sample first (one sequential step, four parallel
        // steps in windows of two), so that neither timed run pays libtorch's first call of
        // each of its operations (docs/results.md §13.2).
        let sequential = SampleOptions { steps: 1, ..opts.sequential() };
        let window = opts.parallel.map(|p| ParallelOptions { window: 2, ..p });
        let parallel = SampleOptions { steps: opts.steps.min(4), parallel: window, ..opts.clone() };
        for warm_up in [sequential, parallel] {
            draw_from(&loaded.model, 1, &warm_up, &batches, None, &mut |_| {})?;
        }
    }
    let drawn = draw_samples(&loaded, args.n, &opts, &batches, start, writes)?;
    let mut report = json!({"n": args.n, "options": opts, "cost": drawn.stats});
    let what = match &opts.parallel {
        Some(p) => format!("parallel ({:?}, window {}, tol {})", p.solver, p.window, p.tol).to_lowercase(),
        None => "sequential".into(),
    };
    let quiet = args.json || !writes;
    if !quiet {
        print_cost(&what, &drawn.stats);
    }
    if args.compare_sequential {
        let reference = draw_samples(&loaded, args.n, &opts.sequential(), &batches, start, writes)?;
        let gap = (&drawn.x - &reference.x).to_kind(Kind::Double);
        let latency = Latency::of(&loaded.model, &opts, &drawn, &reference, &batches)?;
        report["sequential_cost"] = json!(reference.stats);
        report["latency"] = json!(latency);
        report["max_abs_difference"] = json!(gap.abs().max().double_value(&[]));
        report["rms_difference"] = json!(gap.square().mean(Kind::Double).sqrt().double_value(&[]));
        if !quiet {
            print_cost("sequential", &reference.stats);
            print_comparison(&latency, &gap);
        }
    }
    if !writes {
        return Ok(());
    }
    if args.json {
        println!("{report}");
    }
    let samples = &drawn.x;
    match (out, &init) {
        (SampleOut::Array, _) => npy::write_npy(&args.out, samples)?,
        (SampleOut::Grid, Some((clean, start))) => {
            let cols = args.n.min(SDEDIT_COLUMNS);
            image_grid(&args.out, &interleaved_rows(&[clean, &start.x_t, samples], cols), cols)?
        }
        (SampleOut::Grid, None) => {
            let (grid, cols) = match &drawn.labels {
                Some(labels) if !matches!(opts.conditioning, Conditioning::Class(_)) => rows_by_class(samples, labels),
                _ => (samples.shallow_clone(), (args.n as f64).sqrt().ceil() as usize),
            };
            image_grid(&args.out, &grid, cols)?;
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

/// One line for a run: rounds of evaluation, states per trajectory and the largest batch.
fn print_cost(what: &str, c: &SamplingStats) {
    println!(
        "{what}: {} iterations, {} network evaluations per sample, largest batch {}, {:.2} s",
        c.iterations, c.evaluations, c.largest_batch, c.seconds
    );
}

/// How far apart a parallel run's samples are from the sequential ones, and where its time goes.
fn print_comparison(latency: &Latency, gap: &Tensor) {
    println!(
        "parallel against sequential samples: max |difference| {:.3e}, rms {:.3e}",
        gap.abs().max().double_value(&[]),
        gap.square().mean(Kind::Double).sqrt().double_value(&[])
    );
    println!(
        "one iteration {:.2} ms against {:.2} ms for one evaluation of its window ({:.2}x); {:.2}x faster than sequential",
        latency.iteration_seconds * 1e3,
        latency.window_evaluation_seconds * 1e3,
        latency.iteration_over_evaluation,
        latency.speed_up
    );
}

/// `n` samples from a loaded model with a progress bar (see [`cdm::sample::draw_from`]).
fn draw_samples(
    loaded: &LoadedModel,
    n: usize,
    opts: &SampleOptions,
    batches: &Batches,
    start: Option<&Start>,
    shown: bool,
) -> Result<Samples> {
    let bar = if shown { progress_bar(0, "sample") } else { indicatif::ProgressBar::hidden() };
    let progress = super::follow(&bar);
    let batches = Batches { progress: Some(&progress), ..*batches };
    let samples = draw_from(&loaded.model, n, opts, &batches, start, &mut |_| {})?;
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
