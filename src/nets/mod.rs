//! Backbones: the networks behind both model kinds. For a classification diffusion model a
//! backbone reads x_t alone and gives one raw output per noise level (the classifier's cumsum
//! head turns them into logits); for a denoising diffusion model it also reads t and gives ε̂,
//! shaped like x_t. [`Head`] says which.
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::{Error, Result};

mod blocks;
pub mod convnet;
pub mod flops;
pub mod mlp;
pub mod unet;
pub use convnet::{ConvNet, ConvNetConfig};
pub use mlp::{Mlp, MlpConfig};
pub use unet::{Unet, UnetConfig};

/// What a backbone outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// One raw output per noise level, from x_t alone (no time input): a CDM.
    Levels(i64),
    /// ε̂ shaped like the input, from x_t and t: a DDM.
    Noise,
}

/// A network, optionally conditioned on a data label.
pub trait Backbone: Send {
    /// Outputs for inputs x: [B, ..], levels t: [B] (Int64; `None` for a CDM) and labels: [B]
    /// (Int64; `None` is the null label). `train` switches dropout.
    fn forward(&self, x: &Tensor, t: Option<&Tensor>, labels: Option<&Tensor>, train: bool) -> Tensor;
}

/// Analytic backbones in tests and examples are plain closures of x.
impl<F: Fn(&Tensor) -> Tensor + Send> Backbone for F {
    fn forward(&self, x: &Tensor, _t: Option<&Tensor>, _labels: Option<&Tensor>, _train: bool) -> Tensor {
        self(x)
    }
}

/// Which backbone a model uses, with its settings; stored in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackboneConfig {
    /// Residual MLP for vectors (any data shape, flattened).
    Mlp(MlpConfig),
    /// Encoder-only convolutional classifier for [C, H, W] data (CDM only).
    ConvNet(ConvNetConfig),
    /// The DDPM UNet for [C, H, W] data.
    Unet(UnetConfig),
}

impl BackboneConfig {
    /// Builds the backbone under `vs` for inputs of `data_shape` (without the batch axis).
    /// `timesteps` (T) scales the time input of a [`Head::Noise`] backbone.
    pub fn build(&self, vs: &nn::Path, data_shape: &[i64], head: Head, timesteps: usize) -> Result<Box<dyn Backbone>> {
        match self {
            BackboneConfig::Mlp(cfg) => Ok(Box::new(Mlp::new(vs, cfg, data_shape, head, timesteps)?)),
            BackboneConfig::ConvNet(cfg) => match head {
                Head::Levels(n) => Ok(Box::new(ConvNet::new(vs, cfg, data_shape, n)?)),
                Head::Noise => Err(Error::Config("convnet is an encoder: it can only be a CDM's classifier".into())),
            },
            BackboneConfig::Unet(cfg) => Ok(Box::new(Unet::new(vs, cfg, data_shape, head, timesteps)?)),
        }
    }

    /// Checks every field for sizes a network can be built from (positive widths, groups
    /// that divide them, bounded sizes), naming the first bad field; nothing is allocated.
    pub fn validate(&self) -> Result<()> {
        match self {
            BackboneConfig::Mlp(cfg) => cfg.validate(),
            BackboneConfig::ConvNet(cfg) => cfg.validate(),
            BackboneConfig::Unet(cfg) => cfg.validate(),
        }
    }

    /// Number of data labels the backbone is conditioned on (0: unconditional).
    pub fn num_labels(&self) -> usize {
        match self {
            BackboneConfig::Mlp(cfg) => cfg.num_labels,
            BackboneConfig::ConvNet(cfg) => cfg.num_labels,
            BackboneConfig::Unet(cfg) => cfg.num_labels,
        }
    }

    /// Sets the number of data labels.
    pub fn set_num_labels(&mut self, n: usize) {
        match self {
            BackboneConfig::Mlp(cfg) => cfg.num_labels = n,
            BackboneConfig::ConvNet(cfg) => cfg.num_labels = n,
            BackboneConfig::Unet(cfg) => cfg.num_labels = n,
        }
    }
}

/// Widest layer a config may ask for (channels × multiplier, or the MLP's width).
pub const MAX_WIDTH: usize = 8192;
/// Most residual blocks per stage (or in an MLP).
pub const MAX_BLOCKS: usize = 64;
/// Most resolutions (stages) of a convolutional backbone.
pub const MAX_STAGES: usize = 8;
/// Most data labels a backbone may be conditioned on.
pub const MAX_LABELS: usize = 100_000;

pub(crate) fn check_range(field: &str, value: usize, low: usize, high: usize) -> Result<()> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(Error::Config(format!("{field} is {value}; expected {low}..={high}")))
    }
}

/// The stages of a convolutional backbone: `channels` × each multiplier is a width in
/// 1..=[`MAX_WIDTH`] that `groups` divides.
pub(crate) fn check_stages(channels: usize, channel_mult: &[usize], groups: usize) -> Result<()> {
    check_range("backbone.channels", channels, 1, MAX_WIDTH)?;
    check_range("backbone.groups", groups, 1, MAX_WIDTH)?;
    if channel_mult.is_empty() || channel_mult.len() > MAX_STAGES {
        return Err(Error::Config(format!(
            "backbone.channel_mult has {} entries; expected 1..={MAX_STAGES}",
            channel_mult.len()
        )));
    }
    for &m in channel_mult {
        let width = channels.saturating_mul(m);
        if m == 0 || width > MAX_WIDTH {
            return Err(Error::Config(format!(
                "backbone.channel_mult holds {m}: a width of {channels} × {m}; expected multipliers ≥ 1 and widths ≤ {MAX_WIDTH}"
            )));
        }
        if !width.is_multiple_of(groups) {
            return Err(Error::Config(format!(
                "backbone.channel_mult holds {m}: the width {width} is not divisible by backbone.groups = {groups}"
            )));
        }
    }
    Ok(())
}

/// Sinusoidal embedding of levels t ([B], Int64) scaled to [0, 1000) whatever T is, as in the
/// DDPM code: [B, dim].
pub fn timestep_embedding(t: &Tensor, timesteps: usize, dim: i64, kind: Kind) -> Tensor {
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Double, t.device())) * (-(10_000f64.ln()) / half as f64)).exp();
    let scaled = t.to_kind(Kind::Double) * (1000.0 / timesteps as f64);
    let args = scaled.unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1).to_kind(kind)
}

/// Fourier features of a network's input (Kingma et al. 2021, "Variational Diffusion Models",
/// appendix C): `x` ([B, C, ..]) with sin(π 2^k x) and cos(π 2^k x) for every exponent k in
/// `exponents` appended along axis 1, giving [B, C·(1 + 2K), ..]. A log-density ratio between
/// the lowest noise levels changes over a distance of σ_1 near every sharp edge of the data (a
/// cube's faces, a quantisation bin's bounds); a smooth network on raw x learns such functions
/// slowly, one built on these features can express them with a few weights.
pub fn fourier_features(x: &Tensor, exponents: &[i32]) -> Tensor {
    if exponents.is_empty() {
        return x.shallow_clone();
    }
    let mut parts = vec![x.shallow_clone()];
    for &k in exponents {
        let scaled = x * (std::f64::consts::PI * 2f64.powi(k));
        parts.push(scaled.sin());
        parts.push(scaled.cos());
    }
    Tensor::cat(&parts, 1)
}

/// Most Fourier feature exponents a backbone may take, and their range.
pub const MAX_FOURIER: usize = 16;

/// Checks a list of Fourier exponents: at most [`MAX_FOURIER`], each in −16..=16.
pub(crate) fn check_fourier(exponents: &[i32]) -> Result<()> {
    if exponents.len() > MAX_FOURIER || exponents.iter().any(|k| k.abs() > 16) {
        return Err(Error::Config(format!(
            "backbone.fourier is {exponents:?}; expected at most {MAX_FOURIER} exponents in -16..=16"
        )));
    }
    Ok(())
}

/// The label embedding input of a conditional backbone: `labels`, or the null label
/// `num_labels` for every sample when there are none.
pub(crate) fn labels_or_null(labels: Option<&Tensor>, num_labels: i64, batch: i64, device: tch::Device) -> Tensor {
    labels.map_or_else(|| Tensor::full([batch], num_labels, (Kind::Int64, device)), |l| l.shallow_clone())
}
