//! `cdm train`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use cdm::config_file::ConfigFile;
use cdm::data::{Dataset, DATA_SPECS};
use cdm::distributed::{Launch, ProcessGroup};
use cdm::loss::ZetaPrior;
use cdm::model::{ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, ConvNetConfig, MlpConfig, UnetConfig};
use cdm::run_lock::RunLock;
use cdm::schedule::{Levels, ScheduleKind};
use cdm::signals;
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
    /// T, the number of noisy levels.
    #[arg(long)]
    timesteps: Option<usize>,
    /// Seed of all randomness.
    #[arg(long)]
    seed: Option<u64>,
    /// Weight of the cross-entropy term.
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
    /// cross-entropy is corrected for it, so the model stays exact [default: 0]
    #[arg(long, value_name = "SHARE")]
    low_levels: Option<f64>,
    /// Strides of the level subsets a CDM's cross-entropy runs over, taken in turn per sample
    /// (e.g. 1,8,64): stride k makes a level compete with the levels k apart, so log p_0 is
    /// pinned by a short chain of ratios instead of T+1 adjacent ones [default: 1]
    #[arg(long, value_delimiter = ',', value_name = "K,..")]
    level_strides: Option<Vec<usize>>,
    /// Fourier features sin(π 2^k x), cos(π 2^k x) of the MLP's or ConvNet's input for each
    /// exponent k listed (e.g. 0,1,2,3,4,5): sharp log-density ratios near the data's edges
    /// become cheap to learn
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_name = "K,..")]
    fourier: Option<Vec<i32>>,
    /// A classification diffusion model, or the denoising baseline.
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
    /// Backbone (default: the UNet for [C, H, W] data, the MLP otherwise).
    #[arg(long, value_enum)]
    backbone: Option<BackboneArg>,
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
    levels: Option<LevelsArg>,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackboneArg {
    /// Residual MLP (`MlpConfig::default()`).
    Mlp,
    /// Encoder-only ConvNet (`ConvNetConfig::default()`; CDM only).
    Convnet,
    /// The DDPM UNet (`--preset`, default tiny).
    Unet,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LevelsArg {
    /// t ~ U{1..T}.
    Discrete,
    /// Log SNR from a truncated logistic, with the importance weight.
    Continuous,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UnetPreset {
    Tiny,
    Mnist,
    Cifar10,
    Celeba64,
}

impl UnetPreset {
    fn config(self) -> UnetConfig {
        match self {
            UnetPreset::Tiny => UnetConfig::tiny(),
            UnetPreset::Mnist => UnetConfig::mnist(),
            UnetPreset::Cifar10 => UnetConfig::cifar10(),
            UnetPreset::Celeba64 => UnetConfig::celeba64(),
        }
    }
}

/// The settings of the run already in `dir`, if there is one, as a config file would give them.
fn saved_run(dir: &Path) -> Result<Option<ConfigFile>> {
    Ok(cdm::train::saved_run(dir)?.map(ConfigFile::from_run).transpose()?)
}

/// Defaults, then the config file (or the run being resumed), then flags; and the opened
/// data, which set the shape.
fn run_config(args: &TrainArgs) -> Result<(RunConfig, Dataset)> {
    let file = match (&args.config, saved_run(&args.out)?, &args.init_from) {
        (Some(path), _, _) => ConfigFile::read(path)?,
        (None, Some(saved), _) => saved,
        (None, None, Some(init)) => {
            saved_run(init)?.with_context(|| format!("--init-from {}: no trained run there", init.display()))?
        }
        (None, None, None) => ConfigFile::default(),
    };
    let data = args
        .data
        .clone()
        .or(file.data.clone())
        .context("no training data: pass --data SPEC or set `data` in --config")?;
    let preparing = spinner(format!("preparing --data {data} (the first use of a dataset downloads it)"));
    let dataset = Dataset::open(&data).with_context(|| format!("--data {data}"));
    preparing.finish_and_clear();
    let dataset = dataset?;
    tracing::info!("data {data}: {}", dataset.describe(&data));
    let images = dataset.shape().len() == 3;
    let RunConfig { model: defaults, mut train, .. } =
        file.run_config(data.clone(), &dataset).with_context(|| match &args.config {
            Some(path) => format!("--config {}", path.display()),
            None => format!("the run in {}", args.out.display()),
        })?;
    let mut schedule = defaults.schedule;
    schedule.kind = args.schedule.unwrap_or(schedule.kind);
    schedule.timesteps = args.timesteps.unwrap_or(schedule.timesteps);
    schedule.levels = match args.levels {
        None => schedule.levels,
        Some(LevelsArg::Discrete) => Levels::Discrete,
        Some(LevelsArg::Continuous) => {
            let seed = args.seed.or(file.train.as_ref().and_then(|t| t["seed"].as_u64())).unwrap_or_default();
            Levels::Continuous(cdm::train::data_logsnr_proposal(&dataset, seed)?)
        }
    };
    let unet = || BackboneConfig::Unet(args.preset.unwrap_or(UnetPreset::Tiny).config());
    let mut backbone = match (args.backbone, &file.backbone) {
        (Some(BackboneArg::Mlp), _) => BackboneConfig::Mlp(MlpConfig::default()),
        (Some(BackboneArg::Convnet), _) => BackboneConfig::ConvNet(ConvNetConfig::default()),
        (Some(BackboneArg::Unet), _) => unet(),
        (None, None) if images => unet(),
        (None, _) => defaults.backbone,
    };
    if args.preset.is_some() && !matches!(backbone, BackboneConfig::Unet(_)) {
        bail!("--preset applies to the UNet only");
    }
    match &mut backbone {
        BackboneConfig::Mlp(mlp) => {
            mlp.hidden = args.hidden.unwrap_or(mlp.hidden);
            mlp.blocks = args.blocks.unwrap_or(mlp.blocks);
            mlp.fourier = args.fourier.clone().unwrap_or(std::mem::take(&mut mlp.fourier));
        }
        BackboneConfig::ConvNet(conv) => {
            conv.channels = args.channels.unwrap_or(conv.channels);
            conv.blocks = args.blocks.unwrap_or(conv.blocks);
            conv.fourier = args.fourier.clone().unwrap_or(std::mem::take(&mut conv.fourier));
        }
        BackboneConfig::Unet(_) if args.fourier.is_some() => bail!("--fourier applies to the MLP and the ConvNet"),
        BackboneConfig::Unet(unet) => {
            unet.channels = args.channels.unwrap_or(unet.channels);
            unet.res_blocks = args.blocks.unwrap_or(unet.res_blocks);
            unet.head_channels = args.head_channels.unwrap_or(unet.head_channels);
        }
    }
    if args.conditional {
        let n = dataset.num_labels().with_context(|| format!("--conditional: '{data}' has no labels"))?;
        backbone.set_num_labels(n);
    }
    train.steps = args.steps.unwrap_or(train.steps);
    train.batch_size = args.batch.unwrap_or(train.batch_size);
    train.lr = args.lr.unwrap_or(train.lr);
    train.seed = args.seed.unwrap_or(train.seed);
    train.ce_weight = args.ce_weight.unwrap_or(train.ce_weight);
    train.mse_weight = args.mse_weight.unwrap_or(train.mse_weight);
    train.min_snr = args.min_snr.map_or(train.min_snr, |m| m.0);
    train.grad_clip = args.grad_clip.map_or(train.grad_clip, |c| c.0);
    train.fid_every = args.fid_every.unwrap_or(train.fid_every);
    train.fid_samples = args.fid_samples.unwrap_or(train.fid_samples);
    train.low_levels = args.low_levels.unwrap_or(train.low_levels);
    train.level_strides = args.level_strides.clone().unwrap_or(train.level_strides);
    train.precision = args.precision.unwrap_or(train.precision);
    train.hflip |= args.hflip;
    train.dequantize |= args.dequantize;
    train.sample_every = args.sample_every.unwrap_or(train.sample_every);
    train.checkpoint_every = args.checkpoint_every.unwrap_or(train.checkpoint_every);
    train.init_from = args.init_from.clone().or(train.init_from);
    let cdl_flags =
        args.cdl_weight.is_some() || args.cdl_images.is_some() || args.cdl_draws.is_some() || args.cdl_zeta.is_some();
    if cdl_flags {
        let mut cdl = train.cdl.unwrap_or_default();
        cdl.weight = args.cdl_weight.unwrap_or(cdl.weight);
        cdl.images = args.cdl_images.unwrap_or(cdl.images);
        cdl.draws = args.cdl_draws.unwrap_or(cdl.draws);
        cdl.zeta = args.cdl_zeta.unwrap_or(cdl.zeta);
        train.cdl = Some(cdl);
    }
    let model = ModelConfig {
        kind: args.model.unwrap_or(defaults.kind),
        schedule,
        backbone,
        data_shape: defaults.data_shape,
        gaussian_base: args.gaussian_base || args.base_per_class || defaults.gaussian_base,
        base_per_class: args.base_per_class || defaults.base_per_class,
    };
    Ok((RunConfig { data, model, train }, dataset))
}

pub fn run(args: TrainArgs) -> Result<()> {
    let launch = Launch::from_env()?;
    if let (Some(n), None) = (args.nproc, &launch) {
        if n > 1 {
            // The ranks run this same command line; the launcher's environment tells each
            // which it is.
            let program = std::env::current_exe().context("finding this program to start the ranks")?;
            let argv: Vec<String> = std::env::args().skip(1).collect();
            tracing::info!("starting {n} data-parallel ranks on this host");
            // Ctrl-C from a terminal reaches every rank: this process waits while they save.
            signals::stop_on_interrupt().context("installing the Ctrl-C and SIGTERM handlers")?;
            return Ok(cdm::distributed::spawn_local(&program, &argv, n, RANK_GRACE)?);
        }
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
    let group = ProcessGroup::join(&launch, timeout)?;
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

/// How long the ranks started by --nproc have to stop on their own once one has failed.
const RANK_GRACE: Duration = Duration::from_secs(30);

/// Opens the trainer with `open` (given the spinner to clear) and trains, with a progress bar
/// where this process writes the run.
fn train(args: &TrainArgs, open: impl FnOnce(&indicatif::ProgressBar) -> cdm::Result<Trainer>) -> Result<()> {
    let building = spinner(format!("building the model in {}", args.out.display()));
    let mut trainer = open(&building)?;
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
