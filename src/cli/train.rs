//! `cdm train`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use cdm::config_file::ConfigFile;
use cdm::data::{Dataset, DATA_SPECS};
use cdm::distributed::{Launch, ProcessGroup};
use cdm::loss::ZetaPrior;
use cdm::model::ModelKind;
use cdm::run_lock::RunLock;
use cdm::schedule::ScheduleKind;
use cdm::signals;
use cdm::train::resolve::{resolve, BackboneChoice, LevelsChoice, Overrides, UnetPreset};
use cdm::train::{Precision, RunConfig, Trainer};

use super::{progress_bar, spinner, DeviceArg, Interrupted};

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long, help = format!("Training data: {DATA_SPECS}"))]
    data: Option<String>,
    /// Run directory: config.json, checkpoint.safetensors, log.jsonl, pictures.
    #[arg(long)]
    out: PathBuf,
    /// A TOML or JSON file with any of `data`, `schedule`, `backbone`, `train`; flags override
    /// it. Without it, a run already in `--out` gives every setting, so resuming repeats no flag.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Delete the run in --out (its config.json, checkpoint and log.jsonl) and start a new one
    /// there; without it a run in --out is only ever resumed.
    #[arg(long)]
    restart: bool,
    /// Total optimiser steps (raise it to extend a finished run) [default: 2000 for images, 5000 otherwise].
    #[arg(long, value_parser = super::positive::<u64>)]
    steps: Option<u64>,
    /// Samples per step [default: 32 for images, 1024 otherwise].
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate [default: 4e-4 for images, 1e-3 otherwise].
    #[arg(long)]
    lr: Option<f64>,
    /// Noise schedule.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// T, the number of noisy levels [default: for a CDM of D-dimensional vectors the fewest
    /// whose neighbours overlap, 10·√(D/2), but at least 50; 1000 otherwise].
    #[arg(long)]
    timesteps: Option<usize>,
    /// Seed of all randomness.
    #[arg(long)]
    seed: Option<u64>,
    /// Weight of the cross-entropy term [default: 3 for a CDM of vector data, where it makes the
    /// likelihood 2-3× more accurate (docs/results.md §15.3); 1 otherwise].
    #[arg(long)]
    ce_weight: Option<f64>,
    /// Weight of the denoising (MSE) term.
    #[arg(long)]
    mse_weight: Option<f64>,
    /// Weigh the MSE at each level by min(SNR, GAMMA)/SNR (Min-SNR-γ; 5 in its paper), or
    /// `off` [default: 5 for images, off otherwise].
    #[arg(long, value_name = "GAMMA|off", value_parser = number_or_off)]
    min_snr: Option<NumberOrOff>,
    /// Clip the gradient's global norm to C, or `off` [default: 1].
    #[arg(long, value_name = "C|off", value_parser = number_or_off)]
    grad_clip: Option<NumberOrOff>,
    /// Steps between FIDs of EMA samples against the training data, written to log.jsonl
    /// (image data; 0: none) [default: 0].
    #[arg(long, value_name = "K")]
    fid_every: Option<u64>,
    /// Samples per periodic FID [default: 10000].
    #[arg(long, value_name = "N")]
    fid_samples: Option<usize>,
    /// Share of a CDM's batch drawn at low levels, with π(t) ∝ 1/(t+1) (the rest uniform); the
    /// cross-entropy is corrected for it, so the model stays exact; 0 or `off`: uniform levels
    /// [default: 0.5 for a CDM of vector data, 0 otherwise]
    #[arg(long, value_name = "SHARE|off", value_parser = number_or_off)]
    low_levels: Option<NumberOrOff>,
    /// Strides of the level subsets a CDM's cross-entropy runs over, taken in turn per sample
    /// (e.g. 1,8,64): stride k makes a level compete with the levels k apart, so log p_0 is
    /// pinned by a short chain of ratios instead of T+1 adjacent ones [default: 1]
    #[arg(long, value_delimiter = ',', value_name = "K,..")]
    level_strides: Option<Vec<usize>>,
    /// Fourier features sin(π 2^k x), cos(π 2^k x) of the MLP's or ConvNet's input for each
    /// exponent k listed (e.g. 0,1,2,3,4,5): sharp log-density ratios near the data's edges
    /// become cheap to learn; `off`: none [default: 0,1,2,3,4,5 for a CDM's MLP on data with hard
    /// edges (uniform cubes), none otherwise]
    #[arg(long, allow_hyphen_values = true, value_name = "K,..|off", value_parser = exponents_or_off)]
    fourier: Option<Exponents>,
    /// A classification diffusion model, or the denoising baseline.
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
    /// Backbone (default: the UNet for [C, H, W] data, the MLP otherwise).
    #[arg(long, value_enum)]
    backbone: Option<BackboneChoice>,
    /// UNet size: tiny (about 1 M parameters at 28×28), mnist (6 M), cifar10 (the DDPM/CDM paper's 35.7 M),
    /// celeba64 (DDIM's CelebA 64×64 network).
    #[arg(long, value_enum)]
    preset: Option<UnetPreset>,
    /// MLP width.
    #[arg(long)]
    hidden: Option<usize>,
    /// ConvNet or UNet channels at full resolution.
    #[arg(long)]
    channels: Option<usize>,
    /// Residual blocks (MLP: in total; ConvNet and UNet: per resolution).
    #[arg(long)]
    blocks: Option<usize>,
    /// Nonlinear pixel features in a CDM's UNet head (0: the paper's head).
    #[arg(long)]
    head_channels: Option<usize>,
    /// Precision of weights and data; bf16: f32 weights, the network under bfloat16 autocast.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Add the exact outputs of a Gaussian fit of the data (mean and covariance) to the network's: level
    /// log-densities to a CDM's logits, the noise prediction to a DDM's.
    #[arg(long)]
    gaussian_base: bool,
    /// A conditional model's Gaussian base: one Gaussian per class, and their mixture for the
    /// null label (implies --gaussian-base).
    #[arg(long)]
    base_per_class: bool,
    /// Condition on the data's labels (with label dropout, for classifier-free guidance).
    #[arg(long)]
    conditional: bool,
    /// Flip images left-right at random.
    #[arg(long)]
    hflip: bool,
    /// Train 8-bit images uniformly dequantized, (k + u)/128 − 1, fresh u each step.
    #[arg(long)]
    dequantize: bool,
    /// Steps between sample grids written to OUT/samples (image data) [default: 500 for images].
    #[arg(long)]
    sample_every: Option<u64>,
    /// Steps between checkpoints; the last step and a step stopped by Ctrl-C or SIGTERM are
    /// always saved [default: 500 for images, 1000 otherwise].
    #[arg(long, value_parser = super::positive::<u64>)]
    checkpoint_every: Option<u64>,
    /// A DDM's training levels: the integers 1..=T, or a continuous log SNR from a truncated
    /// logistic fitted to the data's variances (the CDL paper's recipe; its range must lie in
    /// the schedule's, which `--schedule logsnr` widens).
    #[arg(long, value_enum)]
    levels: Option<LevelsChoice>,
    /// Add the contrastive diffusion loss with this weight (a DDM; 1 in the CDL paper).
    #[arg(long, value_name = "W")]
    cdl_weight: Option<f64>,
    /// Images per batch that get the CDL term (default 2).
    #[arg(long)]
    cdl_images: Option<usize>,
    /// Monte-Carlo draws per image for the CDL's log-densities (default: the batch size).
    #[arg(long)]
    cdl_draws: Option<usize>,
    /// Where the CDL's extra noise ζ is drawn (default: logistic on log SNR [6, 15]).
    #[arg(long, value_enum)]
    cdl_zeta: Option<ZetaPrior>,
    /// Start from this run's EMA weights with a fresh optimiser (fine-tuning); its settings are
    /// the defaults here, so flags need only say what changes.
    #[arg(long, value_name = "RUN")]
    init_from: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// On a CUDA device, replay each step's loss and backward pass from a CUDA graph after the
    /// first two steps: one launch instead of one per kernel, for models whose steps the host's
    /// launches bound. The same draws, so the same training. Needs the CUDA extension library
    /// (scripts/build-cuda.sh); without it, if a capture fails, or with the contrastive
    /// diffusion loss, it says so and trains as without.
    #[arg(long)]
    cuda_graphs: bool,
    /// Data-parallel ranks to start on this host (one per GPU with CUDA; on a CPU the cores are
    /// split among them); --batch stays the global batch. A launcher's environment (torchrun's
    /// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) starts a rank without it.
    #[arg(long, value_name = "N", value_parser = super::positive::<usize>)]
    nproc: Option<usize>,
    /// Seconds a rank of a data-parallel job waits for the others in a collective before it
    /// stops with an error (a rank that dies is noticed at once).
    #[arg(long, value_name = "SECONDS", default_value_t = cdm::distributed::DEFAULT_TIMEOUT.as_secs_f64(), value_parser = super::positive_number)]
    dist_timeout: f64,
}

/// A setting given as a number, or switched off.
#[derive(Clone, Copy)]
struct NumberOrOff(Option<f64>);

fn number_or_off(s: &str) -> std::result::Result<NumberOrOff, String> {
    match s {
        "off" => Ok(NumberOrOff(None)),
        _ => s.parse().map(|v| NumberOrOff(Some(v))).map_err(|_| format!("expected a number or 'off', got '{s}'")),
    }
}

/// Fourier exponents, none for `off`.
#[derive(Clone)]
struct Exponents(Vec<i32>);

fn exponents_or_off(s: &str) -> std::result::Result<Exponents, String> {
    if s == "off" {
        return Ok(Exponents(Vec::new()));
    }
    let exponent = |k: &str| k.trim().parse().map_err(|_| format!("expected exponents like 0,1,2 or 'off', got '{s}'"));
    s.split(',').map(exponent).collect::<std::result::Result<_, _>>().map(Exponents)
}

impl TrainArgs {
    /// The flags given, as the library's overrides of a run's settings.
    fn overrides(&self) -> Overrides {
        Overrides {
            data: self.data.clone(),
            model: self.model,
            backbone: self.backbone,
            preset: self.preset,
            hidden: self.hidden,
            channels: self.channels,
            blocks: self.blocks,
            head_channels: self.head_channels,
            fourier: self.fourier.as_ref().map(|f| f.0.clone()),
            schedule: self.schedule,
            timesteps: self.timesteps,
            levels: self.levels,
            gaussian_base: self.gaussian_base,
            base_per_class: self.base_per_class,
            conditional: self.conditional,
            steps: self.steps,
            batch_size: self.batch,
            lr: self.lr,
            seed: self.seed,
            ce_weight: self.ce_weight,
            mse_weight: self.mse_weight,
            min_snr: self.min_snr.map(|m| m.0),
            grad_clip: self.grad_clip.map(|c| c.0),
            fid_every: self.fid_every,
            fid_samples: self.fid_samples,
            low_levels: self.low_levels.map(|l| l.0.unwrap_or(0.0)),
            level_strides: self.level_strides.clone(),
            precision: self.precision,
            hflip: self.hflip,
            dequantize: self.dequantize,
            sample_every: self.sample_every,
            checkpoint_every: self.checkpoint_every,
            cdl_weight: self.cdl_weight,
            cdl_images: self.cdl_images,
            cdl_draws: self.cdl_draws,
            cdl_zeta: self.cdl_zeta,
            init_from: self.init_from.clone(),
        }
    }
}

/// The run's settings ([`resolve`]) and its opened data, with a spinner while the data opens.
fn run_config(args: &TrainArgs) -> Result<(RunConfig, Dataset)> {
    let file = args.config.as_ref().map(|path| ConfigFile::read(path)).transpose()?;
    resolve(&args.out, file.as_ref(), &args.overrides(), |data| {
        let preparing = spinner(format!("preparing --data {data} (the first use of a dataset downloads it)"));
        let dataset = Dataset::open(data).map_err(|e| e.within(format!("--data {data}")));
        preparing.finish_and_clear();
        let dataset = dataset?;
        tracing::info!("data {data}: {}", dataset.describe(data));
        Ok(dataset)
    })
    .map_err(Into::into)
}

pub fn run(args: TrainArgs) -> Result<()> {
    let launch = Launch::from_env()?;
    // Ctrl-C from a terminal reaches every rank: this process waits while they save.
    if super::start_ranks(args.nproc, launch.as_ref(), true)? {
        return Ok(());
    }
    let device = args.device.device()?;
    let Some(launch) = launch else {
        let lock = lock_run(&args)?;
        let (config, data) = run_config(&args)?;
        return train(&args, |building| {
            let trainer = Trainer::open_with_data(lock, config, data, device);
            building.finish_and_clear();
            trainer
        });
    };
    if let Some(n) = args.nproc.filter(|&n| n != launch.world_size) {
        bail!("--nproc {n} disagrees with the launcher's WORLD_SIZE={}", launch.world_size);
    }
    let timeout = Duration::from_secs_f64(args.dist_timeout);
    let group = ProcessGroup::join(&launch, launch.device(device), timeout)?;
    // Rank 0 reads the saved run and opens (perhaps downloads) the data first; the others
    // follow from the cache it filled.
    let first = group.rank() == 0;
    let lock = if first { Some(lock_run(&args)?) } else { None };
    if !first {
        group.barrier()?;
    }
    let resolved = run_config(&args);
    if first {
        group.barrier()?;
    }
    let (config, data) = resolved?;
    let device = launch.device(device);
    train(&args, |building| {
        let trainer = Trainer::open_in_job(&args.out, lock, config, data, device, group.into());
        building.finish_and_clear();
        trainer
    })
}

/// The run folder's lock, held from before the saved run is read until the process ends; with
/// --restart, the run there discarded.
fn lock_run(args: &TrainArgs) -> Result<RunLock> {
    let lock = RunLock::acquire(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    if args.restart {
        lock.discard_run()?;
    }
    Ok(lock)
}

/// Opens the trainer with `open` (given the spinner to clear) and trains, with a progress bar
/// where this process writes the run.
fn train(args: &TrainArgs, open: impl FnOnce(&indicatif::ProgressBar) -> cdm::Result<Trainer>) -> Result<()> {
    let building = spinner(format!("building the model in {}", args.out.display()));
    let mut trainer = open(&building)?;
    trainer.set_cuda_graphs(args.cuda_graphs);
    let train = &trainer.config.train;
    if trainer.step() == train.steps {
        tracing::info!(
            "{} is at its last step, {}, already: nothing to train (--steps N extends it)",
            args.out.display(),
            train.steps
        );
        return Ok(());
    }
    tracing::info!(
        "training to step {}: batch {}, lr {}, checkpoints every {} steps in {}",
        train.steps,
        train.batch_size,
        train.lr,
        train.checkpoint_every,
        args.out.display()
    );
    let total = trainer.config.train.steps;
    let bar = if trainer.is_writer() { progress_bar(total, "train") } else { indicatif::ProgressBar::hidden() };
    bar.set_position(trainer.step());
    if trainer.step() > 0 {
        tracing::info!("resuming {} at step {}", args.out.display(), trainer.step());
    }
    signals::stop_on_interrupt().context("installing the Ctrl-C and SIGTERM handlers")?;
    trainer.run(&mut |r| {
        bar.set_position(r.step);
        let terms = match r.ce {
            Some(ce) => format!("loss {:.4} ce {ce:.3} mse {:.4}", r.loss, r.mse),
            None => format!("mse {:.4}", r.mse),
        };
        bar.set_message(match (r.cdl, r.cdl_accuracy) {
            (Some(cdl), Some(accuracy)) => format!("{terms} cdl {cdl:.3} acc {accuracy:.2}"),
            _ => terms,
        });
    })?;
    bar.finish();
    if let Some(signal) = signals::received() {
        return Err(Interrupted { signal, step: trainer.step(), out: args.out.clone() }.into());
    }
    tracing::info!("trained to step {}: checkpoint in {}", trainer.step(), args.out.display());
    Ok(())
}
