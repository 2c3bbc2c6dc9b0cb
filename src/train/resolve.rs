//! A run's settings in one place: the defaults that suit its data, under a config file or the
//! run being resumed (or fine-tuned from), under the settings given for this launch (a command
//! line's flags, a Python call's keywords). Typed throughout; checked once, at the end.
use std::path::{Path, PathBuf};

use super::{data_logsnr_proposal, DataDefaults, RunConfig, TrainConfig};
use crate::checkpoint::saved_run;
use crate::config_file::ConfigFile;
use crate::data::Dataset;
use crate::loss::ZetaPrior;
use crate::model::{ModelConfig, ModelKind};
use crate::nets::{BackboneConfig, ConvNetConfig, MlpConfig, UnetConfig};
use crate::precision::Precision;
use crate::schedule::{Levels, ScheduleConfig, ScheduleKind};
use crate::{Error, Result};

/// Which network to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackboneChoice {
    /// Residual MLP (a CDM's with Fourier features on data with hard edges; see `DataDefaults`).
    Mlp,
    /// Encoder-only ConvNet (`ConvNetConfig::default()`; CDM only).
    Convnet,
    /// The DDPM UNet (a preset, tiny by default).
    Unet,
}

/// The UNet's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnetPreset {
    /// About 1 M parameters at 28×28.
    Tiny,
    /// 6 M parameters.
    Mnist,
    /// The DDPM/CDM paper's CIFAR-10 network, 35.7 M parameters.
    Cifar10,
    /// DDIM's CelebA 64×64 network.
    Celeba64,
}

impl UnetPreset {
    pub fn config(self) -> UnetConfig {
        match self {
            UnetPreset::Tiny => UnetConfig::tiny(),
            UnetPreset::Mnist => UnetConfig::mnist(),
            UnetPreset::Cifar10 => UnetConfig::cifar10(),
            UnetPreset::Celeba64 => UnetConfig::celeba64(),
        }
    }
}

/// How a DDM's training levels are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelsChoice {
    /// t ~ U{1..T}.
    Discrete,
    /// Log SNR from a truncated logistic fitted to the data's variances, with the importance
    /// weight.
    Continuous,
}

/// Settings given for this launch, over everything else; `None` (or `false`) leaves the layer
/// below in place. `Some(None)` switches an optional setting off.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data: Option<String>,
    pub model: Option<ModelKind>,
    pub backbone: Option<BackboneChoice>,
    pub preset: Option<UnetPreset>,
    /// MLP width.
    pub hidden: Option<usize>,
    /// ConvNet or UNet channels at full resolution.
    pub channels: Option<usize>,
    /// Residual blocks (MLP: in total; ConvNet and UNet: per resolution).
    pub blocks: Option<usize>,
    pub head_channels: Option<usize>,
    pub fourier: Option<Vec<i32>>,
    pub schedule: Option<ScheduleKind>,
    pub timesteps: Option<usize>,
    pub levels: Option<LevelsChoice>,
    pub gaussian_base: bool,
    pub base_per_class: bool,
    pub conditional: bool,
    pub steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub ce_weight: Option<f64>,
    pub mse_weight: Option<f64>,
    pub min_snr: Option<Option<f64>>,
    pub grad_clip: Option<Option<f64>>,
    pub fid_every: Option<u64>,
    pub fid_samples: Option<usize>,
    pub low_levels: Option<f64>,
    pub level_strides: Option<Vec<usize>>,
    pub precision: Option<Precision>,
    pub hflip: bool,
    pub dequantize: bool,
    pub sample_every: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub cdl_weight: Option<f64>,
    pub cdl_images: Option<usize>,
    pub cdl_draws: Option<usize>,
    pub cdl_zeta: Option<ZetaPrior>,
    /// Start from this run's EMA weights with a fresh optimiser; its settings are the layer
    /// below the overrides.
    pub init_from: Option<PathBuf>,
}

/// What lies under the overrides.
enum Base {
    /// A config file's parts, over the defaults of the data.
    File(Box<ConfigFile>),
    /// A run's own settings: the run being resumed, or fine-tuned from.
    Run(Box<RunConfig>),
}

/// The settings of a run in `out`: `config` (a config file's parts, read and checked) if
/// given, else the run already in `out`, else the run `overrides.init_from` fine-tunes, else
/// the defaults, each under the overrides; and the data set they name, opened by `open` (which
/// may download it).
pub fn resolve(
    out: &Path,
    config: Option<&ConfigFile>,
    overrides: &Overrides,
    open: impl FnOnce(&str) -> Result<Dataset>,
) -> Result<(RunConfig, Dataset)> {
    let base = match (config, saved_run(out)?, &overrides.init_from) {
        (Some(file), _, _) => Base::File(Box::new(file.clone())),
        (None, Some(saved), _) => Base::Run(Box::new(saved)),
        (None, None, Some(init)) => Base::Run(Box::new(
            saved_run(init)?
                .ok_or_else(|| Error::Config(format!("init_from {}: no trained run there", init.display())))?,
        )),
        (None, None, None) => Base::File(Box::default()),
    };
    let data = match (&overrides.data, &base) {
        (Some(data), _) => data.clone(),
        (None, Base::Run(run)) => run.data.clone(),
        (None, Base::File(file)) => file.data.clone().ok_or_else(|| {
            Error::Config("no training data: give the data spec or set `data` in the config file".into())
        })?,
    };
    let dataset = open(&data)?;
    let images = dataset.shape().len() == 3;
    let below = match &base {
        Base::File(file) => file.model,
        Base::Run(run) => Some(run.model.kind),
    };
    let defaults = DataDefaults::new(&dataset, overrides.model.or(below).unwrap_or_default());
    let (kind, schedule, backbone, gaussian_base, base_per_class, train) = match base {
        Base::Run(run) => {
            let m = run.model;
            (m.kind, m.schedule, Some(m.backbone), m.gaussian_base, m.base_per_class, run.train)
        }
        Base::File(file) => {
            let train = file.train_over(defaults.train.clone()).map_err(|e| e.within("the config file"))?;
            let bases = (file.gaussian_base.unwrap_or(false), file.base_per_class.unwrap_or(false));
            let kind = file.model.unwrap_or_default();
            (kind, file.schedule.unwrap_or(defaults.schedule), file.backbone, bases.0, bases.1, train)
        }
    };
    let o = overrides;
    let schedule = schedule_over(schedule, o, &dataset, train.seed)?;
    let mut backbone = backbone_over(backbone, o, images, &defaults.mlp)?;
    if o.conditional {
        let n = dataset.num_labels().ok_or_else(|| Error::Config(format!("conditional: '{data}' has no labels")))?;
        backbone.set_num_labels(n);
    }
    let model = ModelConfig {
        kind: o.model.unwrap_or(kind),
        schedule,
        backbone,
        data_shape: dataset.shape(),
        gaussian_base: o.gaussian_base || o.base_per_class || gaussian_base,
        base_per_class: o.base_per_class || base_per_class,
    };
    let config = RunConfig { data, model, train: train_over(train, o) };
    config.model.validate()?;
    config.train.validate()?;
    Ok((config, dataset))
}

fn schedule_over(mut schedule: ScheduleConfig, o: &Overrides, data: &Dataset, seed: u64) -> Result<ScheduleConfig> {
    schedule.kind = o.schedule.unwrap_or(schedule.kind);
    schedule.timesteps = o.timesteps.unwrap_or(schedule.timesteps);
    schedule.levels = match o.levels {
        None => schedule.levels,
        Some(LevelsChoice::Discrete) => Levels::Discrete,
        Some(LevelsChoice::Continuous) => Levels::Continuous(data_logsnr_proposal(data, o.seed.unwrap_or(seed))?),
    };
    Ok(schedule)
}

/// The backbone chosen (or the one below), with the sizes given over it; the UNet for images
/// and the MLP otherwise when nothing chose one, an MLP chosen afresh being the data's `mlp`.
fn backbone_over(
    below: Option<BackboneConfig>,
    o: &Overrides,
    images: bool,
    mlp: &MlpConfig,
) -> Result<BackboneConfig> {
    let unet = || BackboneConfig::Unet(o.preset.unwrap_or(UnetPreset::Tiny).config());
    let mut backbone = match (o.backbone, below) {
        (Some(BackboneChoice::Mlp), _) => BackboneConfig::Mlp(mlp.clone()),
        (Some(BackboneChoice::Convnet), _) => BackboneConfig::ConvNet(ConvNetConfig::default()),
        (Some(BackboneChoice::Unet), _) => unet(),
        (None, Some(b)) => b,
        (None, None) if images => unet(),
        (None, None) => BackboneConfig::Mlp(mlp.clone()),
    };
    if o.preset.is_some() && !matches!(backbone, BackboneConfig::Unet(_)) {
        return Err(Error::Config("the UNet preset applies to the UNet only".into()));
    }
    match &mut backbone {
        BackboneConfig::Mlp(mlp) => {
            mlp.hidden = o.hidden.unwrap_or(mlp.hidden);
            mlp.blocks = o.blocks.unwrap_or(mlp.blocks);
            mlp.fourier = o.fourier.clone().unwrap_or(std::mem::take(&mut mlp.fourier));
        }
        BackboneConfig::ConvNet(conv) => {
            conv.channels = o.channels.unwrap_or(conv.channels);
            conv.blocks = o.blocks.unwrap_or(conv.blocks);
            conv.fourier = o.fourier.clone().unwrap_or(std::mem::take(&mut conv.fourier));
        }
        BackboneConfig::Unet(_) if o.fourier.is_some() => {
            return Err(Error::Config("Fourier features apply to the MLP and the ConvNet".into()))
        }
        BackboneConfig::Unet(unet) => {
            unet.channels = o.channels.unwrap_or(unet.channels);
            unet.res_blocks = o.blocks.unwrap_or(unet.res_blocks);
            unet.head_channels = o.head_channels.unwrap_or(unet.head_channels);
        }
    }
    Ok(backbone)
}

fn train_over(mut train: TrainConfig, o: &Overrides) -> TrainConfig {
    train.steps = o.steps.unwrap_or(train.steps);
    train.batch_size = o.batch_size.unwrap_or(train.batch_size);
    train.lr = o.lr.unwrap_or(train.lr);
    train.seed = o.seed.unwrap_or(train.seed);
    train.ce_weight = o.ce_weight.unwrap_or(train.ce_weight);
    train.mse_weight = o.mse_weight.unwrap_or(train.mse_weight);
    train.min_snr = o.min_snr.unwrap_or(train.min_snr);
    train.grad_clip = o.grad_clip.unwrap_or(train.grad_clip);
    train.fid_every = o.fid_every.unwrap_or(train.fid_every);
    train.fid_samples = o.fid_samples.unwrap_or(train.fid_samples);
    train.low_levels = o.low_levels.unwrap_or(train.low_levels);
    train.level_strides = o.level_strides.clone().unwrap_or(train.level_strides);
    train.precision = o.precision.unwrap_or(train.precision);
    train.hflip |= o.hflip;
    train.dequantize |= o.dequantize;
    train.sample_every = o.sample_every.unwrap_or(train.sample_every);
    train.checkpoint_every = o.checkpoint_every.unwrap_or(train.checkpoint_every);
    train.init_from = o.init_from.clone().or(train.init_from);
    if o.cdl_weight.is_some() || o.cdl_images.is_some() || o.cdl_draws.is_some() || o.cdl_zeta.is_some() {
        let mut cdl = train.cdl.unwrap_or_default();
        cdl.weight = o.cdl_weight.unwrap_or(cdl.weight);
        cdl.images = o.cdl_images.unwrap_or(cdl.images);
        cdl.draws = o.cdl_draws.unwrap_or(cdl.draws);
        cdl.zeta = o.cdl_zeta.unwrap_or(cdl.zeta);
        train.cdl = Some(cdl);
    }
    train
}
